"""Unit tests of the node's membership decisions (p2pd/node.py, p2pd/dialer.py): linking, gossip,
leaving, limits, addresses, start and bootstrap (the heartbeat: test_node_heartbeat.py; rumours:
test_node_rumours.py).  Nodes talk over the in-memory `Net` of memnet.py."""

from __future__ import annotations

from dataclasses import replace

import testmsg
import pytest

from p2pd import protocol as P
from p2pd.actions import CloseLink, OpenLink, RekeyLink, Send, Subscribe, Unsubscribe
from p2pd.membership import ALIVE, LINKING
from p2pd.node import Node

import memnet
from memnet import CLI, FAST, HOST, WALL, ep, handle, join_frame, linked_alice, peers_frame, state, watch
from memnet import net, mem_pair, mem_trio, alice_bob, busy_alice  # noqa: F401 (fixtures)


# ============================================================================ linking


def test_connect_handshake(net):
    alice, bob = net.add("alice"), net.add("bob")
    watch(net, alice)
    reply = net.connect(bob, alice, 0.0)

    assert reply["ok"] is True and reply["req"] == 1
    assert reply["result"]["peer"]["id"] == "alice-id"
    assert reply["result"]["peer"]["name"] == "alice"
    assert reply["result"]["peer"]["state"] == ALIVE
    assert reply["result"]["peer"]["router"] == ep(5001)

    # bob's JOIN first, then alice's JOIN in reply to it
    joins = [(f, m) for _, f, _, m in net.delivered if m.type == P.JOIN]
    assert [f for f, _ in joins] == ["bob", "alice"]
    (_, first), (_, answer) = joins
    assert first.data["reply_to"] is None
    assert first.data["port"] == 5003 and first.data["pub_port"] == 5004 and first.data["addr"] == HOST
    assert answer.data["reply_to"] == first.id

    assert state(alice, bob) == ALIVE and state(bob, alice) == ALIVE
    # one link each way, the pending link re-keyed under alice's id
    assert net.dealers[bob.id] == {"alice-id": ep(5001)}
    assert net.dealers[alice.id] == {"bob-id": ep(5003)}
    assert any(isinstance(a, RekeyLink) and a.new == "alice-id" and a.old.startswith("pending:") for _, _, a in net.actions)
    assert bob.links == {"alice-id": ep(5001)} and bob.pending == {}
    # both subscribe to each other's PUB, and each sees the other's subscription
    assert net.subs[bob.id] == {ep(5002)} and net.subs[alice.id] == {ep(5004)}
    assert alice.table.get(bob.id).subscribed and bob.table.get(alice.id).subscribed
    # the first PEERS goes out on link-up, the peer book is saved, the watcher hears "joined"
    assert net.sent("alice", "bob", P.PEERS) and net.sent("bob", "alice", P.PEERS)
    assert [p["id"] for p in net.saved["alice"]] == ["bob-id"]
    joined = net.events(alice, "joined")
    assert len(joined) == 1 and joined[0]["peer"]["name"] == "bob"
    assert joined[0]["time"] == P.utc_timestamp(WALL)


def test_connect_already_linked(net, mem_pair):
    alice, bob = mem_pair
    reply = net.connect(bob, alice, 1.0)
    assert reply["ok"] is True and reply["result"]["already"] is True
    assert reply["result"]["peer"]["id"] == alice.id
    assert bob.pending == {}


def test_connect_by_another_spelling_of_a_linked_address_is_already_linked(net, mem_pair):
    """Issue 12: `connect localhost:PORT` to a peer linked as 127.0.0.1:PORT must not dial it again
    (a second DEALER under our id would displace the link).  The client passes what the name
    resolved to (`addrs`); IP literals are compared in canonical form."""
    alice, bob = mem_pair
    before = len(net.acts("bob", OpenLink))
    for args in ({"host": "localhost", "addrs": ["::1", "127.0.0.1"]}, {"host": "::ffff:127.0.0.1"}):
        reply = net.call(bob, 1.0, "connect", port=alice.address.port, **args)
        assert reply["ok"] is True and reply["result"]["already"] is True, (args, reply)
        assert reply["result"]["peer"]["id"] == alice.id and reply["result"]["peer"]["address"] == f"127.0.0.1:{alice.address.port}"
    assert len(net.acts("bob", OpenLink)) == before and bob.dial.pending == {}
    # a name given without what it resolves to is dialled (the node resolves nothing itself)
    acts = bob.connect(2.0, "localhost", alice.address.port, 5.0, CLI, 9)
    assert [a.endpoint for a in acts if isinstance(a, OpenLink)] == [f"tcp://localhost:{alice.address.port}"]


