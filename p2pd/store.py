"""The message store: outbox, history, sequence counters and own broadcasts, in SQLite.

How this works
--------------
One SQLite file (``store.db`` in the home, WAL mode) holds everything that
must survive a restart or a kill -9:

* ``outbox``     - direct messages we sent, numbered per peer (``seq``).  A row
                   is delivered once the peer's cumulative ACK covers its seq
                   (``links.out_acked``), expired when given up, else pending.
                   A group's shout goes to each member as one such row, which
                   names its group in ``grp``.
* ``messages``   - the conversation: every message sent and received (the
                   inbox is the received part).  ``id`` is unique, so a
                   duplicate can never be stored twice.  ``grp`` is the group
                   of a shout (an open group's name, or "~" and 32 hex digits
                   for a private group's id), NULL for any other message.
* ``links``      - per peer: the last seq we numbered for it, the highest it
                   acknowledged, the highest seq we received from it, and the
                   last of its broadcast numbers we delivered.
* ``broadcasts`` - our own broadcasts, numbered, kept so that peers that missed
                   some (slow joiner, high-water-mark drop, restart) can fetch them.
* ``meta``       - our own counters (the last broadcast number), which must
                   never go backwards even when old broadcasts are pruned, and
                   the store's ``epoch``, the name our numbering belongs to.
* ``known``      - the address book of every peer we have linked, so a message
                   to a peer that is offline or has left can still be queued.

The caller groups writes: nothing is committed until `commit()`, which the
event loop calls once per batch of input, *before* it sends any reply, ACK or
event that depends on those writes (write-ahead: nothing is acknowledged that
is not on disk).  ``synchronous=NORMAL`` in WAL mode survives a killed
process; ``durability = "full"`` also survives power loss, at a cost.

The node core sees this class only as `p2pd.storage.Storage` (the contract); memstore.py is
the same store in memory, for the simulator.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    peer_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',  -- 'pending' or 'expired'; delivered is seq <= links.out_acked
    attempts INTEGER NOT NULL DEFAULT 0,  -- retransmissions
    grp TEXT,  -- the group of a shout, NULL for a direct message
    PRIMARY KEY (peer_id, seq),
    UNIQUE (peer_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_expired ON outbox(peer_id, seq) WHERE status = 'expired';
CREATE TABLE IF NOT EXISTS messages (
    n INTEGER PRIMARY KEY,  -- grows with time: age queries search it instead of keeping an index on ``stored``
    id TEXT NOT NULL,
    direction TEXT NOT NULL,
    type TEXT NOT NULL,
    peer_id TEXT,
    sender_id TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    target_id TEXT,
    text TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    stored REAL NOT NULL,
    dedupe INTEGER,  -- 1: unique by id (see messages_dedupe); NULL: made unique by a sequence number
    grp TEXT  -- the group of a shout, NULL for a direct message or a broadcast
);
-- No index on (peer_id, n): it was a third of the cost of storing a message, and the queries
-- by peer walk the table from the newest row (history) or from a row number (a replay) anyway.
-- Stores made before December 2026 have it: dropped at open (an older p2pd makes it again).
DROP INDEX IF EXISTS messages_peer;
-- Only rows nothing else keeps unique are indexed by id: messages from peers that send no
-- sequence numbers.  Numbered messages are deduplicated by their number (delivery.py), our
-- own by the outbox's (peer_id, id); one index fewer per stored message.
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedupe ON messages(id, sender_id, peer_id) WHERE dedupe IS NOT NULL;
CREATE TABLE IF NOT EXISTS links (
    peer_id TEXT PRIMARY KEY,
    out_seq INTEGER NOT NULL DEFAULT 0,
    out_acked INTEGER NOT NULL DEFAULT 0,
    in_seq INTEGER NOT NULL DEFAULT 0,
    bcast_seq INTEGER,
    in_epoch TEXT,
    bcast_epoch TEXT
);
CREATE TABLE IF NOT EXISTS broadcasts (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS known (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    addr TEXT,
    port INTEGER NOT NULL,
    pub_port INTEGER NOT NULL,
    updated REAL NOT NULL
);
"""


