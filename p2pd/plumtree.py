"""Plumtree: epidemic broadcast trees over a bounded set of neighbours (issue 15).

How this works
--------------
One `Plumtree` per node, over the neighbours the caller gives it (`neighbor_up`,
`neighbor_down`: the active view of the overlay).  Each neighbour is either **eager**
(a new message is pushed to it whole, at once) or **lazy** (it only gets an IHAVE naming
the message, batched per tick by `flush_ihave`).  Every neighbour starts eager, so the
first broadcast floods every link; each node that then receives a *second* copy moves
that link to lazy at its end and sends PRUNE so the sender does the same at its end.  What
stays eager is a spanning tree, found by the broadcasts themselves (the fastest paths win),
and a broadcast then costs about N-1 payload transmissions plus small IHAVEs on the other
links (Leitao, Pereira, Rodrigues, SRDS 2007).

The IHAVEs are the repair path.  A node that hears of a message by IHAVE and has not got
it within ``ihave_timeout_s`` (the tree is broken above it: a node died, a link went away)
sends GRAFT to the first announcer: that link becomes eager at both ends (the tree is
mended) and the announcer sends the message.  If that does not arrive either within
``graft_timeout_s`` the next announcer is grafted, and so on until none is left.  A graft
that turns out unneeded costs one duplicate, which prunes a link again.

Each hop adds one to ``round`` (the originator sends round 0), so a copy's round is its
distance in hops along the path it came; nothing here depends on it yet, it is carried so
that the caller can log tree depth and a later optimisation (the paper's: graft a lazy
path that is much shorter than the eager one) needs no protocol change.

Streams: a repair timer that waits for the queue, not the clock
--------------------------------------------------------------
A message may name its **stream** and its **position** in it (p2pd: the origin and its
broadcast number ``bseq``; both optional, and carried in the IHAVE entries too).  Copies of
one stream come down the same tree path in order, so when the tree is busy (a flood on a
loaded machine) an IHAVE from a neighbour that happened to be quicker overtakes the copy
still queued on our eager link.  A timer that fires on the clock alone then grafts a link
that is not broken, the copy arrives twice, a link is pruned, and a busy tree never settles.
So a due timer first looks at its stream: if a later position of it has come down the tree
already, the tree works and the message is a hole (the delivery layer's gap fetch recovers
it; no graft); if the stream delivered anything since the timer started, the copy is
queued behind it and the timer starts again from then.  Only a stream that stalls for
``ihave_timeout_s`` grafts.  Messages without a stream keep the plain timer.

A star: an origin linked to everyone pushes to everyone
-------------------------------------------------------
In a network no bigger than the active view every node is linked to every other, and the
best tree for each origin is the star around it.  A shared tree cannot be that for every
origin at once, and under load it does not even stay one for a single origin: its direct
copies queue behind relayed ones on a busy receiver, the relays win, the receiver prunes the
origin, grafts it back, and so on.  So, for a message with a stream (its origin),
``direct_of(origin)`` (the caller's view of the links) may give the origin's neighbours when
the origin is linked to every node; then the origin pushes it whole to every neighbour,
eager or lazy, relays neither push it nor announce it to any of them, nothing goes back to
the origin, and a late copy from the origin itself prunes nothing (its pushes are not tree
edges).  A copy the origin's queue dropped is the delivery layer's to recover: the next
broadcast shows the gap, and the origin's heartbeats announce its latest number, to each
neighbour, within a heartbeat interval.  The tree then carries only what the
star does not cover.  In a bigger network ``direct_of`` gives None and all is as above: an
origin's neighbours meeting along the tree would cost duplicates and prune tree edges that
other origins need.

Bounded memory
--------------
- **Seen ids**: the last ``seen_window`` message ids received or originated, in arrival
  order.  An id older than that which comes again is taken for new: delivered again (a
  `Deliver` record) and forwarded once more by each node that has forgotten it.  Plumtree
  is not where duplicates are finally caught: ids are meant to be p2pd's per-origin
  broadcast numbers ``(origin, seq)`` and its delivery layer (delivery.py: per-origin
  numbering, stored high-water marks, gap fetch) drops a broadcast it already has,
  whatever this window says.  The window only has to be long enough that in normal running
  (an id travels the tree in well under a second) a copy is recognised here and pruned.
- **Payload cache**: the last ``cache_size`` payloads, to answer GRAFTs.  A GRAFT for an
  older one still mends the tree, but nothing is resent; the grafter's timer moves on to the
  next announcer, and past that the delivery layer's gap fetch recovers the message.
- **Missing ids** (announced, not received): at most ``max_missing``; IHAVEs beyond that
  are ignored (gap fetch again), and an entry goes when its message arrives, its last
  announcer is tried or goes down.
- **Queued IHAVEs**: per lazy peer until the next `flush_ihave`; a peer that goes down
  takes its queue with it.

Inputs take ``now`` and return small frozen dataclasses (`Gossip`, `IHave`, `Graft`,
`Prune` to send, `Deliver` to hand up); the caller turns them into envelopes.  Iteration
is over insertion-ordered dicts, so for the same inputs the outputs come in the same order.
Pure: no sockets, no clock, no randomness.

The caller's part (tree.py does it)
-----------------------------------
- Feed ``neighbor_up``/``neighbor_down`` from the active view (links that come and go).
- Use ``(origin, seq)`` from the delivery layer as ``msg_id``; hand each `Deliver` to it
  (it stores, orders and drops true duplicates); `broadcast` only for our own messages.
- Call ``flush_ihave`` on a tick (tens of ms: the batching period, and part of the repair
  delay), and ``timer`` by each deadline ``on_ihave``/``next_deadline`` reports.
- ``ihave_timeout_s`` must exceed the usual lag between an IHAVE and the tree's copy (a few
  link latencies plus the flush tick), or repairs fire needlessly: each costs one duplicate
  and a prune, never a loss.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from collections.abc import Hashable
from typing import Union


@dataclass(frozen=True)
class Gossip:
    """Send the whole message to ``peer``.  ``round`` is already the receiver's hop count."""
    peer: str
    msg_id: Hashable
    payload: bytes
    round: int


