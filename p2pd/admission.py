"""Who gets in: ZAP's answers about CURVE keys, and the count of inbound connections (part of the transport layer).

How this works
--------------
* ZAP: for every CURVE client of our ROUTER and XPUB, libzmq asks the ZAP socket (bound by
  sockets.py) whether its key may in.  `answer_zap` asks the node's trust (``authorize(key)`` ->
  ok, user id, reason) and replies; the user id (the key's node id) then comes with each frame
  that client sends, as ``User-Id``.  A refusal is reported as dropped (``unauthorized``).
* Inbound connections: `watch` follows a listening socket's monitor.  Each ACCEPTED connection is
  checked against `InboundGuard` (inbound.py: per host, in all, and the descriptors left); an
  excess one is shut down at once (libzmq sees the end of the stream and closes it).  Counting
  open descriptors lists a directory, so it is done once a second, or at each connection when the
  estimate (last count + connections since) comes near the limit.  When a flood drains away,
  `tick` hands freed memory back to the system a moment later (libzmq frees a connection's
  buffers only after it reported it gone).  A failed ZMTP handshake is logged through ``drop``:
  the usual sign of a secure/insecure mismatch.

``drop(now, kind, reason, source)`` is the node's counter of dropped input (`Node.drop`).
"""

from __future__ import annotations

import logging
import socket
import struct
import time

import zmq
import zmq.utils.z85

from .inbound import HEADROOM, InboundGuard
from .pollset import PollSet
from .resources import open_fds, trim_memory

log = logging.getLogger("p2pd.transport")

TRIM_DELAY_S = 0.5


class Admission:
    def __init__(self, polls: PollSet, guard: InboundGuard, secure: bool, drop):
        self._polls = polls
        self.guard = guard
        self._secure = secure
        self._drop = drop
        self._monitors: list = []
        self._ports: set[int] = set()  # our listening ports: an accepted descriptor on another is not ours to judge
        self._fds_open: int | None = None
        self._fds_counted_at = float("-inf")
        self._trim_at: float | None = None  # when to hand freed memory back, after a flood

    # ------------------------------------------------------------------ ZAP
    def answer_zap(self, zap: zmq.Socket, frames, authorize) -> None:
        """One ZAP request: [version, request id, domain, address, identity, mechanism, credentials...]."""
        parts = [f.bytes for f in frames]
        request_id = parts[1] if len(parts) > 1 else b""
        ok, user_id, reason = False, "", "malformed ZAP request"
        if len(parts) >= 7 and parts[5] == b"CURVE" and len(parts[6]) == 32:
            key = zmq.utils.z85.encode(parts[6]).decode("ascii")
            ok, user_id, reason = authorize(key)
            if not ok:
                address = parts[3].decode("utf-8", "replace")
                self._drop(time.monotonic(), "unauthorized", f"refused key {key[:8]}... from {address}: {reason}", address)
        zap.send_multipart([b"1.0", request_id, b"200" if ok else b"400", reason.encode(), user_id.encode(), b""])

    # ------------------------------------------------------------------ inbound connections
    def watch(self, sock: zmq.Socket, port: int, what: str) -> None:
        """Follow the connections to our listening socket ``sock`` (on ``port``, called ``what`` in logs)."""
        self._ports.add(port)
        failed = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        mon = sock.get_monitor_socket(failed | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._monitors.append(mon)

        def on_event(frames):
            try:
                event, value = struct.unpack("=hi", frames[0].bytes[:6])
            except struct.error:
                return
            if event == zmq.EVENT_ACCEPTED:
                self._on_accepted(value, what)
            elif event == zmq.EVENT_DISCONNECTED:
                self.guard.closed(value)
                if self._trim_at is None and self.guard.flood_over():
                    # libzmq frees a connection's buffers only after it reported it gone: trim a moment later
                    self._trim_at = time.monotonic() + TRIM_DELAY_S
            elif event & failed:  # (a ZAP refusal, HANDSHAKE_FAILED_AUTH, is already counted as unauthorized)
                mine = "CURVE" if self._secure else "plaintext (--insecure)"
                self._drop(time.monotonic(), "handshake_failed",
                           f"a connection to our {what} port failed its handshake (event {event}, code {value:#x}): the other side "
                           f"does not speak {mine} (one side in --insecure mode?), or is not p2pd", what)

        self._polls.register(mon, on_event)

    def _on_accepted(self, fd: int, what: str) -> None:
        """libzmq accepted a connection on one of our ports: keep it, or shut it down at once."""
        try:
            conn = socket.socket(fileno=fd)  # borrowed: detached below, libzmq owns the descriptor
        except OSError:
            return  # closed already
        try:
            if conn.family not in (socket.AF_INET, socket.AF_INET6):
                return  # the descriptor was closed and reused already (by a control client, say): not this one
            try:
                host, local_port = conn.getpeername()[0], conn.getsockname()[1]
            except OSError:
                return  # gone already
            if local_port not in self._ports:
                return  # the descriptor was closed and reused by one of our own connections: not this one
            now = time.monotonic()
            limit = self.guard.fd_limit
            near = limit is not None and self._fds_open is not None and self._fds_open > limit - 4 * HEADROOM
            if now >= self._fds_counted_at + 1.0 or near:
                self._fds_open = open_fds()
                self._fds_counted_at = now
            elif self._fds_open is not None:
                self._fds_open += 1
            reason = self.guard.accepted(fd, host, self._fds_open)
            if reason is not None:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # libzmq sees the end of the stream and closes it
                except OSError:
                    pass
                self._drop(now, "inbound_limit", f"refused a connection to our {what} port: {reason}", host)
        finally:
            conn.detach()

    def tick(self, now: float) -> None:
        """After a flood: hand freed memory back once the moment has come."""
        if self._trim_at is not None and now >= self._trim_at:
            self._trim_at = None
            trimmed = trim_memory()
            log.info("inbound connections down to %d: freed memory %s", len(self.guard.conns),
                     "returned to the system" if trimmed else "kept (no malloc_trim here)")

    def close(self) -> None:
        for mon in self._monitors:
            mon.close(linger=0)
        self._monitors.clear()
