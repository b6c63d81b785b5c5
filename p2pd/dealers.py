"""Our sockets toward peers: a DEALER per link, a SUB per peer's PUB (part of the transport layer).

How this works
--------------
* one DEALER per link, filed under the node's link key (a peer id, or ``pending:<endpoint>``
  for a link opened by address before we know who answers; `rekey` files it under the peer
  once known).  Its routing id is ``<our node id>/<16 random hex>`` (or our bare node id for a
  peer that did not say it takes a suffix), to the peer's ROUTER, a CURVE client of the
  peer's key unless --insecure.  The loop sends on `dealers` directly (the hot path).
* one SUB per linked peer, connected to that peer's PUB, so every broadcast is known to come
  through the PUB of the peer it names.  It subscribes to untargeted envelopes (``{``), to
  what is published for us alone (``@<our id>``, actions.Publish ``to``), and to a topic that
  never matches and names us: the peer's XPUB sees it, so the peer knows our SUB is attached.
  What a SUB reads goes to ``on_sub_frames(frames, endpoint, peer key)``.
* with report_refused, a DEALER's first connection is watched (refusals.py): if nothing
  listens there, ``on_refused(key)`` says so at once rather than ZeroMQ retrying unseen.
  Every DEALER's first handshake is watched too: if it fails (the node there does not hold
  the key we expect), ``on_handshake_failed(key)`` tells the node, which closes the link.

Only the effects' orders reach here (open, close, rekey, subscribe, unsubscribe): nothing here
decides anything about the protocol.
"""

from __future__ import annotations

import logging

import zmq

from .intake import SUB_TOPIC_PREFIX, TOPIC_ALL, topic_for
from .pollset import PollSet, messages
from .refusals import RefusalWatch
from .sockets import curve_client, link_routing_id

log = logging.getLogger("p2pd.transport")

# High-water marks bound memory; they never decide what is lost, because the
# store does.  A link carries at most send_window (1,000) unacknowledged
# MESSAGEs plus control frames and up to one FETCH reply (1,000 BROADCASTs),
# so 10,000 is never reached by a well-behaved node; if it is, the send is
# counted as send_queue_full and the message is resent from the outbox.
LINK_SNDHWM = 10_000
CLOSE_LINGER_MS = 1_000  # let a LEAVE reach the peer, but never hang a stop on a dead one


