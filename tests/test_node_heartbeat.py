"""The node's heartbeat: PING/PONG on idle links, round trips, lost and found peers, what a
PONG announces (p2pd/heartbeat.py, liveness.py), in the in-memory network."""

from __future__ import annotations


import testmsg
import pytest

from p2pd import protocol as P
from p2pd.actions import CloseLink, OpenLink, Send, ToClient, Unsubscribe
from p2pd.membership import ALIVE, LINKING, LOST, RUMOUR_COOLDOWN_S

from memnet import CLI, HOST, WALL, WATCH, ep, linked_alice, peers_frame, state, watch
from memnet import net, mem_pair, mem_trio  # noqa: F401 (fixtures)


# ============================================================================ heartbeat


def test_a_peer_heard_within_the_interval_is_not_pinged(net, mem_pair):
    """Two idle peers: whoever asks first also answers for the other; a busy link needs no PINGs at all."""
    alice, bob = mem_pair
    for t in range(11):  # settled: the overlay's news about the new link has been spread (overlay.py)
        net.tick(float(t), alice)
        net.tick(t + 0.5, bob)
    assert alice.roster.pending() == 0 and bob.roster.pending() == 0
    for t in range(11, 22):  # their heartbeats are half an interval apart, as two nodes started apart are
        net.tick(float(t), alice)
        net.tick(t + 0.5, bob)
    pings = {(a, b): len([t for t, _ in net.sent(a, b, P.PING) if t > 10.5]) for a, b in (("alice", "bob"), ("bob", "alice"))}
    # One per interval per pair (11 ticks of alice's, 1 s apart), not one each way: the asker keeps
    # both informed.  (10 while a PEERS gossip round at 20 s stood in for one: nodes that keep the
    # roster send each other no rounds now, gossip.py.)
    assert sorted(pings.values()) == [0, 11]
    for t in range(22, 32):  # bob sends alice a message every second: alice never has to ask
        net.request(bob, t - 0.5, "send", peer="alice", text=f"m{t}")
        net.tick(float(t), alice)
    assert [t for t, _ in net.sent("alice", "bob", P.PING) if t > 22.5] == []


def test_heartbeat_pings_each_interval_and_pong_sets_rtt(net, mem_pair):
    alice, bob = mem_pair
    net.tick(0.0, alice)  # the first heartbeat is due at once, but bob was heard at 0.0 (linking)
    net.tick(0.5, alice)
    net.tick(1.0, alice)  # silent for a whole interval: asked
    net.tick(1.7, alice)
    assert [t for t, _ in net.sent("alice", "bob", P.PING)] == [1.0]
    assert all(m.target_id == "bob-id" for _, m in net.sent("alice", "bob", P.PING))
    assert len(net.sent("bob", "alice", P.PONG)) == 1
    assert alice.table.get(bob.id).rtt_ms == 0.0

    net.tick(2.0, alice, flush=False)  # the PING is in flight ...
    net.flush(2.04)  # ... and arrives 40 ms later; the PONG comes straight back
    assert alice.table.get(bob.id).rtt_ms == pytest.approx(40.0)
    ping = net.sent("alice", "bob", P.PING)[-1][1]
    pong = net.sent("bob", "alice", P.PONG)[-1][1]
    assert pong.data["ping_id"] == ping.id and pong.target_id == alice.id
    assert alice.pings == {}


def test_pong_from_the_wrong_peer_is_ignored(net, mem_trio):
    alice, bob, charlie = mem_trio
    net.tick(3.0, alice, flush=False)
    ping_to_bob = next(a.msg for n, a in net.queue if isinstance(a, Send) and a.key == bob.id)
    net.queue.clear()
    forged = testmsg.make(P.PONG, charlie.id, "charlie", WALL, {"ping_id": ping_to_bob.id}, alice.id)
    alice.on_router_frames(3.1, [charlie.id.encode(), P.encode(forged)], HOST)
    assert alice.table.get(bob.id).rtt_ms is None


def test_any_frame_counts_as_life(net, mem_pair):
    alice, bob = mem_pair
    net.call(bob, 4.0, "send", peer="alice", text="still here")
    net.tick(8.0, alice)  # 8 - 4 < 5: bob is alive thanks to the MESSAGE
    assert state(alice, bob) == ALIVE
    assert alice.table.get(bob.id).last_seen == 8.0  # and the PING/PONG at 8 refreshed it