def test_discovery_via_peers(net, mem_trio):
    alice, bob, charlie = mem_trio
    assert state(charlie, alice) == ALIVE and state(charlie, bob) == ALIVE
    assert state(alice, charlie) == ALIVE and state(bob, charlie) == ALIVE
    assert len(alice.table) == len(bob.table) == len(charlie.table) == 2
    # charlie learned alice's address from bob's PEERS, then linked itself
    peers_msgs = [m for _, m in net.sent("bob", "charlie", P.PEERS)]
    assert any(e["id"] == "alice-id" and e["port"] == 5001 for m in peers_msgs for e in m.data["peers"])
    assert net.dealers[charlie.id] == {"alice-id": ep(5001), "bob-id": ep(5003)}
    assert net.dealers[alice.id] == {"bob-id": ep(5003), "charlie-id": ep(5005)}
    assert net.sent("charlie", "alice", P.JOIN) and net.sent("alice", "charlie", P.JOIN)


SIMPLE = ("alice", "charlie", "dave", "erin", "frank")  # simple JSON peers: JOIN, PING, no records


def bob_with_simple_peers(names=SIMPLE) -> Node:
    """A bare node, bob, JOINed at t=0 by simple JSON peers (raw frames, as a third-party peer
    sends them: no records, so no roster of theirs to hold): the peers gossip's rounds are for."""
    bob = Node("bob-id", "bob", P.PeerAddress(HOST, 5003, 5004), FAST, 0.0, WALL)
    for k, name in enumerate(names):
        bob.on_router_frames(0.0, join_frame(f"{name}-id", 5011 + 2 * k, HOST), HOST)
    assert all(bob.table.get(f"{name}-id").state == ALIVE and bob.table.get(f"{name}-id").leaf for name in names)
    return bob


def heard_from(bob: Node, t: float, names=SIMPLE) -> None:
    """A PING from each simple peer at ``t`` (any frame is life)."""
    for name in names:
        bob.on_router_frames(t, [f"{name}-id".encode(), P.encode(testmsg.make(P.PING, f"{name}-id", name, WALL, {}))], HOST)


def rounds(bob: Node, t: float, names=SIMPLE) -> list:
    """bob's tick at ``t``, after a frame from each simple peer: the PEERS it sends then, as
    (receiver id, listed ids)."""
    heard_from(bob, t, names)
    return [(a.key, sorted(e["id"] for e in a.msg.data["peers"])) for a in bob.tick(t) if isinstance(a, Send) and a.msg.type == P.PEERS]


def test_gossip_every_interval():
    bob = bob_with_simple_peers(("alice", "charlie"))
    pushed = [("alice-id", ["charlie-id"]), ("charlie-id", ["alice-id"])]
    assert sorted(rounds(bob, 0.5, ("alice", "charlie"))) == pushed  # the newcomers, at the next tick
    assert rounds(bob, 5.0, ("alice", "charlie")) == []
    assert rounds(bob, 9.9, ("alice", "charlie")) == []
    assert sorted(rounds(bob, 10.0, ("alice", "charlie"))) == pushed  # the round: never the receiver itself


