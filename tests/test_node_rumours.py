"""Rumours: peers heard of only in gossip (PEERS), capped per introducer, never named, not
peers until they answer (p2pd/membership.py, gossip.py), in the in-memory network."""

from __future__ import annotations

from dataclasses import replace

import testmsg
import pytest

from p2pd import protocol as P
from p2pd.actions import OpenLink, Send
from p2pd.membership import ALIVE
from p2pd import node as node_mod
from p2pd.node import Node
from p2pd.settings import Settings

from memnet import FAST, HOST, WALL, handle, join_frame, peers_frame
from memnet import net, mem_pair  # noqa: F401 (fixtures)


# ============================================================================ rumours (peers heard of only in gossip)


def _fake(i: int, name: str = "bob") -> dict:
    return {"id": f"fake-{i:04d}", "name": name, "addr": "10.9.0.1", "port": 7000 + i, "pub_port": 9000}


def test_rumours_are_capped_per_introducer_never_named_and_not_peers():
    from p2pd.membership import RUMOURS_PER_INTRODUCER, UnknownPeer

    alice = Node("alice-id", "alice", P.PeerAddress("10.0.0.1", 5001, 5002), replace(FAST, max_peers=4), 0.0, WALL)
    alice.on_router_frames(0.0, join_frame("mallory-id", 5003, "10.0.0.2"), "10.0.0.2")
    acts = alice.on_router_frames(0.5, peers_frame("mallory-id", [_fake(i) for i in range(300)]), "10.0.0.2")
    # Gossip dials only while our links fit in the active view (overlay.py): fewer than the rumour cap
    dials = len([a for a in acts if isinstance(a, OpenLink)])
    assert dials == FAST.active_view - 1 < RUMOURS_PER_INTRODUCER
    assert alice.table.rumour_count() == dials
    assert alice.table.member_count() == 1 and [p.name for p in alice.table.members()] == ["mallory"]
    with pytest.raises(UnknownPeer):  # rumours named bob: none of them is "bob" to us
        alice.table.resolve("bob")
    with pytest.raises(UnknownPeer):
        alice.table.resolve("fake-0001")
    # real nodes still get in, though max_peers is 4 and 7 rumours wait
    alice.on_router_frames(1.0, join_frame("bob-id", 5005, "10.0.0.3"), "10.0.0.3")
    alice.on_router_frames(1.0, join_frame("carol-id", 5007, "10.0.0.4"), "10.0.0.4")
    assert alice.table.resolve("bob").id == "bob-id" and alice.dropped["peer_limit"] == 0
    assert {e["id"] for e in alice.table.book()} == {"mallory-id", "bob-id", "carol-id"}  # rumours not in the peer book
    # ... and a rumour that answers itself becomes a member, under the name its own JOIN gives
    alice.on_router_frames(1.2, join_frame("fake-0003", 7003, "10.9.0.1", name="dave"), "10.9.0.1")
    assert not alice.table.get("fake-0003").rumour and alice.table.resolve("dave").id == "fake-0003"


def test_a_rumour_is_passed_on_only_once_it_has_answered(net, mem_pair):
    alice, bob = mem_pair
    carol = net.add("charlie")
    ghost = _fake(1, "ghost")
    # bob tells alice of a ghost; alice dials it but does not pass it on to anyone
    net.connect(carol, alice, 0.5)
    alice.on_router_frames(1.0, peers_frame("bob-id", [ghost]), HOST)
    before = len(net.sent("alice", "charlie", P.PEERS))
    net.tick(1.1, alice)
    assert not any(e["id"] == ghost["id"] for _, m in net.sent("alice", "charlie", P.PEERS)[before:] for e in m.data["peers"])
    assert alice.table.get(ghost["id"]).rumour and "fake-0001" in alice.links


