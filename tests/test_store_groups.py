"""Groups in the message store: outbox rows and messages name a shout's group (``grp``), reads
narrow to one group, a replayed shout is stored once, and a format 2 store is migrated.

Each test but the migration's runs on both stores (`storekit.store_kit`).
"""

from __future__ import annotations

from collections import Counter
import sqlite3
from types import SimpleNamespace

import pytest

from p2pd.delivery import Delivery
from p2pd.messaging import Messaging
from p2pd.store import SCHEMA_VERSION, Store
from storekit import store_kit  # noqa: F401 (fixture)

OPEN = "rust-dev"
PRIVATE = "~" + "0123456789abcdef" * 2


@pytest.fixture
def store(store_kit):  # noqa: F811 (the imported fixture)
    s = store_kit.open()
    yield s
    store_kit.close(s)


def shout_in(store, msg_id: str, group: str, sender: str = "bob", now: float = 1.0, **kw) -> int:
    return store.add_message("in", "MESSAGE", msg_id, sender, sender, sender, "me", f"text {msg_id}", "ts", now, dedupe=True,
                             group=group, **kw)


def test_an_outbox_row_keeps_its_group_through_a_restart(store_kit):  # noqa: F811
    s = store_kit.open()
    s.add_outbox("bob", 1, "a", "plain", "ts", 1.0, 100.0)
    s.add_outbox("bob", 2, "b", "shout", "ts", 1.0, 100.0, group=OPEN)
    s.add_outbox("bob", 3, "c", "secret", "ts", 1.0, 100.0, PRIVATE)
    want = [(1, "a", "plain", "ts", None), (2, "b", "shout", "ts", OPEN), (3, "c", "secret", "ts", PRIVATE)]
    assert s.pending_after("bob", 0, 10) == want
    s.commit()
    s = store_kit.restart(s)
    assert s.pending_after("bob", 1, 10) == want[1:]
    store_kit.close(s)


def test_delivery_hands_out_the_group_from_memory_and_from_the_store(store):
    d = Delivery(store, window=10)
    d.enqueue("bob", "m1", "plain", "ts", 1.0)
    d.enqueue("bob", "m2", "shout", "ts", 1.0, group=OPEN)
    fresh = d.due("bob", 0.0)[1]  # the first transmission, from memory
    d.rewind("bob")
    again = d.due("bob", 0.1)[1]  # the resend, from the store
    assert fresh == again == [(1, "m1", "plain", "ts", None), (2, "m2", "shout", "ts", OPEN)]


def test_a_shout_goes_out_as_a_message_that_names_its_group(store):
    d = Delivery(store, window=10)
    d.enqueue("bob", "m1", "plain", "ts", 1.0)
    d.enqueue("bob", "m2", "shout", "ts", 1.0, group=PRIVATE)
    out = SimpleNamespace(id="me", name="me", send_many=lambda key, msgs: msgs)  # the envelopes as made
    sent = Messaging.pump(SimpleNamespace(delivery=d, store=store, out=out, stats=Counter()), 0.0, "bob")
    assert [m.data.get("group", "-") for m in sent] == ["-", PRIVATE]


def test_rows_name_their_group_and_reads_narrow_to_one(store):
    store.add_message("in", "MESSAGE", "d1", "bob", "bob", "bob", "me", "direct", "ts", 1.0)
    shout_in(store, "s1", OPEN, now=2.0)
    shout_in(store, "s2", PRIVATE, sender="carol", now=3.0, defer=True)
    store.add_message("out", "MESSAGE", "s3", "bob", "me", "me", "bob", "mine", "ts", 4.0, defer=True, group=OPEN)
    assert [(m["id"], m["group"]) for m in store.history()] == [("d1", None), ("s1", OPEN), ("s2", PRIVATE), ("s3", OPEN)]
    assert [m["id"] for m in store.history(group=OPEN)] == ["s1", "s3"]
    assert [m["id"] for m in store.history(group=OPEN, direction="in")] == ["s1"]
    assert [m["id"] for m in store.history(group=OPEN, limit=1)] == ["s3"]  # the newest of the group
    assert store.history(group="nobody-here") == []
    assert [m["id"] for m in store.messages_after(0)] == ["d1", "s1", "s2"]
    assert [m["id"] for m in store.messages_after(0, group=PRIVATE)] == ["s2"]
    assert [m["id"] for m in store.messages_after(0, "out", group=OPEN)] == ["s3"]
    assert store.messages_after(0, group=OPEN, limit=1)[0]["group"] == OPEN
    assert (store.count_after(0), store.count_after(0, group=OPEN), store.count_after(0, upto=2, group=PRIVATE)) == (3, 1, 0)


def test_a_shout_stored_twice_is_kept_once(store):
    first = shout_in(store, "s1", OPEN)
    assert first > 0 and shout_in(store, "s1", OPEN, now=2.0) == 0  # a replay: refused, no number taken
    shout_in(store, "s2", OPEN, defer=True)
    shout_in(store, "s2", OPEN, now=2.0, defer=True)  # twice in one batch
    shout_in(store, "s1", OPEN, now=2.0, defer=True)  # and again, queued
    store.commit()
    assert [m["id"] for m in store.history(group=OPEN)] == ["s1", "s2"]
    assert shout_in(store, "s2", OPEN, now=3.0) == 0
    assert shout_in(store, "s2", OPEN, sender="carol", now=3.0) > 0  # another sender's is another message