_OUTBOX_INSERT = "INSERT INTO outbox(peer_id, seq, id, text, timestamp, created, expires, grp) VALUES (?,?,?,?,?,?,?,?)"
_MESSAGE_INSERT = ("INSERT OR IGNORE INTO messages(n, id, direction, type, peer_id, sender_id, sender_name, target_id, text, timestamp, "
                   "stored, dedupe, grp) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)")

SCHEMA_VERSION = 3  # bump with a migration in MIGRATIONS whenever SCHEMA changes

# Format 1 -> 2: fewer indexes to update per stored message (docs/PERFORMANCE.md):
# no index on messages.stored or on outbox(status, expires), no AUTOINCREMENT,
# uniqueness by id only for messages that carry no sequence number (every
# message kept from format 1 is marked so: its origin is not known).
# Format 2 -> 3: groups; outbox rows and messages name the group of a shout (``grp``, NULL for
# everything stored before).  ADD COLUMN only writes the schema: quick on any size of store.
MIGRATIONS = {
    1: """
DROP INDEX IF EXISTS outbox_status;
DROP INDEX IF EXISTS messages_stored;
CREATE TABLE messages_v2 (
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    direction TEXT NOT NULL,
    type TEXT NOT NULL,
    peer_id TEXT,
    sender_id TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    target_id TEXT,
    text TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    stored REAL NOT NULL,
    dedupe INTEGER
);
INSERT INTO messages_v2 SELECT n, id, direction, type, peer_id, sender_id, sender_name, target_id, text, timestamp, stored, 1 FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;
DELETE FROM sqlite_sequence WHERE name = 'messages';
""",
    2: """
ALTER TABLE outbox ADD COLUMN grp TEXT;
ALTER TABLE messages ADD COLUMN grp TEXT;
""",
}


class StoreError(RuntimeError):
    pass


class StoreDamaged(StoreError):
    """The store file is not a sound SQLite database; the message names the file and the fix."""


def damaged(path: str, why: str) -> StoreDamaged:
    why = " ".join(why.replace("*** in database main ***", "").split())[:200]  # quick_check's report spans lines
    return StoreDamaged(f"the message store {path} is damaged ({why}); restore it from a backup (docs/OPERATIONS.md, Restoring), "
                        f"or move it aside (with its -wal and -shm files) and start with --fresh-store to begin an empty one")


# SQLITE_CORRUPT ("database disk image is malformed") and SQLITE_NOTADB ("file is not a database")
DAMAGED_CODES = (getattr(sqlite3, "SQLITE_CORRUPT", 11), getattr(sqlite3, "SQLITE_NOTADB", 26))
QUICK_CHECK_S = 10.0  # at most this long for the integrity check at start; a larger store is checked only that far


