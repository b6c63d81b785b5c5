"""The storage protocol: what the node core may ask of its message store, and what it may rely on.

How this works
--------------
The core (delivery.py, messaging.py, node.py, control.py) decides with the help of a store but
must not know which one: it types its store as `Storage`, a `typing.Protocol` naming exactly the
methods it calls.  Two implementations stand behind it:

* `p2pd.store.Store`       - SQLite in a file (the daemon), with integrity checks, WAL and the
                             migration of older files; those are the edge's business, not here.
* `p2pd.memstore.MemoryStore` - plain Python containers (the simulator, fast tests), with a
                             `crash()` that forgets everything not committed, as a kill -9 does.

``tests/test_store_protocol.py`` checks that both have every name here with a compatible
signature, and the store tests run the contract below on both.

The contract, in short (each method says the rest):

* **Commit before act.**  Writes are grouped: nothing is durable until `commit()`, which the
  event loop calls once per turn *before* it performs any effect of that turn (a reply, an ACK,
  an event).  So an ACK always describes rows that survive a crash.  Everything written since
  the last commit is lost together when the process dies; nothing of it survives on its own.
* **Read your writes.**  Every write, committed or not, is seen by every later read of the same
  store.  ``defer=True`` (and `add_outbox`, `add_broadcast`, which are always deferred) lets an
  implementation queue rows and insert them in one go: still visible to the next read, durable
  at the next `commit()`, lost with the rest if the process dies first.
* **Numbers only grow.**  Message row numbers (``n``, the cursors of `watch` and `read`) are
  handed out in order, never reused while the store lives, even when pruning emptied it; the
  same for the outbox's per-peer ``seq`` and the broadcasts' ``seq``, which the caller assigns
  (delivery.py) and stores here so that they survive a restart.
* **Limits** (``limit``) are >= 0: at most that many rows (`history`: 0 means all).
* **Groups.**  A group's shout travels to each member as a direct message, so an outbox row
  and a stored message may name their group (``group``: an open group's name, or "~" and 32
  hex digits for a private group's id; None for a direct message or a broadcast), and the
  reads of messages can be narrowed to one group.
* **Time is passed in.**  ``now``/``created``/``stored`` are wall-clock seconds the caller gives;
  a store reads no clock.  Message row numbers grow with ``stored``, which lets age queries
  search by number.
* **The epoch** names the store's numbering: a new store draws a random one, `new_epoch` draws
  another (our numbering restarted: the peers resynchronise).  Its randomness is the
  implementation's constructor argument, so that the simulator can make it seeded.
"""

from __future__ import annotations

from typing import Protocol


