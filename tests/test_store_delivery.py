"""Unit tests of the store and the delivery bookkeeping: no sockets, time passed in.

Every test that takes ``store`` or ``store_kit`` runs on both implementations of the storage
protocol (SQLite and memory, tests/storekit.py): what they check is the contract.  The tests
that build a `Store` themselves check what only the SQLite file has (format, migration, modes).
"""

from __future__ import annotations

import pytest

from p2pd.delivery import Delivery
from p2pd.store import SCHEMA_VERSION, Store
from storekit import store_kit  # noqa: F401 (fixture)


@pytest.fixture
def store(store_kit):  # noqa: F811 (the imported fixture)
    s = store_kit.open()
    yield s
    store_kit.close(s)


def fill(d: Delivery, peer: str, n: int, epoch: float = 1000.0) -> list[str]:
    ids = []
    for i in range(1, n + 1):
        d.enqueue(peer, f"m{i}", f"text {i}", "2026-01-01T00:00:00.000Z", epoch)
        ids.append(f"m{i}")
    return ids


# ---------------------------------------------------------------------------- store


def test_store_survives_reopen(store_kit):  # noqa: F811
    s = store_kit.open()
    s.add_outbox("bob", 1, "a", "hello", "ts", 10.0, 20.0)
    s.add_message("out", "MESSAGE", "a", "bob", "me", "me", "bob", "hello", "ts", 10.0)
    s.save_link("bob", 1, 0, 0, None)
    s.commit()
    s2 = store_kit.restart(s)  # as a kill -9 would: no clean close
    assert [r["id"] for r in s2.outbox()] == ["a"]
    assert [m["text"] for m in s2.history()] == ["hello"]
    assert s2.links()["bob"]["out_seq"] == 1
    store_kit.close(s2)


def test_uncommitted_writes_are_not_visible_after_a_crash(store_kit):  # noqa: F811
    s = store_kit.open()
    s.add_outbox("bob", 1, "a", "hello", "ts", 10.0, 20.0)
    s2 = store_kit.restart(s)  # died before commit
    assert s2.outbox() == []
    store_kit.close(s2)


def test_message_ids_are_stored_once(store):
    assert store.add_message("in", "MESSAGE", "x", "bob", "bob", "bob", "me", "hi", "ts", 1.0) == 1  # its cursor
    assert store.add_message("in", "MESSAGE", "x", "bob", "bob", "bob", "me", "hi", "ts", 2.0) == 0  # a duplicate
    assert len(store.history()) == 1


def test_history_filters(store):
    store.remember_peer("bob", "bob", "127.0.0.1", 1, 2, 0.0)
    store.add_message("in", "MESSAGE", "1", "bob", "bob", "bob", "me", "a", "ts", 10.0)
    store.add_message("out", "MESSAGE", "2", "carol", "me", "me", "carol", "b", "ts", 20.0)
    store.add_message("in", "BROADCAST", "3", "bob", "bob", "bob", None, "c", "ts", 30.0)
    assert [m["text"] for m in store.history()] == ["a", "b", "c"]
    assert [m["text"] for m in store.history(peer_id="bob")] == ["a", "c"]
    assert [m["text"] for m in store.history(since=15.0)] == ["b", "c"]
    assert [m["text"] for m in store.history(limit=2)] == ["b", "c"]  # the newest two, oldest first
    assert [m["text"] for m in store.history(direction="in")] == ["a", "c"]
    assert store.history(peer_id="bob")[0]["peer_name"] == "bob"


def test_prune_never_drops_a_pending_message(store):
    store.add_outbox("bob", 1, "old-pending", "x", "ts", 0.0, 10**9)
    store.add_outbox("bob", 2, "old-pending-2", "y", "ts", 0.0, 10**9)
    store.save_link("bob", 2, 0, 0, None)
    store.add_outbox("bob", 3, "old-expired", "z", "ts", 0.0, 1.0)
    store.expire(2.0)
    store.add_message("in", "MESSAGE", "h1", "bob", "bob", "bob", "me", "old", "ts", 0.0)
    store.add_message("in", "MESSAGE", "h2", "bob", "bob", "bob", "me", "new", "ts", 5000.0)
    store.add_broadcast(1, "b1", "old bcast", "ts", 0.0)
    store.add_outbox("carol", 1, "old-delivered-2", "w", "ts", 0.0, 10**9)
    store.save_link("carol", 1, 1, 0, None)  # carol acknowledged seq 1
    pruned = store.prune(now=5000.0, max_age_s=1000.0, max_messages=100)
    assert pruned == 4
    assert [r["id"] for r in store.outbox(("pending", "delivered", "expired"))] == ["old-pending", "old-pending-2"]
    assert [m["id"] for m in store.history()] == ["h2"]
    assert store.oldest_broadcast() is None