class Store:
    """`p2pd.storage.Storage` in SQLite (the contract is there; this adds files, WAL, checks, migration)."""

    def __init__(self, path: str | Path, durability: str = "normal", before_migration=None, check_s: float | None = None,
                 randbytes: Callable[[int], bytes] = os.urandom):
        """``before_migration(old_format, new_format)`` is called before an older store is migrated
        (which can take a while: the daemon tells systemd to wait, and logs it).  ``check_s``: run
        SQLite's ``quick_check`` first, for at most that long (`check`); the daemon does, so that a
        damaged store is refused at start instead of failing requests and ticks for ever after.
        Any damage SQLite reports while opening raises `StoreDamaged`.  ``randbytes(n)``: where
        the epochs come from (the only randomness here)."""
        self.path = str(path)
        self._randbytes = randbytes
        self.checked: bool | None = None  # quick_check: True passed, False ran out of time, None not run
        try:
            self._open(durability, before_migration, check_s)
        except sqlite3.DatabaseError as e:
            if (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF not in DAMAGED_CODES:  # extended codes keep the primary one in the low byte
                raise  # locked, unreadable, disk full ...: not the file's fault
            try:
                self.db.close()
            except Exception:
                pass
            raise damaged(self.path, str(e)) from None

    def check(self, max_s: float) -> bool:
        """``PRAGMA quick_check`` (every page and record, not the indexes' contents: linear in the file's
        size, about a second per GB on an SSD), stopped after ``max_s``.  Raises `StoreDamaged` with
        SQLite's first complaint; returns False if time ran out first (the check was partial)."""
        import threading
        import time

        # Both: the B-tree walk is one VM instruction, which only sqlite3_interrupt() (from another
        # thread; the connection allows it) stops midway; the row scans that follow for NOT NULL
        # constraints are many instructions, between which the progress handler is asked.
        stop_at = time.monotonic() + max_s
        self.db.set_progress_handler(lambda: time.monotonic() > stop_at, 1_000)
        timer = threading.Timer(max_s, self.db.interrupt)
        timer.daemon = True
        timer.start()
        try:
            rows = self.db.execute("PRAGMA quick_check(1)").fetchall()
        except sqlite3.OperationalError as e:
            if "interrupted" in str(e):
                return False
            raise
        finally:
            timer.cancel()
            timer.join()
            self.db.set_progress_handler(None, 0)
        if rows != [("ok",)]:
            raise damaged(self.path, f"integrity check: {rows[0][0] if rows else 'no result'}")
        return True

    def _open(self, durability: str, before_migration, check_s: float | None) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if check_s is not None:
            self.checked = self.check(check_s)  # before anything is written to it
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        self.db.execute("PRAGMA foreign_keys=OFF")
        # Checkpoint the WAL into the database every 4,000 pages (16 MB at most) instead of
        # SQLite's 1,000: fewer, larger checkpoints cost a fifth less per stored message.
        self.db.execute("PRAGMA wal_autocheckpoint=4000")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        has_tables = self.db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type='table'").fetchone()[0] > 0
        if has_tables and version in MIGRATIONS:
            if before_migration is not None:
                before_migration(version, SCHEMA_VERSION)
            self._migrate(version)
        elif version > SCHEMA_VERSION or (has_tables and version < SCHEMA_VERSION):
            self.db.close()
            raise StoreError(f"{self.path} has store format {version}, this p2pd reads format {SCHEMA_VERSION}; "
                             f"move the file away to start an empty store (its messages stay readable with sqlite3)")
        self.db.executescript(SCHEMA)
        self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._in_tx = False
        self._outbox_rows: list[tuple] = []
        self._message_rows: list[tuple] = []
        self._broadcast_rows: list[tuple] = []
        if self.path != ":memory:":
            for suffix in ("", "-wal", "-shm"):
                try:
                    Path(self.path + suffix).chmod(0o600)  # messages are private
                except OSError:
                    pass
        # Row numbers are handed out here, not by SQLite, so that a message has its number (the
        # cursor of `watch` and `read`) as soon as it is queued; never reused, even after a prune
        # emptied the table (the high-water mark is kept in meta).
        top = self._read("SELECT MAX(n) FROM messages").fetchone()[0] or 0
        self._next_n = max(top + 1, int(self.get_meta("next_n", "1")))
        self.epoch = self.get_meta("epoch")
        if self.epoch is None:
            self.new_epoch()
            self.commit()

    def new_epoch(self) -> str:
        """Name this store afresh (written with the next commit).  The epoch names the store: a
        peer that sees another epoch knows our numbering restarted (store lost, or found to have
        gone back in time) and resynchronises."""
        self.epoch = self._randbytes(8).hex()
        self.set_meta("epoch", self.epoch)
        return self.epoch

    def _migrate(self, version: int) -> None:
        """Bring an older store up to SCHEMA_VERSION, each step in one transaction."""
        while version < SCHEMA_VERSION:
            self.db.executescript(f"BEGIN; {MIGRATIONS[version]} PRAGMA user_version={version + 1}; COMMIT;")
            version += 1

    # ------------------------------------------------------------------ transactions
    def _begin(self) -> None:
        if not self._in_tx:
            self.db.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        self._flush()
        if self._in_tx:
            self.db.execute("COMMIT")
            self._in_tx = False

    def close(self) -> None:
        self.commit()
        self.db.close()

    def _write(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        self._flush()
        self._begin()
        return self.db.execute(sql, args)

    def _read(self, sql: str, args: tuple | list = ()) -> sqlite3.Cursor:
        self._flush()
        return self.db.execute(sql, args)

    def _flush(self) -> None:
        """Write the rows queued by ``defer=True`` adds, one executemany per table.

        A loop turn that stores a batch of messages then costs one call into
        SQLite per table instead of one per row; every read and write goes
        through here first, so queued rows are never invisible to a query.
        """
        if self._outbox_rows:
            self._begin()
            self.db.executemany(_OUTBOX_INSERT, self._outbox_rows)
            self._outbox_rows = []
        if self._message_rows:
            self._begin()
            self.db.executemany(_MESSAGE_INSERT, self._message_rows)
            self._message_rows = []
        if self._broadcast_rows:
            self._begin()
            self.db.executemany("INSERT INTO broadcasts(seq, id, text, timestamp, created) VALUES (?,?,?,?,?)", self._broadcast_rows)
            self._broadcast_rows = []

    # ------------------------------------------------------------------ links (sequence counters)
    def links(self) -> dict[str, dict]:
        rows = self._read("SELECT peer_id, out_seq, out_acked, in_seq, bcast_seq, in_epoch, bcast_epoch FROM links").fetchall()
        keys = ("out_seq", "out_acked", "in_seq", "bcast_seq", "in_epoch", "bcast_epoch")
        return {r[0]: dict(zip(keys, r[1:])) for r in rows}

    def save_link(self, peer_id: str, out_seq: int, out_acked: int, in_seq: int, bcast_seq: int | None,
                  in_epoch: str | None = None, bcast_epoch: str | None = None) -> None:
        self._write(
            "INSERT INTO links(peer_id, out_seq, out_acked, in_seq, bcast_seq, in_epoch, bcast_epoch) VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT(peer_id) DO UPDATE SET out_seq=excluded.out_seq, out_acked=excluded.out_acked, "
            "in_seq=excluded.in_seq, bcast_seq=excluded.bcast_seq, in_epoch=excluded.in_epoch, bcast_epoch=excluded.bcast_epoch",
            (peer_id, out_seq, out_acked, in_seq, bcast_seq, in_epoch, bcast_epoch),
        )

    # ------------------------------------------------------------------ outbox
    def add_outbox(self, peer_id: str, seq: int, msg_id: str, text: str, timestamp: str, created: float, expires: float,
                   group: str | None = None) -> None:
        """Queue one outbox row (``group``: a shout's); written with the next read, write or commit."""
        self._outbox_rows.append((peer_id, seq, msg_id, text, timestamp, created, expires, group))

    def pending_after(self, peer_id: str, after_seq: int, limit: int) -> list[tuple]:
        """Pending rows for a peer with seq > after_seq, oldest first: (seq, id, text, timestamp, group)."""
        return self._read(
            "SELECT seq, id, text, timestamp, grp FROM outbox WHERE peer_id=? AND seq>? AND status='pending' ORDER BY seq LIMIT ?",
            (peer_id, after_seq, limit),
        ).fetchall()

    def mark_delivered(self, peer_id: str, upto_seq: int, now: float, after_seq: int = 0) -> list[str]:
        """Ids of the pending rows after_seq < seq <= upto_seq, which an ACK just covered.

        Nothing is written per row: a row is delivered because its seq is at
        or below the peer's ``links.out_acked``, saved with the same batch.
        That keeps an ACK of N messages one small write instead of N.
        """
        return [r[0] for r in self._read(
            "SELECT id FROM outbox WHERE peer_id=? AND seq>? AND seq<=? AND status='pending'", (peer_id, after_seq, upto_seq)).fetchall()]

    def count_pending(self, peer_id: str, after_seq: int, upto_seq: int) -> int:
        """How many rows after_seq < seq <= upto_seq are not expired: all of them, unless some expired."""
        expired = self._read("SELECT COUNT(*) FROM outbox WHERE peer_id=? AND seq>? AND seq<=? AND status='expired'",
                             (peer_id, after_seq, upto_seq)).fetchone()[0]
        return upto_seq - after_seq - expired

    def count_attempt(self, peer_id: str, from_seq: int, to_seq: int) -> None:
        """Count a retransmission of seq from_seq..to_seq (shown by `p2pctl outbox`)."""
        self._write("UPDATE outbox SET attempts=attempts+1 WHERE peer_id=? AND seq BETWEEN ? AND ?", (peer_id, from_seq, to_seq))

    def _pending_peers(self) -> list[tuple[str, int]]:
        """(peer_id, out_acked) of every peer that may have pending rows."""
        return self._read("SELECT peer_id, out_acked FROM links WHERE out_seq > out_acked").fetchall()

    def expire(self, now: float, pending: list[tuple[str, int]] | None = None) -> list[tuple]:
        """Mark undelivered rows past their expiry; returns (peer_id, seq, id) of each.

        ``pending``: (peer_id, out_acked) of the peers with unacknowledged
        rows (default: as saved in ``links``).  A peer's rows expire in seq
        order (each gets the same lifetime when it is queued), so only the
        oldest pending rows of each peer are read.
        """
        out = []
        for peer_id, acked in self._pending_peers() if pending is None else pending:
            after = acked
            while True:
                rows = self._read("SELECT seq, id, expires FROM outbox WHERE peer_id=? AND seq>? AND status='pending' ORDER BY seq LIMIT 256",
                                  (peer_id, after)).fetchall()
                overdue = [(peer_id, seq, msg_id) for seq, msg_id, expires in rows if expires <= now]
                for _, seq, _ in overdue:
                    self._write("UPDATE outbox SET status='expired' WHERE peer_id=? AND seq=?", (peer_id, seq))
                out += overdue
                if len(overdue) < 256:
                    break
                after = rows[-1][0]
        return out

    _OUTBOX_COLS = ("SELECT o.id, o.peer_id, k.name, o.seq, o.text, o.timestamp, o.created, o.expires, "
                    "CASE WHEN o.status='expired' THEN 'expired' WHEN o.seq<=COALESCE(l.out_acked, 0) THEN 'delivered' ELSE 'pending' END, "
                    "o.attempts, o.grp FROM outbox o LEFT JOIN known k ON k.id=o.peer_id LEFT JOIN links l ON l.peer_id=o.peer_id ")

    def outbox(self, statuses: tuple[str, ...] = ("pending", "expired"), limit: int = 1000,
               links: list[tuple[str, int, int]] | None = None) -> list[dict]:
        """Outbox rows with the given statuses, oldest first (each query walks one peer's rows by seq).

        ``links``: (peer_id, out_seq, out_acked) of every peer we numbered
        messages for, from memory (default: as saved in ``links``).
        """
        rows = []
        if links is None:
            links = self._read("SELECT peer_id, out_seq, out_acked FROM links WHERE out_seq > 0").fetchall()
        peers = [(peer_id,) for peer_id, _, _ in links] if "delivered" in statuses else []
        if "pending" in statuses:
            for peer_id, acked in [(p, acked) for p, out_seq, acked in links if out_seq > acked]:
                rows += self._read(self._OUTBOX_COLS + "WHERE o.peer_id=? AND o.seq>? AND o.status='pending' ORDER BY o.seq LIMIT ?",
                                   (peer_id, acked, limit)).fetchall()
        if "expired" in statuses:
            rows += self._read(self._OUTBOX_COLS + "WHERE o.status='expired' ORDER BY o.peer_id, o.seq LIMIT ?", (limit,)).fetchall()
        for (peer_id,) in peers:
            rows += self._read(self._OUTBOX_COLS + "WHERE o.peer_id=? AND o.seq<=COALESCE(l.out_acked, 0) AND o.status!='expired' "
                               "ORDER BY o.seq DESC LIMIT ?", (peer_id, limit)).fetchall()
        rows.sort(key=lambda r: (r[6], r[1], r[3]))
        keys = ("id", "peer_id", "peer", "seq", "text", "timestamp", "created", "expires", "status", "attempts", "group")
        return [dict(zip(keys, r)) for r in rows[:limit]]

    def expired_after(self, peer_id: str, after_seq: int) -> int:
        """How many of a peer's rows with seq > after_seq expired."""
        return self._read("SELECT COUNT(*) FROM outbox WHERE peer_id=? AND seq>? AND status='expired'", (peer_id, after_seq)).fetchone()[0]

    def outbox_ids(self, peer_id: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` are in the outbox for this peer already (a retried send)."""
        found: set[str] = set()
        for k in range(0, len(ids), 500):  # SQLite allows 999 parameters per statement
            chunk = ids[k:k + 500]
            found.update(r[0] for r in self._read(
                f"SELECT id FROM outbox WHERE peer_id=? AND id IN ({','.join('?' * len(chunk))})", [peer_id, *chunk]))
        return found

    def outbox_status(self, peer_id: str, msg_id: str) -> str | None:
        row = self._read(self._OUTBOX_COLS + "WHERE o.peer_id=? AND o.id=?", (peer_id, msg_id)).fetchone()
        return row[8] if row else None

    # ------------------------------------------------------------------ conversation
    def add_message(self, direction: str, type_: str, msg_id: str, peer_id: str | None, sender_id: str, sender_name: str,
                    target_id: str | None, text: str, timestamp: str, now: float, defer: bool = False, dedupe: bool = False,
                    group: str | None = None) -> int:
        """Store one message (``group``: a shout's); its row number (the event cursor, > 0), or 0
        if a message with this id is already stored.

        ``defer=True`` queues the row for one batched insert and returns its number
        without checking: for callers that already know it is new (numbered
        by a sequence that rejected duplicates, or an id we just made).  Such
        rows are not in the id index unless ``dedupe``; the others are, and
        their id is unique.  A deferred duplicate with ``dedupe`` is dropped by
        the batched INSERT OR IGNORE, and its number stays unused.
        """
        n = self._next_n
        self._next_n += 1
        if defer:
            self._message_rows.append((n, msg_id, direction, type_, peer_id, sender_id, sender_name, target_id, text, timestamp, now,
                                       1 if dedupe else None, group))
            return n
        row = (n, msg_id, direction, type_, peer_id, sender_id, sender_name, target_id, text, timestamp, now, 1, group)
        if self._write(_MESSAGE_INSERT, row).rowcount == 1:
            return n
        self._next_n = n  # a duplicate: nothing took the number
        return 0

    @property
    def last_cursor(self) -> int:
        """The row number of the newest message stored (or queued): 0 if none ever was."""
        return self._next_n - 1

    def messages_after(self, cursor: int, direction: str = "in", limit: int = 10_000, group: str | None = None) -> list[dict]:
        """The first ``limit`` messages with a row number above ``cursor``, oldest first (a watcher
        catching up); ``group``: only that group's."""
        if group is None:
            return self._rows("WHERE m.n>? AND m.direction=? ORDER BY m.n LIMIT ?", (cursor, direction, limit))
        return self._rows("WHERE m.n>? AND m.direction=? AND m.grp=? ORDER BY m.n LIMIT ?", (cursor, direction, group, limit))

    def count_after(self, cursor: int, direction: str = "in", upto: int | None = None, group: str | None = None) -> int:
        """Messages with a row number above ``cursor`` (and at most ``upto``; of ``group`` only, if given)."""
        sql, args = "SELECT COUNT(*) FROM messages WHERE n>? AND direction=?", [cursor, direction]
        if upto is not None:
            sql += " AND n<=?"
            args.append(upto)
        if group is not None:
            sql += " AND grp=?"
            args.append(group)
        return self._read(sql, args).fetchone()[0]

    def own_shouts_since(self, group: str, since_epoch_s: float, limit: int) -> list[tuple]:
        """Our shouts to ``group`` stored at or after ``since_epoch_s``, oldest first, at most ``limit``:
        (id, text, timestamp), to replay to a member that joins asking for the past.  Walks the
        rows from the first stored then (found by number), without an index on grp."""
        return self._read("SELECT id, text, timestamp FROM messages WHERE n>=? AND direction='out' AND grp=? ORDER BY n LIMIT ?",
                          (self._first_n_stored_at(since_epoch_s), group, limit)).fetchall()

    def has_message(self, msg_id: str, sender_id: str) -> bool:
        """Whether a message with this id from this sender is stored, in either direction.  Scans
        the table (the id index holds only the rows stored unique by id): for occasional use."""
        return self._read("SELECT 1 FROM messages WHERE id=? AND sender_id=? LIMIT 1", (msg_id, sender_id)).fetchone() is not None

    def broadcast_ids_since(self, origin: str, when: float) -> set[str]:
        """Ids of the broadcasts from ``origin`` stored at or after ``when`` (walks that origin's rows by number)."""
        return {r[0] for r in self._read("SELECT id FROM messages WHERE peer_id=? AND n>=? AND direction='in' AND type='BROADCAST'",
                                         (origin, self._first_n_stored_at(when)))}

    def history(self, peer_id: str | None = None, since: float | None = None, limit: int = 0, direction: str | None = None,
                after: int | None = None, group: str | None = None) -> list[dict]:
        """The newest ``limit`` messages (all if 0), oldest first; ``after``: only row numbers above
        it; ``group``: only that group's."""
        where, args = [], []
        if after is not None:
            where.append("n>?")
            args.append(after)
        if peer_id is not None:
            where.append("peer_id=?")
            args.append(peer_id)
        if since is not None:
            where.append("n>=?")
            args.append(self._first_n_stored_at(since))
        if direction is not None:
            where.append("direction=?")
            args.append(direction)
        if group is not None:
            where.append("grp=?")
            args.append(group)
        tail = (" WHERE " + " AND ".join(f"m.{w}" for w in where) if where else "") + " ORDER BY m.n DESC"
        if limit:
            tail += " LIMIT ?"
            args.append(limit)
        return list(reversed(self._rows(tail, args)))

    _ROWS = ("SELECT m.n, m.id, m.direction, m.type, m.peer_id, m.sender_id, m.sender_name, m.target_id, m.text, m.timestamp, "
             "m.stored, k.name, m.grp FROM messages m LEFT JOIN known k ON k.id = m.peer_id ")
    _ROW_KEYS = ("n", "id", "direction", "type", "peer_id", "sender_id", "sender_name", "target_id", "text", "timestamp", "stored",
                 "peer_name", "group")

    def _rows(self, tail: str, args) -> list[dict]:
        return [dict(zip(self._ROW_KEYS, r)) for r in self._read(self._ROWS + tail, args).fetchall()]

    # ------------------------------------------------------------------ own broadcasts
    def add_broadcast(self, seq: int, msg_id: str, text: str, timestamp: str, now: float) -> None:
        """Queue one of our broadcasts; written with the next read, write or commit."""
        self._broadcast_rows.append((seq, msg_id, text, timestamp, now))

    def broadcast_range(self, from_seq: int, to_seq: int, limit: int) -> list[tuple]:
        return self._read(
            "SELECT seq, id, text, timestamp FROM broadcasts WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT ?", (from_seq, to_seq, limit)
        ).fetchall()

    def first_broadcast_since(self, epoch: float) -> int | None:
        row = self._read("SELECT MIN(seq) FROM broadcasts WHERE created>=?", (epoch,)).fetchone()
        return row[0]

    def bind_owner(self, node_id: str) -> bool:
        """Tie the store to our node id.  If the id changed (a new key), peers
        number their messages to the new id afresh, so what we counted of
        their numbering no longer applies: forget it.  True if it was reset."""
        owner = self.get_meta("owner")
        if owner == node_id:
            return False
        if owner is not None:
            self._write("UPDATE links SET in_seq=0, in_epoch=NULL, bcast_seq=NULL, bcast_epoch=NULL")
        self.set_meta("owner", node_id)
        self.commit()
        return owner is not None

    def newest_broadcast(self) -> int | None:
        return self._read("SELECT MAX(seq) FROM broadcasts").fetchone()[0]

    def oldest_broadcast(self) -> int | None:
        return self._read("SELECT MIN(seq) FROM broadcasts").fetchone()[0]

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._read("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT INTO meta(key, value) VALUES (?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # ------------------------------------------------------------------ address book
    def remember_peer(self, peer_id: str, name: str, addr: str | None, port: int, pub_port: int, now: float) -> None:
        self._write(
            "INSERT INTO known(id, name, addr, port, pub_port, updated) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET name=excluded.name, addr=excluded.addr, port=excluded.port, "
            "pub_port=excluded.pub_port, updated=excluded.updated",
            (peer_id, name, addr, port, pub_port, now),
        )

    def known_peers(self) -> list[dict]:
        rows = self._read("SELECT id, name, addr, port, pub_port, updated FROM known ORDER BY name, id").fetchall()
        return [dict(zip(("id", "name", "addr", "port", "pub_port", "updated"), r)) for r in rows]

    # ------------------------------------------------------------------ retention
    def _first_n_stored_at(self, when: float) -> int:
        """The number of the first message stored at or after ``when`` (one past the last if none).

        ``n`` grows with ``stored``, so a binary search over ``n`` finds it
        with a few lookups by primary key, instead of an index on ``stored``
        that every insert would have to update.
        """
        lo_hi = self._read("SELECT MIN(n), MAX(n) FROM messages").fetchone()
        if lo_hi[0] is None:
            return 0
        lo, hi = lo_hi[0], lo_hi[1] + 1
        while lo < hi:
            mid = (lo + hi) // 2
            row = self._read("SELECT n, stored FROM messages WHERE n>=? ORDER BY n LIMIT 1", (mid,)).fetchone()
            if row[1] < when:
                lo = row[0] + 1
            else:
                hi = mid
        return lo

    def _prune_outbox(self, peer_id: str, acked: int, cutoff: float, budget: int) -> int:
        """Delete a peer's oldest settled rows (delivered or expired) created before ``cutoff``, at most ``budget``."""
        rows = self._read("SELECT seq, created, status FROM outbox WHERE peer_id=? ORDER BY seq LIMIT ?", (peer_id, budget)).fetchall()
        upto = None
        for seq, created, status in rows:
            if created >= cutoff or (seq > acked and status != "expired"):
                break  # rows are in the order they were queued: the rest are newer, or pending
            upto = seq
        if upto is None:
            return 0
        return self._write("DELETE FROM outbox WHERE peer_id=? AND seq<=?", (peer_id, upto)).rowcount

    def prune(self, now: float, max_age_s: float, max_messages: int, budget: int = 100_000) -> int:
        """Drop old history, delivered/expired outbox rows and old own broadcasts.

        Pending outbox rows are never touched here: they leave only by
        delivery or by their own expiry.  At most ``budget`` rows per table
        per call, so that a long-idle store never stalls the event loop; the
        next call takes the rest.
        """
        cutoff = now - max_age_s
        self.set_meta("next_n", str(self._next_n))  # row numbers go on from here, whatever is deleted
        first_kept = self._first_n_stored_at(cutoff)
        n = self._write("DELETE FROM messages WHERE n<? AND n<(SELECT MIN(n) FROM messages)+?", (first_kept, budget)).rowcount
        for peer_id, acked in self._read("SELECT DISTINCT o.peer_id, COALESCE(l.out_acked, 0) FROM outbox o "
                                         "LEFT JOIN links l ON l.peer_id=o.peer_id").fetchall():
            n += self._prune_outbox(peer_id, acked, cutoff, budget)
        n += self._write("DELETE FROM outbox WHERE status='expired' AND created<?", (cutoff,)).rowcount  # few: a partial index holds them
        n += self._write("DELETE FROM broadcasts WHERE created<?", (cutoff,)).rowcount
        lo_hi = self._read("SELECT MIN(n), MAX(n) FROM messages").fetchone()
        if lo_hi[0] is not None and lo_hi[1] - lo_hi[0] + 1 > max_messages:  # cheap bound first: n has few holes
            total = self._read("SELECT COUNT(*) FROM messages").fetchone()[0]
            if total > max_messages:
                n += self._write("DELETE FROM messages WHERE n < (SELECT n FROM messages ORDER BY n LIMIT 1 OFFSET ?)",
                                 (min(total - max_messages, budget),)).rowcount
        total = self._read("SELECT COUNT(*) FROM broadcasts").fetchone()[0]
        if total > max_messages:
            n += self._write("DELETE FROM broadcasts WHERE seq IN (SELECT seq FROM broadcasts ORDER BY seq LIMIT ?)", (total - max_messages,)).rowcount
        return n