def test_silent_peer_lost_then_retried_with_backoff(net, mem_pair):
    alice, bob = mem_pair
    watch(net, alice)
    net.kill(bob)
    net.tick_range(1.0, 5.0, 1.0, alice)
    assert state(alice, bob) == ALIVE  # 5 s silent is not more than the timeout
    assert net.events(alice, "lost") == []
    net.tick(5.5, alice)
    assert state(alice, bob) == LOST

    lost = net.events(alice, "lost")
    assert len(lost) == 1 and lost[0]["peer"]["id"] == "bob-id" and lost[0]["peer"]["state"] == LOST
    assert [a for _, a in net.acts("alice", CloseLink, since=5.5)] == [CloseLink("bob-id")]
    assert [a for _, a in net.acts("alice", Unsubscribe, since=5.5)] == [Unsubscribe(ep(5004), "bob-id")]
    assert "bob-id" not in alice.links
    assert net.subs[alice.id] == set()

    net.tick_range(6.0, 45.0, 0.5, alice)
    opens = [(t, a) for t, a in net.acts("alice", OpenLink, since=5.5) if a.key == "bob-id"]
    # retries at +1 +2 +4 +8 (capped at 8); the one at 8.5 left the 2 s old try alone (younger than
    # the heartbeat timeout: its handshakes may still be under way on a lossy path)
    assert [t for t, _ in opens] == [6.5, 12.5, 20.5, 28.5, 36.5, 44.5]
    assert all(a.endpoint == ep(5003) for _, a in opens)
    joins = [(t, a) for t, a in net.acts("alice", Send, since=5.5) if a.msg.type == P.JOIN]
    assert [t for t, _ in joins] == [t for t, _ in opens]
    assert all(a.key == "bob-id" and a.msg.data["reply_to"] is None for _, a in joins)
    assert len(net.events(alice, "lost")) == 1  # reported once, not on every retry
    assert state(alice, bob) == LOST


def test_gossiped_peer_that_never_answers_is_forgotten_quietly_and_ignored_for_a_while():
    alice = linked_alice("10.0.0.2")
    alice.watchers.add(WATCH)
    entry = {"id": "charlie-id", "name": "charlie", "addr": "10.0.0.3", "port": 5005, "pub_port": 5006}
    alice.on_router_frames(1.0, peers_frame("bob-id", [entry]), "10.0.0.2")
    assert alice.table.get("charlie-id").state == LINKING and alice.table.get("charlie-id").rumour
    alice.on_router_frames(5.9, [b"bob-id", P.encode(testmsg.make(P.PING, "bob-id", "bob", WALL))], "10.0.0.2")
    assert not [a for a in alice.tick(6.0) if isinstance(a, CloseLink)]  # 5 s after linking: not yet
    acts = alice.tick(6.5)
    assert alice.table.get("charlie-id") is None  # a rumour that never answered: forgotten, not kept as lost
    assert CloseLink("charlie-id") in acts
    assert not [a for a in acts if isinstance(a, (ToClient, Unsubscribe))]  # it was never alive: no event
    assert not [a for a in alice.tick(7.5) if isinstance(a, OpenLink)]  # and not retried
    # gossip about it again is ignored for RUMOUR_COOLDOWN_S, then taken (and dialled) again
    alice.on_router_frames(8.0, peers_frame("bob-id", [entry]), "10.0.0.2")
    assert alice.table.get("charlie-id") is None
    acts = alice.on_router_frames(6.5 + RUMOUR_COOLDOWN_S, peers_frame("bob-id", [entry]), "10.0.0.2")
    assert OpenLink("charlie-id", "tcp://10.0.0.3:5005") in acts


