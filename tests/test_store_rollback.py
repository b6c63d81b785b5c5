"""A store that went back in time (restored from an older backup) is detected from the peers' JOINs.

A JOIN says how far its sender has received the receiving peer's numbering (``got``/``bgot``, each
with the epoch it belongs to).  A node whose own counters, in its current epoch, are below that has
a store that went back: it starts a new store epoch, so that its peers resynchronise instead of
dropping its next messages as duplicates (docs/PROTOCOL.md, JOIN and 5.7; docs/OPERATIONS.md,
"Restoring").

The unit tests run pure `Node` objects over the in-memory `Net` of memnet.py, with stores in
files so that a backup can be taken and restored; the last test does the same with real daemons.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3

import pytest

from conftest import wait_for
from p2pd import protocol as P
from p2pd.store import Store
from test_delivery import assert_exactly_once_in_order, info, linked, received_texts
from memnet import HOST, Net, join_frame

STORE_FILES = ("store.db", "store.db-wal", "store.db-shm")


def texts(node, type_: str | None = None) -> list[str]:
    return [e["text"] for e in node.inbox if type_ is None or e["type"] == type_]


def last_join(net: Net, frm: str, to: str) -> P.Message:
    return net.sent(frm, to, P.JOIN)[-1][1]


@pytest.fixture
def stored_pair(tmp_path):
    """alice (in-memory store) and bob (store in a file), linked at t=0."""
    net = Net()
    alice, bob = net.add("alice"), net.add("bob", store=Store(tmp_path / "bob.db"))
    assert net.connect(bob, alice, 0.0)["ok"] is True
    return net, alice, bob


def send(net: Net, node, now: float, peer: str, *words: str) -> None:
    for w in words:
        assert net.call(node, now, "send", peer=peer, text=w)["ok"] is True


def broadcast(net: Net, node, now: float, *words: str) -> None:
    for w in words:
        assert net.call(node, now, "broadcast", text=w)["ok"] is True


def restart(net: Net, node, store_path, now: float):
    """The node's process ends and starts again on the store at ``store_path``, dialling the peers it had
    saved (as p2pd start does)."""
    saved = net.saved[node.name]
    node.store.close()
    net.kill(node)
    again = net.add(node.name, store=Store(store_path), now=now)
    net.apply(again, again.start(now, saved, []), now)
    return again


# ---------------------------------------------------------------------------- JOIN fields


def test_join_says_how_far_the_peers_numbering_was_received(stored_pair, tmp_path):
    net, alice, bob = stored_pair
    first = last_join(net, "alice", "bob")
    assert not {"got", "got_epoch", "bgot", "bgot_epoch"} & set(first.data)  # nothing received from bob yet
    send(net, bob, 1.0, "alice", "one", "two")
    broadcast(net, bob, 1.5, "all")
    send(net, alice, 1.8, "bob", "hi bob")

    # a normal restart: bob's counters are where alice's reports them, and nothing changes
    epoch = bob.store.epoch
    bob = restart(net, bob, tmp_path / "bob.db", 2.0)
    reply = last_join(net, "alice", "bob")
    assert reply.data["reply_to"] is not None
    assert (reply.data["got"], reply.data["got_epoch"]) == (2, epoch)
    assert (reply.data["bgot"], reply.data["bgot_epoch"]) == (1, epoch)
    assert bob.store.epoch == epoch and bob.info(2.0)["store_rollbacks_detected"] == 0
    join = last_join(net, "bob", "alice")  # bob's own JOIN says what it received from alice (no broadcasts yet)
    assert (join.data["got"], join.data["got_epoch"]) == (1, alice.store.epoch)
    assert (join.data["bgot"], join.data["bgot_epoch"]) == (0, alice.store.epoch)
    send(net, bob, 3.0, "alice", "three")
    broadcast(net, bob, 3.5, "all again")
    assert texts(alice) == ["one", "two", "all", "three", "all again"]
    assert alice.stats["duplicates_dropped"] == 0


@pytest.mark.parametrize("extra, switches", [
    ({}, False),  # a peer of an older version: no fields, nothing changes
    ({"got": 5, "got_epoch": "another-store"}, False),  # counts of an epoch we do not have (any more)
    ({"got": 0, "got_epoch": "OURS"}, False),
    ({"bgot": 0, "bgot_epoch": "OURS"}, False),
    ({"got": 5, "got_epoch": "OURS"}, True),  # it received seq 5 from us; we numbered none
    ({"bgot": 3, "bgot_epoch": "OURS", "got": 0, "got_epoch": "OURS"}, True),
])
def test_counts_beyond_our_own_start_a_new_epoch(extra, switches, caplog):
    net = Net()
    alice = net.add("alice")
    epoch = alice.store.epoch
    extra = {k: epoch if v == "OURS" else v for k, v in extra.items()}
    with caplog.at_level(logging.WARNING, logger="p2pd.messaging"):
        acts = alice.on_router_frames(1.0, join_frame("bob-id", 5003, HOST, **extra), HOST)
    assert alice.table.get("bob-id") is not None and alice.dropped == {}
    assert (alice.store.epoch != epoch) is switches
    assert alice.info(1.0)["store_rollbacks_detected"] == int(switches)
    assert alice.store.get_meta("epoch") == alice.store.epoch  # persisted with the turn's writes
    reply = next(a.msg for a in acts if getattr(a, "msg", None) is not None and a.msg.type == P.JOIN)
    assert reply.data["epoch"] == alice.store.epoch  # the answer already carries the new epoch
    logged = [r.getMessage() for r in caplog.records if "restored from a backup" in r.getMessage()]
    if switches:
        assert len(logged) == 1 and "older than what peer bob has received from us" in logged[0], logged
        assert "starting a new store epoch so peers resynchronise" in logged[0]
    else:
        assert logged == []


@pytest.mark.parametrize("extra", [
    {"got": -1, "got_epoch": "e1"},
    {"got": "5", "got_epoch": "e1"},
    {"got": True, "got_epoch": "e1"},
    {"got": 1.5, "got_epoch": "e1"},
    {"got": 2**53 + 1, "got_epoch": "e1"},
    {"got": 5, "got_epoch": "not an id"},
    {"got": 5, "got_epoch": 5},
    {"got": 5, "got_epoch": "x" * 65},
    {"got": 5},  # a count without its epoch
    {"got_epoch": "e1"},
    {"bgot": -3, "bgot_epoch": "e1"},
    {"bgot": 3, "bgot_epoch": ""},
    {"bgot_epoch": "e1"},
])
def test_bad_received_counts_are_dropped_as_bad_field(extra):
    alice = Net().add("alice")
    epoch = alice.store.epoch
    assert alice.on_router_frames(1.0, join_frame("bob-id", 5003, HOST, **extra), HOST) == []
    assert alice.dropped == {"bad_field": 1}
    assert len(alice.table) == 0 and alice.store.epoch == epoch


# ---------------------------------------------------------------------------- a restored backup, end to end in memory


@pytest.mark.parametrize("after_backup", ["direct", "broadcast", "both"])
def test_a_restored_backup_starts_a_new_epoch_and_nothing_is_lost(stored_pair, tmp_path, after_backup):
    net, alice, bob = stored_pair
    send(net, bob, 1.0, "alice", "before 1")
    broadcast(net, bob, 1.2, "all before")
    # "pending" is in the backup's outbox, unacknowledged; it is delivered after the backup was taken
    net.request(bob, 1.4, "send", flush=False, peer="alice", text="pending")
    bob.msgs.delivery.save()  # the end of the loop's turn: counters written, then the commit
    bob.store.commit()
    backup = sqlite3.connect(tmp_path / "backup.db")
    bob.store.db.backup(backup)
    backup.close()
    net.flush(1.4)
    old_epoch = bob.store.epoch

    # bob goes on: alice's counts of bob's numbering move past what the backup holds
    if after_backup in ("direct", "both"):
        send(net, bob, 2.0, "alice", "after 1", "after 2")
    if after_backup in ("broadcast", "both"):
        broadcast(net, bob, 2.5, "all after 1", "all after 2")
    send(net, alice, 2.8, "bob", "to bob")

    bob = restart(net, bob, tmp_path / "backup.db", 3.0)
    assert bob.store.epoch != old_epoch and bob.store.get_meta("epoch") == bob.store.epoch
    assert bob.info(3.0)["store_rollbacks_detected"] == 1
    assert bob.info(3.0)["outbox_pending"] == 0  # alice's JOIN acknowledged "pending": not sent again

    send(net, bob, 4.0, "alice", "restored 1", "restored 2")
    broadcast(net, bob, 4.5, "all restored")
    send(net, bob, 5.0, "alice", "restored 3")
    direct = ["before 1", "pending"] + (["after 1", "after 2"] if after_backup != "broadcast" else []) + ["restored 1", "restored 2", "restored 3"]
    bcasts = ["all before"] + (["all after 1", "all after 2"] if after_backup != "direct" else []) + ["all restored"]
    assert_exactly_once_in_order(texts(alice, P.MESSAGE), direct)
    assert_exactly_once_in_order(texts(alice, P.BROADCAST), bcasts)
    assert bob.info(5.0)["outbox_pending"] == 0
    since_restore = [m for t, m in net.sent("bob", "alice") if t >= 3.0 and m.type in (P.MESSAGE, P.BROADCAST)]
    assert since_restore and {m.data["epoch"] for m in since_restore} == {bob.store.epoch}

    # alice introduces herself again, reporting bob's new numbering: no second switch
    epoch = bob.store.epoch
    net.apply(alice, alice.handshake.link_to(6.0, alice.table.get(bob.id), again=True), 6.0)
    assert bob.store.epoch == epoch and bob.info(6.0)["store_rollbacks_detected"] == 1
    assert last_join(net, "alice", "bob").data["got_epoch"] == epoch


# ---------------------------------------------------------------------------- real daemons


def copy_store(src, dst) -> None:
    """Copy a stopped node's store (with its -wal and -shm, if any) from directory ``src`` to ``dst``."""
    dst.mkdir(exist_ok=True)
    for name in STORE_FILES:
        (dst / name).unlink(missing_ok=True)
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def subscribed(origin, name: str) -> bool:
    return any(p["name"] == name and p["subscribed"] for p in origin.call("peers"))


