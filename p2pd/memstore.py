"""The message store in plain Python containers: `MemoryStore`, the `Storage` protocol without SQLite.

How this works
--------------
The same tables as store.py, each in the container its queries want:

* outbox     - per peer an `_Outbox`: rows by seq (a dict) and the seqs in order (a list, for
               `bisect`), and the ids (for idempotent sends).  A row is a list so that its
               status and attempts can change in place; its last field is a shout's group.
* messages   - one list of row tuples in row-number order (numbers only grow, so an insert is
               an append), and the (id, sender_id, peer_id) -> n index of the rows that must
               be unique (those stored without ``defer``, as SQLite's partial index).  A row's
               last field is a shout's group (``grp``), None for any other message.
* links, meta, known - dicts in insertion order (the order SQLite's table scans give).
* broadcasts - one list of (seq, id, text, timestamp, created) by seq.

Every query answers as store.py's SQL does, row for row and in the same order (the contract
tests run on both, and a random sequence of calls must give both the same answers).

Durability is modelled, not assumed: every write appends its undo to a journal; `commit()`
empties the journal (the transaction is durable), `crash()` plays it backwards, so that the
store holds exactly what was committed, as SQLite's file does after a kill -9, and the next
process (the simulator's restarted node) opens it as store.py would reopen its file.

No clock, no file, no randomness of its own: times are passed in, and the epoch is drawn from
``randbytes`` (``os.urandom``, or the simulator's seeded ``random.Random(...).randbytes``).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from operator import itemgetter

EXPIRE_BATCH = 256  # expire() reads a peer's pending rows this many at a time (as store.py)

_N = itemgetter(0)  # a message row's number, a broadcast's seq
_ROW_KEYS = ("n", "id", "direction", "type", "peer_id", "sender_id", "sender_name", "target_id", "text", "timestamp", "stored",
             "peer_name", "group")
_OUTBOX_KEYS = ("id", "peer_id", "peer", "seq", "text", "timestamp", "created", "expires", "status", "attempts", "group")
_LINK_KEYS = ("out_seq", "out_acked", "in_seq", "bcast_seq", "in_epoch", "bcast_epoch")
_KNOWN_KEYS = ("id", "name", "addr", "port", "pub_port", "updated")

# outbox row fields (a list: status and attempts change)
_ID, _TEXT, _TS, _CREATED, _EXPIRES, _STATUS, _ATTEMPTS, _GRP = range(8)
# message row fields (a tuple)
_M_N, _M_ID, _M_DIR, _M_TYPE, _M_PEER, _M_SENDER, _M_SENDER_NAME, _M_TARGET, _M_TEXT, _M_TS, _M_STORED, _M_DEDUPE, _M_GRP = range(13)


class _Outbox:
    """One peer's outbox rows."""

    __slots__ = ("rows", "seqs", "ids")

    def __init__(self):
        self.rows: dict[int, list] = {}  # seq -> [id, text, timestamp, created, expires, status, attempts, grp]
        self.seqs: list[int] = []  # in order
        self.ids: dict[str, int] = {}  # id -> seq

    def after(self, seq: int) -> list[int]:
        """The seqs above ``seq``, in order."""
        return self.seqs[bisect_right(self.seqs, seq):]


