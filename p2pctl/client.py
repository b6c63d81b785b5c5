"""A small client library for a running p2pd's control socket.

    from p2pctl import Client
    with Client("~/.local/share/p2pd") as c:
        c.call("send", peer="bob", text="hello")
        for event in c.watch():
            print(event)

Every failure is one of four exceptions, each with a message that names the
socket tried and the fix, a ``code`` (a `p2pd.errors.ErrorCode`, or a newer daemon's
code this version does not know) and the ``exit_code`` that table gives it:
not running (`DiskFull` when p2pd stopped because its disk is full),
permission denied, timed out, or the request failed.

What this library reports as not done is never done later (a request that
failed is not carried out by a daemon started afterwards, nor by one that was
stopped or overloaded and reads it late):

* a request is sent only once a socket monitor has seen the connection to the
  daemon up (its ZeroMQ handshake done): to a daemon that is not there it is
  not sent at all, and is reported as not running instead of waiting in the
  socket for the next daemon to bind the same control endpoint.  Not
  ``ZMQ_IMMEDIATE``: with it, libzmq discards the replies already received on
  a connection when that connection closes, so the answer to ``stop`` (the
  daemon exits right after it) would be lost;
* ``LINGER`` is 0, and the socket is closed after any failure (a new one is
  made for the next request), so nothing a failed request left in it survives;
* each request carries a ``deadline`` (wall clock: see `p2pd.control.check_deadline`)
  a margin before the client gives up, and the daemon refuses a request it reads
  after it (``expired``).  A `DaemonTimeout` therefore means "not carried out",
  except for a request the daemon had started before its deadline and then took
  longer than the margin (``REPLY_MARGIN_S``) to answer (a stalled disk).

The daemon is reached over ``ipc://``, or over loopback TCP where ZeroMQ has no
ipc (Windows), with ``P2PD_CONTROL=tcp``, or when the home has a
``control.endpoint`` file; then every request carries the token from
``control.token`` (docs/PROTOCOL.md section 9).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Iterator

import zmq

from p2pd.errors import ErrorCode, exit_code_for
from p2pd.home import ControlChoiceError, Home, control_transport, is_running, pid_alive, resolve_home


class ClientError(Exception):
    """A failure, with its ``code`` and the ``exit_code`` that `p2pd.errors` gives that code.
    Subclasses set only ``code``: the exit code is looked up, never chosen here, so the
    client cannot disagree with the table the docs are checked against.  Both stay class
    attributes (``DaemonNotRunning.exit_code``), as they were before the table."""

    code: str = ErrorCode.ERROR
    exit_code: int = ErrorCode.ERROR.exit_code

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.exit_code = exit_code_for(cls.code)


class DaemonNotRunning(ClientError):
    code = ErrorCode.NOT_RUNNING


class PermissionDenied(ClientError):
    code = ErrorCode.PERMISSION_DENIED


class DaemonTimeout(ClientError):
    code = ErrorCode.TIMEOUT


class UsageError(ClientError):
    code = ErrorCode.USAGE


class DiskFull(DaemonNotRunning):
    """p2pd is not running and the file system of its home is full: p2pd stops when it cannot
    write its store (so that it never acknowledges what is not on disk), and cannot start on
    a full disk either.  Still exit code 3: the daemon is not running."""

    code = ErrorCode.DISK_FULL


class RequestFailed(ClientError):
    """The daemon answered the request with an error: ``code`` is the reply's (docs/PROTOCOL.md
    9.3), kept as sent (a string) so that a newer daemon's code still reaches the caller."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.exit_code = exit_code_for(code)


REPLY_MARGIN_S = 1.0  # at most this much of a timeout is kept for the daemon to answer a request it read in time
DISK_FULL_BYTES = 1 << 20  # less free space than this on the home's file system counts as a full disk
# ZMTP heartbeats on the control connection: the daemon's libzmq answers them by itself, however
# busy its event loop, so only a process that is not running at all (SIGSTOP, a hung host) misses
# them.  Then the connection is dropped and `watch` and the chat say the daemon is down, where
# before they waited on a connection that looked up for as long as the daemon was frozen.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000