def test_links_use_a_routing_id_suffix_only_to_peers_that_said_they_take_one():
    alice = Node("alice-id", "alice", P.PeerAddress("10.0.0.1", 5001, 5002), FAST, 0.0, WALL)
    new = alice.on_router_frames(0.0, join_frame("bob-id", 5003, "10.0.0.2", rid_suffix=True), "10.0.0.2")
    old = alice.on_router_frames(0.0, join_frame("carol-id", 5005, "10.0.0.3"), "10.0.0.3")  # a p2pd before December 2026
    assert [a.suffix for a in new if isinstance(a, OpenLink)] == [True]
    assert [a.suffix for a in old if isinstance(a, OpenLink)] == [False]
    assert all(isinstance(a.msg.data.get("rid_suffix"), bool) and a.msg.data["rid_suffix"] for a in new if isinstance(a, Send) and a.msg.type == P.JOIN)
    # remembered in the peer book: after a restart the first link to bob already uses one
    book = alice.table.book()
    again = Node("alice-id", "alice", P.PeerAddress("10.0.0.1", 5001, 5002), FAST, 0.0, WALL)
    opens = {a.key: a.suffix for a in again.start(0.0, book, []) if isinstance(a, OpenLink)}
    assert opens == {"bob-id": True, "carol-id": False}


def test_handle_takes_every_input_and_gives_what_the_entry_point_gives(net):
    """`Node.handle(now, event)` is the one entry point: every input type of inputs.py has its
    route, and an event through it does what the method it names does."""
    from p2pd import inputs

    alice, bob = net.add("alice"), net.add("bob")
    assert set(alice._events) == set(inputs.ALL_INPUTS)
    frames = join_frame(bob.id, 5003, HOST)
    via_handle = alice.handle(1.0, inputs.RouterFrames(frames, HOST))
    assert any(a.msg.type == P.JOIN and a.msg.data["reply_to"] for a in via_handle if hasattr(a, "msg"))
    assert alice.table.get(bob.id) is not None
    assert isinstance(alice.handle(1.5, inputs.Tick()), list) and alice.heartbeat.next_at == 2.5  # the tick ran its heartbeat
    assert alice.handle(2.0, inputs.Flush()) == []
    assert alice.handle(2.0, inputs.LinkRefused("nothing")) == []
    assert alice.handle(2.0, inputs.KeyAnswer("no-such-tag", None, "gone")) == []
    assert alice.handle(2.0, inputs.Subscription(b"\x01junk")) == []
    before = sum(alice.dropped.values())
    assert alice.handle(2.0, inputs.SubFrames([b"not json"], "sub", bob.id)) == [] and sum(alice.dropped.values()) == before + 1
    assert alice.handle(2.0, inputs.LanBeaconHeard(b"x", HOST)) == []  # LAN discovery is off


# ---------------------------------------------------------------------------- how long the loop may sleep


def _idle_alice() -> Node:
    """alice with default settings, linked to bob at t=0 and ticked past everything the link started."""
    alice = Node("alice-id", "alice", P.PeerAddress("10.0.0.1", 5001, 5002), Settings().validate(), 0.0, WALL)
    alice.on_router_frames(0.0, join_frame("bob-id", 5003, "10.0.0.2"), "10.0.0.2")
    assert alice.table.get("bob-id").state == ALIVE
    return alice


def _frame(msg_type: str, data: dict) -> list[bytes]:
    return [b"bob-id", P.encode(testmsg.make(msg_type, "bob-id", "bob", WALL, data, target_id="alice-id"))]


def test_a_lively_node_ticks_at_full_rate_and_an_idle_one_sleeps_until_its_next_timer():
    alice = _idle_alice()
    assert alice.next_deadline(1.0) == 0.0  # a link just came up: the overlay's reactions run at full rate
    quiet = node_mod.LIVELY_S + 0.5
    alice.tick(quiet)
    alice.on_router_frames(quiet, _frame(P.PING, {}), "10.0.0.2")  # a heartbeat is no news
    wait = alice.next_deadline(quiet)
    assert 0.0 < wait <= node_mod.TICK_MAX_S
    alice.on_router_frames(quiet, join_frame("carol-id", 5005, "10.0.0.3"), "10.0.0.3")  # news: lively again
    assert alice.next_deadline(quiet) == 0.0
    later = quiet + node_mod.LIVELY_S
    alice.on_router_frames(later, _frame(P.PING, {}), "10.0.0.2")
    alice.on_router_frames(later, _frame(P.PING, {}), "10.0.0.3")
    alice.tick(later)
    assert alice.next_deadline(later) > 0.0


