"""What each neighbour has of the roster, and the push-pull that brings a new one up to date.

How this works
--------------
`Told` keeps, per neighbour, the newest version of each node's facts that the neighbour has:
what we sent it, what it sent us, what its digest listed.  News is never sent to a neighbour
known to have it (overlay.py's rounds), and neither is anything it asks for again.

When a link becomes a neighbour link (`push_all`), both ends send a digest, FACTS ``have``:
[id, incarnation, rank] for every node held (an eighth of a record's bytes).  From the
neighbour's digest (`on_digest`) we ask it, FACTS ``want``, for what we lack or hold older;
a record already asked of another neighbour is not asked again while that answer may still
come (wants.py), so a node joining a formed network takes each record about once, not once
per neighbour.  A want is answered (`answer_want`) with what the asker is not known to have,
so a neighbour can make us send each fact at most once per link.  A peer whose JOIN did not
say ``digest`` gets every record instead (docs/PROTOCOL.md 12.4).

Owned by `overlay.Overlay`, which decodes and takes the facts that come (its roster is the
judge) and says which peers are neighbours.  Pure: time is passed in.
"""

from __future__ import annotations

from . import protocol as P
from .outbound import Outbound
from .records import RANK, encode
from .roster import Roster
from .wants import Wants

TOLD_MAX = 4096  # nodes noted per neighbour in its `Told` (a bound against ids without end; then forgotten, and sent again at worst)


class Told:
    """What a neighbour has (we sent it, or it sent it to us), as the newest (incarnation, rank of
    status) per node: a fact no newer than that is one it has or one it would find stale, so it
    is not sent.  At most one entry per node id, where a set of every fact key ever exchanged grew
    with each record version (8 neighbours x 4,096 keys, about 3 MiB of a daemon's heap in a
    network of 200 after a repair).  The pair is held as one int, incarnation * 4 + rank, which
    orders the same (ranks are 0-3) at a third of a tuple's memory.  Keys are `fact_key`'s."""

    __slots__ = ("_latest",)

    def __init__(self):
        self._latest: dict[str, int] = {}

    def add(self, key: tuple) -> None:
        self.add_order(key[0], key[1] * 4 + RANK.get(key[2], 0))

    def add_order(self, node_id: str, order: int) -> None:
        """As `add`, from a digest's entry: incarnation * 4 + rank, already computed."""
        held = self._latest.get(node_id)
        if held is None or order > held:
            self._latest[node_id] = order

    def __contains__(self, key: tuple) -> bool:
        held = self._latest.get(key[0])
        return held is not None and key[1] * 4 + RANK.get(key[2], 0) <= held

    def __len__(self) -> int:
        return len(self._latest)


def fact_key(fact) -> tuple:
    """What makes two facts the same news: whose, which incarnation, what it says, and who says it."""
    return (fact.node_id, fact.incarnation, fact.status, getattr(fact, "accuser_id", None))


def order_of(fact) -> int:
    """A fact's place in SWIM's precedence as one int: incarnation * 4 + rank of its status."""
    return fact.incarnation * 4 + RANK[fact.status]