class Storage(Protocol):
    """The message store as the node core sees it (see the top of this module)."""

    epoch: str
    """This store's name for its numbering (hex); kept across restarts, changed only by `new_epoch`."""

    # ------------------------------------------------------------------ transactions and identity
    def commit(self) -> None:
        """Make every write so far durable, as one transaction: after it returns, a crash loses
        none of them; before, a crash loses all of them (never a part).  Called by the event loop
        once per turn, before the turn's effects go out (commit-before-act)."""

    def new_epoch(self) -> str:
        """Draw a new epoch (our numbering restarted: a restored backup was found out) and return
        it.  ``epoch`` changes at once; it is durable with the next commit."""

    def bind_owner(self, node_id: str) -> bool:
        """Tie the store to our node id (called once at start, before the node is built).  If it
        was bound to another id (a new key), what we counted of the peers' numbering to us no
        longer applies: every link's ``in_seq``, ``in_epoch``, ``bcast_seq``, ``bcast_epoch`` is
        reset.  Commits.  True if it was reset."""

    # ------------------------------------------------------------------ links (sequence counters)
    def links(self) -> dict[str, dict]:
        """Every saved link: peer id -> {out_seq, out_acked, in_seq, bcast_seq, in_epoch,
        bcast_epoch}, in the order the links were first saved."""

    def save_link(self, peer_id: str, out_seq: int, out_acked: int, in_seq: int, bcast_seq: int | None,
                  in_epoch: str | None = None, bcast_epoch: str | None = None) -> None:
        """Write one link's counters (insert or replace).  An outbox row is *delivered* because its
        seq is at or below the saved ``out_acked``: no per-row write on an ACK."""

    # ------------------------------------------------------------------ outbox
    def add_outbox(self, peer_id: str, seq: int, msg_id: str, text: str, timestamp: str, created: float, expires: float,
                   group: str | None = None) -> None:
        """Queue one pending outbox row (deferred: see the top).  The caller numbers a peer's rows
        1, 2, 3 ... in order and never reuses a seq or an id for the same peer.  ``group``: the
        row is this group's shout to one member, and its (re)transmissions must say so."""

    def pending_after(self, peer_id: str, after_seq: int, limit: int) -> list[tuple]:
        """Up to ``limit`` pending (not expired) rows with seq > after_seq, by seq: (seq, id, text,
        timestamp, group), group None for a direct message."""

    def mark_delivered(self, peer_id: str, upto_seq: int, now: float, after_seq: int = 0) -> list[str]:
        """Ids of the pending rows after_seq < seq <= upto_seq (an ACK just covered them), by seq.
        Writes nothing: delivery is the saved ``out_acked`` (`save_link`, same turn)."""

    def count_pending(self, peer_id: str, after_seq: int, upto_seq: int) -> int:
        """How many seqs in (after_seq, upto_seq] are not expired (`mark_delivered` without the ids)."""

    def count_attempt(self, peer_id: str, from_seq: int, to_seq: int) -> None:
        """Count one more transmission of rows from_seq..to_seq (``attempts``, shown by `outbox`)."""

    def expire(self, now: float, pending: list[tuple[str, int]] | None = None) -> list[tuple]:
        """Mark pending rows with ``expires <= now`` expired; returns (peer_id, seq, id) of each.

        ``pending``: (peer_id, out_acked) of the peers with unacknowledged rows, in the order
        to visit them (default: from the saved links).  Only rows above out_acked are looked
        at, in seq order, 256 at a time: a batch with fewer than 256 overdue rows ends that peer
        (rows expire in seq order, as each gets the same lifetime when queued).  An expired row
        is never pending again, and never delivered."""

    def outbox(self, statuses: tuple[str, ...] = ("pending", "expired"), limit: int = 1000,
               links: list[tuple[str, int, int]] | None = None) -> list[dict]:
        """Outbox rows (`p2pctl outbox`) with the given statuses, at most ``limit``, sorted by
        (created, peer_id, seq): dicts of id, peer_id, peer (its known name or None), seq, text,
        timestamp, created, expires, status, attempts.  ``status``: expired if expired, else
        delivered if seq <= the *saved* out_acked, else pending.  ``links``: (peer_id, out_seq,
        out_acked) from memory, saying which peers and rows to read (default: the saved links)."""

    def expired_after(self, peer_id: str, after_seq: int) -> int:
        """How many of a peer's rows with seq > after_seq expired."""

    def outbox_ids(self, peer_id: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` are in this peer's outbox already (a retried, idempotent send)."""

    def outbox_status(self, peer_id: str, msg_id: str) -> str | None:
        """"pending", "delivered" or "expired" (as in `outbox`), or None if not in the outbox."""

    # ------------------------------------------------------------------ conversation
    def add_message(self, direction: str, type_: str, msg_id: str, peer_id: str | None, sender_id: str, sender_name: str,
                    target_id: str | None, text: str, timestamp: str, now: float, defer: bool = False, dedupe: bool = False,
                    group: str | None = None) -> int:
        """Store one message of the conversation; returns its row number ``n`` (> 0, the next one),
        or 0, taking no number, if it is a duplicate: a message with the same (id, sender_id,
        peer_id), peer_id not None, stored without ``defer`` (or with ``dedupe``).

        ``defer=True``: the caller knows the message is new (numbered by a sequence that rejects
        duplicates, or an id just made): no duplicate check, the number is returned at once and
        the row may be queued (see the top).  Such rows are not unique by id unless ``dedupe``
        (then a duplicate is dropped when the row is written, and its number stays unused: a
        shout that comes again, e.g. replayed, is kept once).  ``group``: a shout's group."""

    @property
    def last_cursor(self) -> int:
        """The row number of the newest message stored or queued; 0 if none ever was."""

    def messages_after(self, cursor: int, direction: str = "in", limit: int = 10_000, group: str | None = None) -> list[dict]:
        """The first ``limit`` messages of ``direction`` with n > cursor, by n (a watcher catching up);
        dicts as `history`.  ``group``: only that group's (a watcher of one room)."""

    def count_after(self, cursor: int, direction: str = "in", upto: int | None = None, group: str | None = None) -> int:
        """How many messages of ``direction`` have cursor < n (<= upto); ``group``: of that group only."""

    def own_shouts_since(self, group: str, since_epoch_s: float, limit: int) -> list[tuple]:
        """Our own shouts to ``group`` stored at or after ``since_epoch_s`` (found by row number, as
        `history`'s ``since``), oldest first, at most ``limit``: (id, text, timestamp).  Replayed
        to a member that joins asking for the group's past (``--since``)."""

    def has_message(self, msg_id: str, sender_id: str) -> bool:
        """Whether a message with this id from this sender is stored, in either direction: tells a
        replayed shout already held from a new one.  May scan every row: for occasional use."""

    def broadcast_ids_since(self, origin: str, when: float) -> set[str]:
        """Ids of the broadcasts received from ``origin`` (peer_id) stored at or after ``when``."""

    def history(self, peer_id: str | None = None, since: float | None = None, limit: int = 0, direction: str | None = None,
                after: int | None = None, group: str | None = None) -> list[dict]:
        """The newest ``limit`` messages (all if 0) that match, oldest first: dicts of n, id,
        direction, type, peer_id, sender_id, sender_name, target_id, text, timestamp, stored,
        peer_name (the peer's known name, or None) and group (a shout's, else None).  ``since``:
        stored at or after it (found by row number: the first row stored at or after it, and all
        after); ``after``: n > after; ``group``: only that group's (a room's conversation)."""

    # ------------------------------------------------------------------ own broadcasts
    def add_broadcast(self, seq: int, msg_id: str, text: str, timestamp: str, now: float) -> None:
        """Keep one of our broadcasts for replay (deferred).  ``seq`` is new and above every kept one."""

    def broadcast_range(self, from_seq: int, to_seq: int, limit: int) -> list[tuple]:
        """Kept broadcasts from_seq <= seq <= to_seq, by seq, at most ``limit``: (seq, id, text, timestamp)."""

    def first_broadcast_since(self, epoch: float) -> int | None:
        """The lowest seq kept that was created at or after ``epoch`` (wall seconds), or None."""

    def newest_broadcast(self) -> int | None:
        """The highest kept broadcast seq, or None."""

    def oldest_broadcast(self) -> int | None:
        """The lowest kept broadcast seq, or None."""

    # ------------------------------------------------------------------ our own counters
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """A value of our own (``bcast_seq``, ``read_upto``, ...), or ``default``."""

    def set_meta(self, key: str, value: str) -> None:
        """Write a value of our own (insert or replace)."""

    # ------------------------------------------------------------------ address book
    def remember_peer(self, peer_id: str, name: str, addr: str | None, port: int, pub_port: int, now: float) -> None:
        """Record (insert or replace) a peer we linked, so a message to it can be queued while it is away."""

    def known_peers(self) -> list[dict]:
        """The address book sorted by (name, id): dicts of id, name, addr, port, pub_port, updated."""

    # ------------------------------------------------------------------ retention
    def prune(self, now: float, max_age_s: float, max_messages: int, budget: int = 100_000) -> int:
        """Drop what is older than ``max_age_s`` (history, settled outbox rows, own broadcasts),
        then the oldest history and broadcasts beyond ``max_messages`` each; returns how many rows.

        Pending outbox rows are never dropped (they leave by delivery or expiry), and a peer's
        settled rows go only from its oldest up to its first pending or young one.  At most about
        ``budget`` rows per kind per call, so that a long-idle store never stalls the loop; the
        next call takes the rest.  Row numbers go on after the highest ever handed out."""