@pytest.mark.timeout(120)
def test_restoring_an_old_store_loses_nothing(make_node, tmp_path):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    assert "delivered" in bob.ctl("send", "alice", "before").stdout
    assert "delivered" in alice.ctl("send", "bob", "hello bob").stdout
    wait_for(lambda: subscribed(bob, "alice"), what="alice subscribed to bob")
    bob.ctl("broadcast", "all before")
    wait_for(lambda: received_texts(alice, "bob", "BROADCAST") == ["all before"], what="alice to get bob's broadcast")

    port = bob.port
    assert bob.stop().returncode == 0
    copy_store(bob.home, tmp_path / "backup")  # the backup
    bob.start(port=port)
    wait_for(lambda: "alice" in bob.alive_names(), what="bob to re-link alice")
    wait_for(lambda: subscribed(bob, "alice"), what="alice subscribed to bob again")
    for text in ("after 1", "after 2"):
        assert "delivered" in bob.ctl("send", "alice", text).stdout
    bob.ctl("broadcast", "all after")
    assert "delivered" in alice.ctl("send", "bob", "hi again").stdout
    wait_for(lambda: received_texts(alice, "bob", "BROADCAST") == ["all before", "all after"], what="alice to get the second broadcast")
    assert info(bob)["store_rollbacks_detected"] == 0

    assert bob.stop().returncode == 0
    copy_store(tmp_path / "backup", bob.home)  # the restore
    bob.start(port=port)
    wait_for(lambda: "alice" in bob.alive_names(), what="the restored bob to re-link alice")
    wait_for(lambda: info(bob)["store_rollbacks_detected"] == 1, what="bob to notice that its store went back")
    assert "restored from a backup? starting a new store epoch" in bob.log_text()
    wait_for(lambda: subscribed(bob, "alice"), what="alice subscribed to the restored bob")
    for text in ("restored 1", "restored 2"):
        assert "delivered" in bob.ctl("send", "alice", text).stdout
    bob.ctl("broadcast", "all restored")
    assert "delivered" in bob.ctl("send", "alice", "restored 3").stdout

    direct = ["before", "after 1", "after 2", "restored 1", "restored 2", "restored 3"]
    bcasts = ["all before", "all after", "all restored"]
    got = wait_for(lambda: (lambda g: g if len(g) >= len(direct) else None)(received_texts(alice, "bob")),
                   timeout=20, what="alice to show bob's messages after the restore")
    assert_exactly_once_in_order(got, direct)
    got = wait_for(lambda: (lambda g: g if len(g) >= len(bcasts) else None)(received_texts(alice, "bob", "BROADCAST")),
                   timeout=20, what="alice to show bob's broadcast after the restore")
    assert_exactly_once_in_order(got, bcasts)
    assert info(bob)["store_rollbacks_detected"] == 1
    wait_for(lambda: info(bob)["outbox_pending"] == 0, what="bob's outbox to empty")