def test_a_connect_whose_reply_was_lost_is_answered_by_the_peers_own_join(net):
    alice, bob = net.add("alice"), net.add("bob")
    net.lose = lambda frm, to, msg: msg.type == P.JOIN and frm == "alice" and msg.data.get("reply_to") is not None
    replies = net.request(bob, 0.0, "connect", host=HOST, port=alice.address.port, wait_s=30.0)
    assert replies == [] and state(alice, bob) == ALIVE and state(bob, alice) is None  # alice's answer was lost
    net.lose = None
    t = 0.5
    while not net.replies[(bob.name, CLI)] and t < 20:
        net.tick(t)
        t += 0.5
    # alice lost bob (no answer to her PINGs), and her retry's JOIN reached bob: that answers his connect
    [reply] = net.replies[(bob.name, CLI)]
    assert reply["ok"] is True and reply["result"]["peer"]["id"] == alice.id, reply
    assert state(bob, alice) == ALIVE and bob.dial.pending == {}
    net.tick_range(t, t + 10.0, 0.5)
    assert state(alice, bob) == ALIVE and state(bob, alice) == ALIVE


def test_lost_peer_forgotten_after_forget_after_s(net, mem_pair):
    alice, bob = mem_pair
    net.kill(bob)
    net.tick(6.0, alice)
    assert state(alice, bob) == LOST
    net.tick(106.0, alice)
    assert state(alice, bob) == LOST  # exactly forget_after_s
    net.tick(106.5, alice)
    assert state(alice, bob) is None
    assert net.saved["alice"] == []


def test_lost_peer_comes_back_on_retry(net, mem_pair):
    alice, bob = mem_pair
    watch(net, alice)
    net.kill(bob)
    net.tick(6.0, alice)  # lost; retry at 7
    bob2 = net.add("bob", now=6.5)
    assert bob2 is not bob and bob2.id == bob.id
    net.tick(7.0, alice)
    assert state(alice, bob2) == ALIVE and state(bob2, alice) == ALIVE
    assert len(alice.table) == 1 and len(bob2.table) == 1
    assert [e["peer"]["id"] for e in net.events(alice, "joined")] == ["bob-id"]
    assert alice.table.get(bob.id).retry_at is None
    assert net.subs[alice.id] == {ep(5004)}


def test_a_peer_lost_while_its_sub_stays_attached_is_still_subscribed_when_it_relinks(net, mem_pair):
    """Issue 12: bob's frames to alice are lost (as if bob were frozen), so alice marks him lost
    and retries; bob never lost alice, his SUB stays attached to her PUB and sends no new
    subscribe.  Back alive, bob must still count as subscribed, and a broadcast reach him."""
    alice, bob = mem_pair
    assert alice.table.get(bob.id).subscribed
    net.lose = lambda frm, to, msg: frm == "bob"
    net.tick_range(1.0, 6.0, 1.0, alice)
    assert state(alice, bob) == LOST and state(bob, alice) == ALIVE
    assert ep(5002) in net.subs[bob.id]  # bob's SUB is still attached to alice's PUB
    net.lose = None
    t = 6.5
    while state(alice, bob) != ALIVE and t < 20:
        net.tick(t)
        t += 0.5
    assert state(alice, bob) == ALIVE
    assert alice.table.get(bob.id).subscribed is True
    assert net.call(alice, t, "peers")["result"][0]["subscribed"] is True
    reply = net.call(alice, t, "broadcast", text="still there?")
    assert reply["result"]["subscribers"] == 1
    assert [m.data["text"] for _, m in net.sent("alice", "bob", P.BROADCAST)] == ["still there?"]


def test_restarted_peer_rejoins_before_being_noticed(net, mem_trio):
    """bob restarts quickly (same id, new process) and connects to alice before she noticed."""
    alice, bob, charlie = mem_trio
    net.kill(bob)
    bob2 = net.add("bob", now=2.0)
    reply = net.connect(bob2, alice, 2.0)
    assert reply["ok"] is True and reply["result"]["peer"]["id"] == alice.id
    # alice still counts bob once, and re-sends what she knows: bob finds charlie again
    assert len(alice.table) == 2
    assert [p.id for p in alice.table.all()].count(bob.id) == 1
    assert state(alice, bob2) == ALIVE
    assert state(bob2, alice) == ALIVE and state(bob2, charlie) == ALIVE
    assert len(bob2.table) == 2
    assert any(e["id"] == "charlie-id" for t, m in net.sent("alice", "bob", P.PEERS) if t >= 2.0 for e in m.data["peers"])
