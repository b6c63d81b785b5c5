"""The key port, both ways: telling our public key, and asking a peer for its own (part of the transport layer).

How this works
--------------
`connect HOST PORT` in secure mode needs the peer's CURVE key before a link can be opened.  Every
secure daemon answers a plaintext REP on its key port (peer port + 2, bound by sockets.py):
`answer_key_request` replies with our key, node id and name to whatever is asked.

The other way, a `FetchKey` effect: `KeyFetches.fetch` opens a REQ to the peer's key port and
asks.  Its first connection is watched (refusals.py), so that nothing listening there is known at
once; a fetch ends with its reply, that refusal, or its deadline (`expire`, called on the loop's
tick), and each outcome goes to ``on_key(now, tag, key, error, refused=False)``, which the loop
hands to the node (`Node.on_key`).  The socket is closed either way: one question per socket.
"""

from __future__ import annotations

import json
import time

import zmq

from .pollset import PollSet
from .refusals import RefusalWatch

KEY_FETCH_TIMEOUT_S = 3.0


def answer_key_request(sock: zmq.Socket, public_key: str, node_id: str, name: str) -> None:
    """Reply on our key port (whatever was asked: it only ever tells the key)."""
    sock.send(json.dumps({"key": public_key, "id": node_id, "name": name}).encode())


class KeyFetches:
    def __init__(self, ctx: zmq.Context, polls: PollSet, refusals: RefusalWatch, on_key):
        self._ctx = ctx
        self._polls = polls
        self._refusals = refusals
        self._on_key = on_key
        self._waiting: dict[zmq.Socket, tuple[str, float]] = {}  # REQ socket -> (tag, deadline)

    def fetch(self, endpoint: str, tag: str, timeout_s: float = KEY_FETCH_TIMEOUT_S) -> None:
        sock = self._ctx.socket(zmq.REQ)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, 4096)

        def refused(sock=sock):
            if sock in self._waiting:
                tag, _ = self._waiting.pop(sock)
                self._polls.unregister(sock)
                sock.close(linger=0)
                self._on_key(time.monotonic(), tag, None, "connection refused", refused=True)

        self._refusals.watch(sock, refused)  # before connect: no event may be missed
        try:
            sock.connect(endpoint)
            sock.send(b"KEY")
        except zmq.ZMQError as e:
            self._refusals.unwatch(sock)
            sock.close(linger=0)
            self._on_key(time.monotonic(), tag, None, e.strerror)
            return
        self._waiting[sock] = (tag, time.monotonic() + timeout_s)

        def on_reply(frames, sock=sock):
            tag, _ = self._waiting.pop(sock, ("", 0))
            self._done(sock)
            key = error = None
            try:
                reply = json.loads(frames[-1].bytes)
                key = reply.get("key") if isinstance(reply, dict) else None
            except ValueError:
                error = "the key port answered something else"
            self._on_key(time.monotonic(), tag, key, error)

        self._polls.register(sock, on_reply)

    def busy(self) -> bool:
        """A key fetch awaits its answer or its deadline."""
        return bool(self._waiting)

    def expire(self, now: float) -> None:
        """Give up on the fetches whose deadline has passed."""
        for sock, (tag, deadline) in list(self._waiting.items()):
            if now >= deadline:
                del self._waiting[sock]
                self._done(sock)
                self._on_key(now, tag, None, "no answer in time")

    def _done(self, sock: zmq.Socket) -> None:
        self._polls.unregister(sock)
        self._refusals.unwatch(sock)
        sock.close(linger=0)

    def close(self) -> None:
        for sock in self._waiting:
            sock.close(linger=0)
        self._waiting.clear()
