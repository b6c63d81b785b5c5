"""Reliable delivery: exactly-once, in-order direct messages and gap-free broadcasts.

How this works
--------------
Direct messages (per ordered pair sender -> receiver):

* The sender numbers each message for that peer (``seq`` 1, 2, 3 ...) and
  stores it in the outbox *before* saying it was sent.  It transmits from the
  outbox while fewer than ``window`` messages are unacknowledged (that is the
  flow control: a fast sender is slowed to the receiver's pace, never
  dropped), and goes back to the oldest unacknowledged one when the link
  comes up again or no ACK has made progress for ``ack_timeout_s``
  (go-back-N).  A receiver that drops a message as out of order says so in
  its next ACK (``gap``), and the sender goes back at once; each such loss
  also halves how many it keeps in flight (``cwnd``, at least ``CWND_MIN``),
  which grows back by ``CWND_STEP`` per ``cwnd``'s worth acknowledged (AIMD, as
  TCP).  A receiver pacing a sender over its rate limit acknowledges what it
  took on credit only as it is repaid (`acks_owed`).
  Every MESSAGE also carries ``base``: the oldest seq the
  sender still needs; everything below it was acknowledged or expired.
* The receiver keeps the highest seq it stored from each sender (``in_seq``).
  ``seq == in_seq + 1`` is stored; lower is a duplicate; higher is a gap and
  is dropped (the sender will resend it in order).  After each batch is
  committed it sends one cumulative ``ACK {upto: in_seq}`` per sender, so an
  ACK always means "on disk".

Broadcasts (per origin):

* The origin numbers its broadcasts (``bseq``), keeps them in its store, and
  announces its latest ``bseq`` and oldest kept one in every JOIN and PING.
* A receiver delivers ``bseq == last + 1``, drops duplicates, and holds a
  bounded number of early arrivals while it asks the origin, over the
  ROUTER/DEALER link, to ``FETCH`` the missing range; the origin replays the
  stored BROADCASTs on that link.  A receiver that never saw an origin before
  starts at the origin's current number: no old backlog unless asked.

The event loop calls `save` and `acks_owed` after every turn.  A turn touches one
link or a few, so `Delivery` keeps the links whose counters changed since the last
`save` and the ones owed an ACK (and those with messages unacknowledged, for
`pending_peers`) as it goes: each call costs what changed, not the number of links.
Anything that changes a link's counters goes through this class and marks it.

Pure apart from the store: no sockets; time is passed in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .storage import Storage

_UNKNOWN = object()
FETCH_MAX = 1000  # broadcasts replayed per FETCH request
REORDER_MAX = 20_000  # early broadcasts held per origin while a gap is fetched
CWND_MIN = 32  # messages in flight per peer, at least, after losses
CWND_STEP = 32  # ... regained per cwnd's worth acknowledged


@dataclass(slots=True)
class LinkSeq:
    out_seq: int = 0  # last seq we numbered for this peer
    out_acked: int = 0  # highest seq it acknowledged
    in_seq: int = 0  # highest seq we stored from it
    bcast_seq: int | None = None  # last of its broadcasts we delivered (None: never synced)
    in_epoch: str | None = None  # the peer's store epoch its direct numbering belongs to
    bcast_epoch: str | None = None  # ... and its broadcast numbering
    next_send: int = 1  # next seq to transmit
    sent_hi: int = 0  # highest seq transmitted at least once (in this run)
    last_progress: float = 0.0
    fetch_to: int = 0  # a FETCH up to this bseq is in flight
    fetch_deadline: float = 0.0
    # Rows enqueued in this run and not yet transmitted, in seq order: the
    # first transmission takes them from here instead of reading back what
    # was just written.  Bounded; anything else comes from the store.  Made on
    # the first enqueue: a node holds a LinkSeq for every origin whose broadcasts
    # it follows (200 at 200 nodes), and an empty deque is 0.6 KiB.
    fresh: deque | None = None
    sent_since_progress: int = 0  # messages handed to the link since the last ACK progress
    short_since: float | None = None  # since when heartbeats show broadcasts we lack, with none arriving
    short_at: int = 0  # our bcast_seq then
    gap_at: int = -1  # receiver: in_seq when we last told the sender of a gap
    gap_hi: int = 0  # ... the highest seq dropped as a gap there since (lower again: the sender went back)
    gap_owed: bool = False  # ... and the next ACK should say so
    acked_in: int = 0  # in_seq of the last ACK we sent (what a paced sender may run ahead of)
    cwnd: int = 0  # sender: messages allowed in flight now (0: the full window; see Delivery.due)
    cwnd_grow: int = 0  # ... acknowledged x CWND_STEP not yet turned into a larger cwnd


def _classify(in_seq: int, seq: int, base: int) -> str:
    """A numbered MESSAGE against what we stored from its sender (``in_seq``), where the sender
    says it will never send anything below ``base`` again: "dup", "new" or "gap"."""
    start = max(in_seq, base - 1)
    return "dup" if seq <= start else "new" if seq == start + 1 else "gap"


class Delivery:
    def __init__(self, store: Storage, window: int = 1000, ack_timeout_s: float = 2.0, expiry_s: float = 7 * 86400):
        self.store = store
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self.expiry_s = expiry_s
        self.links: dict[str, LinkSeq] = {}
        self.fresh_max = 2 * window
        # Links by what the next `save`, `acks_owed` and `pending_peers` must look at (dicts as ordered
        # sets); each is reported in the order the links were created (`_rank`), as a walk of
        # `links` would, so that the effects of a turn come out in the same order whatever marked them.
        self._rank: dict[str, int] = {}
        self._dirty: dict[str, None] = {}  # counters changed since the last save
        self._owed: dict[str, None] = {}  # received a MESSAGE since the last ACK to it (see acks_owed)
        self._pending: dict[str, None] = {}  # we numbered messages for it that it has not acknowledged
        for peer_id, row in store.links().items():
            ls = self.link(peer_id)
            ls.out_seq, ls.out_acked, ls.in_seq, ls.bcast_seq = row["out_seq"], row["out_acked"], row["in_seq"], row["bcast_seq"]
            ls.in_epoch, ls.bcast_epoch, ls.next_send, ls.acked_in = row["in_epoch"], row["bcast_epoch"], row["out_acked"] + 1, row["in_seq"]
            if ls.out_acked < ls.out_seq:
                self._pending[peer_id] = None
        self.bcast_seq = max(int(store.get_meta("bcast_seq", "0")), store.newest_broadcast() or 0)
        self.bcast_dirty = False
        self._oldest = _UNKNOWN  # oldest kept broadcast number, cached (see broadcast_window)
        self.early: dict[str, dict[int, tuple]] = {}  # origin -> bseq -> message fields

    def link(self, peer_id: str) -> LinkSeq:
        ls = self.links.get(peer_id)
        if ls is None:
            ls = self.links[peer_id] = LinkSeq()
            self._rank[peer_id] = len(self._rank)
        return ls

    def _in_link_order(self, marked: dict[str, None]) -> list[str]:
        keys = list(marked)
        if len(keys) > 1:
            keys.sort(key=self._rank.__getitem__)
        return keys

    def dirty(self) -> list[str]:
        """The links whose counters changed since the last `save` (in link order)."""
        return self._in_link_order(self._dirty)

    def save(self) -> None:
        """Write changed counters; the caller commits with the batch."""
        if self.bcast_dirty:
            self.store.set_meta("bcast_seq", str(self.bcast_seq))
            self.bcast_dirty = False
        if self._dirty:
            links = self.links
            for peer_id in self._in_link_order(self._dirty):
                ls = links[peer_id]
                self.store.save_link(peer_id, ls.out_seq, ls.out_acked, ls.in_seq, ls.bcast_seq, ls.in_epoch, ls.bcast_epoch)
            self._dirty.clear()

    # ------------------------------------------------------------------ direct: sender
    def enqueue(self, peer_id: str, msg_id: str, text: str, timestamp: str, epoch: float, expiry_s: float | None = None,
                group: str | None = None) -> int:
        """Number and queue one message for a peer; ``group``: it is that group's shout to this member."""
        ls = self.link(peer_id)
        ls.out_seq += 1
        self._dirty[peer_id] = None
        self._pending[peer_id] = None
        self.store.add_outbox(peer_id, ls.out_seq, msg_id, text, timestamp, epoch, epoch + (expiry_s or self.expiry_s), group)
        fresh = ls.fresh
        if fresh is None:
            fresh = ls.fresh = deque()
        if len(fresh) < self.fresh_max and (not fresh or fresh[-1][0] == ls.out_seq - 1):
            fresh.append((ls.out_seq, msg_id, text, timestamp, group))
        return ls.out_seq

    def _take(self, peer_id: str, ls: LinkSeq, room: int) -> list[tuple]:
        """Up to ``room`` pending rows from ``next_send`` on: from `fresh` when it starts there, else the store."""
        fresh = ls.fresh
        while fresh and fresh[0][0] < ls.next_send:
            fresh.popleft()  # sent already, by way of the store
        if fresh and fresh[0][0] == ls.next_send:
            return [fresh.popleft() for _ in range(min(room, len(fresh)))]
        return self.store.pending_after(peer_id, ls.next_send - 1, room)

    def forget_fresh(self, peer_id: str) -> None:
        """Rows changed in the store (expired): transmit only what the store says is pending."""
        ls = self.links.get(peer_id)
        if ls is not None and ls.fresh:
            ls.fresh.clear()

    def due(self, peer_id: str, now: float) -> tuple[int, list[tuple]]:
        """Messages to transmit now to a linked peer: (base, [(seq, id, text, timestamp, group), ...])."""
        ls = self.links.get(peer_id)
        if ls is None or ls.out_acked >= ls.out_seq:
            return 0, []
        if ls.sent_since_progress >= 2 * self.window:
            # Two windows queued and nothing acknowledged: a peer that is alive but reads nothing.
            # Queue no more (each go-back would add a window to the link's queue) until an ACK
            # or a new connection.
            return 0, []
        in_flight = ls.next_send - 1 - ls.out_acked
        if in_flight > 0 and now - ls.last_progress > self.ack_timeout_s:
            ls.next_send = ls.out_acked + 1  # no progress: go back and resend in order
            self._lost(ls)
            in_flight = 0
        room = (ls.cwnd or self.window) - in_flight
        if room <= 0 or ls.next_send > ls.out_seq:
            return 0, []
        if in_flight == 0:
            ls.last_progress = now
        rows = self._take(peer_id, ls, room)
        if not rows:
            ls.next_send = ls.out_seq + 1
            return 0, []
        base_rows = self.store.pending_after(peer_id, ls.out_acked, 1)
        base = base_rows[0][0] if base_rows else rows[0][0]
        if rows[0][0] <= ls.sent_hi:
            self.store.count_attempt(peer_id, rows[0][0], min(rows[-1][0], ls.sent_hi))
        ls.sent_hi = max(ls.sent_hi, rows[-1][0])
        ls.next_send = rows[-1][0] + 1
        ls.sent_since_progress += len(rows)
        return base, rows

    def claim(self, peer_id: str, seq: int, now: float) -> int | None:
        """Take message ``seq`` (just enqueued) as transmitted by another way than `due`: a shout's
        one copy for many members (shouts.py).  Only if it is the next to send and the window
        has room, so the link's order and flow control hold; returns the ``base`` to send with
        it (out_acked + 1: anything expired in between is skipped when a resend goes back), or
        None: then `due` sends it as usual."""
        ls = self.links.get(peer_id)
        if ls is None or ls.next_send != seq or seq > ls.out_seq or ls.sent_since_progress >= 2 * self.window:
            return None
        in_flight = ls.next_send - 1 - ls.out_acked
        if in_flight >= (ls.cwnd or self.window):
            return None
        if in_flight == 0:
            ls.last_progress = now
        ls.sent_hi = max(ls.sent_hi, seq)
        ls.next_send = seq + 1
        ls.sent_since_progress += 1
        return ls.out_acked + 1

    def rewind(self, peer_id: str) -> None:
        """The link came (back) up: resend everything not yet acknowledged."""
        ls = self.links.get(peer_id)
        if ls is not None:
            ls.next_send = ls.out_acked + 1
            ls.sent_since_progress = 0  # a new connection: what the old one queued is gone

    def on_ack(self, peer_id: str, upto: int, now: float, epoch: float, want_ids: bool = True, gap: bool = False) -> tuple[int, list[str]]:
        """Apply a cumulative ACK: (how many pending messages it covered, their ids if ``want_ids``).

        Without waiters nobody needs the ids, and counting them from the
        numbers saves reading back every acknowledged row.  ``gap``: the peer
        dropped a message after ``upto`` as out of order (one of ours was lost
        on the way, e.g. to its rate limit), so everything sent after it is
        being dropped too: go back now instead of after ``ack_timeout_s``."""
        ls = self.links.get(peer_id)
        if ls is None:
            return 0, []
        settled: tuple[int, list[str]] = (0, [])
        if upto > ls.out_acked:
            upto = min(upto, ls.out_seq)
            # Rows at or below the old mark were settled before (delivered or expired): skip them.
            previous = ls.out_acked
            ls.out_acked = upto
            ls.next_send = max(ls.next_send, upto + 1)
            ls.last_progress = now
            ls.sent_since_progress = 0
            self._dirty[peer_id] = None
            if upto >= ls.out_seq:
                self._pending.pop(peer_id, None)
            if ls.cwnd:  # recovering from a loss: additive increase, CWND_STEP per cwnd's worth acknowledged
                inc, ls.cwnd_grow = divmod(ls.cwnd_grow + (upto - previous) * CWND_STEP, ls.cwnd)
                ls.cwnd += inc
                if ls.cwnd >= self.window:
                    ls.cwnd = 0
            if want_ids:
                ids = self.store.mark_delivered(peer_id, upto, epoch, after_seq=previous)
                settled = (len(ids), ids)
            else:
                settled = (self.store.count_pending(peer_id, previous, upto), [])
        if gap and upto >= ls.out_acked and ls.next_send - 1 > ls.out_acked:
            # The receiver reports a point once, and again only after it saw us go back and lose
            # the same message again, so each report is news (see accept).
            ls.next_send = ls.out_acked + 1
            ls.sent_since_progress = 0
            ls.last_progress = now
            self._lost(ls)
        return settled

    def _lost(self, ls: LinkSeq) -> None:
        """A message was lost on the way: halve what may be in flight (multiplicative decrease)."""
        cwnd = max(min(CWND_MIN, self.window), (ls.cwnd or self.window) // 2)
        ls.cwnd = 0 if cwnd >= self.window else cwnd
        ls.cwnd_grow = 0

    def pending_peers(self) -> list[str]:
        """Peers with messages numbered for them and not acknowledged (in link order)."""
        return self._in_link_order(self._pending)

    # ------------------------------------------------------------------ direct: receiver
    def accept(self, peer_id: str, seq: int, base: int, epoch: str | None = None) -> str:
        """Classify an incoming MESSAGE: "new" (store it), "dup", or "gap".

        A different ``epoch`` means the sender's store was replaced and its
        numbering restarted: forget what we counted and follow ``base``.
        """
        ls = self.link(peer_id)
        self._owed[peer_id] = None
        if epoch is not None and epoch != ls.in_epoch:
            if ls.in_epoch is not None:
                ls.in_seq = ls.acked_in = 0
                ls.gap_at = -1
            ls.in_epoch = epoch
            self._dirty[peer_id] = None
        verdict = _classify(ls.in_seq, seq, base)
        if base - 1 > ls.in_seq:
            ls.in_seq = base - 1  # the sender will never resend below base
            self._dirty[peer_id] = None
        if verdict == "dup":
            return "dup"
        if verdict == "new":
            ls.in_seq = seq
            self._dirty[peer_id] = None
            return "new"
        if ls.gap_at != ls.in_seq or seq <= ls.gap_hi:
            # The first gap at this point, or the sender went back and lost in_seq + 1 again:
            # report it.  The rest of what was on its way behind it reports nothing new.
            ls.gap_at = ls.in_seq
            ls.gap_owed = True
        ls.gap_hi = seq
        return "gap"

    def may_pace(self, peer_id: str, data: dict) -> bool:
        """Would this MESSAGE (not of a new epoch) be the next new one, at most a window past our
        last ACK?  Such a message from a peer over its rate limit is taken on credit rather than dropped."""
        ls = self.links.get(peer_id)
        seq = data.get("seq")
        if ls is None or seq is None or data.get("epoch", ls.in_epoch) != ls.in_epoch:
            return False
        return _classify(ls.in_seq, seq, data["base"]) == "new" and seq <= ls.acked_in + self.window

    def unacknowledged(self, peer_id: str) -> bool:
        """Have we stored messages from the peer that our last ACK did not cover?"""
        ls = self.links.get(peer_id)
        return ls is not None and ls.in_seq > ls.acked_in

    def acks_owed(self, unpaid=None) -> list[tuple[str, int, bool]]:
        """(peer, upto, gap) for each sender owed an ACK since the last call.

        ``unpaid(peer)``: how many of its newest frames it had on credit past its rate limit
        and has not repaid.  Those stay unacknowledged (its ACK stays owed), so the sender's
        window slides at the limit; nothing is sent until some of them are paid for."""
        if not self._owed:
            return []
        out = []
        for peer_id in self._in_link_order(self._owed):
            ls = self.links[peer_id]
            owed = unpaid(peer_id) if unpaid is not None else 0
            if owed:
                upto = ls.in_seq - owed
                if upto > ls.acked_in:  # a gap is reported with the full ACK, or the sender would go back to here
                    ls.acked_in = upto
                    out.append((peer_id, upto, False))
                continue  # still owed
            del self._owed[peer_id]
            ls.acked_in = ls.in_seq
            # A gap that later frames of the same batch filled is not one any more.
            out.append((peer_id, ls.in_seq, ls.gap_owed and ls.gap_at == ls.in_seq))
            ls.gap_owed = False
        return out

    # ------------------------------------------------------------------ broadcasts: origin
    def next_broadcast(self, msg_id: str, text: str, timestamp: str, epoch: float) -> int:
        self.bcast_seq += 1
        self.store.add_broadcast(self.bcast_seq, msg_id, text, timestamp, epoch)
        if self._oldest is None:
            self._oldest = self.bcast_seq  # our first kept broadcast
        self.bcast_dirty = True  # the counter is saved once per batch, by save()
        return self.bcast_seq

    def broadcast_window(self) -> tuple[int, int]:
        """(oldest bseq we can still replay, latest bseq).  Every PING and PONG carries it: the
        oldest is looked up once and kept until pruning may have changed it."""
        if self._oldest is _UNKNOWN:
            self._oldest = self.store.oldest_broadcast()
        oldest = self._oldest
        return (oldest if oldest is not None else self.bcast_seq + 1), self.bcast_seq

    def pruned(self) -> None:
        """Old broadcasts may have been deleted: look the oldest up again when next asked."""
        self._oldest = _UNKNOWN

    def replay(self, from_seq: int, to_seq: int) -> list[tuple]:
        return self.store.broadcast_range(from_seq, min(to_seq, from_seq + FETCH_MAX - 1), FETCH_MAX)

    # ------------------------------------------------------------------ broadcasts: receiver
    def _check_epoch(self, origin: str, ls: LinkSeq, epoch: str | None) -> None:
        if epoch is not None and epoch != ls.bcast_epoch:
            if ls.bcast_epoch is not None:
                ls.bcast_seq = None  # the origin's numbering restarted: resynchronise as on first contact
            ls.bcast_epoch = epoch
            self._dirty[origin] = None

    def announced(self, origin: str, latest: int, oldest: int, now: float, fetch_timeout_s: float,
                  epoch: str | None = None, patience_s: float = 0.0) -> tuple[int, int] | None:
        """An origin told us its latest/oldest bseq: returns a (from, to) range to FETCH, if any.

        With ``patience_s``, a shortfall is fetched only once it has lasted that long (the
        broadcasts may still be on their way); the first notice only starts the clock."""
        ls = self.link(origin)
        self._check_epoch(origin, ls, epoch)
        if ls.bcast_seq is None:
            ls.bcast_seq = latest  # first contact: no backlog unless asked
            self._dirty[origin] = None
            return None
        if ls.bcast_seq + 1 < oldest:
            ls.bcast_seq = oldest - 1  # pruned at the origin: cannot be had any more
            self._dirty[origin] = None
        if latest > ls.bcast_seq:
            if patience_s > 0:
                if ls.short_since is None or ls.bcast_seq > ls.short_at:  # first notice, or they are arriving
                    ls.short_since, ls.short_at = now, ls.bcast_seq
                    return None
                if now - ls.short_since < patience_s:
                    return None
            return self._want(ls, latest, now, fetch_timeout_s)
        ls.short_since = None
        return None

    def since(self, origin: str, from_seq: int) -> None:
        """Ask for an origin's backlog: deliver from ``from_seq`` on."""
        ls = self.link(origin)
        ls.bcast_seq = max(0, from_seq - 1)
        self._dirty[origin] = None

    def _want(self, ls: LinkSeq, to: int, now: float, fetch_timeout_s: float) -> tuple[int, int] | None:
        """Ask for (next missing .. to), unless a FETCH that covers the next missing one is in flight.

        One FETCH at a time per origin: its replies fill the gap from the
        bottom, and the next arrival or announcement asks for what is left.
        """
        if ls.fetch_to > ls.bcast_seq and now < ls.fetch_deadline:
            return None
        ls.fetch_to = to
        ls.fetch_deadline = now + fetch_timeout_s
        return ls.bcast_seq + 1, to

    def on_broadcast(self, origin: str, bseq: int, fields: tuple, now: float, fetch_timeout_s: float,
                     epoch: str | None = None) -> tuple[list[tuple], tuple[int, int] | None, bool]:
        """Returns (messages to deliver in order, range to FETCH or None, was_duplicate)."""
        ls = self.link(origin)
        if epoch is not None and epoch != ls.bcast_epoch and ls.bcast_epoch is not None:
            self.early.pop(origin, None)
        self._check_epoch(origin, ls, epoch)
        if ls.bcast_seq is None:
            ls.bcast_seq = bseq - 1
        if bseq <= ls.bcast_seq:
            return [], None, True
        if bseq > ls.bcast_seq + 1:
            early = self.early.setdefault(origin, {})
            duplicate = bseq in early
            if len(early) < REORDER_MAX:
                early[bseq] = fields
            return [], self._want(ls, bseq - 1, now, fetch_timeout_s), duplicate
        out = [fields]
        ls.bcast_seq = bseq
        early = self.early.get(origin)
        while early:
            nxt = early.pop(ls.bcast_seq + 1, None)
            if nxt is None:
                break
            out.append(nxt)
            ls.bcast_seq += 1
        if early is not None:
            for stale in [s for s in early if s <= ls.bcast_seq]:
                del early[stale]
        self._dirty[origin] = None
        if ls.fetch_to <= ls.bcast_seq:
            ls.fetch_to = 0
        return out, None, False
