"""Records we asked a neighbour for after its digest, and who else offered them (overlay.py).

How this works
--------------
When a link becomes a neighbour link, both ends send a digest (FACTS ``have``: [id,
incarnation, rank] of every node each holds) instead of every record.  From a neighbour's
digest we ask it (FACTS ``want``) for what we lack or hold older.  A node that links to
several neighbours at once (a restart, a late joiner) gets their digests together; asking
each of them for everything would bring every record once per neighbour, which is what the
digest is for avoiding.  So a record already asked of another neighbour is not asked again,
only noted as offered by this one too; if the answer has not come within ``wait_s`` (the
neighbour died, or its answer was lost), `due` asks the next one that offered it.

Bounded: at most ``max_ids`` records asked at once, at most ``MAX_OFFERS`` offers noted for
each, and at most ``max_per_peer`` of the records brought in by one peer's digests (a record
first offered by it): a hostile neighbour listing thousands of made-up nodes holds at most
that many entries, each for ``wait_s``, and cannot fill the table against the others.
Pure: time is passed in.
"""

from __future__ import annotations

MAX_OFFERS = 16  # neighbours noted as offering one record (more than any active view)


class Wants:
    """node id -> [order wanted (incarnation * 4 + rank), deadline, asked peer, other offers,
    the peer whose offer made the entry]."""

    __slots__ = ("wait_s", "max_ids", "max_per_peer", "_asked", "_made", "_check_at")

    def __init__(self, wait_s: float = 2.0, max_ids: int = 16_384, max_per_peer: int = 4_096):
        self.wait_s = wait_s
        self.max_ids = max_ids
        self.max_per_peer = max_per_peer
        self._asked: dict[str, list] = {}
        self._made: dict[str, int] = {}  # peer -> entries its offers made (the per-peer bound)
        self._check_at = float("inf")  # no deadline is earlier: `due` has nothing to do before

    def offered(self, now: float, peer: str, node_id: str, order: int, ask: bool = True) -> bool:
        """``peer``'s digest lists ``node_id`` at ``order``, newer than ours: ask it now?  Not
        if another was asked and has time left to answer, nor if ``ask`` is false (it is not
        our neighbour, or not yet: noted as offering, `due` may ask it later)."""
        a = self._asked.get(node_id)
        if a is not None and a[0] >= order:
            if a[2] is None and ask:  # only offered so far, by peers we would not ask
                a[1], a[2] = now + self.wait_s, peer
                self._check_at = min(self._check_at, a[1])
                return True
            if a[1] > now or a[2] is None:
                if peer != a[2] and peer not in a[3] and len(a[3]) < MAX_OFFERS:
                    a[3].append(peer)
                return False
        made = self._made.get(peer, 0)
        if made >= self.max_per_peer or (a is None and len(self._asked) >= self.max_ids):
            return False  # the rest comes with a later digest, or as news
        offers = a[3] if a is not None and a[0] >= order else []
        if not ask and peer not in offers:
            offers.append(peer)
        if a is not None:
            self._unmake(a)
        self._made[peer] = made + 1
        self._asked[node_id] = [order, now + self.wait_s, peer if ask else None, offers, peer]
        self._check_at = min(self._check_at, now + self.wait_s)
        return ask

    def got(self, node_id: str, order: int) -> None:
        """A fact of ``node_id`` at ``order`` came: asked no more if it is what we wanted."""
        a = self._asked.get(node_id)
        if a is not None and order >= a[0]:
            self._unmake(self._asked.pop(node_id))

    def _unmake(self, a: list) -> None:
        n = self._made[a[4]] - 1
        if n:
            self._made[a[4]] = n
        else:
            del self._made[a[4]]

    def due(self, now: float, linked, lacks=None) -> dict[str, list[str]]:
        """Asks whose answer is late (or never asked), each given to the next peer that offered
        it and is in ``linked`` (a container of peer ids: our neighbours): peer -> node ids to
        ask it for.  One nobody else offered is dropped: a later digest or the news brings it;
        so is one that ``lacks(node_id, order)`` says came meanwhile by another way."""
        out: dict[str, list[str]] = {}
        if now < self._check_at:
            return out
        gone = []
        check_at = float("inf")
        for node_id, a in self._asked.items():
            if a[1] > now:
                check_at = min(check_at, a[1])
                continue
            offers = a[3]
            if lacks is not None and not lacks(node_id, a[0]):
                gone.append(node_id)
                continue
            while offers and offers[0] not in linked:
                offers.pop(0)
            if not offers:
                gone.append(node_id)
                continue
            a[2] = offers.pop(0)
            a[1] = now + self.wait_s
            check_at = min(check_at, a[1])
            out.setdefault(a[2], []).append(node_id)
        for node_id in gone:
            self._unmake(self._asked.pop(node_id))
        self._check_at = check_at
        return out

    def forget_peer(self, peer: str) -> None:
        """``peer``'s link is gone: what we asked of it is due now, from the next that offered it."""
        for a in self._asked.values():
            if a[2] == peer:
                a[1] = 0.0
                self._check_at = 0.0
            if peer in a[3]:
                a[3].remove(peer)

    def __len__(self) -> int:
        return len(self._asked)