def test_simple_peers_stay_linked_as_leaves_past_the_overlay_sweep():
    """A simple JSON peer speaks no VIEW: the overlay used to wait 10 s for its NEIGHBOR, then
    send DISCONNECT and close the link (the minimal peer of docs/PROTOCOL.md 11 was cut 10 s
    after it joined).  A leaf stays linked while it answers, outside the views and our record."""
    bob = bob_with_simple_peers()
    leaves = {f"{name}-id" for name in SIMPLE}
    closed, views = [], []
    for t in range(1, 40):
        heard_from(bob, float(t))
        for a in bob.tick(float(t)):
            if isinstance(a, CloseLink):
                closed.append(a.key)
            elif isinstance(a, Send) and a.msg.type == P.VIEW:
                views.append(a.key)
    assert closed == [] and views == []
    assert all(bob.table.get(pid).state == ALIVE for pid in leaves)
    assert not leaves & set(bob.overlay.views.active) and not leaves & set(bob.overlay.own_record(1).links)


def test_each_gossip_round_goes_to_a_random_handful():
    """Past GOSSIP_FANOUT alive peers, a round sends the full list to that many of them, picked
    anew each round, so that in a few rounds every peer has had one (anti-entropy at O(n^2)
    frames in a full mesh, not O(n^3))."""
    from p2pd.gossip import GOSSIP_FANOUT

    bob = bob_with_simple_peers()
    everyone = {f"{name}-id" for name in SIMPLE}
    assert len(everyone) > GOSSIP_FANOUT
    reached: set = set()
    assert len(rounds(bob, 0.5)) == len(everyone)  # the newcomers pushed to each, at the next tick
    for t in range(1, 90):
        sent = rounds(bob, float(t))
        if t % 10:
            assert sent == []
            continue
        assert len(sent) == GOSSIP_FANOUT == len({dst for dst, _ in sent})
        for dst, listed in sent:  # the full list: every other alive peer, never the receiver
            assert listed == sorted(everyone - {dst})
        reached |= {dst for dst, _ in sent}
    assert reached == everyone
    assert all(bob.table.get(pid).state == ALIVE for pid in everyone)


def test_no_gossip_rounds_between_nodes_that_keep_the_roster(net, mem_trio):
    """Each holds the others' records: the roster's digests and FACTS are their anti-entropy, so
    no PEERS round goes between them (only the PEERS of each link-up, which found alice)."""
    alice, bob, charlie = mem_trio
    net.tick_range(1.0, 9.0, 1.0)
    assert not any(n.table.get(o.id).leaf for n in mem_trio for o in mem_trio if o is not n)
    before = len(net.sent("bob", type_=P.PEERS))
    assert before  # the link-ups'
    net.tick_range(10.0, 60.0, 1.0)  # five of bob's rounds
    assert len(net.sent("bob", type_=P.PEERS)) == before
    assert all(state(bob, o) == ALIVE for o in (alice, charlie))


def test_a_newcomer_at_a_gossip_round_is_pushed_to_every_peer():
    """The round (simple peers: `rounds` reach only three of them) and the push of a newcomer
    fall on the same tick: the push still goes to every other peer."""
    others = SIMPLE[:4]
    bob = bob_with_simple_peers(others)
    for t in (0.5, *range(1, 10)):
        rounds(bob, float(t), others)
    bob.on_router_frames(9.99, join_frame("frank-id", 5099, HOST), HOST)  # a newcomer, just before the round
    sent = rounds(bob, 10.0, others)
    assert sum(len(listed) == len(others) for _, listed in sent) == 3  # the round: full lists, to three
    for name in others:
        assert any(dst == f"{name}-id" and "frank-id" in listed for dst, listed in sent), name


def test_a_new_peer_is_pushed_to_the_others_at_the_next_tick(net, mem_pair):
    """dave links to bob only; bob tells alice about dave at its next tick, not a gossip interval later."""
    alice, bob = mem_pair
    dave = net.add("dave")
    assert net.connect(dave, bob, 1.0)["ok"] is True
    pushes = [m for _, m in net.sent("bob", "alice", P.PEERS)]
    net.tick(1.05, bob)
    pushed = [m for _, m in net.sent("bob", "alice", P.PEERS)][len(pushes):]
    assert [[e["id"] for e in m.data["peers"]] for m in pushed] == [["dave-id"]]  # only the news
    assert state(alice, dave) == ALIVE and state(dave, alice) == ALIVE
    net.tick(1.1, bob)
    assert len(net.sent("bob", "alice", P.PEERS)) == len(pushes) + 1  # once