class MemoryStore:
    """`p2pd.storage.Storage` in memory; see the top of this module.

    ``randbytes(n)``: the source of the epochs (a new store's, and `new_epoch`'s)."""

    def __init__(self, randbytes: Callable[[int], bytes]):
        self._randbytes = randbytes
        self._undo: list[Callable[[], None]] = []
        self._outbox: dict[str, _Outbox] = {}
        self._msgs: list[tuple] = []
        self._unique: dict[tuple, int] = {}
        self._links: dict[str, list] = {}
        self._broadcasts: list[tuple] = []
        self._meta: dict[str, str] = {}
        self._known: dict[str, tuple] = {}
        self._next_n = 1
        self.epoch = ""
        self.new_epoch()
        self.commit()

    # ------------------------------------------------------------------ transactions
    def commit(self) -> None:
        self._undo = []

    def close(self) -> None:
        self.commit()

    def crash(self) -> None:
        """The process died: every write since the last commit is undone, and the store is as the
        next process opens it (store.py's reopen of its file).  Called by the simulator."""
        for undo in reversed(self._undo):
            undo()
        self._undo = []
        top = self._msgs[-1][_M_N] if self._msgs else 0
        self._next_n = max(top + 1, int(self._meta.get("next_n", "1")))
        self.epoch = self._meta["epoch"]

    def new_epoch(self) -> str:
        self.epoch = self._randbytes(8).hex()
        self.set_meta("epoch", self.epoch)
        return self.epoch

    def bind_owner(self, node_id: str) -> bool:
        owner = self.get_meta("owner")
        if owner == node_id:
            return False
        if owner is not None:
            for peer_id, row in self._links.items():
                self._put_link(peer_id, [row[0], row[1], 0, None, None, None])
        self.set_meta("owner", node_id)
        self.commit()
        return owner is not None

    # ------------------------------------------------------------------ links
    def links(self) -> dict[str, dict]:
        return {peer_id: dict(zip(_LINK_KEYS, row)) for peer_id, row in self._links.items()}

    def save_link(self, peer_id: str, out_seq: int, out_acked: int, in_seq: int, bcast_seq: int | None,
                  in_epoch: str | None = None, bcast_epoch: str | None = None) -> None:
        self._put_link(peer_id, [out_seq, out_acked, in_seq, bcast_seq, in_epoch, bcast_epoch])

    def _put_link(self, peer_id: str, row: list) -> None:
        links = self._links
        old = links.get(peer_id)
        if old is None:
            self._undo.append(lambda: links.pop(peer_id))
        else:
            self._undo.append(lambda: links.__setitem__(peer_id, old))  # an update keeps the row's place
        links[peer_id] = row

    def _acked(self, peer_id: str) -> int:
        """The saved out_acked (0 without a link): what makes a row delivered."""
        row = self._links.get(peer_id)
        return row[1] if row is not None else 0

    def _pending_peers(self) -> list[tuple[str, int]]:
        return [(peer_id, row[1]) for peer_id, row in self._links.items() if row[0] > row[1]]

    # ------------------------------------------------------------------ outbox
    def add_outbox(self, peer_id: str, seq: int, msg_id: str, text: str, timestamp: str, created: float, expires: float,
                   group: str | None = None) -> None:
        box = self._outbox.get(peer_id)
        if box is None:
            box = self._outbox[peer_id] = _Outbox()
        if seq in box.rows or msg_id in box.ids:
            raise ValueError(f"outbox row ({peer_id!r}, {seq}, {msg_id!r}) is there already")
        box.rows[seq] = [msg_id, text, timestamp, created, expires, "pending", 0, group]
        box.ids[msg_id] = seq
        if not box.seqs or seq > box.seqs[-1]:
            box.seqs.append(seq)
        else:
            insort(box.seqs, seq)
        self._undo.append(lambda: self._unadd_outbox(box, seq))

    @staticmethod
    def _unadd_outbox(box: _Outbox, seq: int) -> None:
        del box.ids[box.rows.pop(seq)[_ID]]
        if box.seqs[-1] == seq:
            box.seqs.pop()
        else:
            box.seqs.remove(seq)

    def _drop_outbox(self, box: _Outbox, seqs: list[int]) -> list[tuple[int, list]]:
        """Delete these rows of one peer; returns them (seq, row), for an undo."""
        gone = [(seq, box.rows.pop(seq)) for seq in seqs]
        for _, row in gone:
            del box.ids[row[_ID]]
        dropped = set(seqs)
        box.seqs = [s for s in box.seqs if s not in dropped]
        return gone

    def _restore_outbox(self, box: _Outbox, gone: list[tuple[int, list]]) -> None:
        for seq, row in gone:
            box.rows[seq] = row
            box.ids[row[_ID]] = seq
        box.seqs = sorted(box.rows)

    def _delete_outbox(self, box: _Outbox, seqs: list[int]) -> int:
        if seqs:
            gone = self._drop_outbox(box, seqs)
            self._undo.append(lambda: self._restore_outbox(box, gone))
        return len(seqs)

    def _set_status(self, row: list, status: str) -> None:
        old = row[_STATUS]
        row[_STATUS] = status
        self._undo.append(lambda: row.__setitem__(_STATUS, old))

    def pending_after(self, peer_id: str, after_seq: int, limit: int) -> list[tuple]:
        box = self._outbox.get(peer_id)
        if box is None:
            return []
        out = []
        seqs, rows = box.seqs, box.rows
        for k in range(bisect_right(seqs, after_seq), len(seqs)):
            if len(out) >= limit:
                break
            row = rows[seqs[k]]
            if row[_STATUS] == "pending":
                out.append((seqs[k], row[_ID], row[_TEXT], row[_TS], row[_GRP]))
        return out

    def _between(self, peer_id: str, after_seq: int, upto_seq: int) -> list[tuple[int, list]]:
        """A peer's rows after_seq < seq <= upto_seq, in order: (seq, row)."""
        box = self._outbox.get(peer_id)
        if box is None:
            return []
        seqs = box.seqs
        return [(s, box.rows[s]) for s in seqs[bisect_right(seqs, after_seq):bisect_right(seqs, upto_seq)]]

    def mark_delivered(self, peer_id: str, upto_seq: int, now: float, after_seq: int = 0) -> list[str]:
        return [row[_ID] for _, row in self._between(peer_id, after_seq, upto_seq) if row[_STATUS] == "pending"]

    def count_pending(self, peer_id: str, after_seq: int, upto_seq: int) -> int:
        expired = sum(1 for _, row in self._between(peer_id, after_seq, upto_seq) if row[_STATUS] == "expired")
        return upto_seq - after_seq - expired

    def count_attempt(self, peer_id: str, from_seq: int, to_seq: int) -> None:
        rows = [row for _, row in self._between(peer_id, from_seq - 1, to_seq)]
        for row in rows:
            row[_ATTEMPTS] += 1

        def undo():
            for row in rows:
                row[_ATTEMPTS] -= 1
        self._undo.append(undo)

    def expire(self, now: float, pending: list[tuple[str, int]] | None = None) -> list[tuple]:
        out = []
        for peer_id, acked in self._pending_peers() if pending is None else pending:
            after = acked
            while True:
                rows = self.pending_after(peer_id, after, EXPIRE_BATCH)
                overdue = []
                for seq, msg_id, *_ in rows:
                    row = self._outbox[peer_id].rows[seq]
                    if row[_EXPIRES] <= now:
                        self._set_status(row, "expired")
                        overdue.append((peer_id, seq, msg_id))
                out += overdue
                if len(overdue) < EXPIRE_BATCH:
                    break
                after = rows[-1][0]
        return out

    def _status(self, peer_id: str, seq: int, row: list) -> str:
        if row[_STATUS] == "expired":
            return "expired"
        return "delivered" if seq <= self._acked(peer_id) else "pending"

    def _outbox_row(self, peer_id: str, seq: int, row: list) -> tuple:
        known = self._known.get(peer_id)
        return (row[_ID], peer_id, known[0] if known is not None else None, seq, row[_TEXT], row[_TS], row[_CREATED],
                row[_EXPIRES], self._status(peer_id, seq, row), row[_ATTEMPTS], row[_GRP])

    def outbox(self, statuses: tuple[str, ...] = ("pending", "expired"), limit: int = 1000,
               links: list[tuple[str, int, int]] | None = None) -> list[dict]:
        rows = []
        if links is None:
            links = [(peer_id, row[0], row[1]) for peer_id, row in self._links.items() if row[0] > 0]
        if "pending" in statuses:
            for peer_id, out_seq, acked in links:
                if out_seq > acked:
                    for seq, *_ in self.pending_after(peer_id, acked, limit):
                        rows.append(self._outbox_row(peer_id, seq, self._outbox[peer_id].rows[seq]))
        if "expired" in statuses:
            expired = [(peer_id, seq, row) for peer_id, box in self._outbox.items() for seq, row in box.rows.items()
                       if row[_STATUS] == "expired"]
            expired.sort(key=lambda r: (r[0], r[1]))
            rows += [self._outbox_row(*r) for r in expired[:limit]]
        if "delivered" in statuses:
            for peer_id, _, _ in links:
                delivered = [(seq, row) for seq, row in self._between(peer_id, -1, self._acked(peer_id))
                             if row[_STATUS] != "expired"]
                rows += [self._outbox_row(peer_id, seq, row) for seq, row in delivered[::-1][:limit]]  # the newest
        rows.sort(key=lambda r: (r[6], r[1], r[3]))
        return [dict(zip(_OUTBOX_KEYS, r)) for r in rows[:limit]]

    def expired_after(self, peer_id: str, after_seq: int) -> int:
        box = self._outbox.get(peer_id)
        if box is None:
            return 0
        return sum(1 for seq in box.after(after_seq) if box.rows[seq][_STATUS] == "expired")

    def outbox_ids(self, peer_id: str, ids: list[str]) -> set[str]:
        box = self._outbox.get(peer_id)
        return {i for i in ids if i in box.ids} if box is not None else set()

    def outbox_status(self, peer_id: str, msg_id: str) -> str | None:
        box = self._outbox.get(peer_id)
        seq = box.ids.get(msg_id) if box is not None else None
        return self._status(peer_id, seq, box.rows[seq]) if seq is not None else None

    # ------------------------------------------------------------------ conversation
    def add_message(self, direction: str, type_: str, msg_id: str, peer_id: str | None, sender_id: str, sender_name: str,
                    target_id: str | None, text: str, timestamp: str, now: float, defer: bool = False, dedupe: bool = False,
                    group: str | None = None) -> int:
        n = self._next_n
        unique = not defer or dedupe
        key = (msg_id, sender_id, peer_id)
        if unique and peer_id is not None and key in self._unique:  # SQLite's unique index: NULLs never clash
            if defer:
                self._next_n += 1  # INSERT OR IGNORE of a queued row: its number was handed out
                return n
            return 0
        self._next_n += 1
        self._msgs.append((n, msg_id, direction, type_, peer_id, sender_id, sender_name, target_id, text, timestamp, now,
                           1 if unique else None, group))
        if unique and peer_id is not None:
            self._unique[key] = n
            self._undo.append(lambda: self._unique.pop(key))
        self._undo.append(self._msgs.pop)
        return n

    @property
    def last_cursor(self) -> int:
        return self._next_n - 1

    def _row(self, m: tuple) -> dict:
        known = self._known.get(m[_M_PEER]) if m[_M_PEER] is not None else None
        return dict(zip(_ROW_KEYS, (*m[:_M_DEDUPE], known[0] if known is not None else None, m[_M_GRP])))

    def _after(self, cursor: int) -> int:
        """The index of the first message with n > cursor."""
        return bisect_right(self._msgs, cursor, key=_N)

    def messages_after(self, cursor: int, direction: str = "in", limit: int = 10_000, group: str | None = None) -> list[dict]:
        out = []
        msgs = self._msgs
        for k in range(self._after(cursor), len(msgs)):
            if len(out) >= limit:
                break
            if msgs[k][_M_DIR] == direction and (group is None or msgs[k][_M_GRP] == group):
                out.append(self._row(msgs[k]))
        return out

    def count_after(self, cursor: int, direction: str = "in", upto: int | None = None, group: str | None = None) -> int:
        msgs = self._msgs
        end = len(msgs) if upto is None else bisect_right(msgs, upto, key=_N)
        return sum(1 for k in range(self._after(cursor), end)
                   if msgs[k][_M_DIR] == direction and (group is None or msgs[k][_M_GRP] == group))

    def own_shouts_since(self, group: str, since_epoch_s: float, limit: int) -> list[tuple]:
        out = []
        for m in self._msgs[self._first_stored_at(since_epoch_s):]:
            if len(out) >= limit:
                break
            if m[_M_DIR] == "out" and m[_M_GRP] == group:
                out.append((m[_M_ID], m[_M_TEXT], m[_M_TS]))
        return out

    def has_message(self, msg_id: str, sender_id: str) -> bool:
        return any(m[_M_ID] == msg_id and m[_M_SENDER] == sender_id for m in self._msgs)

    def broadcast_ids_since(self, origin: str, when: float) -> set[str]:
        msgs = self._msgs
        return {m[_M_ID] for m in msgs[self._first_stored_at(when):]
                if m[_M_PEER] == origin and m[_M_DIR] == "in" and m[_M_TYPE] == "BROADCAST"}

    def history(self, peer_id: str | None = None, since: float | None = None, limit: int = 0, direction: str | None = None,
                after: int | None = None, group: str | None = None) -> list[dict]:
        msgs = self._msgs
        start = 0
        if after is not None:
            start = self._after(after)
        if since is not None:
            start = max(start, self._first_stored_at(since))
        out = []
        for k in range(len(msgs) - 1, start - 1, -1):
            m = msgs[k]
            if (peer_id is None or m[_M_PEER] == peer_id) and (direction is None or m[_M_DIR] == direction) \
                    and (group is None or m[_M_GRP] == group):
                out.append(m)
                if len(out) == limit:
                    break
        return [self._row(m) for m in reversed(out)]

    def _first_stored_at(self, when: float) -> int:
        """The index of the first message stored at or after ``when`` (len if none): a binary
        search, as store.py's (row numbers grow with ``stored``)."""
        msgs = self._msgs
        lo, hi = 0, len(msgs)
        while lo < hi:
            mid = (lo + hi) // 2
            if msgs[mid][_M_STORED] < when:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _delete_messages(self, upto: int) -> int:
        """Delete the oldest ``upto`` messages (index < upto)."""
        if upto <= 0:
            return 0
        gone = self._msgs[:upto]
        del self._msgs[:upto]
        keys = [(m[_M_ID], m[_M_SENDER], m[_M_PEER]) for m in gone if m[_M_DEDUPE] is not None and m[_M_PEER] is not None]
        unique = self._unique
        dropped = {k: unique.pop(k) for k in keys}

        def undo():
            self._msgs[:0] = gone
            unique.update(dropped)
        self._undo.append(undo)
        return len(gone)

    # ------------------------------------------------------------------ own broadcasts
    def add_broadcast(self, seq: int, msg_id: str, text: str, timestamp: str, now: float) -> None:
        row = (seq, msg_id, text, timestamp, now)
        bc = self._broadcasts
        if bc and seq <= bc[-1][0]:
            if bc[bisect_left(bc, seq, key=_N)][0] == seq:
                raise ValueError(f"broadcast {seq} is there already")
            insort(bc, row, key=_N)
            self._undo.append(lambda: bc.remove(row))
        else:
            bc.append(row)
            self._undo.append(bc.pop)

    def broadcast_range(self, from_seq: int, to_seq: int, limit: int) -> list[tuple]:
        bc = self._broadcasts
        lo = bisect_left(bc, from_seq, key=_N)
        hi = min(bisect_right(bc, to_seq, key=_N), lo + max(limit, 0))
        return [r[:4] for r in bc[lo:hi]]

    def first_broadcast_since(self, epoch: float) -> int | None:
        return min((r[0] for r in self._broadcasts if r[4] >= epoch), default=None)

    def newest_broadcast(self) -> int | None:
        return self._broadcasts[-1][0] if self._broadcasts else None

    def oldest_broadcast(self) -> int | None:
        return self._broadcasts[0][0] if self._broadcasts else None

    def _keep_broadcasts(self, keep: Callable[[int, tuple], bool]) -> int:
        old = self._broadcasts
        new = [r for k, r in enumerate(old) if keep(k, r)]
        if len(new) == len(old):
            return 0
        self._broadcasts = new
        self._undo.append(lambda: setattr(self, "_broadcasts", old))
        return len(old) - len(new)

    # ------------------------------------------------------------------ our own counters
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        return self._meta.get(key, default)

    def set_meta(self, key: str, value: str) -> None:
        meta = self._meta
        if key in meta:
            old = meta[key]
            self._undo.append(lambda: meta.__setitem__(key, old))
        else:
            self._undo.append(lambda: meta.pop(key))
        meta[key] = value

    # ------------------------------------------------------------------ address book
    def remember_peer(self, peer_id: str, name: str, addr: str | None, port: int, pub_port: int, now: float) -> None:
        known = self._known
        old = known.get(peer_id)
        if old is None:
            self._undo.append(lambda: known.pop(peer_id))
        else:
            self._undo.append(lambda: known.__setitem__(peer_id, old))
        known[peer_id] = (name, addr, port, pub_port, now)

    def known_peers(self) -> list[dict]:
        rows = sorted(((peer_id, *row) for peer_id, row in self._known.items()), key=lambda r: (r[1], r[0]))
        return [dict(zip(_KNOWN_KEYS, r)) for r in rows]

    # ------------------------------------------------------------------ retention
    def prune(self, now: float, max_age_s: float, max_messages: int, budget: int = 100_000) -> int:
        cutoff = now - max_age_s
        self.set_meta("next_n", str(self._next_n))  # row numbers go on from here, whatever is deleted
        msgs = self._msgs
        n = 0
        if msgs:  # by age, and at most the row numbers [lowest, lowest + budget)
            n += self._delete_messages(min(self._first_stored_at(cutoff), bisect_left(msgs, msgs[0][_M_N] + budget, key=_N)))
        for peer_id, box in list(self._outbox.items()):
            acked, upto = self._acked(peer_id), []
            for seq in box.seqs[:max(budget, 0)]:
                row = box.rows[seq]
                if row[_CREATED] >= cutoff or (seq > acked and row[_STATUS] != "expired"):
                    break  # rows are in the order they were queued: the rest are newer, or pending
                upto.append(seq)
            n += self._delete_outbox(box, upto)
        for box in list(self._outbox.values()):
            n += self._delete_outbox(box, [seq for seq in box.seqs
                                           if box.rows[seq][_STATUS] == "expired" and box.rows[seq][_CREATED] < cutoff])
        n += self._keep_broadcasts(lambda k, r: r[4] >= cutoff)
        msgs = self._msgs
        if len(msgs) > max_messages:
            n += self._delete_messages(min(len(msgs) - max_messages, budget))
        excess = len(self._broadcasts) - max_messages
        if excess > 0:
            n += self._keep_broadcasts(lambda k, r: k >= excess)
        return n