def free_bytes(path: Path) -> int | None:
    """Free space for this user on the file system holding ``path`` (0 when out of inodes), or None
    where it cannot be told.  Root may use the blocks reserved for it, others may not."""
    try:
        st = os.statvfs(path)
    except (AttributeError, OSError):  # no statvfs on Windows
        return None
    if st.f_files and (st.f_favail if os.geteuid() else st.f_ffree) == 0:
        return 0
    return (st.f_bavail if os.geteuid() else st.f_bfree) * st.f_frsize


def start_by(wait_s: float, args: dict) -> float:
    """Seconds from now by which the daemon must read a request, for a client waiting ``wait_s``.

    The request's own ``wait_s`` (send --wait, connect, ping) is waited on after it is read,
    and a margin is kept for the reply to come back, so that a request read in time is
    answered before the client gives up."""
    inner = args.get("wait_s", 0)
    budget = wait_s - (inner if isinstance(inner, (int, float)) and not isinstance(inner, bool) else 0)
    budget = max(budget, min(wait_s, 0.05))
    return budget - min(REPLY_MARGIN_S, budget / 4)


class Client:
    def __init__(self, home: str | Path | None = None, timeout_s: float = 5.0):
        self.home = Home(resolve_home(str(home) if home is not None else None))
        self.timeout_s = timeout_s
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None  # events of _sock's connection
        self._up = False  # that connection is up (handshake done), as far as the monitor has told
        self._was_up = False  # ... and was up at some time
        self._ids = itertools.count(1)
        self._token: str | None = None  # TCP control only
        self._where = f"control socket at {self.home.socket_path}"

    # ------------------------------------------------------------------ plumbing
    def _start_hint(self) -> str:
        return f"start it with: p2pd start --home {self.home.path}"

    def _check_socket(self) -> None:
        path = self.home.socket_path
        try:
            exists = path.exists()
        except PermissionError:  # Python < 3.12 raises it for a path inside a directory we may not enter
            raise PermissionDenied(f"permission denied for control socket {path}: the node's home belongs to another user; "
                                   f"run p2pctl as that user (or use your own --home)") from None
        if not exists:
            try:
                path.parent.stat()
            except PermissionError:
                raise PermissionDenied(f"permission denied for {path.parent}: the node belongs to another user; run p2pctl as that user") from None
            except FileNotFoundError:
                pass
            raise self._not_running(f"no control socket at {path}")
        if not os.access(path, os.R_OK | os.W_OK):
            raise PermissionDenied(f"permission denied for control socket {path}: it belongs to another user; run p2pctl as that user (or use your own --home)")
        self._check_pid()

    def _check_pid(self) -> None:
        pid = self.home.read_pid()
        if pid is not None and not pid_alive(pid):
            raise self._not_running(f"pid {pid} is gone; stale {self._where}")

    def _tcp_endpoint(self) -> str:
        """TCP control: the endpoint and token the daemon wrote into the home (mode 0600)."""
        ep_file = self.home.control_endpoint_file
        try:
            endpoint, self._token = self.home.read_control_files()
        except FileNotFoundError:
            raise self._not_running(f"no control endpoint file {ep_file}") from None
        except PermissionError as e:
            raise PermissionDenied(f"permission denied for {e.filename or ep_file}: the node's home belongs to another user; "
                                   f"run p2pctl as that user (or use your own --home)") from None
        except (OSError, ValueError) as e:
            raise ClientError(f"cannot use the TCP control endpoint: {e}; restart p2pd to write {ep_file.name} and control.token anew") from None
        self._where = f"control endpoint {endpoint}"
        self._check_pid()
        return endpoint

    def _endpoint(self) -> str:
        try:
            kind = control_transport(zmq.has("ipc"), self.home.control_endpoint_file)
        except ControlChoiceError as e:
            raise UsageError(str(e)) from None
        if kind == "tcp":
            return self._tcp_endpoint()
        self._check_socket()
        return self.home.control_endpoint

    def _not_running(self, why: str) -> DaemonNotRunning:
        """Not running; `DiskFull` if the home's file system is full, the usual reason p2pd stops
        on its own (it logs a CRITICAL line, if it can still write its log)."""
        free = free_bytes(self.home.path)
        if free is not None and free < DISK_FULL_BYTES:
            return DiskFull(f"p2pd is not running and the disk holding {self.home.path} is full ({free} bytes free; {why}): "
                            f"p2pd stops when it cannot write its store; free some space, then {self._start_hint()}")
        return DaemonNotRunning(f"p2pd is not running ({why}); {self._start_hint()}")

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            endpoint = self._endpoint()
            if self._ctx is None:
                self._ctx = zmq.Context()
            self._sock = self._ctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)  # close drops what is unsent
            self._sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            # Before connect, so that no event is missed (see _connection_up).
            self._monitor = self._sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            self._up = self._was_up = False
            self._sock.connect(endpoint)
        return self._sock

    def _connection_up(self, deadline: float) -> bool:
        """Whether the connection to the daemon is up, waiting for it until ``deadline`` (monotonic).

        Read from the socket's monitor, so that a request is never queued for a daemon that is
        not (or no longer) there.  A disconnect that the monitor has not reported yet can still
        let one request into the socket's queue; closing the socket when that request fails, and
        its deadline, keep it from being carried out later."""
        while True:
            wait_ms = 0 if self._up else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._monitor.poll(wait_ms):
                return self._up
            self._up = _monitor_event(self._monitor) == zmq.EVENT_HANDSHAKE_SUCCEEDED
            self._was_up = self._was_up or self._up

    def _drop_socket(self) -> None:
        """After a failure: whatever the socket still holds must never reach a daemon."""
        if self._sock is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._sock.close(linger=0)
            self._sock = None
            self._monitor = None

    def _no_answer(self, waited_s: float) -> ClientError:
        pid = self.home.read_pid()
        if not pid_alive(pid):
            return self._not_running(f"stale {self._where}")
        if not is_running(self.home)[0]:  # the pid was given to another process since the daemon died
            return self._not_running(f"pid {pid} now belongs to another process; stale {self._where}")
        return DaemonTimeout(
            f"p2pd (pid {pid}) did not answer on {self._where} within {waited_s:g}s, so the request was not carried out "
            f"(it refuses what it reads after the request's deadline); it may be overloaded or stuck: see {self.home.log_file}, or raise --timeout"
        )

    def request(self, cmd: str, timeout_s: float | None = None, **args) -> dict:
        """Send one request and return the raw reply dict (``ok``, ``result`` / ``error``).

        Raises `DaemonNotRunning` or `DaemonTimeout` when there is no reply; the request is
        then not carried out (see the module's docstring), and the socket is closed."""
        try:
            if self._sock is not None and self._was_up and not self._connection_up(time.monotonic()):
                # The daemon went away since the last request: start over, so that a daemon that is
                # gone is reported at once (no control socket, pid gone) instead of after the timeout.
                self._drop_socket()
            sock = self._socket()
            wait = self.timeout_s if timeout_s is None else timeout_s
            deadline = time.monotonic() + wait
            req = next(self._ids)
            msg = {"req": req, "cmd": cmd, "args": args, "deadline": round(time.time() + start_by(wait, args), 3)}
            if self._token is not None:
                msg["token"] = self._token
            if not self._connection_up(deadline):
                raise self._no_answer(wait)
            try:
                sock.send(json.dumps(msg).encode(), zmq.NOBLOCK)
            except zmq.Again:  # a queue of 1,000 unread requests: the daemon is stuck
                raise self._no_answer(wait) from None
            while True:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0 or not sock.poll(left_ms):
                    raise self._no_answer(wait)
                reply = json.loads(sock.recv())
                if reply.get("req") == req:
                    return reply
        except ClientError:
            self._drop_socket()
            raise

    def call(self, cmd: str, timeout_s: float | None = None, **args):
        """Send one request; return its result or raise `RequestFailed`."""
        reply = self.request(cmd, timeout_s=timeout_s, **args)
        if not reply.get("ok"):
            raise RequestFailed(reply.get("code", ErrorCode.ERROR), reply.get("error", "request failed"))
        return reply.get("result")

    def send(self, peer: str, text: str, wait_s: float = 0.0, require: bool = False, msg_id: str | None = None) -> dict:
        """Send one direct message; with ``wait_s`` wait that long for "delivered"."""
        args = {"id": msg_id} if msg_id else {}
        return self.call("send", timeout_s=self.timeout_s + wait_s, peer=peer, text=text, wait_s=wait_s, require=require, **args)

    def send_many(self, peer: str, texts: list[str], ids: list[str] | None = None) -> dict:
        """Queue many direct messages in one request (stored in one transaction).

        Returns once they are durably in the outbox.  Pass your own ``ids`` to
        make a retry after an error safe: messages already stored are skipped.
        """
        args = {"ids": ids} if ids is not None else {}
        return self.call("send", peer=peer, texts=texts, **args)

    def connect(self, host: str, port: int, wait_s: float = 5.0, since: float | None = None, key: str | None = None) -> dict:
        """Link to host:port (``key``: its public key, from a p2p:// string), waiting up to ``wait_s``.

        The daemon is also told the addresses ``host`` resolves to, so that it recognises a peer
        it is already linked to under another spelling (``localhost`` for 127.0.0.1) and leaves
        that link alone (result ``already: true``)."""
        host = host.strip("[]")
        args = {"key": key} if key else {}
        addrs = host_addresses(host, port, timeout_s=min(2.0, wait_s))
        if addrs:
            args["addrs"] = addrs
        return self.call("connect", timeout_s=wait_s + 1, host=host, port=port, wait_s=wait_s, since=since, **args)

    def broadcast_many(self, texts: list[str]) -> dict:
        """Publish many broadcasts in one request (numbered and stored in one transaction)."""
        return self.call("broadcast", texts=texts)

    def watch(self, poll_s: float = 0.2, since: int | None = None) -> Iterator[dict | None]:
        """Yield events as they happen; yields ``None`` every ``poll_s`` of quiet so callers can do other work.

        ``since``: the ``cursor`` of the last message seen before (from an event, or `inbox`):
        what was stored after it comes first, as ``replay`` events, so nothing is missed.
        It ends nowhere when the daemon stops: `p2pctl.events.EventStream` notices that and resumes."""
        self.call("watch", **({} if since is None else {"since": since}))
        sock = self._sock  # the socket the watch was registered on
        while True:
            if sock.poll(int(poll_s * 1000)):
                frame = json.loads(sock.recv())
                if "event" in frame:
                    yield frame
            else:
                yield None

    def watch_events(self, timeout_s: float) -> tuple[list[dict], bool]:
        """After a ``watch`` call on this client: the events that came within ``timeout_s`` (all that
        are waiting once one came), and whether the connection to the daemon was lost.

        The loss is read from the socket's monitor (DISCONNECTED), which libzmq reports as soon as
        the daemon's end of the connection closes: no request, no timer.  The events the daemon sent
        before it went are returned with it.  After a loss this client's watch is over (a daemon
        started again knows nothing of it): close the client and watch anew."""
        sock, monitor = self._sock, self._monitor
        if sock is None:
            return [], True
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.poll(max(0, int(timeout_s * 1000)))
        lost = False
        while monitor.poll(0):  # first: what the daemon sent before it went is in the socket by then
            if _monitor_event(monitor) == zmq.EVENT_DISCONNECTED:
                lost = True
        events = []
        while sock.poll(0):
            frame = json.loads(sock.recv())
            if "event" in frame:
                events.append(frame)
        return events, lost

    def close(self) -> None:
        self._drop_socket()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def host_addresses(host: str, port: int, timeout_s: float = 2.0, limit: int = 16) -> list[str]:
    """The IP addresses ``host`` resolves to (an IP literal: itself), at most ``limit``.

    Resolving a name is I/O, so the client does it and not the daemon's event loop.  It is
    bounded by ``timeout_s`` (a slow resolver gives up to the daemon's own dial); a name that
    does not resolve gives [] (the dial then says what is wrong)."""
    host = host.strip("[]")
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    found: list[str] = []

    def resolve() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return
        found.extend(dict.fromkeys(str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)))

    worker = threading.Thread(target=resolve, name="p2pctl-resolve", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return [] if worker.is_alive() else found[:limit]


def _monitor_event(monitor: zmq.Socket) -> int:
    """The event number of one monitor message (its first frame: 16-bit event, 32-bit value).
    Parsed here: pyzmq's recv_monitor_message imports asyncio, 20 ms of every p2pctl run."""
    frames = monitor.recv_multipart()
    return struct.unpack("=h", frames[0][:2])[0]