def test_peers_first_heard_in_gossip_are_relayed_once_at_the_next_tick_but_not_back(net, mem_pair):
    """dave (linked to erin) joins bob and hears of alice from bob: at its next tick dave tells
    erin about alice (rumour relay: news crosses the cluster one hop per tick, not one link-up
    per hop), never bob, who told it, and only once."""
    alice, bob = mem_pair
    erin, dave = net.add("erin"), net.add("dave")
    assert net.connect(dave, erin, 0.5)["ok"] is True
    assert net.connect(dave, bob, 1.0)["ok"] is True
    assert dave.gossip.to_pass_on().get("alice-id") == bob.id
    before_erin = len(net.sent("dave", "erin", P.PEERS))
    before_bob = len(net.sent("dave", "bob", P.PEERS))
    net.tick(1.05, dave)
    relayed = [m for _, m in net.sent("dave", "erin", P.PEERS)][before_erin:]
    assert any("alice-id" in [e["id"] for e in m.data["peers"]] for m in relayed)
    assert not any("alice-id" in [e["id"] for e in m.data["peers"]] for _, m in net.sent("dave", "bob", P.PEERS)[before_bob:])
    net.tick(1.1, dave)
    assert len(net.sent("dave", "erin", P.PEERS)) == before_erin + len(relayed)  # once
    assert all(state(n, alice) == ALIVE for n in (bob, erin, dave))


# ============================================================================ leaving


def test_leave_removes_at_once(net, mem_trio):
    alice, bob, charlie = mem_trio
    watch(net, alice)
    net.apply(bob, bob.leave(3.0), 3.0)
    assert "bob" in net.shutdown and bob.stopping is True
    assert sorted(dst for _, f, dst, m in net.delivered if f == "bob" and m.type == P.LEAVE) == ["alice", "charlie"]
    assert state(alice, bob) is None and state(charlie, bob) is None
    left = net.events(alice, "left")
    assert len(left) == 1 and left[0]["peer"]["id"] == "bob-id"
    assert CloseLink("bob-id") in [a for _, a in net.acts("alice", CloseLink, since=3.0)]
    assert Unsubscribe(ep(5004), "bob-id") in [a for _, a in net.acts("alice", Unsubscribe, since=3.0)]
    assert [p["id"] for p in net.saved["alice"]] == ["charlie-id"]
    assert "bob-id" not in alice.links
    # and no one retries bob later
    net.kill(bob)
    net.tick_range(4.0, 20.0, 1.0, alice, charlie)
    assert not [a for _, a in net.acts("alice", OpenLink, since=3.0) if a.key == "bob-id"]


def test_leave_from_unknown_peer_is_silently_ignored(net):
    alice = net.add("alice")
    leave = testmsg.make(P.LEAVE, "ghost", "ghost", WALL)
    assert alice.on_router_frames(1.0, [b"ghost", P.encode(leave)], HOST) == []
    assert sum(alice.dropped.values()) == 0


# ============================================================================ self, limits, timeouts


def test_connect_to_self_is_an_error(net):
    alice = net.add("alice")
    reply = net.connect(alice, alice, 0.0)
    assert reply["ok"] is False and reply["code"] == "self" and reply["req"] == 1
    assert alice.pending == {} and alice.links == {} and len(alice.table) == 0
    assert net.dealers[alice.id] == {}
    # and no late "unreachable" reply follows
    net.tick(10.0, alice)
    assert len(net.replies[("alice", CLI)]) == 1


