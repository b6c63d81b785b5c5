"""Envelopes from this node, and the count of what goes out.

Every component that speaks to a peer (handshake, gossip, heartbeat, messaging, dialing)
builds its envelopes here and wraps them in `Send` effects here: so they all sign with
the same id and name, stamp the same clock (monotonic time plus the wall-clock offset taken
at start), draw message ids from the one random source the node was given, and every frame
sent is counted once, in `info`'s ``frames_out`` and in the peer's own.
"""

from __future__ import annotations

from collections import Counter

from . import protocol as P
from .actions import Send, SendBatch
from .membership import Membership
from .relay import ROUTABLE


class Outbound:
    def __init__(self, node_id: str, name: str, wall_offset: float, table: Membership, stats: Counter, rng: P.RandomBits,
                 links=None, relay=None):
        self.id = node_id
        self.name = name
        self.wall_offset = wall_offset  # epoch = monotonic + offset, for timestamps
        self._table = table
        self._stats = stats
        self.rng = rng
        # A direct envelope for a node we hold no link to goes through the overlay (relay.py):
        # sealed to it, to the next hop.  ``links``: our link table; ``relay``: a `relay.Relay`.
        self._links = links
        self._relay = relay

    def epoch(self, now: float) -> float:
        """UNIX time at monotonic ``now``."""
        return now + self.wall_offset

    def new_id(self, epoch: float) -> str:
        return P.new_message_id(epoch, self.rng)

    def msg(self, now: float, type_: str, data: dict | None = None, target: str | None = None) -> P.Message:
        return P.make(type_, self.id, self.name, now + self.wall_offset, data, target, rng=self.rng)

    def send(self, key: str, msg: P.Message, report_sent: bool = False, before_commit: bool = False) -> Send:
        """``report_sent``: the performer tells the node when it goes on the wire (`Node.on_sent`);
        ``before_commit``: it describes nothing stored and need not wait for the commit (see `Send`)."""
        self._stats["frames_out"] += 1
        peer = self._table.get(key)
        if peer is not None:
            peer.frames_out += 1
        if self._relay is not None and key not in self._links and msg.type in ROUTABLE:
            routed = self._relay.wrap(key, msg)
            if routed is not None:
                return routed
        return Send(key, msg, report_sent, before_commit)

    def send_many(self, key: str, msgs: list) -> list:
        """Envelopes for one link: batched (MAX_BATCH a message) if the peer takes batches."""
        if self._relay is not None and key not in self._links and len(msgs) > 1 and all(m.type in ROUTABLE for m in msgs):
            self._stats["frames_out"] += len(msgs)
            return self._relay.wrap_many(key, msgs) or [Send(key, m) for m in msgs]
        peer = self._table.get(key)
        if peer is None or not peer.batch or len(msgs) < 2:
            return [self.send(key, m) for m in msgs]
        self._stats["frames_out"] += len(msgs)
        peer.frames_out += len(msgs)
        return [SendBatch(key, msgs[k:k + P.MAX_BATCH]) for k in range(0, len(msgs), P.MAX_BATCH)]