def test_prune_by_count_keeps_the_newest(store):
    for i in range(10):
        store.add_message("in", "MESSAGE", f"h{i}", "bob", "bob", "bob", "me", str(i), "ts", 100.0 + i)
    store.prune(now=200.0, max_age_s=1e9, max_messages=3)
    assert [m["text"] for m in store.history()] == ["7", "8", "9"]


def test_expire_marks_only_overdue_pending(store):
    store.add_outbox("bob", 1, "a", "x", "ts", 0.0, 50.0)
    store.add_outbox("bob", 2, "b", "y", "ts", 0.0, 150.0)
    assert store.expire(100.0) == []  # only peers with something unacknowledged are looked at
    store.save_link("bob", 2, 0, 0, None)
    assert store.expire(100.0) == [("bob", 1, "a")]
    assert store.expire(100.0) == []
    assert {r["id"]: r["status"] for r in store.outbox()} == {"a": "expired", "b": "pending"}


# ---------------------------------------------------------------------------- direct delivery


def test_window_limits_what_is_in_flight(store):
    d = Delivery(store, window=3, ack_timeout_s=2.0)
    fill(d, "bob", 5)
    base, rows = d.due("bob", now=0.0)
    assert base == 1 and [r[0] for r in rows] == [1, 2, 3]
    assert d.due("bob", now=0.5) == (0, [])  # window full: the sender waits
    assert d.on_ack("bob", 2, now=0.6, epoch=1.0) == (2, ["m1", "m2"])
    base, rows = d.due("bob", now=0.7)
    assert base == 3 and [r[0] for r in rows] == [4, 5]


def test_no_ack_progress_goes_back_n(store):
    d = Delivery(store, window=10, ack_timeout_s=2.0)
    fill(d, "bob", 4)
    assert [r[0] for r in d.due("bob", now=0.0)[1]] == [1, 2, 3, 4]
    assert d.due("bob", now=1.9) == (0, [])
    d.on_ack("bob", 1, now=1.0, epoch=1.0)
    assert d.due("bob", now=2.9) == (0, [])  # progress at 1.0: not yet
    base, rows = d.due("bob", now=3.1)
    assert base == 2 and [r[0] for r in rows] == [2, 3, 4]  # resent in order from the oldest unacked


def test_rewind_on_link_up_resends_unacknowledged(store):
    d = Delivery(store, window=10)
    fill(d, "bob", 3)
    d.due("bob", now=0.0)
    d.on_ack("bob", 1, now=0.1, epoch=1.0)
    d.rewind("bob")
    assert [r[0] for r in d.due("bob", now=0.2)[1]] == [2, 3]


def test_counters_persist_across_restart(store_kit):  # noqa: F811
    s = store_kit.open()
    d = Delivery(s)
    fill(d, "bob", 3)
    d.due("bob", now=0.0)
    d.on_ack("bob", 2, now=0.1, epoch=1.0)
    assert d.accept("carol", 1, 1) == "new"
    d.save()
    s.commit()
    s2 = store_kit.restart(s)
    d2 = Delivery(s2)
    assert (d2.links["bob"].out_seq, d2.links["bob"].out_acked) == (3, 2)
    assert [r[0] for r in d2.due("bob", now=0.0)[1]] == [3]  # resumes after the acknowledged ones
    assert d2.accept("carol", 1, 1) == "dup"  # still knows what it stored
    d2.enqueue("bob", "m4", "t", "ts", 1.0)
    assert d2.links["bob"].out_seq == 4  # numbering never restarts
    store_kit.close(s2)


def test_receiver_classifies_new_dup_gap(store):
    d = Delivery(store)
    assert d.accept("bob", 1, 1) == "new"
    assert d.accept("bob", 1, 1) == "dup"
    assert d.accept("bob", 3, 1) == "gap"
    assert d.accept("bob", 2, 1) == "new"
    assert d.accept("bob", 3, 1) == "new"
    assert d.acks_owed() == [("bob", 3, False)]  # the gap was filled in the same batch: not reported
    assert d.acks_owed() == []  # one ACK per batch