def test_max_peers_on_join(net):
    alice = net.add("alice", settings=replace(FAST, max_peers=1))
    bob, charlie = net.add("bob"), net.add("charlie")
    assert net.connect(bob, alice, 0.0)["ok"] is True
    assert net.request(charlie, 0.0, "connect", host=HOST, port=5001, wait_s=2) == []
    assert alice.dropped["peer_limit"] == 1
    assert state(alice, charlie) is None and len(alice.table) == 1
    net.tick(2.0, charlie)
    reply = net.replies[("charlie", CLI)][-1]
    assert reply["ok"] is False and reply["code"] == "unreachable"
    # a peer already known is not refused
    assert alice.on_router_frames(3.0, join_frame("bob-id", 5003, HOST), HOST)
    assert alice.dropped["peer_limit"] == 1


def _bob(**settings) -> Node:
    return Node("bob-id", "bob", P.PeerAddress(HOST, 5003, 5004), replace(FAST, **settings), 0.0, WALL)


def _simple_join(bob: Node, t: float, name: str, port: int, **extra) -> list:
    return bob.on_router_frames(t, join_frame(f"{name}-id", port, HOST, **extra), HOST)


def test_max_leaves_refuses_a_new_simple_peer_but_not_a_p2pd_node_or_a_known_leaf():
    bob = _bob(max_leaves=2)
    _simple_join(bob, 0.0, "alice", 5011)
    _simple_join(bob, 0.0, "charlie", 5013)
    assert _simple_join(bob, 0.0, "dave", 5015) == [] and bob.dropped["leaf_limit"] == 1
    assert "dave-id" not in bob.table and len(bob.table) == 2
    assert _simple_join(bob, 0.1, "erin", 5017, digest=True)  # a p2pd node: the overlay's own room
    assert bob.table.get("erin-id").state == ALIVE and not bob.table.get("erin-id").leaf
    assert _simple_join(bob, 0.2, "alice", 5011)  # a leaf we know introduces itself again
    assert bob.dropped["leaf_limit"] == 1 and bob.dropped["peer_limit"] == 0


def test_max_leaves_is_bounded_by_max_peers():
    bob = _bob(max_leaves=64, max_peers=1)
    _simple_join(bob, 0.0, "alice", 5011)
    assert _simple_join(bob, 0.0, "charlie", 5013) == [] and bob.dropped["peer_limit"] == 1


def test_a_lost_leaf_makes_room_for_a_new_one():
    bob = _bob(max_leaves=2)
    _simple_join(bob, 0.0, "alice", 5011)
    _simple_join(bob, 1.0, "charlie", 5013)
    heard_from(bob, 3.0, ("charlie",))
    bob.tick(7.0)  # alice silent past the timeout (5 s): lost; charlie heard at 3.0 still alive
    assert bob.table.get("alice-id").state != ALIVE and bob.table.get("charlie-id").state == ALIVE
    _simple_join(bob, 7.5, "dave", 5015)
    assert bob.table.get("dave-id").state == ALIVE and "alice-id" not in bob.table
    assert "alice-id" not in bob.links
    assert bob.dropped["leaf_limit"] == 0
    assert _simple_join(bob, 7.6, "erin", 5017) == [] and bob.dropped["leaf_limit"] == 1  # both alive: no room


def test_max_leaves_does_not_refuse_a_simple_peer_the_user_connected_to():
    bob = _bob(max_leaves=1)
    _simple_join(bob, 0.0, "alice", 5011)
    acts = bob.connect(0.0, HOST, 5015, 2.0, CLI, 1)
    mid = next(a.msg.id for a in acts if isinstance(a, Send) and a.msg.type == P.JOIN)
    _simple_join(bob, 0.1, "dave", 5015, reply_to=mid)
    assert bob.table.get("dave-id").state == ALIVE and bob.dropped["leaf_limit"] == 0
    assert _simple_join(bob, 0.2, "erin", 5017) == [] and bob.dropped["leaf_limit"] == 1


def test_max_peers_on_gossip(net, mem_pair):
    alice, bob = mem_pair
    charlie = net.add("charlie", settings=replace(FAST, max_peers=1))
    assert net.connect(charlie, bob, 0.0)["ok"] is True
    assert charlie.dropped["peer_limit"] >= 1  # alice in bob's PEERS; alice's own dial (bob's walk told her of charlie)
    assert state(charlie, alice) is None and len(charlie.table) == 1
    assert "alice-id" not in charlie.links


