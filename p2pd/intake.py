"""The checks every inbound peer frame passes before the node acts on it.

How this works
--------------
Frames come from two kinds of socket: the ROUTER (a peer's DEALER: one
envelope, or a batch of up to ``MAX_BATCH`` from a peer that announced
``batch``) and a SUB per peer (its PUB: BROADCASTs, and TREE pushes addressed to us by a
leading topic frame, which `sub_frames_ok` strips).  Each envelope is
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
most once a second per kind (drops.py).

A plain class that returns a verdict: `frames_ok` for a whole ZeroMQ message, then
`envelope` / `sub_envelope` per envelope: the decoded message if it passed, else None.
The node dispatches each message that passed before the next envelope is checked: taking a
message on credit depends on what the messages before it delivered.  It owns the rate
buckets (one per peer in the table, dropped when the peer is).
Pure: no sockets; time is passed in.
"""

from __future__ import annotations

import math
from collections import Counter

from . import protocol as P
from .delivery import Delivery
from .drops import Drops
from .membership import Membership
from .settings import Settings
from .trust import Trust

SUB_TOPIC_PREFIX = b"\x00sub:"  # never matches an envelope, which starts with "{"
TOPIC_ALL = b"{"  # what every envelope starts with: an untargeted publish (each SUB subscribes to it)
TOPIC_MARK = b"@"  # a targeted publish's first frame: "@" + the node id it is for (actions.Publish ``to``)


def topic_for(peer_id: str) -> bytes:
    """The topic frame of a publish meant only for ``peer_id`` (its SUBs subscribe to it)."""
    return TOPIC_MARK + peer_id.encode()
HEARTBEAT_CREDIT = 16  # PINGs/PONGs a peer may overdraw its rate by, beyond a window (see _on_credit)


def owns_routing_id(node_id: str, rid: bytes) -> bool:
    """Is ``rid`` a routing id of ``node_id``: the id itself, or the id followed by "/" and anything?"""
    own = node_id.encode()
    n = len(own)
    return rid[:n] == own and (len(rid) == n or rid[n] == 0x2F) and n > 0


class Bucket:
    """A peer's token bucket (below 0: in debt, see `Intake._on_credit`)."""
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float):
        self.tokens = tokens
        self.at = at


