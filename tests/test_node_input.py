"""Unit tests of what a node takes in from peers (p2pd/intake.py, p2pd/messaging.py): bad frames of
every kind, messages and broadcasts, lost messages and gap reports, the rate limit's pacing.  Nodes talk
over the in-memory `Net` of memnet.py."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import testmsg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pd import protocol as P
from p2pd.intake import SUB_TOPIC_PREFIX
from p2pd.membership import ALIVE
from p2pd.node import Node

from memnet import FAST, HOST, WALL, linked_alice, state, watch
from memnet import net, mem_pair, mem_trio, alice_bob  # noqa: F401 (fixtures)


# ============================================================================ bad input


def test_bad_frames_counted_by_kind(net, alice_bob):
    alice, bob = alice_bob
    ping = lambda sender=bob.id, **kw: P.encode(testmsg.make(P.PING, sender, "x", WALL, **kw))  # noqa: E731
    cases = [
        ([b"only one"], "bad_frames"),
        ([bob.id.encode()] + [ping()] * (P.MAX_BATCH + 1), "bad_frames"),  # a batch longer than allowed
        ([b"charlie-id", ping()], "bad_routing_id"),  # claims to be bob on charlie's link
        ([b"ghost", ping("ghost")], "not_linked"),
        ([alice.id.encode(), ping(alice.id)], "self"),
        ([bob.id.encode(), P.encode(testmsg.make(P.MESSAGE, bob.id, "bob", WALL, {"text": "x"}, "charlie-id"))], "misrouted"),
        ([bob.id.encode(), b"\xff not json"], "not_json"),
        ([bob.id.encode(), b'{"v": 1}'], "version"),
        ([bob.id.encode(), b'{"v": 3, "type": "HUG"}'], "unknown_type"),
        ([bob.id.encode(), b'{"v": 3, "type": "PING", "id": "bad id"}'], "bad_field"),
        ([bob.id.encode(), b" " * (FAST.max_frame_bytes + 1)], "oversized"),
    ]
    for i, (frames, kind) in enumerate(cases):
        before = sum(alice.dropped.values())
        assert alice.on_router_frames(1.0 + i, frames, HOST) == [], kind
        assert alice.dropped[kind] >= 1, kind
        assert sum(alice.dropped.values()) == before + 1, kind
    assert alice.dropped["bad_frames"] == 2
    assert len(alice.inbox) == 0
    assert state(alice, bob) == ALIVE
    assert alice.info(20.0)["dropped_total"] == len(cases)


def test_bad_sub_frames(net, alice_bob):
    alice, bob = alice_bob
    msg = P.encode(testmsg.make(P.MESSAGE, bob.id, "bob", WALL, {"text": "x"}, alice.id))
    assert alice.on_sub_frames(1.0, [msg]) == []
    assert alice.dropped["bad_type"] == 1
    assert alice.on_sub_frames(1.0, [msg, msg]) == []  # a batch: each dropped alone
    assert alice.dropped["bad_type"] == 3
    assert alice.on_sub_frames(1.0, [msg] * (P.MAX_BATCH + 1)) == []
    assert alice.dropped["bad_frames"] == 1
    assert alice.on_sub_frames(1.0, [b"junk"]) == []
    assert alice.dropped["not_json"] == 1
    assert len(alice.inbox) == 0


def test_bad_subscription_frames_ignored(net, alice_bob):
    alice, bob = alice_bob
    for frame in [b"", b"\x01", b"\x01" + SUB_TOPIC_PREFIX, b"\x01" + SUB_TOPIC_PREFIX + b"bad id", b"\x01\xff\xfe", b"\x01{"]:
        assert alice.on_subscription(1.0, frame) == []
    assert alice.table.get(bob.id).subscribed is True
    alice.on_subscription(1.0, b"\x00" + SUB_TOPIC_PREFIX + bob.id.encode())
    assert alice.table.get(bob.id).subscribed is False


def test_drop_log_is_rate_limited(caplog):
    alice = Node("alice-id", "alice", P.PeerAddress(HOST, 5001, 5002), FAST, 0.0, WALL)
    caplog.set_level(logging.WARNING, logger="p2pd.node")

    def lines():
        return [r.getMessage() for r in caplog.records if r.name == "p2pd.node"]

    alice.on_router_frames(0.0, [b"x"], "10.1.1.1")
    assert len(lines()) == 1
    assert "[bad_frames]" in lines()[0] and "10.1.1.1" in lines()[0] and "suppressed" not in lines()[0]
    alice.on_router_frames(0.5, [b"x"], HOST)
    alice.on_router_frames(0.99, [b"x"], HOST)
    assert len(lines()) == 1  # repeats within 1 s: counted, not logged
    alice.on_router_frames(0.99, [b"id", b"garbage"], HOST)  # another kind gets its own line
    assert len(lines()) == 2 and "[not_json]" in lines()[1]
    alice.on_router_frames(1.0, [b"x"], HOST)
    assert len(lines()) == 3
    assert "[bad_frames]" in lines()[2] and "(2 more like it suppressed)" in lines()[2]
    alice.on_router_frames(1.5, [b"x"], HOST)
    alice.on_router_frames(2.5, [b"x"], HOST)
    assert len(lines()) == 4 and "(1 more like it suppressed)" in lines()[3]
    assert alice.dropped == {"bad_frames": 6, "not_json": 1}
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "p2pd.node")


FRAMES = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"bob-id", b"alice-id", b"ghost"]),
        st.builds(
            lambda t, s, d, tgt: json.dumps({"v": P.PROTOCOL_VERSION, "type": t, "id": "m1", "sender_id": s, "sender_name": "n",
                                              "timestamp": "2026-01-01T00:00:00Z", "data": d, "target_id": tgt}).encode(),
            st.sampled_from(sorted(P.TYPES)),
            st.sampled_from(["bob-id", "alice-id", "ghost"]),
            st.dictionaries(st.sampled_from(["text", "peers", "ping_id", "addr", "port", "pub_port", "reply_to"]),
                            st.none() | st.integers(-2, 70000) | st.text(max_size=5) | st.lists(st.integers(), max_size=2)),
            st.none() | st.sampled_from(["alice-id", "bob-id"]),
        ),
    ),
    max_size=3,
)


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(FRAMES, st.none() | st.sampled_from([HOST, "::1", "10.0.0.2"]))
def test_router_frames_never_raise(frames, peer_host):
    alice = linked_alice("10.0.0.2")
    before = sum(alice.dropped.values())
    acts = alice.on_router_frames(1.0, frames, peer_host)
    assert isinstance(acts, list)
    assert alice.on_sub_frames(1.0, frames[:1] or [b""]) is not None
    assert sum(alice.dropped.values()) >= before


# ============================================================================ messages


def test_send_and_broadcast_reach_the_inbox(net, mem_trio):
    alice, bob, charlie = mem_trio
    watch(net, bob)
    reply = net.call(alice, 2.0, "send", peer="bob", text="hi bob")
    assert reply["ok"] is True and reply["result"]["status"] == "queued"  # no wait asked: answered once stored
    assert reply["result"]["peer"] == "bob" and reply["result"]["peer_id"] == bob.id
    (entry,) = list(bob.inbox)
    assert entry["id"] == reply["result"]["id"] and entry["text"] == "hi bob"
    assert entry["type"] == P.MESSAGE and entry["sender_id"] == alice.id and entry["target_id"] == bob.id
    assert entry["timestamp"] == P.utc_timestamp(WALL + 2.0)
    assert [e["message"]["text"] for e in net.events(bob, "message")] == ["hi bob"]
    assert len(charlie.inbox) == 0

    reply = net.call(alice, 3.0, "broadcast", text="hi all")
    assert reply["ok"] is True and reply["result"]["subscribers"] == 2
    for n in (bob, charlie):
        assert list(n.inbox)[-1]["text"] == "hi all" and list(n.inbox)[-1]["type"] == P.BROADCAST
    assert len(alice.inbox) == 0
    assert [e["message"]["text"] for e in net.events(bob, "broadcast")] == ["hi all"]
    assert alice.stats["messages_out"] == 1 and alice.stats["broadcasts_out"] == 1
    assert bob.stats["messages_in"] == 1 and bob.stats["broadcasts_in"] == 1


@pytest.mark.parametrize("times", [1, 2, 3])
def test_a_lost_message_is_resent_at_once_when_the_receiver_reports_the_gap(net, mem_pair, times):
    alice, bob = mem_pair
    lost = []

    def lose_seq_2(frm, to, msg):  # lost `times` times: also when resent
        if msg.type == P.MESSAGE and msg.data.get("seq") == 2 and len(lost) < times:
            lost.append(msg.id)
            return True
        return False

    net.lose = lose_seq_2
    for i in range(4):
        net.call(bob, 1.0, "send", peer="alice", text=f"m{i}")
    # All at t=1.0: no ack_timeout_s had to pass.
    assert len(lost) == times and [e["text"] for e in alice.inbox] == ["m0", "m1", "m2", "m3"]
    acks = [m.data for _, m in net.sent("alice", "bob", P.ACK)]
    assert acks.count({"upto": 1, "gap": True}) == times and acks[-1] == {"upto": 4}
    assert alice.stats["messages_in"] == 4 and alice.stats["duplicates_dropped"] == 0


def test_a_sender_over_the_receivers_rate_is_paced_by_partial_acks(net):
    alice = net.add("alice", settings=replace(FAST, send_window=10))
    bob = net.add("bob", settings=replace(FAST, max_msgs_per_s=5.0, send_window=10))
    assert net.connect(alice, bob, 0.0)["ok"] is True
    texts = [f"m{i:02d}" for i in range(40)]
    for t in texts:
        net.call(alice, 1.0, "send", peer="bob", text=t)
    ls = bob.msgs.delivery.links[alice.id]
    # the budget ran out: bob took the rest of alice's window on credit and acknowledged
    # only what was paid for
    assert bob.debt(1.0, alice.id) > 0 and ls.acked_in < ls.in_seq <= ls.acked_in + 10
    t, done_at = 1.0, None
    while t < 20.0 and done_at is None:
        t = round(t + 0.1, 6)
        net.tick(t)
        if len(bob.inbox) == len(texts):
            done_at = t
    assert [e["text"] for e in bob.inbox] == texts  # all of them, once, in order
    # at 5 a second: past the second's burst and the credit, the rest took its time
    assert done_at is not None and done_at >= 1.0 + (40 - 5 - 10 - 16) / 5
    # no message was dropped or sent twice, and the ACKs came steadily: alice never timed out (at 5
    # frames a second the overlay's own frames, FACTS and VIEW, may be refused: they are sent again)
    assert bob.stats["out_of_order_dropped"] == 0
    assert bob.stats["duplicates_dropped"] == 0
    net.tick_range(t + 0.1, t + 8.0, 0.1)  # the last ones stored on credit are acknowledged as it is repaid
    acks = [m.data["upto"] for _, m in net.sent("bob", "alice", P.ACK)]
    times = [t for t, _ in net.sent("bob", "alice", P.ACK)]
    assert acks == sorted(acks) and acks[-1] == 40
    assert max(b - a for a, b in zip(times, times[1:])) < FAST.ack_timeout_s
    assert net.call(alice, t + 8.0, "info")["result"]["outbox_pending"] == 0
    assert state(alice, bob) == "alive" and state(bob, alice) == "alive"


def test_a_peer_over_its_rate_gets_no_credit_for_other_frames(net):
    alice = net.add("alice")
    bob = net.add("bob", settings=replace(FAST, max_msgs_per_s=5.0, send_window=10))
    assert net.connect(alice, bob, 0.0)["ok"] is True
    for _ in range(20):
        net.call(alice, 1.0, "broadcast", text="x")  # not on credit: dropped past the budget
    assert bob.dropped["rate_limited"] > 0 and bob.debt(1.0, alice.id) == 0


def test_credit_is_capped_and_only_for_messages_to_us(net):
    alice = net.add("alice", settings=replace(FAST, send_window=10))
    bob = net.add("bob", settings=replace(FAST, max_msgs_per_s=5.0, send_window=10))
    assert net.connect(alice, bob, 0.0)["ok"] is True
    peer = bob.table.get(alice.id)
    ls = bob.msgs.delivery.link(alice.id)

    def message(seq, target):
        m = testmsg.make(P.MESSAGE, alice.id, "alice", WALL, {"text": "x", "seq": seq, "base": 1}, target)
        return [alice.id.encode(), P.encode(m)]

    def ping():
        return [alice.id.encode(), P.encode(testmsg.make(P.PING, alice.id, "alice", WALL, {}, bob.id))]

    bob.on_router_frames(1.0, ping(), HOST)  # gives alice a bucket at bob
    bucket = bob.intake.bucket(alice.id)
    bucket.tokens, bucket.at = 0.0, 1.0  # the budget is spent
    before = bob.dropped.get("rate_limited", 0)
    bob.on_router_frames(1.0, message(ls.in_seq + 1, "carol-id"), HOST)  # the next one, but for someone else
    assert bob.dropped["rate_limited"] == before + 1 and bucket.tokens == 0.0
    for _ in range(50):  # heartbeats get credit only while messages wait for their ACK: none yet
        bob.on_router_frames(1.0, ping(), HOST)
    assert bucket.tokens == 0.0
    bob.on_router_frames(1.0, message(ls.in_seq + 1, bob.id), HOST)  # on credit
    assert bucket.tokens == -1.0 and bob.msgs.delivery.unacknowledged(alice.id)
    for _ in range(50):  # now they do, but never past a window and 16 in debt, whatever asks
        bob.on_router_frames(1.0, ping(), HOST)
    assert bucket.tokens == -(10 + 16)
    bob.on_router_frames(1.0, message(ls.in_seq + 1, bob.id), HOST)
    assert bucket.tokens == -(10 + 16)  # dropped: the cap holds for messages too


def test_inbox_is_bounded(net):
    alice = net.add("alice", settings=replace(FAST, inbox_size=2))
    bob = net.add("bob")
    net.connect(bob, alice, 0.0)
    for i in range(3):
        net.call(bob, 1.0, "send", peer="alice", text=f"m{i}")
    assert [e["text"] for e in alice.inbox] == ["m1", "m2"]