def test_connect_timeout_unreachable(net):
    bob = net.add("bob")
    assert net.request(bob, 0.0, "connect", host=HOST, port=5999, wait_s=2, req="r7") == []
    key = next(iter(bob.links))
    assert key.startswith("pending:") and bob.links[key] == ep(5999)
    net.tick(1.99, bob)
    assert net.replies[("bob", CLI)] == []
    net.tick(2.0, bob)
    (reply,) = net.replies[("bob", CLI)]
    assert reply["ok"] is False and reply["code"] == "unreachable" and reply["req"] == "r7"
    assert "tcp://127.0.0.1:5999" in reply["error"]
    assert bob.pending == {} and bob.links == {}
    assert [a for _, a in net.acts("bob", CloseLink)] == [CloseLink(key)]


def test_ping_with_client(net, mem_pair):
    alice, bob = mem_pair
    assert net.request(alice, 3.0, "ping", peer="bob", req=9, flush=False) == []
    net.flush(3.025)
    reply = net.replies[("alice", CLI)][-1]
    assert reply == {"req": 9, "ok": True, "result": {"peer": "bob", "id": "bob-id", "rtt_ms": 25.0}}
    assert alice.table.get(bob.id).rtt_ms == pytest.approx(25.0)


def test_ping_timeout(net, mem_pair):
    alice, bob = mem_pair
    net.kill(bob)
    assert net.request(alice, 3.0, "ping", peer="bob", wait_s=1.5) == []
    net.tick(4.49, alice)
    assert net.replies[("alice", CLI)] == []
    net.tick(4.5, alice)
    (reply,) = net.replies[("alice", CLI)]
    assert reply["ok"] is False and reply["code"] == "timeout" and reply["req"] == 1
    assert not any(pp.client for pp in alice.pings.values())


# ============================================================================ addresses


@pytest.mark.parametrize("addr", [None, "0.0.0.0", "::", "*"])
@pytest.mark.parametrize("peer_host, endpoint", [("192.168.1.9", "tcp://192.168.1.9:5003"), ("fe80::5", "tcp://[fe80::5]:5003")])
def test_wildcard_join_address_resolved_to_peer_host(addr, peer_host, endpoint):
    alice = Node("alice-id", "alice", P.PeerAddress(None, 5001, 5002), FAST, 0.0, WALL)
    acts = alice.on_router_frames(1.0, join_frame("bob-id", 5003, addr), peer_host)
    peer = alice.table.get("bob-id")
    assert peer.address.addr == peer_host and peer.router_endpoint == endpoint
    assert OpenLink("bob-id", endpoint) in acts
    assert Subscribe(endpoint[:-4] + "5004", "bob-id") in acts
    reply = next(a.msg for a in acts if isinstance(a, Send) and a.msg.type == P.JOIN)
    assert reply.data["addr"] is None and reply.data["reply_to"] is not None


def test_join_without_any_address_is_dropped():
    alice = Node("alice-id", "alice", P.PeerAddress(HOST, 5001, 5002), FAST, 0.0, WALL)
    assert alice.on_router_frames(1.0, join_frame("bob-id", 5003, None), None) == []
    assert alice.dropped["bad_field"] == 1 and len(alice.table) == 0


def test_advertised_join_address_wins_over_peer_host():
    alice = Node("alice-id", "alice", P.PeerAddress(HOST, 5001, 5002), FAST, 0.0, WALL)
    acts = alice.on_router_frames(1.0, join_frame("bob-id", 5003, "10.0.0.2"), "172.16.0.1")
    assert OpenLink("bob-id", "tcp://10.0.0.2:5003") in acts


@pytest.mark.parametrize("gossiped", ["127.0.0.1", "::1", "localhost", None, "0.0.0.0"])
def test_gossiped_loopback_replaced_by_gossiper_address(gossiped):
    alice = linked_alice("10.0.0.2")
    entry = {"id": "charlie-id", "name": "charlie", "addr": gossiped, "port": 5005, "pub_port": 5006}
    acts = alice.on_router_frames(1.0, peers_frame("bob-id", [entry]), "10.0.0.2")
    charlie = alice.table.get("charlie-id")
    assert charlie.state == LINKING and charlie.address.addr == "10.0.0.2"
    assert acts[0] == OpenLink("charlie-id", "tcp://10.0.0.2:5005")
    assert isinstance(acts[1], Send) and acts[1].key == "charlie-id" and acts[1].msg.type == P.JOIN