def test_an_idle_node_wakes_when_a_peer_can_fall_silent_not_a_tick_later():
    """Ticks are up to TICK_MAX_S apart when idle; a peer's silence has a deadline of its own, so
    a dead peer is found at heartbeat_timeout_s after it last spoke, not up to a tick later."""
    alice = _idle_alice()
    timeout = alice.settings.heartbeat_timeout_s
    quiet = node_mod.LIVELY_S + 0.5
    alice.tick(quiet)
    heard = quiet + 0.2
    alice.on_router_frames(heard, _frame(P.PONG, {"ping_id": "nothing"}), "10.0.0.2")
    alice.tick(heard)  # computes when bob can first be silent
    t = heard
    for _ in range(50):  # follow the node's own deadlines, as the loop does
        t += max(0.001, alice.next_deadline(t))
        alice.tick(t)
        if alice.table.get("bob-id").state != ALIVE:
            break
    assert alice.table.get("bob-id").state != ALIVE
    assert heard + timeout < t <= heard + timeout + 0.01


def test_a_routed_envelope_is_judged_by_what_it_holds_not_by_being_routed():
    """Upkeep that travels routed (a shuffle's reply) once made every node it crossed tick 20
    times a second for LIVELY_S: the idle overlay woke each daemon about 13 times a second."""
    from collections import Counter

    from p2pd.drops import Drops
    from p2pd.relay import Relay
    from p2pd.seeded import SplitMix64

    alice = _idle_alice()
    quiet = node_mod.LIVELY_S + 0.5
    alice.tick(quiet)
    bob = Relay("bob-id", "bob", None, None, lambda dest: "alice-id", lambda node_id: None, Counter(), Drops(), SplitMix64(1))

    def routed(inner: P.Message) -> list[bytes]:
        return [b"bob-id", P.encode(bob.wrap(inner.target_id, inner).msg)]

    shuffle = testmsg.make(P.VIEW, "bob-id", "bob", WALL, {"kind": "SHUFFLE_REPLY", "nodes": []}, target_id="alice-id")
    alice.on_router_frames(quiet, routed(shuffle), "10.0.0.2")
    assert alice.stats["routed_in"] == 1
    assert alice.next_deadline(quiet) > 0.0  # upkeep, routed or not: the loop sleeps on
    passing = testmsg.make(P.MESSAGE, "bob-id", "bob", WALL, {"text": "hi"}, target_id="carol-id")
    alice.on_router_frames(quiet, routed(passing), "10.0.0.2")  # not for us, and no route on: dropped
    assert alice.next_deadline(quiet) > 0.0
    news = testmsg.make(P.VIEW, "bob-id", "bob", WALL, {"kind": "NEIGHBOR", "priority": "low"}, target_id="alice-id")
    alice.on_router_frames(quiet, routed(news), "10.0.0.2")
    assert alice.next_deadline(quiet) == 0.0  # a request to answer: full rate again


def test_a_message_awaiting_its_ack_keeps_the_loop_ticking_until_acknowledged():
    alice = _idle_alice()
    quiet = node_mod.LIVELY_S + 0.5
    alice.tick(quiet)
    assert alice.next_deadline(quiet) > 0.0
    reply = handle(alice, {"req": 1, "cmd": "send", "args": {"peer": "bob", "text": "hi", "wait": False}}, now=quiet)
    assert reply["ok"] is True, reply
    assert alice.next_deadline(quiet + 0.1) == 0.0  # its resend is timed by tick