def test_receiver_reports_a_gap_once_per_point(store):
    d = Delivery(store)
    assert d.accept("bob", 1, 1) == "new"
    assert [d.accept("bob", s, 1) for s in (3, 4, 5)] == ["gap"] * 3
    assert d.acks_owed() == [("bob", 1, True)]
    assert d.accept("bob", 6, 1) == "gap"  # more of what was on its way after the lost one
    assert d.acks_owed() == [("bob", 1, False)]
    assert d.accept("bob", 2, 1) == "new"  # the sender went back
    assert d.accept("bob", 4, 1) == "gap"  # a new loss at a new point is reported again
    assert d.acks_owed() == [("bob", 2, True)]
    assert d.accept("bob", 5, 1) == "gap"
    assert d.acks_owed() == [("bob", 2, False)]
    assert d.accept("bob", 4, 1) == "gap"  # lower than before: the sender went back and lost 3 again
    assert d.accept("bob", 5, 1) == "gap"
    assert d.acks_owed() == [("bob", 2, True)]  # reported again, once


def test_what_came_on_credit_is_acknowledged_only_as_it_is_repaid(store):
    d = Delivery(store, window=10)
    for seq in range(1, 9):
        assert d.accept("bob", seq, 1) == "new"
    assert d.acks_owed(unpaid=lambda peer: 3) == [("bob", 5, False)]  # the newest 3 are not paid for
    assert d.unacknowledged("bob")
    assert d.acks_owed(unpaid=lambda peer: 3) == []  # nothing newly paid: no ACK, still owed
    assert d.accept("bob", 10, 1) == "gap"
    assert d.acks_owed(unpaid=lambda peer: 1) == [("bob", 7, False)]  # the gap waits for the full ACK
    assert d.acks_owed(unpaid=lambda peer: 0) == [("bob", 8, True)]
    assert not d.unacknowledged("bob") and d.acks_owed() == []


def test_credit_is_for_the_next_message_within_a_window_of_the_last_ack(store):
    d = Delivery(store, window=10)
    assert d.accept("bob", 1, 1, "e1") == "new"
    d.acks_owed()
    assert d.may_pace("bob", {"seq": 2, "base": 1, "epoch": "e1"})
    assert not d.may_pace("bob", {"seq": 3, "base": 1, "epoch": "e1"})  # not the next one
    assert not d.may_pace("bob", {"seq": 1, "base": 1, "epoch": "e1"})  # a duplicate
    assert not d.may_pace("bob", {"seq": 2, "base": 1, "epoch": "e2"})  # a new numbering
    assert not d.may_pace("bob", {"seq": 12, "base": 12, "epoch": "e1"})  # past the window of the last ACK
    for seq in range(2, 12):
        d.accept("bob", seq, 1, "e1")
    assert not d.may_pace("bob", {"seq": 12, "base": 1, "epoch": "e1"})  # 11 > acked 1 + window 10
    assert d.accept("bob", 1, 1, "e2") == "new"  # the sender's store was replaced
    assert d.links["bob"].acked_in == 0  # so is what we acknowledged of its numbering


def test_a_new_sender_epoch_forgets_the_reported_gap(store):
    d = Delivery(store)
    assert d.accept("bob", 3, 1, "e1") == "gap"
    d.acks_owed()
    assert d.accept("bob", 3, 1, "e2") == "gap"  # numbering restarted: a new point, though in_seq is 0 again
    assert d.acks_owed() == [("bob", 0, True)]