def test_gossiped_routable_address_kept():
    alice = linked_alice("10.0.0.2")
    entry = {"id": "charlie-id", "name": "charlie", "addr": "10.0.0.3", "port": 5005, "pub_port": 5006}
    acts = alice.on_router_frames(1.0, peers_frame("bob-id", [entry]), "10.0.0.2")
    assert OpenLink("charlie-id", "tcp://10.0.0.3:5005") in acts


def test_gossiped_loopback_kept_when_gossiper_is_loopback():
    alice = linked_alice("127.0.0.1")
    entry = {"id": "charlie-id", "name": "charlie", "addr": "127.0.0.1", "port": 5005, "pub_port": 5006}
    acts = alice.on_router_frames(1.0, peers_frame("bob-id", [entry]), "127.0.0.1")
    assert OpenLink("charlie-id", "tcp://127.0.0.1:5005") in acts


def test_gossip_skips_self_and_known_peers():
    alice = linked_alice("10.0.0.2")
    entries = [
        {"id": "alice-id", "name": "alice", "addr": "10.0.0.1", "port": 5001, "pub_port": 5002},
        {"id": "bob-id", "name": "bob", "addr": "10.9.9.9", "port": 9, "pub_port": 10},
    ]
    assert alice.on_router_frames(1.0, peers_frame("bob-id", entries), "10.0.0.2") == []
    assert len(alice.table) == 1 and alice.table.get("bob-id").address.addr == "10.0.0.2"


# ============================================================================ start / bootstrap


def test_start_links_saved_peers_and_dials_join_endpoints():
    alice = Node("alice-id", "alice", P.PeerAddress(HOST, 5001, 5002), FAST, 0.0, WALL)
    saved = [
        {"id": "bob-id", "name": "bob", "addr": HOST, "port": 5003, "pub_port": 5004},
        {"id": "alice-id", "name": "alice", "addr": HOST, "port": 5001, "pub_port": 5002},  # self: skipped
        {"id": "x", "name": "x", "addr": None, "port": 1, "pub_port": 2},  # no address: skipped
        {"id": "bad id", "name": "x", "addr": HOST, "port": 1, "pub_port": 2},
        {"name": "no id", "addr": HOST, "port": 1, "pub_port": 2},
        "garbage",
    ]
    acts = alice.start(0.0, saved, [ep(5005)])
    opens = [a for a in acts if isinstance(a, OpenLink)]
    assert opens[0] == OpenLink("bob-id", ep(5003))
    assert opens[1].key.startswith("pending:") and opens[1].endpoint == ep(5005)
    assert len(opens) == 2
    assert [a.msg.type for a in acts if isinstance(a, Send)] == [P.JOIN, P.JOIN]
    assert len(alice.table) == 1 and alice.table.get("bob-id").state == LINKING


def test_bootstrap_retries_until_answered(net):
    alice = net.add("alice")
    net.apply(alice, alice.start(0.0, [], [ep(5003)]), 0.0)
    net.tick_range(0.5, 4.0, 0.5, alice)
    dials = [t for t, a in net.acts("alice", OpenLink) if a.key.startswith("pending:")]
    assert dials == [0.0, 1.0, 3.0]  # backoff 1, 2, then next at 7
    bob = net.add("bob", now=4.0)
    net.tick(7.0, alice)
    assert state(alice, bob) == ALIVE and state(bob, alice) == ALIVE
    assert alice.pending == {}
    assert all(not k.startswith("pending:") for k in alice.links)


