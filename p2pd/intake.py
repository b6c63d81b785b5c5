"""The checks every inbound peer frame passes before the node acts on it.

How this works
--------------
Frames come from two kinds of socket: the ROUTER (a peer's DEALER: one
envelope, or a batch of up to ``MAX_BATCH`` from a peer that announced
``batch``) and a SUB per peer (its PUB: BROADCASTs only).  Each envelope is
decoded and validated by the codec, then checked against where it came from:
under CURVE, the connection's routing id must belong to the node id that ZAP
derived from its key (``User-Id``), checked once per ZeroMQ message before any
decoding (else ``spoofed_routing_id``, logged with the key); then each
envelope's ``sender_id`` must own the routing id (``bad_routing_id``) and be
that ``User-Id`` (``spoofed``).  A routing id belongs to node X if it is ``X``
or ``X/<anything>`` (p2pd gives every DEALER ``X/<random>``); a BROADCAST must come
through the SUB of the peer it names.  Then the peer's token bucket
(``max_msgs_per_s``, one second's burst) is charged.  A frame past the budget
is dropped as ``rate_limited``, except that a peer keeping to its window is
paced rather than cut off (`_on_credit`): its next direct message in order is
taken on credit, and our ACK covers it only once the bucket has refilled
(`debt`, read by `messaging.flush`).  Whatever is dropped is counted and logged at
most once a second per kind (`Node.drop`); what passes goes to
`Node._dispatch`.

A mixin of `Node`: it uses the node's table, trust, settings and counters.
Pure: no sockets; time is passed in.
"""

from __future__ import annotations

import math

from . import protocol as P

SUB_TOPIC_PREFIX = b"\x00sub:"  # never matches an envelope, which starts with "{"
HEARTBEAT_CREDIT = 16  # PINGs/PONGs a peer may overdraw its rate by, beyond a window (see _on_credit)


def owns_routing_id(node_id: str, rid: bytes) -> bool:
    """Is ``rid`` a routing id of ``node_id``: the id itself, or the id followed by "/" and anything?"""
    own = node_id.encode()
    n = len(own)
    return rid[:n] == own and (len(rid) == n or rid[n] == 0x2F) and n > 0