def test_own_shouts_since_replays_ours_of_that_group_oldest_first(store):
    for i, now in enumerate((10.0, 20.0, 30.0, 40.0)):
        store.add_message("out", "MESSAGE", f"o{i}", "bob", "me", "me", "bob", f"mine {i}", f"ts{i}", now, defer=True, group=OPEN)
        shout_in(store, f"i{i}", OPEN, now=now)  # received: not ours
    store.add_message("out", "MESSAGE", "p", "bob", "me", "me", "bob", "private", "ts", 50.0, defer=True, group=PRIVATE)
    store.add_message("out", "MESSAGE", "d", "bob", "me", "me", "bob", "direct", "ts", 50.0, defer=True)
    assert store.own_shouts_since(OPEN, 20.0, 10) == [("o1", "mine 1", "ts1"), ("o2", "mine 2", "ts2"), ("o3", "mine 3", "ts3")]
    assert store.own_shouts_since(OPEN, 0.0, 2) == [("o0", "mine 0", "ts0"), ("o1", "mine 1", "ts1")]
    assert store.own_shouts_since(OPEN, 41.0, 10) == [] and store.own_shouts_since(OPEN, 0.0, 0) == []
    assert store.own_shouts_since(PRIVATE, 0.0, 10) == [("p", "private", "ts")]


def test_has_message_finds_either_direction_by_id_and_sender(store):
    shout_in(store, "s1", OPEN)
    store.add_message("out", "MESSAGE", "o1", "bob", "me", "me", "bob", "mine", "ts", 2.0, defer=True, group=OPEN)
    store.add_message("in", "MESSAGE", "d1", "bob", "bob", "bob", "me", "numbered", "ts", 3.0, defer=True)  # not in the id index
    assert store.has_message("s1", "bob") and store.has_message("o1", "me") and store.has_message("d1", "bob")
    assert not store.has_message("s1", "carol") and not store.has_message("nope", "bob")


# The store format 2 tables (before groups), to test the migration.
V2_SCHEMA = """
CREATE TABLE outbox (
    peer_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (peer_id, seq),
    UNIQUE (peer_id, id)
) WITHOUT ROWID;
CREATE INDEX outbox_expired ON outbox(peer_id, seq) WHERE status = 'expired';
CREATE TABLE messages (
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
CREATE UNIQUE INDEX messages_dedupe ON messages(id, sender_id, peer_id) WHERE dedupe IS NOT NULL;
CREATE TABLE links (
    peer_id TEXT PRIMARY KEY,
    out_seq INTEGER NOT NULL DEFAULT 0,
    out_acked INTEGER NOT NULL DEFAULT 0,
    in_seq INTEGER NOT NULL DEFAULT 0,
    bcast_seq INTEGER,
    in_epoch TEXT,
    bcast_epoch TEXT
);
CREATE TABLE broadcasts (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE known (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    addr TEXT,
    port INTEGER NOT NULL,
    pub_port INTEGER NOT NULL,
    updated REAL NOT NULL
);
"""


def columns(s: Store, table: str) -> list[tuple]:
    return s.db.execute(f"PRAGMA table_info({table})").fetchall()


def test_a_format_2_store_is_migrated_and_its_rows_belong_to_no_group(tmp_path):
    path = tmp_path / "store.db"
    db = sqlite3.connect(path)
    db.executescript(V2_SCHEMA)
    db.execute("INSERT INTO messages(n, id, direction, type, peer_id, sender_id, sender_name, target_id, text, timestamp, stored, dedupe) "
               "VALUES (1, 'm1', 'in', 'MESSAGE', 'bob', 'bob', 'bob', 'me', 'kept', 'ts', 1.0, 1)")
    db.execute("INSERT INTO outbox(peer_id, seq, id, text, timestamp, created, expires) VALUES ('bob', 1, 'o1', 'queued', 'ts', 1.0, 99.0)")
    db.execute("INSERT INTO links(peer_id, out_seq) VALUES ('bob', 1)")
    db.execute("INSERT INTO meta(key, value) VALUES ('epoch', 'e2')")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()

    told = []
    s = Store(path, before_migration=lambda old, new: told.append((old, new)))
    assert told == [(2, SCHEMA_VERSION)] and SCHEMA_VERSION == 3
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION and s.epoch == "e2"
    assert [(m["text"], m["group"]) for m in s.history()] == [("kept", None)]
    assert s.pending_after("bob", 0, 10) == [(1, "o1", "queued", "ts", None)]
    assert s.add_message("in", "MESSAGE", "m1", "bob", "bob", "bob", "me", "again", "ts", 2.0) == 0  # still unique
    s.add_outbox("bob", 2, "o2", "shout", "ts", 2.0, 99.0, group=OPEN)
    assert shout_in(s, "s1", OPEN, now=2.0) == 2
    s.close()

    s = Store(path, before_migration=lambda *a: told.append(a))  # opening again changes nothing
    assert len(told) == 1
    assert [(m["id"], m["group"]) for m in s.history()] == [("m1", None), ("s1", OPEN)]
    assert s.pending_after("bob", 1, 10) == [(2, "o2", "shout", "ts", OPEN)]
    fresh = Store(tmp_path / "fresh.db")  # a new store has the same columns, in the same order
    assert [columns(s, t) for t in ("outbox", "messages")] == [columns(fresh, t) for t in ("outbox", "messages")]
    fresh.close()
    s.close()