def test_reported_gap_makes_the_sender_go_back_at_once_and_slow_down(store):
    from p2pd.delivery import CWND_MIN

    d = Delivery(store, window=64, ack_timeout_s=2.0)
    fill(d, "bob", 200)
    assert [r[0] for r in d.due("bob", now=0.0)[1]] == list(range(1, 65))
    d.on_ack("bob", 10, now=0.01, epoch=1.0, gap=True)  # 11 was lost; 12.. were dropped
    base, rows = d.due("bob", now=0.02)  # long before ack_timeout_s
    assert base == 11 and [r[0] for r in rows] == list(range(11, 11 + 32))  # half the window in flight
    assert d.links["bob"].cwnd == 32
    d.on_ack("bob", 9, now=0.03, epoch=1.0, gap=True)  # an older ACK than the last: changes nothing
    assert d.due("bob", now=0.04) == (0, []) and d.links["bob"].cwnd == 32
    for k in range(3):  # losses at new points: never below CWND_MIN
        d.on_ack("bob", 11 + k, now=0.05, epoch=1.0, gap=True)
        assert d.links["bob"].cwnd == CWND_MIN
        assert d.due("bob", now=0.05)[1][0][0] == 12 + k  # gone back at once each time
    acked, now = 13, 0.1
    while d.links["bob"].cwnd and acked < 200:  # additive increase back to the full window
        _, rows = d.due("bob", now=now)
        acked = rows[-1][0] if rows else acked
        d.on_ack("bob", acked, now=now, epoch=1.0)
        now += 0.01
    assert d.links["bob"].cwnd == 0 and acked < 200  # the full window again, before the end


def test_gap_report_without_anything_in_flight_changes_nothing(store):
    d = Delivery(store, window=8)
    fill(d, "bob", 3)
    d.due("bob", now=0.0)
    d.on_ack("bob", 3, now=0.1, epoch=1.0, gap=True)
    assert d.links["bob"].cwnd == 0 and d.due("bob", now=0.2) == (0, [])


def test_base_lets_a_receiver_with_a_wiped_store_catch_up(store):
    d = Delivery(store)
    # the sender's messages 1..99 were acknowledged long ago (by this receiver's previous store)
    assert d.accept("bob", 100, 100) == "new"
    assert d.acks_owed() == [("bob", 100, False)]


def test_ack_beyond_what_was_sent_is_clamped(store):
    d = Delivery(store)
    fill(d, "bob", 2)
    d.due("bob", 0.0)
    assert d.on_ack("bob", 10**9, 0.1, 1.0) == (2, ["m1", "m2"])
    assert d.links["bob"].out_acked == 2
    assert d.on_ack("bob", 1, 0.2, 1.0) == (0, [])  # old ACKs change nothing


# ---------------------------------------------------------------------------- broadcasts


def test_first_contact_starts_at_the_origins_latest(store):
    d = Delivery(store)
    assert d.announced("alice", latest=40, oldest=1, now=0.0, fetch_timeout_s=2.0) is None
    assert d.link("alice").bcast_seq == 40
    out, want, dup = d.on_broadcast("alice", 41, ("id41",), 0.1, 2.0)
    assert out == [("id41",)] and want is None and not dup


def test_gap_is_fetched_and_early_arrivals_held(store):
    d = Delivery(store)
    d.announced("alice", 10, 1, 0.0, 2.0)
    out, want, _ = d.on_broadcast("alice", 13, ("13",), 0.1, 2.0)
    assert out == [] and want == (11, 12)
    out, want, _ = d.on_broadcast("alice", 14, ("14",), 0.2, 2.0)
    assert out == [] and want is None  # a fetch covering it is in flight
    out, _, _ = d.on_broadcast("alice", 11, ("11",), 0.3, 2.0)
    assert out == [("11",)]
    out, _, _ = d.on_broadcast("alice", 12, ("12",), 0.4, 2.0)
    assert out == [("12",), ("13",), ("14",)]  # the held ones follow in order
    out, _, dup = d.on_broadcast("alice", 13, ("13",), 0.5, 2.0)
    assert out == [] and dup


def test_fetch_is_repeated_after_its_timeout(store):
    d = Delivery(store)
    d.announced("alice", 5, 1, 0.0, 2.0)
    assert d.announced("alice", 8, 1, 0.1, 2.0) == (6, 8)
    assert d.announced("alice", 8, 1, 1.0, 2.0) is None
    assert d.announced("alice", 8, 1, 2.5, 2.0) == (6, 8)


def test_pruned_broadcasts_are_skipped(store):
    d = Delivery(store)
    d.announced("alice", 5, 1, 0.0, 2.0)
    assert d.announced("alice", 500, 400, 0.1, 2.0) == (400, 500)


def test_origin_numbering_and_replay(store):
    d = Delivery(store)
    for i in range(1, 6):
        assert d.next_broadcast(f"b{i}", f"t{i}", "ts", 100.0 + i) == i
    assert d.broadcast_window() == (1, 5)
    assert [r[0] for r in d.replay(2, 4)] == [2, 3, 4]
    d.save()  # the event loop saves counters with every batch
    store.prune(now=10_000.0, max_age_s=1.0, max_messages=100)
    d2 = Delivery(store)
    assert d2.next_broadcast("b6", "t6", "ts", 10_001.0) == 6  # numbers never go back, even after pruning
    assert d2.broadcast_window() == (6, 6)