class Exchange:
    """The neighbours' `Told`s and the records asked of them (`Wants`)."""

    def __init__(self, node_id: str, roster: Roster, outbound: Outbound):
        self.id = node_id
        self.roster = roster
        self.out = outbound
        self._told: dict[str, Told] = {}  # neighbour -> facts it has (we sent or it told us): not sent to it again
        self._wants = Wants()  # records asked of a neighbour after its digest, and who else offered them

    def told_to(self, peer_id: str) -> Told:
        told = self._told.get(peer_id)
        if told is None or len(told) > TOLD_MAX:
            told = self._told[peer_id] = Told()
        return told

    def forget(self, peer_id: str) -> None:
        """Our link to ``peer_id`` is gone: what it had is unknown again, what we asked of it is due."""
        self._told.pop(peer_id, None)
        self._wants.forget_peer(peer_id)

    def asking(self) -> int:
        """How many records we have asked for and not had yet."""
        return len(self._wants)

    # ------------------------------------------------------------------ out
    def facts_msg(self, now: float, facts: list, to: str) -> P.Message:
        told = self.told_to(to)
        for f in facts:
            told.add(fact_key(f))
        return self.out.msg(now, P.FACTS, {"facts": [encode(f) for f in facts]}, target=to)

    def push_all(self, now: float, peer_id: str, digest: bool) -> list:
        """Everything we know, to a new neighbour (SWIM's push-pull: it does the same to us): to a
        peer that takes a ``digest``, only what we hold about whom; it asks for what it lacks, as
        we do from its digest.  Without, a node joining a formed network took each of its
        neighbours' whole rosters, all but the first no news (a late joiner among 200: about
        1,600 records for 200 members)."""
        roster = self.roster
        if not digest:
            return self._push(now, peer_id, self._records())
        have = [[self.id, roster.own.incarnation, RANK[roster.own.status]]]
        for node_id, _, _ in roster.states():
            f = roster.fact_of(node_id)
            if f is not None:
                have.append([node_id, f.incarnation, RANK[f.status]])
        return self._id_lists(now, peer_id, "have", have)

    def _records(self) -> list:
        roster = self.roster
        return [roster.own] + [r for r in (roster.record_of(m.node_id) for m in roster.members()) if r is not None]

    def _push(self, now: float, peer_id: str, facts: list) -> list:
        step = P.MAX_FACTS
        return [self.out.send(peer_id, self.facts_msg(now, facts[i:i + step], peer_id)) for i in range(0, len(facts), step)]

    def _ask(self, now: float, peer_id: str, want: list) -> list:
        return self._id_lists(now, peer_id, "want", want)

    def _id_lists(self, now: float, peer_id: str, field: str, entries: list) -> list:
        """A digest (``have``) or an ask (``want``): FACTS with no facts, at most MAX_HAVE entries each."""
        step = P.MAX_HAVE
        return [self.out.send(peer_id, self.out.msg(now, P.FACTS, {"facts": [], field: entries[i:i + step]}, target=peer_id))
                for i in range(0, len(entries), step)]

    # ------------------------------------------------------------------ in
    def _held(self, node_id: str):
        return self.roster.own if node_id == self.id else self.roster.fact_of(node_id)

    def came(self, items: list) -> None:
        """A FACTS frame's items have been offered to the roster: what we asked for and now hold
        (from this frame, or sooner by another way) is asked for no more."""
        if not len(self._wants):
            return
        for obj in items:
            node_id = obj.get("id")
            held = self._held(node_id) if type(node_id) is str else None
            if held is not None:
                self._wants.got(node_id, order_of(held))

    def on_digest(self, now: float, peer_id: str, have: list, ask: bool) -> list:
        """A neighbour's digest: note what it holds (of nodes we know: a digest cannot grow our
        state), and ask it for what we lack or hold older, unless another neighbour was asked
        already.  Not ``ask``: it is not (yet) in our active view and may never answer; it is
        only noted as offering.  Our own entry newer than our record is an accusation to
        refute, or our record from a run whose clock was ahead: asked for too."""
        told = self.told_to(peer_id)
        offered = self._wants.offered
        want = []
        for node_id, inc, rank in have:
            order = inc * 4 + rank
            held = self._held(node_id)
            if held is not None:
                told.add_order(node_id, order)
                if order <= order_of(held):
                    continue
            if offered(now, peer_id, node_id, order, ask):
                want.append(node_id)
        return self._ask(now, peer_id, want)

    def answer_want(self, now: float, peer_id: str, want: list) -> list:
        """The records (and the accusations that outrank them) a neighbour asked for, those it is
        not known to have: what is sent is noted in its `Told`, so asking again brings nothing."""
        roster, told = self.roster, self.told_to(peer_id)
        facts = []
        for node_id in want:
            rec = roster.record_of(node_id)
            if rec is None:
                continue
            fact = roster.fact_of(node_id) if node_id != self.id else rec
            for f in (rec,) if fact is None or fact is rec else (rec, fact):
                key = fact_key(f)
                if key not in told:
                    told.add(key)  # here too: a record named twice in one want goes once
                    facts.append(f)
        return self._push(now, peer_id, facts)

    def due(self, now: float, neighbours) -> list:
        """Asks whose answer is late, made again of the next neighbour that offered the record."""
        if not len(self._wants):
            return []
        acts: list = []
        lacks = self._lacks
        for peer_id, ids in self._wants.due(now, neighbours, lacks).items():
            acts += self._ask(now, peer_id, ids)
        return acts

    def _lacks(self, node_id: str, order: int) -> bool:
        held = self._held(node_id)
        return held is None or order_of(held) < order