class Intake:
    """Mixed into `Node`: the inbound half of its peer protocol, up to `Node._dispatch`."""

    def on_router_frames(self, now: float, frames: list[bytes], peer_host, user_id: str | None = None) -> list:
        """A message on our ROUTER: [routing id, envelope, ...] from a peer's DEALER.

        One envelope, or a batch of up to MAX_BATCH from a peer that we told
        (JOIN ``batch``) we take them: each is checked and handled on its own.

        ``user_id`` is the node id that ZAP derived from the sender's CURVE
        key; in secure mode a frame claiming any other sender_id is dropped.
        ``peer_host`` is the address the frame came from, or a function that
        returns it: the transport's lookup costs a call into libzmq, and only
        a JOIN or a log line needs it.
        """
        source = (lambda: peer_host() or "?") if callable(peer_host) else (peer_host or "?")
        if self.trust.secure and not owns_routing_id(user_id or "", frames[0]):
            self._spoofed_routing_id(now, frames[0], user_id, source)
            return []
        if len(frames) == 2:
            return self._on_envelope(now, frames[0], frames[1], peer_host, user_id, source)
        if not 2 < len(frames) <= P.MAX_BATCH + 1:
            self.drop(now, "bad_frames", f"expected 2 to {P.MAX_BATCH + 1} frames (routing id, envelopes), got {len(frames)}", source)
            return []
        acts: list = []
        for raw in frames[1:]:  # a batch: each envelope stands alone, in order
            acts += self._on_envelope(now, frames[0], raw, peer_host, user_id, source)
        return acts

    def _on_envelope(self, now: float, rid: bytes, raw: bytes, peer_host, user_id: str | None, source) -> list:
        try:
            msg = P.decode(raw, self.settings.max_frame_bytes)
        except P.ProtocolError as e:
            self.drop(now, e.kind, e.reason, source)
            return []
        if not owns_routing_id(msg.sender_id, rid):
            self.drop(now, "bad_routing_id", f"routing id {rid[:24]!r} does not match sender_id {msg.sender_id[:24]}", source)
            return []
        if self.trust.secure and user_id != msg.sender_id:
            self.drop(now, "spoofed", f"frame claims sender {msg.sender_id[:12]} but its key belongs to {str(user_id)[:12]}", source)
            return []
        if not self._within_rate(now, msg.sender_id) and not self._on_credit(msg):
            self.drop(now, "rate_limited", f"{msg.sender_id[:12]} sends faster than max_msgs_per_s={self.settings.max_msgs_per_s:g}", source)
            return []
        self.stats["frames_in"] += 1
        return self._dispatch(now, msg, peer_host, source)

    def _spoofed_routing_id(self, now: float, rid: bytes, user_id: str | None, source) -> None:
        """A connection whose routing id names another node than its key: someone trying to pass for
        that node (with ROUTER_HANDOVER it would have taken over its link)."""
        key = self.trust.key_of(user_id) if user_id else None
        self.drop(now, "spoofed_routing_id",
                  f"connection with routing id {rid[:80]!r} belongs to key {key or '?'} (node {str(user_id)[:12]}), "
                  f"not to the node it names", source)

    def _within_rate(self, now: float, peer_id: str) -> bool:
        """Token bucket per peer: max_msgs_per_s sustained, one second's worth of burst."""
        peer = self.table.get(peer_id)
        if peer is None:
            return True
        rate = self.settings.max_msgs_per_s
        tokens = rate if peer.tokens_at is None else min(rate, peer.tokens + (now - peer.tokens_at) * rate)
        peer.tokens_at = now
        if tokens < 1.0:
            peer.tokens = tokens
            return False
        peer.tokens = tokens - 1.0
        return True

    def _on_credit(self, msg: P.Message) -> bool:
        """May a frame beyond the peer's rate be taken on credit rather than dropped?

        The next direct message to us in order, at most a window past our last ACK: yes, and
        our ACK to the peer covers it only once the bucket has refilled what was borrowed
        (`debt`, read by messaging.flush), so a sender that keeps to its window slides at the
        limit instead of losing messages and sending them again.  While some of its messages
        wait for that ACK, its heartbeats too: else, with its PINGs dropped, it might take us
        for lost.  Credit stops at a window and ``HEARTBEAT_CREDIT`` in debt, whatever asks
        for it; anything else past the budget is dropped.  A debt is repaid before anything
        new is taken, so the sustained rate stays the limit."""
        peer = self.table.get(msg.sender_id)
        delivery = self.msgs.delivery
        if peer.tokens <= -(delivery.window + HEARTBEAT_CREDIT):
            return False
        if msg.type == P.MESSAGE:
            ok = msg.target_id == self.id and delivery.may_pace(msg.sender_id, msg.data)
        else:
            ok = msg.type in (P.PING, P.PONG) and delivery.unacknowledged(msg.sender_id)
        if ok:
            peer.tokens -= 1.0
        return ok

    def debt(self, now: float, peer_id: str) -> int:
        """How many frames the peer has had on credit and not yet repaid (0: none)."""
        peer = self.table.get(peer_id)
        if peer is None or peer.tokens_at is None or peer.tokens >= 0:
            return 0
        rate = self.settings.max_msgs_per_s
        peer.tokens = min(rate, peer.tokens + (now - peer.tokens_at) * rate)
        peer.tokens_at = now
        return math.ceil(-peer.tokens) if peer.tokens < 0 else 0

    def on_sub_frames(self, now: float, frames: list[bytes], source: str = "sub", source_peer: str | None = None) -> list:
        """A message on one of our SUB sockets: BROADCASTs (one, or a batch) from the PUB of ``source_peer``."""
        if not 0 < len(frames) <= P.MAX_BATCH:
            self.drop(now, "bad_frames", f"expected 1 to {P.MAX_BATCH} frames on SUB, got {len(frames)}", source)
            return []
        if len(frames) == 1:
            return self._on_sub_envelope(now, frames[0], source, source_peer)
        acts: list = []
        for raw in frames:
            acts += self._on_sub_envelope(now, raw, source, source_peer)
        return acts

    def _on_sub_envelope(self, now: float, raw: bytes, source: str, source_peer: str | None) -> list:
        try:
            msg = P.decode(raw, self.settings.max_frame_bytes)
        except P.ProtocolError as e:
            self.drop(now, e.kind, e.reason, source)
            return []
        if msg.type != P.BROADCAST:
            self.drop(now, "bad_type", f"{msg.type} is not allowed on the PUB socket", source)
            return []
        if source_peer is not None and msg.sender_id != source_peer:
            self.drop(now, "spoofed", f"broadcast claims sender {msg.sender_id[:12]} on the PUB of {source_peer[:12]}", source)
            return []
        if not self._within_rate(now, msg.sender_id):
            self.drop(now, "rate_limited", f"{msg.sender_id[:12]} broadcasts faster than max_msgs_per_s", source)
            return []
        self.stats["frames_in"] += 1
        return self._dispatch(now, msg, None, source)

    def on_subscription(self, now: float, frame: bytes) -> list:
        """XPUB told us a subscriber (un)subscribed; our topic names its node id."""
        if len(frame) > len(SUB_TOPIC_PREFIX) + 1 and frame[1:].startswith(SUB_TOPIC_PREFIX):
            peer_id = frame[1 + len(SUB_TOPIC_PREFIX):].decode("utf-8", "replace")
            if P.valid_node_id(peer_id):
                self.table.set_subscribed(peer_id, frame[0] == 1)
        return []