# ---------------------------------------------------------------------------- epochs: a peer whose store was replaced


def test_a_new_sender_epoch_restarts_its_numbering(store):
    d = Delivery(store)
    for seq in (1, 2, 3):
        assert d.accept("bob", seq, 1, "epoch-a") == "new"
    # bob lost its store: it numbers from 1 again under a new epoch; nothing may be taken for a duplicate
    assert d.accept("bob", 1, 1, "epoch-b") == "new"
    assert d.accept("bob", 1, 1, "epoch-b") == "dup"
    assert d.acks_owed() == [("bob", 1, False)]


def test_a_new_origin_epoch_resynchronises_broadcasts(store):
    d = Delivery(store)
    d.announced("alice", 50, 1, 0.0, 2.0, "e1")
    assert d.on_broadcast("alice", 51, ("51",), 0.1, 2.0, "e1")[0] == [("51",)]
    # alice's store was replaced: its numbers restart at 1
    assert d.announced("alice", 0, 1, 0.2, 2.0, "e2") is None
    out, want, dup = d.on_broadcast("alice", 1, ("new 1",), 0.3, 2.0, "e2")
    assert out == [("new 1",)] and want is None and not dup


def test_store_epoch_is_kept_and_files_are_private(tmp_path):
    s = Store(tmp_path / "s.db")
    epoch = s.epoch
    s.close()
    assert (tmp_path / "s.db").stat().st_mode & 0o777 == 0o600
    s2 = Store(tmp_path / "s.db")
    assert s2.epoch == epoch
    s2.close()
    assert Store(tmp_path / "other.db").epoch != epoch


def test_store_epoch_is_kept_and_a_new_one_only_once_committed(store_kit):  # noqa: F811
    s = store_kit.open()
    epoch = s.epoch
    assert len(epoch) == 16 and int(epoch, 16) >= 0
    s = store_kit.restart(s)
    assert s.epoch == epoch
    assert s.new_epoch() == s.epoch != epoch
    s = store_kit.restart(s)  # not committed: the store is still named as before
    assert s.epoch == epoch
    new = s.new_epoch()
    s.commit()
    assert store_kit.restart(s).epoch == new