@dataclass(frozen=True)
class IHave:
    """Tell lazy ``peer`` which messages we have: ``entries`` is ((msg_id, round), ...)."""
    peer: str
    entries: tuple


@dataclass(frozen=True)
class Graft:
    """Ask ``peer`` to make our link eager again and to send ``msg_id`` (None: only the link)."""
    peer: str
    msg_id: Hashable
    round: int = 0


@dataclass(frozen=True)
class Prune:
    """Tell ``peer`` to make our link lazy: it sent us a copy we already had."""
    peer: str


@dataclass(frozen=True)
class Deliver:
    """A message seen for the first time (within the window): hand it up to the delivery layer.
    ``sender`` is the neighbour it came from."""
    msg_id: Hashable
    payload: bytes
    round: int
    sender: str


Effect = Union[Gossip, IHave, Graft, Prune, Deliver]


@dataclass
class _Missing:
    """A message announced to us but not received: who announced it, in order, and when we act."""
    deadline: float
    stream: Hashable = None  # its origin, if the announcement said (see the module doc)
    pos: int = 0             # its place in the stream
    since: float = 0.0       # when the timer (re)started
    announcers: list = field(default_factory=list)  # [(peer, round)], first-come first-tried


class Plumtree:
    """One node's broadcast-tree state.  Defaults: a 0.5 s IHAVE timeout (LAN links are
    milliseconds, a tree path of tens of hops a few hundred at worst) then 0.25 s per further
    announcer; windows sized so a busy network (hundreds of broadcasts a second) still
    recognises a copy for many seconds, in a few hundred KiB plus the cached payloads."""

    def __init__(self, *, ihave_timeout_s: float = 0.5, graft_timeout_s: float = 0.25, seen_window: int = 8192,
                 cache_size: int = 1024, max_missing: int = 1024, ihave_batch: int = 64, direct_of=None):
        if min(seen_window, cache_size, max_missing, ihave_batch) < 1 or ihave_timeout_s <= 0 or graft_timeout_s <= 0:
            raise ValueError("plumtree: windows and timeouts must be positive")
        self.ihave_timeout_s = ihave_timeout_s
        self.graft_timeout_s = graft_timeout_s
        self.seen_window = seen_window
        self.cache_size = cache_size
        self.max_missing = max_missing
        self.ihave_batch = ihave_batch
        self.direct_of = direct_of  # stream (origin) -> its neighbours (a container), or None: no shortcut
        # dicts as ordered sets: deterministic fan-out order
        self.eager: dict[str, None] = {}
        self.lazy: dict[str, None] = {}
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._cache: OrderedDict[Hashable, tuple[bytes, int]] = OrderedDict()  # id -> (payload, our round)
        self._missing: dict[Hashable, _Missing] = {}
        self._queued: dict[str, list[tuple]] = {}  # lazy peer -> IHAVE entries not yet sent
        # stream -> (when a copy of it last came, the highest position seen): bounded LRU
        self._progress: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()
        self.max_streams = max(max_missing, 1024)

    # -- neighbours -------------------------------------------------------------------------

    def neighbor_up(self, peer: str) -> None:
        """A new link starts eager: until a duplicate proves it redundant, it may be a tree edge."""
        if peer not in self.lazy:
            self.eager[peer] = None

    def neighbor_down(self, peer: str) -> None:
        """Forget the link, its queued IHAVEs and its announcements (grafting a dead peer helps nobody);
        a missing id left with no announcer is dropped: gap fetch is the fallback."""
        self.eager.pop(peer, None)
        self.lazy.pop(peer, None)
        self._queued.pop(peer, None)
        for msg_id in list(self._missing):
            m = self._missing[msg_id]
            m.announcers = [a for a in m.announcers if a[0] != peer]
            if not m.announcers:
                del self._missing[msg_id]

    def _is_neighbor(self, peer: str) -> bool:
        return peer in self.eager or peer in self.lazy

    def _make_eager(self, peer: str) -> None:
        self.lazy.pop(peer, None)
        self.eager[peer] = None

    def _make_lazy(self, peer: str) -> None:
        self.eager.pop(peer, None)
        self.lazy[peer] = None

    # -- messages ---------------------------------------------------------------------------

    def broadcast(self, now: float, msg_id: Hashable, payload: bytes, stream: Hashable = None,
                  pos: int = 0) -> list[Effect]:
        """Originate: push to every eager neighbour, queue IHAVEs for the lazy ones.  No `Deliver`:
        the caller has its own message already."""
        self._remember(msg_id, payload, 0)
        if stream is None or self.direct_of is None or self.direct_of(stream) is None:
            return self._push(msg_id, payload, 0, None, stream, pos)
        return [Gossip(p, msg_id, payload, 1) for p in (*self.eager, *self.lazy)]  # every neighbour: see the module doc

    def on_gossip(self, now: float, sender: str, msg_id: Hashable, payload: bytes, round: int,
                  stream: Hashable = None, pos: int = 0) -> list[Effect]:
        """A whole message.  First copy: deliver, make the sender's link eager (it is our tree
        parent now, which also mends the tree after a GRAFT), pass it on.  Later copy: the link
        it came by is redundant, prune it at both ends."""
        if msg_id in self._seen:
            if self._is_neighbor(sender) and not (sender == stream and self.star(stream) is not None):
                self._make_lazy(sender)
                return [Prune(sender)]
            return []
        self._missing.pop(msg_id, None)  # the repair timer is moot
        if self._is_neighbor(sender):
            self._make_eager(sender)
        self._remember(msg_id, payload, round)
        if stream is not None:
            self._advance(now, stream, pos)
        return [Deliver(msg_id, payload, round, sender), *self._push(msg_id, payload, round, sender, stream, pos)]

    def on_ihave(self, now: float, sender: str, msg_id: Hashable, round: int, stream: Hashable = None,
                 pos: int = 0) -> float | None:
        """An announcement.  For a message we lack, note the announcer; the first announcement
        starts the repair timer and its deadline is returned (the caller calls `timer` by then).
        Announcements from non-neighbours are ignored: we could not graft that link."""
        if msg_id in self._seen or not self._is_neighbor(sender):
            return None
        m = self._missing.get(msg_id)
        if m is None:
            if len(self._missing) >= self.max_missing:
                return None
            m = self._missing[msg_id] = _Missing(now + self.ihave_timeout_s, stream, pos, now)
            m.announcers.append((sender, round))
            return m.deadline
        if all(a[0] != sender for a in m.announcers):
            m.announcers.append((sender, round))
        return None

    def on_ihave_batch(self, now: float, sender: str, entries) -> float | None:
        """Convenience for an `IHave` with several entries: the earliest new deadline, if any."""
        deadlines = [d for d in (self.on_ihave(now, sender, *e) for e in entries) if d is not None]
        return min(deadlines) if deadlines else None

    def timer(self, now: float) -> list[Effect]:
        """For each missing message past its deadline: GRAFT the next announcer (its link becomes
        eager: the tree is mended through it) and wait ``graft_timeout_s`` before the one after."""
        out: list[Effect] = []
        for msg_id in list(self._missing):
            m = self._missing[msg_id]
            if m.deadline > now:
                continue
            if m.stream is not None and m.stream in self._progress:
                last, high = self._progress[m.stream]
                if high > m.pos:  # later copies of its stream came down the tree: a hole, not a break
                    del self._missing[msg_id]
                    continue
                if last > m.since:  # the stream still flows: the copy is queued behind it
                    m.since = last
                    m.deadline = last + self.ihave_timeout_s
                    if m.deadline > now:
                        continue
            peer, round = m.announcers.pop(0)
            self._make_eager(peer)
            out.append(Graft(peer, msg_id, round))
            if m.announcers:
                m.deadline = now + self.graft_timeout_s
            else:
                del self._missing[msg_id]
        return out

    def next_deadline(self) -> float | None:
        """When `timer` next has something to do (None: nothing missing)."""
        return min((m.deadline for m in self._missing.values()), default=None)

    def on_graft(self, now: float, sender: str, msg_id: Hashable) -> list[Effect]:
        """A neighbour missed ``msg_id`` through the tree: our link to it is a tree edge again;
        resend the message if we still have it (else its timer moves on, then gap fetch)."""
        if not self._is_neighbor(sender):
            return []
        self._make_eager(sender)
        cached = self._cache.get(msg_id) if msg_id is not None else None
        if cached is None:
            return []
        payload, round = cached
        return [Gossip(sender, msg_id, payload, round + 1)]

    def on_prune(self, sender: str) -> None:
        """The neighbour had our copy already: send it IHAVEs, not payloads, from now on."""
        if self._is_neighbor(sender):
            self._make_lazy(sender)

    def flush_ihave(self, now: float) -> list[Effect]:
        """The IHAVEs queued since the last flush, at most ``ihave_batch`` ids per record (one tick's
        announcements to a peer usually fit one frame)."""
        out: list[Effect] = []
        for peer, entries in self._queued.items():
            for i in range(0, len(entries), self.ihave_batch):
                out.append(IHave(peer, tuple(entries[i:i + self.ihave_batch])))
        self._queued.clear()
        return out

    def has_seen(self, msg_id: Hashable) -> bool:
        """Is ``msg_id`` within the seen window (a copy of it now would be a duplicate)?"""
        return msg_id in self._seen

    @property
    def has_queued_ihave(self) -> bool:
        """Whether `flush_ihave` has anything to send (the caller can skip the tick otherwise)."""
        return bool(self._queued)

    # -- internals --------------------------------------------------------------------------

    def _push(self, msg_id: Hashable, payload: bytes, round: int, exclude: str | None, stream: Hashable,
              pos: int) -> list[Effect]:
        entry = (msg_id, round + 1) if stream is None else (msg_id, round + 1, stream, pos)
        direct = self.star(stream) or ()  # the origin pushed it to these itself
        skip = (exclude, stream)  # nor back to where it came from, nor to its origin
        out: list[Effect] = [Gossip(p, msg_id, payload, round + 1) for p in self.eager if p not in skip and p not in direct]
        for p in self.lazy:
            if p not in skip and p not in direct:
                self._queued.setdefault(p, []).append(entry)
        return out

    def star(self, stream: Hashable):
        """The origin's neighbours if it pushes to all of them itself (see the module doc), else None."""
        return self.direct_of(stream) if self.direct_of is not None and stream is not None else None

    def _advance(self, now: float, stream: Hashable, pos: int) -> None:
        seen = self._progress.pop(stream, None)
        self._progress[stream] = (now, pos if seen is None else max(pos, seen[1]))
        if len(self._progress) > self.max_streams:
            self._progress.popitem(last=False)

    def _remember(self, msg_id: Hashable, payload: bytes, round: int) -> None:
        self._seen[msg_id] = None
        self._seen.move_to_end(msg_id)
        while len(self._seen) > self.seen_window:
            self._seen.popitem(last=False)
        self._cache[msg_id] = (payload, round)
        self._cache.move_to_end(msg_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