class LinkSockets:
    def __init__(self, ctx: zmq.Context, polls: PollSet, refusals: RefusalWatch, keypair, node_id: str, max_msg: int,
                 on_refused, on_sub_frames, on_handshake_failed=lambda key: None):
        self._ctx = ctx
        self._polls = polls
        self._refusals = refusals
        self._keypair = keypair  # None: --insecure
        self._node_id = node_id
        self._max_msg = max_msg
        self._on_refused = on_refused
        self._on_sub_frames = on_sub_frames
        self._handshake_failed = on_handshake_failed
        self.dealers: dict[str, zmq.Socket] = {}  # link key -> DEALER (read by the loop to send)
        self._subs: dict[str, tuple[zmq.Socket, str]] = {}  # peer id -> (SUB socket, endpoint)

    # ------------------------------------------------------------------ DEALERs
    def open(self, key: str, endpoint: str, server_key: str | None = None, suffix: bool = False, report_refused: bool = False) -> None:
        old = self.dealers.pop(key, None)
        if old is not None:
            self._refusals.unwatch(old)
            old.close(linger=0)
        sock = self._ctx.socket(zmq.DEALER)
        curve_client(sock, self._keypair, server_key)
        # With a suffix, fresh per socket: only we and the peer's ROUTER (inside CURVE) ever see it,
        # so nobody can claim it first; the node id before the "/" is what the ROUTER checks.
        # Without (a peer that has not said it takes one, e.g. an older p2pd): our bare node id.
        sock.setsockopt(zmq.ROUTING_ID, link_routing_id(self._node_id) if suffix else self._node_id.encode())
        sock.setsockopt(zmq.SNDHWM, LINK_SNDHWM)
        sock.setsockopt(zmq.RCVHWM, 16)  # peers never send on this link; don't buffer junk
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2_000)
        sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        # Every link's first handshake is watched (refusals.py): one that fails is closed, for the
        # node to retry it on its own backoff; with report_refused, a refusal is reported too.
        self._refusals.watch(sock, (lambda: self._on_refused(key)) if report_refused else None,
                             on_handshake_failed=lambda: self._on_handshake_failed(key, sock))
        if connect_or_close(sock, endpoint, "open link to"):
            self.dealers[key] = sock
        else:
            self._refusals.unwatch(sock)

    def _on_handshake_failed(self, key: str, sock: zmq.Socket) -> None:
        if self.dealers.get(key) is not sock:
            return  # replaced or closed since
        # Closed at once, without linger: a socket lingering to deliver its JOIN would go on
        # reconnecting (and failing) every 100 ms for that second.
        del self.dealers[key]
        sock.close(linger=0)
        self._handshake_failed(key)

    def close(self, key: str) -> None:
        sock = self.dealers.pop(key, None)
        if sock is not None:
            self._refusals.unwatch(sock)
            sock.close(linger=CLOSE_LINGER_MS)

    def rekey(self, old: str, new: str) -> None:
        """The link filed under ``old`` is peer ``new``'s; if ``new`` has one already, this one goes."""
        sock = self.dealers.pop(old, None)
        if sock is not None:
            if new in self.dealers:
                self._refusals.unwatch(sock)
                sock.close(linger=CLOSE_LINGER_MS)
            else:
                self.dealers[new] = sock

    # ------------------------------------------------------------------ SUBs
    def subscribe(self, key: str, endpoint: str, server_key: str | None) -> None:
        """One SUB per peer: whatever arrives on it came through that peer's PUB."""
        current = self._subs.get(key)
        if current is not None and current[1] == endpoint:
            return
        self.unsubscribe(key)
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_msg)
        sock.setsockopt(zmq.LINGER, 0)
        # As a link's DEALER: a dead peer's PUB is retried at most every 2 s, not every 100 ms
        # (40 peers killed at once among 200 were 3,000 refused connects a second until found dead).
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2_000)
        curve_client(sock, self._keypair, server_key)
        # Untargeted envelopes (they start with "{") and what is published for us alone (a
        # topic frame "@<our id>", stripped by intake.sub_frames_ok); not what is for others.
        sock.setsockopt(zmq.SUBSCRIBE, TOPIC_ALL)
        sock.setsockopt(zmq.SUBSCRIBE, topic_for(self._node_id))
        # A second, never-matching subscription whose topic names us: the
        # peer's XPUB sees it and so knows our SUB is attached.
        sock.setsockopt(zmq.SUBSCRIBE, SUB_TOPIC_PREFIX + self._node_id.encode())
        if not connect_or_close(sock, endpoint, "subscribe to"):
            return
        self._subs[key] = (sock, endpoint)
        deliver = self._on_sub_frames

        def drain_sub(sock, source=key):
            for frames in messages(sock):
                deliver([f.bytes for f in frames], endpoint, source)

        self._polls.register(sock, drain_sub, drains=True)

    def unsubscribe(self, key: str) -> None:
        current = self._subs.pop(key, None)
        if current is not None:
            self._polls.unregister(current[0])
            current[0].close(linger=0)

    def close_all(self) -> None:
        """At the stop: SUBs at once, DEALERs with their linger (a LEAVE may still be on its way)."""
        for sock, _ in self._subs.values():
            sock.close(linger=0)
        self._subs.clear()
        for sock in self.dealers.values():
            sock.close(linger=CLOSE_LINGER_MS)
        self.dealers.clear()


def connect_or_close(sock: zmq.Socket, endpoint: str, what: str) -> bool:
    try:
        sock.connect(endpoint)
        return True
    except zmq.ZMQError as e:
        log.warning("cannot %s %s: %s", what, endpoint, e.strerror)
        sock.close(linger=0)
        return False