class Intake:
    def __init__(self, node_id: str, settings: Settings, table: Membership, trust: Trust, delivery: Delivery, drops: Drops,
                 stats: Counter):
        self.id = node_id
        self.settings = settings
        self.table = table
        self.trust = trust
        self.secure = trust.secure  # fixed for the node's life: read on every frame
        self.delivery = delivery
        self.drop = drops
        self.stats = stats
        self._buckets: dict[str, Bucket] = {}

    def frames_ok(self, now: float, frames: list[bytes], user_id: str | None, source) -> bool:
        """May the envelopes of this ROUTER message ([routing id, envelope, ...]) be looked at?

        One envelope, or a batch of up to MAX_BATCH from a peer that we told (JOIN ``batch``)
        we take them: each is then checked (`envelope`) and handled on its own.  ``user_id``
        is the node id that ZAP derived from the sender's CURVE key: under CURVE the routing
        id must be one of that node's (checked before any decoding)."""
        if self.secure and not owns_routing_id(user_id or "", frames[0]):
            self._spoofed_routing_id(now, frames[0], user_id, source)
            return False
        if not 1 < len(frames) <= P.MAX_BATCH + 1:
            self.drop(now, "bad_frames", f"expected 2 to {P.MAX_BATCH + 1} frames (routing id, envelopes), got {len(frames)}", source)
            return False
        return True

    def envelope(self, now: float, rid: bytes, raw: bytes, user_id: str | None, source) -> P.Message | None:
        """One envelope from the ROUTER: the message, if it may be handled."""
        try:
            msg = P.decode(raw, self.settings.max_frame_bytes)
        except P.ProtocolError as e:
            self.drop(now, e.kind, e.reason, source)
            return None
        if not owns_routing_id(msg.sender_id, rid):
            self.drop(now, "bad_routing_id", f"routing id {rid[:24]!r} does not match sender_id {msg.sender_id[:24]}", source)
            return None
        if self.secure and user_id != msg.sender_id:
            self.drop(now, "spoofed", f"frame claims sender {msg.sender_id[:12]} but its key belongs to {str(user_id)[:12]}", source)
            return None
        if not self._within_rate(now, msg.sender_id) and not self._on_credit(msg):
            self.drop(now, "rate_limited", f"{msg.sender_id[:12]} sends faster than max_msgs_per_s={self.settings.max_msgs_per_s:g}", source)
            return None
        self.stats["frames_in"] += 1
        return msg

    def _spoofed_routing_id(self, now: float, rid: bytes, user_id: str | None, source) -> None:
        """A connection whose routing id names another node than its key: someone trying to pass for
        that node (with ROUTER_HANDOVER it would have taken over its link)."""
        key = self.trust.key_of(user_id) if user_id else None
        self.drop(now, "spoofed_routing_id",
                  f"connection with routing id {rid[:80]!r} belongs to key {key or '?'} (node {str(user_id)[:12]}), "
                  f"not to the node it names", source)

    def bucket(self, peer_id: str) -> Bucket | None:
        """The peer's token bucket, if it has one (tests and `debt` read it)."""
        return self._buckets.get(peer_id)

    def _within_rate(self, now: float, peer_id: str) -> bool:
        """Token bucket per peer: max_msgs_per_s sustained, one second's worth of burst."""
        rate = self.settings.max_msgs_per_s
        b = self._buckets.get(peer_id)
        if b is None:
            if self.table.get(peer_id) is None:
                return True  # not a peer (yet): its JOIN is judged on its own
            if len(self._buckets) >= 2 * len(self.table) + 64:  # peers gone from the table: their buckets too
                self._buckets = {pid: v for pid, v in self._buckets.items() if pid in self.table}
            b = self._buckets[peer_id] = Bucket(rate, now)
        tokens = min(rate, b.tokens + (now - b.at) * rate)
        b.at = now
        if tokens < 1.0:
            b.tokens = tokens
            return False
        b.tokens = tokens - 1.0
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
        b = self._buckets[msg.sender_id]
        delivery = self.delivery
        if b.tokens <= -(delivery.window + HEARTBEAT_CREDIT):
            return False
        if msg.type == P.MESSAGE:
            ok = msg.target_id == self.id and delivery.may_pace(msg.sender_id, msg.data)
        else:
            ok = msg.type in (P.PING, P.PONG) and delivery.unacknowledged(msg.sender_id)
        if ok:
            b.tokens -= 1.0
        return ok

    def debt(self, now: float, peer_id: str) -> int:
        """How many frames the peer has had on credit and not yet repaid (0: none)."""
        b = self._buckets.get(peer_id)
        if b is None or b.tokens >= 0 or peer_id not in self.table:
            return 0
        rate = self.settings.max_msgs_per_s
        b.tokens = min(rate, b.tokens + (now - b.at) * rate)
        b.at = now
        return math.ceil(-b.tokens) if b.tokens < 0 else 0

    def sub_frames_ok(self, now: float, frames: list[bytes], source: str) -> bool:
        """May the envelopes of this SUB message (BROADCASTs: one, or a batch) be looked at?

        A targeted publish (actions.Publish ``to``) starts with a topic frame ``b"@" + our id``:
        it is checked to name us exactly (our SUB subscribes to it, but a subscription matches
        a prefix) and removed from ``frames`` in place, so that what is left is envelopes."""
        if frames and frames[0][:1] == TOPIC_MARK:
            if frames[0] != topic_for(self.id):
                self.drop(now, "bad_topic", f"topic {frames[0][:40]!r} is not ours", source)
                return False
            del frames[0]
        if not 0 < len(frames) <= P.MAX_BATCH:
            self.drop(now, "bad_frames", f"expected 1 to {P.MAX_BATCH} frames on SUB, got {len(frames)}", source)
            return False
        return True

    def sub_envelope(self, now: float, raw: bytes, source: str, source_peer: str | None) -> P.Message | None:
        """One envelope from the SUB of ``source_peer``: the BROADCAST or TREE (a Plumtree push,
        tree.py), if it may be handled; either must be the PUB owner's own."""
        try:
            msg = P.decode(raw, self.settings.max_frame_bytes)
        except P.ProtocolError as e:
            self.drop(now, e.kind, e.reason, source)
            return None
        if msg.type != P.BROADCAST and msg.type != P.TREE:
            self.drop(now, "bad_type", f"{msg.type} is not allowed on the PUB socket", source)
            return None
        if source_peer is not None and msg.sender_id != source_peer:
            self.drop(now, "spoofed", f"{msg.type} claims sender {msg.sender_id[:12]} on the PUB of {source_peer[:12]}", source)
            return None
        if not self._within_rate(now, msg.sender_id):
            self.drop(now, "rate_limited", f"{msg.sender_id[:12]} broadcasts faster than max_msgs_per_s", source)
            return None
        self.stats["frames_in"] += 1
        return msg

    def subscription(self, frame: bytes) -> None:
        """XPUB told us a subscriber (un)subscribed; our topic names its node id."""
        if len(frame) > len(SUB_TOPIC_PREFIX) + 1 and frame[1:].startswith(SUB_TOPIC_PREFIX):
            peer_id = frame[1 + len(SUB_TOPIC_PREFIX):].decode("utf-8", "replace")
            if P.valid_node_id(peer_id):
                self.table.set_subscribed(peer_id, frame[0] == 1)
