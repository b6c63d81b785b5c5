"""The roster: every node in the network, its state, and the gossip that keeps it (issue 15).

Wired into the node by overlay.py (see there for when facts are sent and what is done
with news).

How this works
--------------
With a bounded-degree overlay a node links to a few peers only, yet ``p2pctl peers`` must
still list every node with its state.  So each node keeps a **roster**: per node id, the
latest signed record that node published (`records.NodeRecord`: name, keys, addresses,
incarnation, alive/left) and the latest *fact* about it, which is either that record or a
signed `records.Accusation` by a third party (suspect / dead at the record's incarnation).
The state shown is the fact's status, except that a suspicion times out to ``dead`` locally.

**Precedence** is SWIM's, and lives in one place, `records.newer`: the higher incarnation
wins; at equal incarnation alive < suspect < dead < left; an accusation can never name an
incarnation above the node's own record.  `offer` checks precedence *before* it verifies the
signature (most gossip is stale repeats, and a signature check costs ~100 us); only a fact
that would change something is verified and applied.  A fact that changed something is
*news*: it goes into the dissemination buffer.

**Refutation.**  A fact about ourselves that beats our own record (a suspicion, a death, an
old record of a previous run at a higher incarnation) is never applied: `offer` returns an
unsigned copy of our record at a higher incarnation (``Heard.refute``).  The caller signs it
(`records.sign`) and hands it back with `set_own`, which spreads it; being newer than the
accusation everywhere, it undoes it everywhere.  Only the node itself can raise its
incarnation, so only a live node can refute.

**Suspicion** (SWIM with Lifeguard's timer).  A suspect accusation starts a timer; if no
refutation comes before it runs out the node is taken for dead locally and `tick` returns
it, so that the caller may sign a dead accusation and offer it (the first one to spread wins,
later ones are stale).  The timeout scales with log10 of the roster's size, as memberlist's
does (a rumour takes O(log N) rounds to reach everyone, so the refutation needs as long to
come back), and follows Lifeguard: it starts at ``suspect_max_mult`` times that minimum and
shrinks toward the minimum as independent accusers (distinct signers at the same
incarnation) confirm it, so that a lone, possibly slow or partitioned, accuser takes longest.

**Dissemination** (SWIM's piggyback buffer).  Each news item is attached by `piggyback` to
outgoing frames, least-sent first and newest first among equals, until it was sent
``retransmit_mult * ceil(log2(N + 1))`` times, then dropped: enough for an epidemic to reach
all N with high probability, and per-node traffic per rumour grows only with log N.  One
entry per node id: newer news about a node replaces the older item (which is then moot).

**Bounds**, so that no peer can make us hold much: at most ``max_members`` nodes (an unknown
node is refused when full, after forgetting the longest-dead if any); dead and left entries
forgotten ``forget_after_s`` after they got so (keep it longer than a rumour lives, or a
stale record may bring a forgotten node back as alive until it is suspected again); from
one frame (`offer_many`) at most ``max_items_per_frame`` items are looked at and at most
``max_new_per_frame`` unknown nodes admitted: what one introducer can add per frame is
bounded.  Accusations by unknown accusers are refused (``accusers_must_be_known``).

Pure, sans-I/O: time comes in as ``now``, signature checks through the ``verify`` function
given (`records.verify` by default; tests stub it), no randomness needed (which peers a frame
goes to is the caller's choice).

The node's use (overlay.py): our record signed with our keys and re-signed when our links or
broadcast numbers change; facts received in FACTS frames (and attached to VIEW messages)
given to `offer_many`, each refusal counted as a drop; a refutation signed and given to
`set_own`, as is ``left`` on shutdown; a heartbeat's loss accused as suspect, `tick`'s dead
accused as dead; `members()` behind ``p2pctl peers``; everything we know pushed to a new
neighbour (SWIM's push-pull), news piggybacked after.  Not persisted: a restarted node
learns the roster again from its first neighbour.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Optional

from .records import ALIVE, DEAD, LEFT, SUSPECT, Accusation, BadRecord, Fact, NodeRecord, newer
from .records import verify as _verify_signed

ROUTINE_PENALTY = 2  # routine news waits as if sent this many times more (`_queue`)

GONE = frozenset({DEAD, LEFT})
_NONE: frozenset = frozenset()


@dataclass(frozen=True)
class Heard:
    """What `offer` made of one item.  True exactly when it was news (and will be spread);
    ``reason`` names why not otherwise (a drop counter's name); ``refute`` is our own record at
    a higher incarnation for the caller to sign and give back to `set_own`."""

    news: bool
    reason: str
    refute: Optional[NodeRecord] = None

    def __bool__(self) -> bool:
        return self.news


@dataclass(frozen=True)
class Member:
    """One line of ``p2pctl peers``."""

    node_id: str
    name: str
    state: str
    incarnation: int
    addresses: tuple[str, ...]


class _Entry:
    __slots__ = ("record", "fact", "state", "since", "down_since", "deadline", "accusers")

    def __init__(self, record: NodeRecord, now: float):
        self.record = record      # the node's own latest record (name, addresses)
        self.fact = record        # what decides its state: the record or an accusation
        self.state = record.status
        self.since = now          # when the state last changed (forgetting dead/left)
        self.down_since = None if record.status == ALIVE else now  # when it stopped being alive
        self.deadline = None      # suspicion: when it turns dead
        self.accusers = _NONE     # distinct suspecters at the current incarnation (Lifeguard)


class Roster:
    def __init__(self, own: NodeRecord, *, verify: Callable[[Fact], None] = _verify_signed,
                 suspect_timeout_s: float = 4.0, suspect_max_mult: float = 6.0, suspect_confirmations: int = 3,
                 retransmit_mult: int = 3, max_members: int = 10_000, forget_after_s: float = 3600.0,
                 max_items_per_frame: int = 64, max_new_per_frame: int = 16, accusers_must_be_known: bool = True):
        if own.status != ALIVE:
            raise ValueError("a roster starts from our own alive record")
        self.self_id = own.node_id
        self._own = own
        self._pending_inc: Optional[int] = None    # a refutation asked for and not signed yet
        self._verify = verify
        self.suspect_timeout_s = suspect_timeout_s
        self.suspect_max_mult = suspect_max_mult
        self.suspect_confirmations = suspect_confirmations
        self.retransmit_mult = retransmit_mult
        self.max_members = max_members
        self.forget_after_s = forget_after_s
        self.max_items_per_frame = max_items_per_frame
        self.max_new_per_frame = max_new_per_frame
        self.accusers_must_be_known = accusers_must_be_known
        self._members: dict[str, _Entry] = {}
        self.changes = 0  # bumped when a node comes, goes, changes state or name: lets once-a-second checks skip
        self._suspects: set[str] = set()   # ids in state suspect: what `tick` looks at
        self._gone: set[str] = set()       # ids dead or left: what `tick` forgets, N leaves out
        self._forget_from = math.inf       # no gone node is due to be forgotten before then (`tick`)
        # node id -> [fact, times sent, order]; dict order is insertion order
        self._buffer: dict[str, list] = {}
        self._order = 0
        self._queue(own)

    # --- views ----------------------------------------------------------------------------

    @property
    def own(self) -> NodeRecord:
        return self._own

    def size(self) -> int:
        """N for the log factors: the nodes we believe are in the network, us included."""
        return 1 + len(self._members) - len(self._gone)

    def states(self) -> list[tuple[str, str, int]]:
        """(id, state, incarnation) of every other node we know, in no order: `members` without
        the names, the addresses and the sort, for checks that run every second."""
        return [(i, e.state, e.fact.incarnation) for i, e in self._members.items()]

    def members(self) -> list[Member]:
        """Every other node we know, by name then id (``p2pctl peers``)."""
        out = [Member(i, e.record.name, e.state, e.fact.incarnation, e.record.addresses) for i, e in self._members.items()]
        return sorted(out, key=lambda m: (m.name, m.node_id))

    def state_of(self, node_id: str) -> Optional[str]:
        if node_id == self.self_id:
            return self._own.status
        e = self._members.get(node_id)
        return e.state if e else None

    def since_of(self, node_id: str) -> Optional[float]:
        """When the member's state last changed (our clock), None for an unknown one."""
        e = self._members.get(node_id)
        return e.since if e else None

    def down_since(self, node_id: str) -> Optional[float]:
        """When the member stopped being alive (suspected, dead or left: our clock); None while
        it is alive or unknown.  A suspicion that turns into a death keeps the first time."""
        e = self._members.get(node_id)
        return e.down_since if e else None

    def record_of(self, node_id: str) -> Optional[NodeRecord]:
        if node_id == self.self_id:
            return self._own
        e = self._members.get(node_id)
        return e.record if e else None

    def fact_of(self, node_id: str) -> Optional[Fact]:
        """What decides another node's state (its record or an accusation); None if unknown."""
        e = self._members.get(node_id)
        return e.fact if e else None

    def retransmit_limit(self) -> int:
        return self.retransmit_mult * max(1, math.ceil(math.log2(self.size() + 1)))

    def suspicion_timeout(self, confirmations: int) -> float:
        """Lifeguard: from ``suspect_max_mult`` x the minimum (the first accuser alone) down to the
        minimum as ``confirmations`` independent accusers confirm; the minimum grows with log10 N, as a rumour's round trip does."""
        low = self.suspect_timeout_s * max(1.0, math.log10(self.size()))
        high = low * self.suspect_max_mult
        k = max(1, self.suspect_confirmations)
        frac = math.log(min(max(confirmations, 0), k) + 1) / math.log(k + 1)
        return max(low, high - (high - low) * frac)

    # --- input ----------------------------------------------------------------------------

    def load(self, records: Iterable[NodeRecord], now: float) -> int:
        """Records from our own store at start (verified when first heard): applied without
        being spread, since they are not news to anyone.  Bounded like any input; returns how
        many were taken."""
        taken, members = 0, self._members
        for rec in records:
            if rec.node_id == self.self_id or rec.node_id in members or len(members) >= self.max_members:
                continue
            self._admit(rec, now)
            taken += 1
        return taken

    def offer_many(self, now: float, items: Iterable[Fact]) -> list[Heard]:
        """The items of one frame from one peer: at most ``max_items_per_frame`` looked at, at
        most ``max_new_per_frame`` unknown nodes admitted (what one introducer can add)."""
        out, new = [], 0
        for i, item in enumerate(items):
            if i >= self.max_items_per_frame:
                out.append(Heard(False, "too_many"))
                continue
            unknown = isinstance(item, NodeRecord) and item.node_id != self.self_id and item.node_id not in self._members
            if unknown and new >= self.max_new_per_frame:
                out.append(Heard(False, "too_many_new"))
                continue
            heard = self.offer(now, item)
            new += unknown and heard.news
            out.append(heard)
        return out

    def offer(self, now: float, item: Fact) -> Heard:
        """A record or accusation heard from a peer: applied if it beats what we hold."""
        if not isinstance(item, (NodeRecord, Accusation)):
            return Heard(False, "malformed")
        if item.node_id == self.self_id:
            return self._about_us(item)
        entry = self._members.get(item.node_id)
        if isinstance(item, Accusation):
            return self._accusation(now, item, entry)
        if entry is None:
            if len(self._members) >= self.max_members and not self._evict_one():
                return Heard(False, "full")
            bad = self._check(item)
            if bad is not None:
                return bad
            self._admit(item, now)
            self._queue(item, urgent=True, alarm=False)  # a join: first in frames, not hurried (`alarm_pending`)
            return Heard(True, "news")
        if not newer(item, entry.fact):
            return Heard(False, "stale")
        bad = self._check(item)
        if bad is not None:
            return bad
        if item.name != entry.record.name:
            self.changes += 1  # a rename: the names shown (names.py) are looked up again
        entry.record = item
        urgent = entry.state != item.status  # back from a suspicion, or gone: not just new links
        self._set(item.node_id, entry, item, item.status, now)
        self._queue(item, urgent=urgent)
        return Heard(True, "news")

    def _accusation(self, now: float, acc: Accusation, entry: Optional[_Entry]) -> Heard:
        if entry is None:
            return Heard(False, "unknown_subject")   # nothing to show without its record
        if self.accusers_must_be_known and acc.accuser_id != self.self_id:
            by = self._members.get(acc.accuser_id)
            if by is None or by.state in GONE:
                return Heard(False, "unknown_accuser")
        confirms = (acc.status == SUSPECT and entry.state == SUSPECT and acc.incarnation == entry.fact.incarnation
                    and acc.accuser_id not in entry.accusers and len(entry.accusers) <= self.suspect_confirmations)
        if not confirms and not newer(acc, entry.fact):
            return Heard(False, "stale")
        bad = self._check(acc)
        if bad is not None:
            return bad
        if confirms:  # Lifeguard: another independent suspecter shortens the timer, spreads no news
            entry.accusers.add(acc.accuser_id)
            entry.deadline = min(entry.deadline, entry.since + self.suspicion_timeout(len(entry.accusers) - 1))
            return Heard(False, "confirmation")
        self._set(acc.node_id, entry, acc, acc.status, now)
        if acc.status == SUSPECT:
            entry.accusers = {acc.accuser_id}
            entry.deadline = now + self.suspicion_timeout(0)
        self._queue(acc, urgent=True)
        return Heard(True, "news")

    def _about_us(self, item: Fact) -> Heard:
        """A fact about ourselves never changes our state: if it beats our record, we answer
        with a record at a higher incarnation (SWIM's refutation).

        An accusation naming an incarnation above ours is not answered: a third party must not
        be able to drive our incarnation up (to its maximum, where we could refute no more).
        A node that restarted learns its previous incarnation from its own old record, which
        only it could sign (and the caller should keep its incarnation across restarts)."""
        if isinstance(item, Accusation) and item.incarnation > self._own.incarnation:
            return Heard(False, "stale")   # cannot be ours to answer; `newer` refuses it too
        if item == self._own or not newer(item, self._own):
            return Heard(False, "stale")
        bad = self._check(item)
        if bad is not None:
            return bad
        inc = max(item.incarnation, self._own.incarnation, self._pending_inc or 0) + 1
        self._pending_inc = inc
        return Heard(False, "about_us", replace(self._own, incarnation=inc, status=ALIVE, signature=b""))

    def set_own(self, now: float, record: NodeRecord) -> None:
        """Our own record, signed by the caller (a refutation, a new address, or ``left`` on
        shutdown): it must beat the one we hold, and it is spread."""
        if record.node_id != self.self_id or not newer(record, self._own):
            raise ValueError("our own record must be ours and newer than the one held")
        refutes = self._pending_inc is not None
        self._own = record
        if self._pending_inc is not None and record.incarnation >= self._pending_inc:
            self._pending_inc = None
        self._queue(record, urgent=refutes or record.status != ALIVE)

    def forget(self, node_id: str) -> None:
        """Drop a node (we disconnected it, or it told us LEAVE and nobody else vouches for it): a
        newer record of it, from anyone, brings it back."""
        if node_id in self._members:
            self._forget(node_id)

    def tick(self, now: float) -> list[tuple[str, int]]:
        """Expire suspicions (-> dead, locally) and forget long-gone nodes.  Returns (id,
        incarnation) of each node that just turned dead, for the caller to accuse if it wants."""
        died = []
        members = self._members
        for node_id in sorted(i for i in self._suspects if now >= members[i].deadline):  # every tick: sort the few due
            e = members[node_id]
            self._set(node_id, e, e.fact, DEAD, now)
            died.append((node_id, e.fact.incarnation))
        if now >= self._forget_from:  # a scan of the gone only when one can be due (after a mass failure, every tick's)
            for node_id in [i for i in self._gone if now - members[i].since >= self.forget_after_s]:
                self._forget(node_id)
            self._forget_from = min((members[i].since + self.forget_after_s for i in self._gone), default=math.inf)
        return died

    # --- output ---------------------------------------------------------------------------

    def piggyback(self, max_items: int) -> list[Fact]:
        """Items to attach to one outgoing frame: state changes before routine news (`_queue`),
        then least-sent first, newest first among equals;
        each dropped once sent ``retransmit_limit()`` times."""
        return self.piggyback_round(max_items, 1)[0]

    def piggyback_round(self, max_items: int, frames: int) -> list[list[Fact]]:
        """`piggyback` for the ``frames`` frames of one gossip round (one per neighbour), as if
        called once per frame, with the buffer ranked once: the best ``max_items x frames``
        candidates go in a heap, each frame takes the least-sent of them and puts them back
        sent once more.  (Ranking the whole buffer again for each of eight neighbours, twice a
        second after a mass failure, cost a survivor as much as verifying the news.)"""
        if frames <= 0:
            return []
        if max_items <= 0 or not self._buffer:
            return [[] for _ in range(frames)]
        limit = self.retransmit_limit()
        buffer = self._buffer
        # = sorted(...)[:wanted], without sorting the whole buffer; no item outside these can
        # be picked this round (each pick only makes the picked item rank later)
        ranked = heapq.nsmallest(max_items * frames, buffer.items(), key=lambda kv: (kv[1][1] + kv[1][3], -kv[1][2]))
        heap = [(slot[1] + slot[3], -slot[2], node_id, slot) for node_id, slot in ranked]  # node ids are unique
        heapq.heapify(heap)
        out = []
        for _ in range(frames):
            taken = [heapq.heappop(heap) for _ in range(min(max_items, len(heap)))]
            frame = []
            for rank, newest, node_id, slot in taken:
                frame.append(slot[0])
                slot[1] += 1
                if slot[1] < limit:
                    heapq.heappush(heap, (rank + 1, newest, node_id, slot))
                elif buffer.get(node_id) is slot:
                    del buffer[node_id]
            out.append(frame)
        return out

    def pending(self) -> int:
        """Items still to be spread."""
        return len(self._buffer)

    def alarm_pending(self) -> bool:
        """Is bad news (a suspicion, a death, a leave) or its denial (a refutation, a node back
        from the dead) still to be spread?  The caller hurries it to every neighbour: a
        suspicion must reach everyone within its timer.  Not joins: no timer waits on them,
        and while daemons keep starting every node would be hurrying all the time."""
        return any(slot[4] for slot in self._buffer.values())

    # --- internals ------------------------------------------------------------------------

    def _check(self, item: Fact) -> Optional[Heard]:
        try:
            self._verify(item)
        except BadRecord as e:
            return Heard(False, e.kind)
        return None

    def _admit(self, record: NodeRecord, now: float) -> None:
        self.changes += 1
        self._members[record.node_id] = _Entry(record, now)
        if record.status != ALIVE:
            self._gone.add(record.node_id)
            self._forget_from = min(self._forget_from, now + self.forget_after_s)

    def _set(self, node_id: str, entry: _Entry, fact: Fact, state: str, now: float) -> None:
        """The one place a known node's state changes, keeping the suspect and gone sets true."""
        entry.fact = fact
        if state != entry.state:
            self.changes += 1
            entry.since = now
            if state == ALIVE:
                entry.down_since = None
            elif entry.state == ALIVE:
                entry.down_since = now
        entry.state = state
        (self._suspects.add if state == SUSPECT else self._suspects.discard)(node_id)
        (self._gone.add if state in GONE else self._gone.discard)(node_id)
        if state in GONE:
            self._forget_from = min(self._forget_from, entry.since + self.forget_after_s)
        if state != SUSPECT:
            entry.deadline, entry.accusers = None, _NONE

    def _forget(self, node_id: str) -> None:
        self.changes += 1
        del self._members[node_id]
        self._suspects.discard(node_id)
        self._gone.discard(node_id)
        self._buffer.pop(node_id, None)

    def _queue(self, fact: Fact, urgent: bool = True, alarm: bool | None = None) -> None:
        """Spread ``fact``.  ``urgent``: a change of state (a join, a suspicion, a death, a
        refutation, a leave) goes before routine news (a live node's new list of links), which
        after a mass failure is plentiful, always fresh, and would crowd suspicions out.
        ``alarm`` (default: ``urgent``): bad news or its denial, see `alarm_pending`."""
        self._order += 1
        self._buffer.pop(fact.node_id, None)   # newer news about a node makes the old moot
        self._buffer[fact.node_id] = [fact, 0, self._order, 0 if urgent else ROUTINE_PENALTY, urgent if alarm is None else alarm]

    def _evict_one(self) -> bool:
        """Make room for a live node by forgetting the longest-gone dead or left one."""
        if not self._gone:
            return False
        self._forget(min(self._gone, key=lambda i: (self._members[i].since, i)))
        return True
