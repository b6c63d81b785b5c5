"""Telling a refused connection from a slow one, for sockets we connect (part of the transport layer).

How this works
--------------
ZeroMQ retries a connection that fails, silently: a user who dials an address where nothing
listens would wait out the whole timeout.  `RefusalWatch.watch` follows a socket's monitor
until its first connection is decided.  A refusal shows as CONNECT_RETRIED before any
CONNECTED, again after each reconnect interval (100 ms at first); a SYN that goes unanswered
shows nothing (the kernel keeps trying), and a host whose address does not resolve on a lossy
link (ARP) fails once every few seconds.  So two retries within REFUSED_WITHIN_S are a
refusal, reported once through the caller's ``on_refused``; a single one, or slower ones, are a
slow path.  A link's first handshake may be watched too (``on_handshake_failed``): libzmq would
retry a handshake that fails every 100 ms, unseen.  Used by dealers.py (every link's DEALER: its
handshake, and its refusal for an `OpenLink` with report_refused) and keyport.py (key fetches).
"""

from __future__ import annotations

import struct
import time

import zmq

from .pollset import PollSet

REFUSED_WITHIN_S = 1.0  # two connect retries this close together: the connection is refused
HANDSHAKE_SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
HANDSHAKE_FAILED = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class RefusalWatch:
    def __init__(self, polls: PollSet):
        self._polls = polls
        self._monitors: dict[zmq.Socket, zmq.Socket] = {}  # socket -> its monitor, until its first connect succeeds or fails

    def watch(self, sock: zmq.Socket, on_refused=None, on_handshake_failed=None) -> None:
        """Call ``on_refused()`` if the first TCP connection of ``sock`` (not connected yet: no event
        may be missed) is refused.  Watched until the first CONNECTED or the refusal; with
        ``on_handshake_failed``, until the first handshake succeeds or fails (then it is called).

        Why the handshake: libzmq retries a connection whose handshake fails (the node at that
        address does not hold the key we expect: another node there now) every reconnect
        interval, its backoff undone by each TCP connect that succeeds; a daemon kept 10 CURVE
        handshakes a second going at the node now there, for as long as it kept the link."""
        events = zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED
        if on_handshake_failed is not None:
            events |= HANDSHAKE_SUCCEEDED | HANDSHAKE_FAILED
        mon = sock.get_monitor_socket(events)
        self._monitors[sock] = mon
        last_retry = [float("-inf")]

        def on_event(frames):
            try:
                event = struct.unpack("=h", frames[0].bytes[:2])[0]
            except struct.error:
                return
            if event & HANDSHAKE_FAILED:
                self.unwatch(sock)
                on_handshake_failed()
                return
            if event == zmq.EVENT_CONNECTED and on_handshake_failed is not None:
                return  # connected: no refusal; its handshake is still to come
            if event != zmq.EVENT_CONNECT_RETRIED:
                self.unwatch(sock)  # connected (or its handshake succeeded): nothing to report
                return
            if on_refused is None:
                return
            now = time.monotonic()
            if now - last_retry[0] <= REFUSED_WITHIN_S:
                self.unwatch(sock)
                on_refused()
            last_retry[0] = now

        self._polls.register(mon, on_event)

    def unwatch(self, sock: zmq.Socket) -> None:
        """Stop watching ``sock`` (before it is closed, or once its first connection is decided)."""
        mon = self._monitors.pop(sock, None)
        if mon is None:
            return
        self._polls.unregister(mon)
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        mon.close(linger=0)

    def close(self) -> None:
        for mon in self._monitors.values():
            mon.close(linger=0)
        self._monitors.clear()