def test_a_store_of_another_format_is_refused_with_the_fix(tmp_path):
    import sqlite3

    from p2pd.store import StoreError

    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("CREATE TABLE outbox (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="move the file away"):
        Store(tmp_path / "old.db")


def test_ids_are_scoped_per_peer(store):
    store.add_outbox("bob", 1, "same", "to bob", "ts", 0.0, 10.0)
    store.add_outbox("carol", 1, "same", "to carol", "ts", 0.0, 10.0)
    assert store.outbox_status("bob", "same") == "pending" and store.outbox_status("dave", "same") is None
    assert store.add_message("in", "MESSAGE", "same", "bob", "bob", "bob", "me", "x", "ts", 1.0)
    assert store.add_message("in", "MESSAGE", "same", "carol", "carol", "carol", "me", "y", "ts", 1.0)


def test_a_new_node_id_forgets_what_was_counted_from_peers(store_kit):  # noqa: F811
    s = store_kit.open()
    assert s.bind_owner("old-id") is False
    d = Delivery(s)
    assert d.accept("bob", 1, 1, "e") == "new"
    d.save()
    s.commit()
    assert s.bind_owner("old-id") is False
    assert s.bind_owner("new-id") is True  # keygen --force: bob numbers its messages to the new id from 1
    assert Delivery(s).accept("bob", 1, 1, "e") == "new"
    assert store_kit.restart(s).bind_owner("new-id") is False  # committed by bind_owner itself
    store_kit.close(s)


def test_broadcast_counter_survives_a_batch_that_was_stored_but_not_saved(store):
    """Rows and counter are written in one transaction; even if only the rows made it, numbering resumes after them."""
    d = Delivery(store)
    for i in range(1, 4):
        d.next_broadcast(f"b{i}", f"t{i}", "ts", 100.0 + i)
    store.commit()  # rows on disk, counter not saved
    assert Delivery(store).next_broadcast("b4", "t4", "ts", 104.0) == 4


def test_ack_counts_without_reading_ids_back(store):
    d = Delivery(store)
    for i in range(1, 6):
        d.enqueue("bob", f"m{i}", "x", "ts", 1.0)
    d.due("bob", 0.0)
    assert d.on_ack("bob", 3, now=0.5, epoch=1.0, want_ids=False) == (3, [])
    assert d.on_ack("bob", 5, now=0.6, epoch=1.0) == (2, ["m4", "m5"])


def test_first_transmission_comes_from_memory_and_resends_from_the_store(store):
    d = Delivery(store, window=3)
    for i in range(1, 6):
        d.enqueue("bob", f"m{i}", f"t{i}", "ts", 1.0)
    base, rows = d.due("bob", 0.0)
    assert (base, [r[1] for r in rows]) == (1, ["m1", "m2", "m3"])
    assert d.on_ack("bob", 1, now=0.1, epoch=1.0) == (1, ["m1"])
    base, rows = d.due("bob", 0.2)
    assert (base, [r[1] for r in rows]) == (2, ["m4"])
    d.rewind("bob")  # link came back: go back to the oldest unacknowledged, read from the store
    base, rows = d.due("bob", 0.3)
    assert (base, [r[1] for r in rows]) == (2, ["m2", "m3", "m4"])
    d.on_ack("bob", 4, now=0.4, epoch=1.0)
    base, rows = d.due("bob", 0.5)
    assert (base, [r[1] for r in rows]) == (5, ["m5"])


# The store format 1 tables (p2pd before the performance work), to test the migration.
V1_SCHEMA = """
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
    PRIMARY KEY (peer_id, seq),
    UNIQUE (peer_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_status ON outbox(status, expires);
CREATE TABLE IF NOT EXISTS messages (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
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
    UNIQUE (sender_id, peer_id, id)
);
CREATE INDEX IF NOT EXISTS messages_peer ON messages(peer_id, n);
CREATE INDEX IF NOT EXISTS messages_stored ON messages(stored);
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


def test_a_format_1_store_is_migrated_with_its_messages(tmp_path):
    import sqlite3

    path = tmp_path / "store.db"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute("INSERT INTO messages(id, direction, type, peer_id, sender_id, sender_name, target_id, text, timestamp, stored) "
               "VALUES ('m1', 'in', 'MESSAGE', 'bob', 'bob', 'bob', 'me', 'kept', 'ts', 1.0)")
    db.execute("INSERT INTO outbox(peer_id, seq, id, text, timestamp, created, expires) VALUES ('bob', 1, 'o1', 'queued', 'ts', 1.0, 99.0)")
    db.execute("INSERT INTO links(peer_id, out_seq) VALUES ('bob', 1)")
    db.execute("INSERT INTO meta(key, value) VALUES ('epoch', 'e1')")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()

    told = []
    s = Store(path, before_migration=lambda old, new: told.append((old, new)))
    assert told == [(1, SCHEMA_VERSION)]  # the daemon asks systemd for time and logs it
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [m["text"] for m in s.history()] == ["kept"]
    assert [r["id"] for r in s.outbox()] == ["o1"] and s.epoch == "e1"
    indexes = {r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type='index' AND name NOT LIKE 'sqlite_%'")}
    assert indexes == {"messages_dedupe", "outbox_expired"}
    assert s.add_message("in", "MESSAGE", "m1", "bob", "bob", "bob", "me", "again", "ts", 2.0) == 0  # still unique
    s.close()
    assert [m["text"] for m in Store(path, before_migration=lambda *a: told.append(a)).history()] == ["kept"]  # opening again changes nothing
    assert len(told) == 1


def test_the_per_peer_index_of_older_stores_is_dropped_at_open(tmp_path):
    s = Store(tmp_path / "store.db")
    for i in range(5):
        s.add_message("in", "MESSAGE", f"m{i}", "bob" if i % 2 else "carol", "x", "x", "me", f"t{i}", "ts", float(i), defer=True)
    s.db.execute("CREATE INDEX messages_peer ON messages(peer_id, n)")  # as a store from before December 2026
    s.close()
    s = Store(tmp_path / "store.db")
    assert s.db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='messages_peer'").fetchone()[0] == 0
    assert [m["text"] for m in s.history(peer_id="bob")] == ["t1", "t3"]
    assert [m["text"] for m in s.history(peer_id="carol", limit=2)] == ["t2", "t4"]
    s.close()


def test_history_since_and_prune_by_age_find_the_boundary_by_number(store):
    for i in range(100):
        store.add_message("in", "MESSAGE", f"h{i}", "bob", "bob", "bob", "me", str(i), "ts", 1000.0 + i, defer=True)
    assert [m["text"] for m in store.history(since=1097.5)] == ["98", "99"]
    assert store.history(since=5000.0) == [] and len(store.history(since=0.0)) == 100
    assert store.prune(now=1100.0 + 10, max_age_s=100.0, max_messages=10**6, budget=5) == 5  # bounded per call
    assert store.prune(now=1100.0 + 10, max_age_s=100.0, max_messages=10**6) == 5
    assert [m["text"] for m in store.history()][:1] == ["10"]


def test_prune_takes_delivered_outbox_rows_in_order_and_never_pending_ones(store):
    for seq in range(1, 11):
        store.add_outbox("bob", seq, f"o{seq}", "x", "ts", float(seq), 10**9)
    store.save_link("bob", 10, 6, 0, None)  # bob acknowledged 1..6
    assert store.prune(now=1000.0, max_age_s=995.0, max_messages=100) == 4  # created before 5: seq 1..4
    assert store.prune(now=1000.0, max_age_s=0.0, max_messages=100) == 2  # 5, 6; 7..10 are pending
    assert [r["seq"] for r in store.outbox(("pending", "delivered", "expired"))] == [7, 8, 9, 10]


def test_a_peer_that_reads_nothing_gets_at_most_two_windows_queued(store):
    d = Delivery(store, window=10, ack_timeout_s=1.0)
    for i in range(1, 101):
        d.enqueue("bob", f"m{i}", "x", "ts", 1.0)
    sent = [len(d.due("bob", t)[1]) for t in (0.0, 1.5, 3.0, 4.5, 6.0)]
    assert sent == [10, 10, 0, 0, 0]  # the first window, one go-back, then nothing more
    d.on_ack("bob", 5, now=6.1, epoch=1.0)  # it read something after all
    assert [r[0] for r in d.due("bob", 6.2)[1]] == list(range(11, 16))  # back to normal: fill the window
    d.rewind("bob")  # or a new connection, whose queue starts empty
    assert len(d.due("bob", 6.3)[1]) == 10


def test_a_heartbeat_shortfall_is_fetched_only_if_nothing_arrives_meanwhile(store):
    """A PING or PONG can overtake broadcasts still queued in the PUB: wait before fetching."""
    d = Delivery(store)
    d.announced("alice", 10, 1, 0.0, 2.0)  # first contact at 10
    assert d.announced("alice", 50, 1, 1.0, 2.0, patience_s=2.0) is None  # 11..50 may be on their way
    d.on_broadcast("alice", 11, ("b11", "alice", "alice", "ts", "x"), 1.5, 2.0)
    assert d.announced("alice", 50, 1, 3.2, 2.0, patience_s=2.0) is None  # one arrived: still flowing, wait again
    assert d.announced("alice", 50, 1, 5.3, 2.0, patience_s=2.0) == (12, 50)  # nothing for 2 s: fetch
    assert d.announced("alice", 60, 1, 5.4, 2.0) is None  # a FETCH is in flight


# ---------------------------------------------------------------------------- what a turn has to look at
# The loop calls save() and acks_owed() after every turn: Delivery keeps the links that changed,
# that are owed an ACK and that have unacknowledged messages, instead of walking every link.


def _saved_links(store: Store, monkeypatch) -> list[str]:
    calls: list[str] = []
    real = store.save_link
    monkeypatch.setattr(store, "save_link", lambda peer_id, *a: (calls.append(peer_id), real(peer_id, *a)))
    return calls


def test_save_writes_only_the_links_that_changed_in_link_order(store, monkeypatch):
    d = Delivery(store)
    for peer in ("p0", "p1", "p2", "p3"):
        d.accept(peer, 1, 1, "e")
    saved = _saved_links(store, monkeypatch)
    d.save()
    assert saved == ["p0", "p1", "p2", "p3"] and d.dirty() == []
    d.save()
    assert saved == ["p0", "p1", "p2", "p3"]  # nothing changed: nothing written
    saved.clear()
    d.accept("p3", 2, 1, "e")
    d.enqueue("p1", "m1", "x", "ts", 1.0)
    d.accept("p2", 1, 1, "e")  # a duplicate changes no counter ...
    assert d.dirty() == ["p1", "p3"]  # ... and the order is the links', not the marking's
    d.save()
    assert saved == ["p1", "p3"]


def test_every_counter_change_is_saved(tmp_path):
    """Whatever changed a link's counters, the next save writes it: a store reopened after a
    save and a commit holds exactly the counters in memory."""
    s = Store(tmp_path / "s.db")
    d = Delivery(s, window=4)

    def check():
        d.save()
        s.commit()
        assert d.dirty() == []
        fields = ("out_seq", "out_acked", "in_seq", "bcast_seq", "in_epoch", "bcast_epoch")
        assert s.links() == {p: {f: getattr(ls, f) for f in fields} for p, ls in d.links.items()}

    fill(d, "bob", 3)  # enqueue
    check()
    d.due("bob", 0.0)
    d.on_ack("bob", 2, now=0.1, epoch=1.0)  # ACK progress
    check()
    d.accept("carol", 1, 1, "e1")  # a new message
    check()
    d.accept("carol", 5, 4, "e1")  # a base above what we have
    check()
    d.accept("carol", 1, 1, "e2")  # a new sender epoch
    check()
    d.announced("dave", 7, 1, now=0.0, fetch_timeout_s=1.0)  # first contact with an origin
    check()
    d.announced("dave", 9, 9, now=0.0, fetch_timeout_s=1.0)  # the origin pruned what we lack
    check()
    d.on_broadcast("dave", 9, ("b9",), now=0.1, fetch_timeout_s=1.0)  # a broadcast delivered
    check()
    d.on_broadcast("dave", 1, ("b1",), now=0.1, fetch_timeout_s=1.0, epoch="e9")  # the origin's numbering restarted
    check()
    d.since("erin", 5)  # a backlog asked for
    check()
    s.close()


def test_acks_owed_looks_only_at_senders_heard_from(store):
    d = Delivery(store)
    for peer in ("p0", "p1", "p2"):
        d.accept(peer, 1, 1)
    assert d.acks_owed() == [("p0", 1, False), ("p1", 1, False), ("p2", 1, False)]
    assert d.acks_owed() == []
    d.accept("p2", 2, 1)
    d.accept("p0", 1, 1)  # a duplicate is acknowledged again (the sender may have missed our ACK)
    assert d.acks_owed() == [("p0", 1, False), ("p2", 2, False)]
    # one still paying its debt stays owed, the others are settled
    d.accept("p1", 2, 1)
    d.accept("p1", 3, 1)
    d.accept("p0", 2, 1)
    assert d.acks_owed(unpaid=lambda peer: 1 if peer == "p1" else 0) == [("p0", 2, False), ("p1", 2, False)]
    assert d.acks_owed(unpaid=lambda peer: 1 if peer == "p1" else 0) == []
    assert d.acks_owed() == [("p1", 3, False)]
    assert d.acks_owed() == []


def test_pending_peers_follow_enqueue_and_ack(tmp_path):
    s = Store(tmp_path / "s.db")
    d = Delivery(s)
    d.accept("p0", 1, 1)  # a link with nothing to send
    fill(d, "p2", 2)
    fill(d, "p1", 1)
    assert d.pending_peers() == ["p2", "p1"]
    d.due("p1", 0.0)
    d.due("p2", 0.0)
    d.on_ack("p2", 1, now=0.1, epoch=1.0)
    assert d.pending_peers() == ["p2", "p1"]  # one of two acknowledged
    d.on_ack("p1", 5, now=0.1, epoch=1.0)  # clamped to what was numbered: all of them
    assert d.pending_peers() == ["p2"]
    d.save()
    s.commit()
    s.db.close()
    s2 = Store(tmp_path / "s.db")
    d2 = Delivery(s2)
    assert d2.pending_peers() == ["p2"] and d2.dirty() == []  # from the saved counters
    d2.enqueue("p1", "m9", "x", "ts", 1.0)
    assert d2.pending_peers() == ["p2", "p1"]  # p2's link was loaded first
    d2.due("p2", 0.0)
    d2.on_ack("p2", 2, now=0.1, epoch=1.0)
    assert d2.pending_peers() == ["p1"]
    s2.close()
