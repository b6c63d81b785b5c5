"""Waiting on many ZeroMQ sockets at the cost of the ready ones (part of the transport layer).

How this works
--------------
``zmq.Poller`` asks every registered socket for its state on every call: a
getsockopt and a system call or two each.  A node has a SUB socket per peer,
and its loop turns hundreds of times a second while a cluster forms, so that
cost grew with the number of peers (a 40-node mesh spent most of its CPU
there).  This poller waits on the sockets' ``ZMQ_FD`` with the operating
system's selector (epoll, kqueue, select on Windows) and asks only the
sockets whose descriptor fired, plus those known to have input left.

``ZMQ_FD`` is edge-triggered: it fires when the socket *may* have become
readable, and asking for ``ZMQ_EVENTS`` resets it.  Hence two rules for the
caller: after reading a socket, call `done` (if input is left, the socket
stays "hot" and is looked at next time without waiting); after *sending* on
a registered socket, call `recheck` (a send can swallow the edge of an input
that arrived meanwhile).

A plain socket (the UDP socket of LAN discovery) may be registered too: its
descriptor is level-triggered, so it is reported exactly when it fired.
"""

from __future__ import annotations

import selectors

import zmq

# Plain ints: an option or flag given as pyzmq's enum costs an enum operation on every call
# (about 1.4 of 3.7 us per readiness check, several checks per loop turn).
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


class FdPoller:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._fds: dict[zmq.Socket, int] = {}
        self._hot: set[zmq.Socket] = set()

    def register(self, sock) -> None:
        zmq_socket = isinstance(sock, zmq.Socket)
        fd = sock.getsockopt(zmq.FD) if zmq_socket else sock.fileno()
        self._selector.register(fd, selectors.EVENT_READ, sock)
        self._fds[sock] = fd
        if zmq_socket:
            self._hot.add(sock)  # it may hold input already

    def unregister(self, sock: zmq.Socket) -> None:
        fd = self._fds.pop(sock, None)
        if fd is not None:
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass
        self._hot.discard(sock)

    def recheck(self, sock: zmq.Socket | None) -> None:
        """Look at ``sock`` next time: we sent on it, which may have consumed its edge."""
        if sock is not None and sock in self._fds:
            self._hot.add(sock)

    def done(self, sock: zmq.Socket) -> None:
        """The caller read what it wanted from ``sock``: keep it hot if input is left."""
        if sock in self._fds and isinstance(sock, zmq.Socket) and not sock.closed and self._readable(sock):
            self._hot.add(sock)

    @staticmethod
    def _readable(sock) -> bool:
        if not isinstance(sock, zmq.Socket):
            return True  # a plain socket is only asked about when its descriptor fired
        try:
            return bool(sock.get(_EVENTS) & _POLLIN)
        except zmq.ZMQError:  # closed under us
            return False

    def _fired(self, timeout_s: float | None) -> set[zmq.Socket]:
        return {key.data for key, _ in self._selector.select(timeout_s)}

    def _ready(self, candidates: set[zmq.Socket]) -> list[zmq.Socket]:
        return [s for s in candidates if s in self._fds and self._readable(s)]

    def poll(self, timeout_s: float) -> list[zmq.Socket]:
        """Sockets with input, waiting up to ``timeout_s`` for one (an empty list: the time is up)."""
        candidates, self._hot = self._hot, set()
        if candidates:
            ready = self._ready(candidates | self._fired(0))
            if ready:
                return ready
        return self._ready(self._fired(max(0.0, timeout_s)))

    def close(self) -> None:
        self._selector.close()
        self._fds.clear()
        self._hot.clear()
