"""A small client library for a running p2pd's control socket.

    from p2pctl import Client
    with Client("~/.local/share/p2pd") as c:
        c.call("send", peer="bob", text="hello")
        for event in c.watch():
            print(event)

Every failure is one of four exceptions, each with a message that names the
socket tried and the fix, and an ``exit_code`` from `p2pd.exitcodes`:
not running, permission denied, timed out, or the request failed.

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
import threading
import time
from pathlib import Path
from typing import Iterator

import zmq

from p2pd import exitcodes
from p2pd.home import ControlChoiceError, Home, control_transport, pid_alive, resolve_home


class ClientError(Exception):
    exit_code = exitcodes.FAILED
    code = "error"


class DaemonNotRunning(ClientError):
    exit_code = exitcodes.NOT_RUNNING
    code = "not_running"


class PermissionDenied(ClientError):
    exit_code = exitcodes.PERMISSION
    code = "permission_denied"


class DaemonTimeout(ClientError):
    exit_code = exitcodes.TIMEOUT
    code = "timeout"


class UsageError(ClientError):
    exit_code = exitcodes.USAGE
    code = "usage"


class RequestFailed(ClientError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        if code in ("timeout", "unreachable"):
            self.exit_code = exitcodes.TIMEOUT
        elif code == "bad_token":
            self.exit_code = exitcodes.PERMISSION


class Client:
    def __init__(self, home: str | Path | None = None, timeout_s: float = 5.0):
        self.home = Home(resolve_home(str(home) if home is not None else None))
        self.timeout_s = timeout_s
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
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
            raise DaemonNotRunning(f"p2pd is not running (no control socket at {path}); {self._start_hint()}")
        if not os.access(path, os.R_OK | os.W_OK):
            raise PermissionDenied(f"permission denied for control socket {path}: it belongs to another user; run p2pctl as that user (or use your own --home)")
        self._check_pid()

    def _check_pid(self) -> None:
        pid = self.home.read_pid()
        if pid is not None and not pid_alive(pid):
            raise DaemonNotRunning(f"p2pd is not running (pid {pid} is gone; stale {self._where}); {self._start_hint()}")

    def _tcp_endpoint(self) -> str:
        """TCP control: the endpoint and token the daemon wrote into the home (mode 0600)."""
        ep_file = self.home.control_endpoint_file
        try:
            endpoint, self._token = self.home.read_control_files()
        except FileNotFoundError:
            raise DaemonNotRunning(f"p2pd is not running (no control endpoint file {ep_file}); {self._start_hint()}") from None
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

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            endpoint = self._endpoint()
            self._ctx = zmq.Context()
            self._sock = self._ctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(endpoint)
        return self._sock

    def _no_answer(self, waited_s: float) -> ClientError:
        pid = self.home.read_pid()
        if not pid_alive(pid):
            return DaemonNotRunning(f"p2pd is not running (stale {self._where}); {self._start_hint()}")
        from p2pd.daemon import is_running  # only here: a daemon holds the home's lock for its whole life

        if not is_running(self.home)[0]:  # the pid was given to another process since the daemon died
            return DaemonNotRunning(f"p2pd is not running (pid {pid} now belongs to another process; stale {self._where}); {self._start_hint()}")
        return DaemonTimeout(
            f"p2pd (pid {pid}) did not answer on {self._where} within {waited_s:g}s; it may be overloaded or stuck: see {self.home.log_file}, or raise --timeout"
        )

    def request(self, cmd: str, timeout_s: float | None = None, **args) -> dict:
        """Send one request and return the raw reply dict (``ok``, ``result`` / ``error``)."""
        sock = self._socket()
        req = next(self._ids)
        msg = {"req": req, "cmd": cmd, "args": args}
        if self._token is not None:
            msg["token"] = self._token
        sock.send(json.dumps(msg).encode())
        wait = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not sock.poll(left_ms):
                raise self._no_answer(wait)
            reply = json.loads(sock.recv())
            if reply.get("req") == req:
                return reply

    def call(self, cmd: str, timeout_s: float | None = None, **args):
        """Send one request; return its result or raise `RequestFailed`."""
        reply = self.request(cmd, timeout_s=timeout_s, **args)
        if not reply.get("ok"):
            raise RequestFailed(reply.get("code", "error"), reply.get("error", "request failed"))
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

    def watch(self, poll_s: float = 0.2) -> Iterator[dict | None]:
        """Yield events as they happen; yields ``None`` every ``poll_s`` of quiet so callers can do other work."""
        sock = self._socket()
        self.call("watch")
        while True:
            if sock.poll(int(poll_s * 1000)):
                frame = json.loads(sock.recv())
                if "event" in frame:
                    yield frame
            else:
                yield None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
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