def test_send_to_a_lost_peer_is_queued_not_refused(busy_alice):
    reply = handle(busy_alice, {"req": 1, "cmd": "send", "args": {"peer": "carol", "text": "hi"}})
    assert reply["ok"] is True and reply["result"]["status"] == "queued"
    assert [r["text"] for r in busy_alice.msgs.outbox(("pending",), 10)] == ["hi"]


def test_a_batch_of_envelopes_is_handled_one_by_one(net, alice_bob):
    """[routing id, env, env, ...]: good envelopes are handled in order, a bad one is dropped alone."""
    alice, bob = alice_bob
    msg = lambda i: P.encode(testmsg.make(P.MESSAGE, bob.id, "bob", WALL, {"text": f"m{i}"}, alice.id))  # noqa: E731
    frames = [bob.id.encode(), msg(1), b"\xff not json", msg(2), P.encode(testmsg.make(P.PING, "ghost", "x", WALL)), msg(3)]
    acts = alice.on_router_frames(2.0, frames, HOST)
    assert [m["text"] for m in alice.inbox] == ["m1", "m2", "m3"]
    assert alice.dropped["not_json"] == 1 and alice.dropped["bad_routing_id"] == 1
    assert acts == [] or all(type(a).__name__ != "Send" or a.msg.type != "MESSAGE" for a in acts)


def test_batches_go_only_to_peers_that_announced_them(net, alice_bob):
    alice, bob = alice_bob
    assert alice.table.get(bob.id).batch  # p2pd's JOIN says "batch": true
    msgs = [testmsg.make(P.MESSAGE, alice.id, "alice", WALL, {"text": str(i)}, bob.id) for i in range(P.MAX_BATCH + 3)]
    acts = alice.out.send_many(bob.id, msgs)
    assert [type(a).__name__ for a in acts] == ["SendBatch", "SendBatch"] and [len(a.msgs) for a in acts] == [P.MAX_BATCH, 3]
    alice.table.get(bob.id).batch = False  # a simple peer that did not say so
    assert [type(a).__name__ for a in alice.out.send_many(bob.id, msgs[:3])] == ["Send"] * 3


def test_a_join_from_a_linked_peer_reopens_the_link_only_when_it_restarted_or_lost_us():
    """Both sides dialling at once (gossip told each of the other) must not tear down fresh links."""
    alice = Node("alice-id", "alice", P.PeerAddress("10.0.0.1", 5001, 5002), FAST, 0.0, WALL)

    def join(t: float, **data) -> list:
        msg = testmsg.make(P.JOIN, "bob-id", "bob", WALL, {"addr": "10.0.0.2", "port": 5003, "pub_port": 5004, **data})
        return alice.on_router_frames(t, [b"bob-id", P.encode(msg)], "10.0.0.2")

    join(0.0, boot="b1")
    assert alice.table.get("bob-id").state == ALIVE
    assert CloseLink("bob-id") not in join(5.0, boot="b1")  # the same run dialling us: keep our link
    assert CloseLink("bob-id") in join(6.0, boot="b1", again=True)  # it had lost us
    assert CloseLink("bob-id") in join(7.0, boot="b2")  # it restarted
    assert CloseLink("bob-id") not in join(7.5)  # a simple peer, our link is half a second old
    assert CloseLink("bob-id") in join(9.0)  # ... and now it is not


def test_a_pong_announces_broadcast_numbers_too(net, mem_pair):
    """Of two idle peers only one may PING; the PONG carries the other's broadcast numbers."""
    alice, bob = mem_pair
    net.request(bob, 0.5, "broadcast", text="one")
    bob.msgs.delivery.bcast_seq += 1  # a broadcast that alice never received (lost on the PUB)
    net.tick(2.0, alice)  # alice asks bob (silent for a while); bob does not ask alice
    pong = net.sent("bob", "alice", P.PONG)[-1][1]
    assert pong.data["bseq"] == 2
    assert not net.sent("alice", "bob", P.FETCH)  # it may still be on its way through the PUB ...
    net.tick(5.0, alice)  # ... but the next PONG, over ack_timeout_s later, still shows it missing
    assert net.sent("alice", "bob", P.FETCH)  # alice noticed the gap from the PONGs
