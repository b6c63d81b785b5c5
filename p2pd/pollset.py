"""The sockets the event loop waits on, and who reads each one (part of the transport layer).

How this works
--------------
Each part of the transport that owns a socket with input (the loop's listeners, links.py's SUBs,
keyport.py's key fetches, the socket monitors) registers it here with its handler.  A handler
takes one message's frames, and the set reads the socket for it, up to `BATCH` messages a
turn (fairness between sockets); or, registered with ``drains=True``, it takes the socket
itself and reads it alone (the hot paths read part by part, see `messages`).  A handler that
raises is logged and the loop carries on: a bug must not kill the node.  Waiting is
`FdPoller`'s (fdpoll.py), with its two rules: `handle` tells it when a socket was read,
`recheck` when we sent on one.
"""

from __future__ import annotations

import logging

import zmq

from .fdpoll import FdPoller

log = logging.getLogger("p2pd.transport")

BATCH = 512  # messages per socket per loop turn: fairness between sockets


class PollSet:
    def __init__(self) -> None:
        self._poller = FdPoller()
        self._handlers: dict = {}
        self._drainers: set = set()  # sockets whose handler reads them itself

    def register(self, sock, handler, drains: bool = False) -> None:
        """Poll ``sock``; ``handler`` gets each message's frames, or the socket itself with ``drains``."""
        self._handlers[sock] = handler
        if drains:
            self._drainers.add(sock)
        self._poller.register(sock)

    def unregister(self, sock) -> None:
        self._handlers.pop(sock, None)
        self._drainers.discard(sock)
        self._poller.unregister(sock)

    def poll(self, timeout_s: float) -> list:
        """Sockets with input, waiting up to ``timeout_s`` for one."""
        return self._poller.poll(timeout_s)

    def recheck(self, sock) -> None:
        """We sent on ``sock``: look at its input next time (see fdpoll.py)."""
        self._poller.recheck(sock)

    def handle(self, sock) -> None:
        """Hand ``sock``'s waiting input to its handler."""
        handler = self._handlers.get(sock)
        if handler is None:
            return  # closed earlier in this turn
        try:
            if sock in self._drainers:
                handler(sock)
            else:
                _drain(sock, handler)
        except Exception:  # a bug must not kill the node: log it and carry on
            log.exception("error while handling input; continuing")
        self._poller.done(sock)

    def close(self) -> None:
        self._poller.close()
        self._handlers.clear()
        self._drainers.clear()


NOBLOCK = int(zmq.NOBLOCK)  # an int: pyzmq's flag enum costs an enum operation per call

def _drain(sock: zmq.Socket, handle) -> None:
    for _ in range(BATCH):
        try:
            frames = sock.recv_multipart(NOBLOCK, copy=False)
        except zmq.Again:
            return
        handle(frames)
        if sock.closed:  # the handler closed it (a key fetch's REQ after its one reply)
            return


def messages(sock: zmq.Socket):
    """Up to BATCH waiting messages, each as its list of frames.  Read part by part:
    recv_multipart costs a getsockopt per part, a frame knows whether more follow."""
    for _ in range(BATCH):
        try:
            frames = [sock.recv(NOBLOCK, copy=False)]
        except zmq.Again:
            return
        while frames[-1].more:
            frames.append(sock.recv(copy=False))
        yield frames
