"""Unit tests for the node's decisions (p2pd/node.py) and the control API (p2pd/control.py).

Several `Node` objects talk to each other through `Net`, a tiny in-memory
stand-in for transport.py: it performs the effects a node returns (links,
sends, subscriptions, replies to control clients) and hands encoded frames
to the receiving node, all at a time the test chooses.  No sockets, no
sleeps: time is a plain float.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict, deque
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pd import control
from p2pd import protocol as P
from p2pd.actions import CloseLink, OpenLink, Publish, RekeyLink, SavePeers, Send, SendBatch, Shutdown, Subscribe, ToClient, Unsubscribe
from p2pd.membership import ALIVE, LINKING, LOST
from p2pd.intake import SUB_TOPIC_PREFIX
from p2pd.node import Node
from p2pd.settings import Settings

HOST = "127.0.0.1"
WALL = 1_700_000_000.0
CLI = b"cli"
WATCH = b"watcher"
PORTS = {"alice": 5001, "bob": 5003, "charlie": 5005, "dave": 5007, "erin": 5009}

FAST = Settings(
    heartbeat_interval_s=1.0,
    heartbeat_timeout_s=5.0,
    gossip_interval_s=10.0,
    retry_min_s=1.0,
    retry_max_s=8.0,
    forget_after_s=100.0,
).validate()


def ep(port: int, host: str = HOST) -> str:
    return P.tcp_endpoint(host, port)


class Net:
    """Carries out node effects in memory, like transport.py does with ZeroMQ."""

    def __init__(self):
        self.nodes: dict[str, Node] = {}  # name -> node
        self.by_router: dict[str, Node] = {}  # router endpoint -> running node
        self.by_pub: dict[str, Node] = {}
        self.dealers: dict[str, dict[str, str]] = defaultdict(dict)  # node id -> link key -> endpoint
        self.subs: dict[str, set[str]] = defaultdict(set)  # node id -> pub endpoints its SUB is connected to
        self.queue: deque = deque()
        self.actions: list = []  # (time, node name, action), everything any node asked for
        self.delivered: list = []  # (time, from name, to name, Message)
        self.replies: dict = defaultdict(list)  # (node name, client) -> payloads
        self.saved: dict[str, list] = {}
        self.shutdown: set[str] = set()
        self.lose = None  # (from name, to name, Message) -> True to lose that frame on the wire

    # ---- membership of the fake network
    def add(self, name: str, node_id: str | None = None, settings: Settings = FAST, now: float = 0.0, addr: str | None = HOST,
            store=None) -> Node:
        port = PORTS[name]
        node = Node(node_id or f"{name}-id", name, P.PeerAddress(addr, port, port + 1), settings, now, WALL, store)
        self.nodes[name] = node
        self.by_router[ep(port)] = node
        self.by_pub[ep(port + 1)] = node
        self.dealers.pop(node.id, None)
        self.subs.pop(node.id, None)
        return node

    def kill(self, node: Node) -> None:
        """The process dies: nothing reaches it any more, and it sends nothing."""
        self.by_router = {k: v for k, v in self.by_router.items() if v is not node}
        self.by_pub = {k: v for k, v in self.by_pub.items() if v is not node}
        self.dealers.pop(node.id, None)
        self.subs.pop(node.id, None)

    def up(self, node: Node) -> bool:
        return node in self.by_router.values()

    # ---- effects
    def apply(self, node: Node, acts: list, now: float | None = None, flush: bool = True) -> list:
        for a in acts:
            self.queue.append((node, a))
        if flush:
            assert now is not None
            self.flush(now)
        return acts

    def flush(self, now: float) -> None:
        """Deliver everything queued; then, like the event loop after each batch, collect each node's
        end-of-batch output (ACKs), until the network is quiet."""
        steps = 0
        while True:
            while self.queue:
                steps += 1
                assert steps < 100_000, "message storm"
                node, act = self.queue.popleft()
                self.actions.append((now, node.name, act))
                if not self.up(node):
                    continue
                self._perform(now, node, act)
            for node in list(self.nodes.values()):
                if self.up(node):
                    self.queue.extend((node, a) for a in node.flush(now))
            if not self.queue:
                return

    def _perform(self, now: float, node: Node, act) -> None:
        links = self.dealers[node.id]
        if isinstance(act, OpenLink):
            links[act.key] = act.endpoint
        elif isinstance(act, CloseLink):
            links.pop(act.key, None)
        elif isinstance(act, RekeyLink):
            endpoint = links.pop(act.old, None)
            if endpoint is not None and act.new not in links:
                links[act.new] = endpoint
        elif isinstance(act, (Send, SendBatch)):
            endpoint = links.get(act.key)
            target = self.by_router.get(endpoint) if endpoint else None
            if target is None:
                return  # no link, or nobody listening there: lost on the wire
            msgs = [m for m in (act.msgs if isinstance(act, SendBatch) else [act.msg])
                    if self.lose is None or not self.lose(node.name, target.name, m)]
            if msgs:
                self.delivered.extend((now, node.name, target.name, m) for m in msgs)
                frames = [node.id.encode(), *(P.encode(m) for m in msgs)]
                self.apply(target, target.on_router_frames(now, frames, HOST), flush=False)
        elif isinstance(act, Publish):
            wire = P.encode(act.msg)
            mine = ep(node.address.pub_port)
            for other in list(self.by_router.values()):
                if mine in self.subs.get(other.id, ()):
                    self.delivered.append((now, node.name, other.name, act.msg))
                    self.apply(other, other.on_sub_frames(now, [wire]), flush=False)
        elif isinstance(act, Subscribe):
            self.subs[node.id].add(act.endpoint)
            pub = self.by_pub.get(act.endpoint)
            if pub is not None:
                pub.on_subscription(now, b"\x01" + SUB_TOPIC_PREFIX + node.id.encode())
        elif isinstance(act, Unsubscribe):
            self.subs[node.id].discard(act.endpoint)
            pub = self.by_pub.get(act.endpoint)
            if pub is not None:
                pub.on_subscription(now, b"\x00" + SUB_TOPIC_PREFIX + node.id.encode())
        elif isinstance(act, ToClient):
            self.replies[(node.name, act.client)].append(act.payload)
        elif isinstance(act, SavePeers):
            self.saved[node.name] = act.peers
        elif isinstance(act, Shutdown):
            self.shutdown.add(node.name)
        else:  # pragma: no cover
            raise AssertionError(f"unknown action {act!r}")

    # ---- drivers
    def tick(self, now: float, *nodes: Node, flush: bool = True) -> None:
        for node in nodes or list(self.nodes.values()):
            if self.up(node):
                self.apply(node, node.tick(now), flush=False)
        if flush:
            self.flush(now)

    def tick_range(self, start: float, stop: float, step: float = 1.0, *nodes: Node) -> None:
        t = start
        while t <= stop + 1e-9:
            self.tick(round(t, 6), *nodes)
            t += step

    def request(self, node: Node, now: float, cmd: str, client: bytes = CLI, req=1, flush: bool = True, **args) -> list:
        before = len(self.replies[(node.name, client)])
        raw = json.dumps({"req": req, "cmd": cmd, "args": args}).encode()
        self.apply(node, control.handle(node, now, client, raw, {"pid": 4242}), now, flush=flush)
        return self.replies[(node.name, client)][before:]

    def call(self, node: Node, now: float, cmd: str, **args) -> dict:
        """A control request that must be answered at once, exactly once."""
        replies = self.request(node, now, cmd, **args)
        assert len(replies) == 1, replies
        return replies[0]

    def connect(self, a: Node, b: Node, now: float) -> dict:
        return self.call(a, now, "connect", host=HOST, port=b.address.port)

    def events(self, node: Node, kind: str | None = None) -> list:
        return [e for e in self.replies[(node.name, WATCH)] if "event" in e and (kind is None or e["event"] == kind)]

    def sent(self, frm: str, to: str | None = None, type_: str | None = None) -> list:
        return [
            (t, m) for t, f, dst, m in self.delivered
            if f == frm and (to is None or dst == to) and (type_ is None or m.type == type_)
        ]

    def acts(self, name: str, cls, since: float = float("-inf")) -> list:
        return [(t, a) for t, n, a in self.actions if n == name and isinstance(a, cls) and t >= since]


def state(node: Node, other: Node) -> str | None:
    peer = node.table.get(other.id)
    return None if peer is None else peer.state


def watch(net: Net, node: Node, now: float = 0.0) -> None:
    reply = net.call(node, now, "watch", client=WATCH)
    assert reply["ok"] is True


@pytest.fixture
def net() -> Net:
    return Net()


@pytest.fixture
def pair(net):
    """alice and bob, linked at t=0 by `bob connect alice`."""
    alice, bob = net.add("alice"), net.add("bob")
    reply = net.connect(bob, alice, 0.0)
    assert reply["ok"] is True
    return alice, bob


@pytest.fixture
def trio(net, pair):
    """alice, bob, charlie: charlie connected to bob at t=0 and found alice through bob."""
    alice, bob = pair
    charlie = net.add("charlie")
    assert net.connect(charlie, bob, 0.0)["ok"] is True
    return alice, bob, charlie


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


def test_connect_already_linked(net, pair):
    alice, bob = pair
    reply = net.connect(bob, alice, 1.0)
    assert reply["ok"] is True and reply["result"]["already"] is True
    assert reply["result"]["peer"]["id"] == alice.id
    assert bob.pending == {}


def test_discovery_via_peers(net, trio):
    alice, bob, charlie = trio
    assert state(charlie, alice) == ALIVE and state(charlie, bob) == ALIVE
    assert state(alice, charlie) == ALIVE and state(bob, charlie) == ALIVE
    assert len(alice.table) == len(bob.table) == len(charlie.table) == 2
    # charlie learned alice's address from bob's PEERS, then linked itself
    peers_msgs = [m for _, m in net.sent("bob", "charlie", P.PEERS)]
    assert any(e["id"] == "alice-id" and e["port"] == 5001 for m in peers_msgs for e in m.data["peers"])
    assert net.dealers[charlie.id] == {"alice-id": ep(5001), "bob-id": ep(5003)}
    assert net.dealers[alice.id] == {"bob-id": ep(5003), "charlie-id": ep(5005)}
    assert net.sent("charlie", "alice", P.JOIN) and net.sent("alice", "charlie", P.JOIN)


def test_gossip_every_interval(net, trio):
    alice, bob, charlie = trio
    net.tick(5.0, bob)
    n = len(net.sent("bob", type_=P.PEERS))
    net.tick(9.9, bob)
    assert len(net.sent("bob", type_=P.PEERS)) == n
    net.tick(10.0, bob)
    new = net.sent("bob", type_=P.PEERS)[n:]
    assert sorted(t for t, _ in new) == [10.0, 10.0]
    to_alice = [m for _, m in net.sent("bob", "alice", P.PEERS)][-1]
    assert [e["id"] for e in to_alice.data["peers"]] == ["charlie-id"]  # never the receiver itself


def test_a_new_peer_is_pushed_to_the_others_at_the_next_tick(net, pair):
    """dave links to bob only; bob tells alice about dave at its next tick, not a gossip interval later."""
    alice, bob = pair
    dave = net.add("dave")
    assert net.connect(dave, bob, 1.0)["ok"] is True
    pushes = [m for _, m in net.sent("bob", "alice", P.PEERS)]
    net.tick(1.05, bob)
    pushed = [m for _, m in net.sent("bob", "alice", P.PEERS)][len(pushes):]
    assert [[e["id"] for e in m.data["peers"]] for m in pushed] == [["dave-id"]]  # only the news
    assert state(alice, dave) == ALIVE and state(dave, alice) == ALIVE
    net.tick(1.1, bob)
    assert len(net.sent("bob", "alice", P.PEERS)) == len(pushes) + 1  # once


def test_peers_first_heard_in_gossip_are_relayed_once_at_the_next_tick_but_not_back(net, pair):
    """dave (linked to erin) joins bob and hears of alice from bob: at its next tick dave tells
    erin about alice (rumour relay: news crosses the cluster one hop per tick, not one link-up
    per hop), never bob, who told it, and only once."""
    alice, bob = pair
    erin, dave = net.add("erin"), net.add("dave")
    assert net.connect(dave, erin, 0.5)["ok"] is True
    assert net.connect(dave, bob, 1.0)["ok"] is True
    assert "alice-id" in dave._rumors and dave._rumors["alice-id"] == bob.id
    before_erin = len(net.sent("dave", "erin", P.PEERS))
    before_bob = len(net.sent("dave", "bob", P.PEERS))
    net.tick(1.05, dave)
    relayed = [m for _, m in net.sent("dave", "erin", P.PEERS)][before_erin:]
    assert any("alice-id" in [e["id"] for e in m.data["peers"]] for m in relayed)
    assert not any("alice-id" in [e["id"] for e in m.data["peers"]] for _, m in net.sent("dave", "bob", P.PEERS)[before_bob:])
    net.tick(1.1, dave)
    assert len(net.sent("dave", "erin", P.PEERS)) == before_erin + len(relayed)  # once
    assert all(state(n, alice) == ALIVE for n in (bob, erin, dave))


# ============================================================================ heartbeat


def test_a_peer_heard_within_the_interval_is_not_pinged(net, pair):
    """Two idle peers: whoever asks first also answers for the other; a busy link needs no PINGs at all."""
    alice, bob = pair
    for t in range(11):  # their heartbeats are half an interval apart, as two nodes started apart are
        net.tick(float(t), alice)
        net.tick(t + 0.5, bob)
    assert len(net.sent("bob", "alice", P.PING)) == 0  # alice's PINGs (and bob's PONGs) keep both informed
    assert len(net.sent("alice", "bob", P.PING)) == 10  # one per interval per pair, not one each way
    for t in range(11, 21):  # bob sends alice a message every second: alice never has to ask
        net.request(bob, t - 0.5, "send", peer="alice", text=f"m{t}")
        net.tick(float(t), alice)
    assert [t for t, _ in net.sent("alice", "bob", P.PING) if t > 10.5] == []


def test_heartbeat_pings_each_interval_and_pong_sets_rtt(net, pair):
    alice, bob = pair
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


def test_pong_from_the_wrong_peer_is_ignored(net, trio):
    alice, bob, charlie = trio
    net.tick(3.0, alice, flush=False)
    ping_to_bob = next(a.msg for n, a in net.queue if isinstance(a, Send) and a.key == bob.id)
    net.queue.clear()
    forged = P.make(P.PONG, charlie.id, "charlie", WALL, {"ping_id": ping_to_bob.id}, alice.id)
    alice.on_router_frames(3.1, [charlie.id.encode(), P.encode(forged)], HOST)
    assert alice.table.get(bob.id).rtt_ms is None


def test_any_frame_counts_as_life(net, pair):
    alice, bob = pair
    net.call(bob, 4.0, "send", peer="alice", text="still here")
    net.tick(8.0, alice)  # 8 - 4 < 5: bob is alive thanks to the MESSAGE
    assert state(alice, bob) == ALIVE
    assert alice.table.get(bob.id).last_seen == 8.0  # and the PING/PONG at 8 refreshed it


def test_silent_peer_lost_then_retried_with_backoff(net, pair):
    alice, bob = pair
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


def test_gossiped_peer_that_never_answers_is_lost_quietly_and_retried():
    alice = linked_alice("10.0.0.2")
    alice.watchers.add(WATCH)
    entry = {"id": "charlie-id", "name": "charlie", "addr": "10.0.0.3", "port": 5005, "pub_port": 5006}
    alice.on_router_frames(1.0, peers_frame("bob-id", [entry]), "10.0.0.2")
    assert alice.table.get("charlie-id").state == LINKING
    alice.on_router_frames(5.9, [b"bob-id", P.encode(P.make(P.PING, "bob-id", "bob", WALL))], "10.0.0.2")
    assert not [a for a in alice.tick(6.0) if isinstance(a, CloseLink)]  # 5 s after linking: not yet
    acts = alice.tick(6.5)
    assert alice.table.get("charlie-id").state == LOST
    assert CloseLink("charlie-id") in acts
    assert not [a for a in acts if isinstance(a, (ToClient, Unsubscribe))]  # it was never alive: no event
    acts = alice.tick(7.5)
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


def test_lost_peer_forgotten_after_forget_after_s(net, pair):
    alice, bob = pair
    net.kill(bob)
    net.tick(6.0, alice)
    assert state(alice, bob) == LOST
    net.tick(106.0, alice)
    assert state(alice, bob) == LOST  # exactly forget_after_s
    net.tick(106.5, alice)
    assert state(alice, bob) is None
    assert net.saved["alice"] == []


def test_lost_peer_comes_back_on_retry(net, pair):
    alice, bob = pair
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


def test_restarted_peer_rejoins_before_being_noticed(net, trio):
    """bob restarts quickly (same id, new process) and connects to alice before she noticed."""
    alice, bob, charlie = trio
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


# ============================================================================ leaving


def test_leave_removes_at_once(net, trio):
    alice, bob, charlie = trio
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
    leave = P.make(P.LEAVE, "ghost", "ghost", WALL)
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


def test_max_peers_on_gossip(net, pair):
    alice, bob = pair
    charlie = net.add("charlie", settings=replace(FAST, max_peers=1))
    assert net.connect(charlie, bob, 0.0)["ok"] is True
    assert charlie.dropped["peer_limit"] == 1
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


def test_ping_with_client(net, pair):
    alice, bob = pair
    assert net.request(alice, 3.0, "ping", peer="bob", req=9, flush=False) == []
    net.flush(3.025)
    reply = net.replies[("alice", CLI)][-1]
    assert reply == {"req": 9, "ok": True, "result": {"peer": "bob", "id": "bob-id", "rtt_ms": 25.0}}
    assert alice.table.get(bob.id).rtt_ms == pytest.approx(25.0)


def test_ping_timeout(net, pair):
    alice, bob = pair
    net.kill(bob)
    assert net.request(alice, 3.0, "ping", peer="bob", wait_s=1.5) == []
    net.tick(4.49, alice)
    assert net.replies[("alice", CLI)] == []
    net.tick(4.5, alice)
    (reply,) = net.replies[("alice", CLI)]
    assert reply["ok"] is False and reply["code"] == "timeout" and reply["req"] == 1
    assert not any(pp.client for pp in alice.pings.values())


# ============================================================================ addresses


def join_frame(sender: str, port: int, addr, reply_to=None, name: str | None = None, **extra) -> list[bytes]:
    data = {"addr": addr, "port": port, "pub_port": port + 1, "reply_to": reply_to, **extra}
    return [sender.encode(), P.encode(P.make(P.JOIN, sender, name or sender.split("-")[0], WALL, data))]


def peers_frame(sender: str, entries: list[dict]) -> list[bytes]:
    return [sender.encode(), P.encode(P.make(P.PEERS, sender, sender.split("-")[0], WALL, {"peers": entries}))]


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


def linked_alice(bob_addr: str = "10.0.0.2") -> Node:
    alice = Node("alice-id", "alice", P.PeerAddress("10.0.0.1", 5001, 5002), FAST, 0.0, WALL)
    alice.on_router_frames(0.0, join_frame("bob-id", 5003, bob_addr), bob_addr)
    assert alice.table.get("bob-id").state == ALIVE
    return alice


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


# ============================================================================ bad input


@pytest.fixture
def alice_bob(net, pair):
    return pair


def test_bad_frames_counted_by_kind(net, alice_bob):
    alice, bob = alice_bob
    ping = lambda sender=bob.id, **kw: P.encode(P.make(P.PING, sender, "x", WALL, **kw))  # noqa: E731
    cases = [
        ([b"only one"], "bad_frames"),
        ([bob.id.encode()] + [ping()] * (P.MAX_BATCH + 1), "bad_frames"),  # a batch longer than allowed
        ([b"charlie-id", ping()], "bad_routing_id"),  # claims to be bob on charlie's link
        ([b"ghost", ping("ghost")], "not_linked"),
        ([alice.id.encode(), ping(alice.id)], "self"),
        ([bob.id.encode(), P.encode(P.make(P.MESSAGE, bob.id, "bob", WALL, {"text": "x"}, "charlie-id"))], "misrouted"),
        ([bob.id.encode(), b"\xff not json"], "not_json"),
        ([bob.id.encode(), b'{"v": 2}'], "version"),
        ([bob.id.encode(), b'{"v": 1, "type": "HUG"}'], "unknown_type"),
        ([bob.id.encode(), b'{"v": 1, "type": "PING", "id": "bad id"}'], "bad_field"),
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
    msg = P.encode(P.make(P.MESSAGE, bob.id, "bob", WALL, {"text": "x"}, alice.id))
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
            lambda t, s, d, tgt: json.dumps({"v": 1, "type": t, "id": "m1", "sender_id": s, "sender_name": "n",
                                              "timestamp": "t", "data": d, "target_id": tgt}).encode(),
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


def test_send_and_broadcast_reach_the_inbox(net, trio):
    alice, bob, charlie = trio
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
def test_a_lost_message_is_resent_at_once_when_the_receiver_reports_the_gap(net, pair, times):
    alice, bob = pair
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


def test_a_sender_over_the_receivers_rate_is_paced_by_held_acks(net):
    alice = net.add("alice")
    bob = net.add("bob", settings=replace(FAST, max_msgs_per_s=5.0, send_window=10))
    assert net.connect(alice, bob, 0.0)["ok"] is True
    texts = [f"m{i:02d}" for i in range(40)]
    for t in texts:
        net.call(alice, 1.0, "send", peer="bob", text=t)
    ls = bob.msgs.delivery.links[alice.id]
    # the budget ran out: bob took in order what fits a window past its last ACK, on credit,
    # and holds that ACK; what alice sent beyond it was dropped (she resends it later)
    assert ls.in_seq == ls.acked_in + 10 and ls.ack_owed and bob.in_debt(1.0, alice.id)
    assert bob.dropped["rate_limited"] > 0 and bob.stats["out_of_order_dropped"] == 0
    assert [e["text"] for e in bob.inbox] == texts[:ls.in_seq]
    net.tick_range(1.1, 20.0, 0.1)
    assert [e["text"] for e in bob.inbox] == texts  # all of them, once, in order
    assert net.call(alice, 20.0, "info")["result"]["outbox_pending"] == 0
    assert state(alice, bob) == "alive" and state(bob, alice) == "alive"  # heartbeats got through
    acks = [t for t, m in net.sent("bob", "alice", P.ACK)]
    # within the budget at 1.0, ACKs went at once; the one for the messages taken on credit
    # (a window: 2 s of budget at 5 a second) waited until the debt was repaid
    assert acks[0] == 1.0 and min(t for t in acks if t > 1.0) >= 2.9


def test_a_peer_over_its_rate_gets_no_credit_for_other_frames(net):
    alice = net.add("alice")
    bob = net.add("bob", settings=replace(FAST, max_msgs_per_s=5.0, send_window=10))
    assert net.connect(alice, bob, 0.0)["ok"] is True
    for _ in range(20):
        net.call(alice, 1.0, "broadcast", text="x")  # not on credit: dropped past the budget
    assert bob.dropped["rate_limited"] > 0 and not bob.in_debt(1.0, alice.id)


def test_inbox_is_bounded(net):
    alice = net.add("alice", settings=replace(FAST, inbox_size=2))
    bob = net.add("bob")
    net.connect(bob, alice, 0.0)
    for i in range(3):
        net.call(bob, 1.0, "send", peer="alice", text=f"m{i}")
    assert [e["text"] for e in alice.inbox] == ["m1", "m2"]


# ============================================================================ control.handle


def handle(node: Node, raw, now: float = 5.0, client: bytes = CLI) -> dict:
    if not isinstance(raw, bytes):
        raw = json.dumps(raw).encode()
    acts = control.handle(node, now, client, raw, {"pid": 1})
    replies = [a.payload for a in acts if isinstance(a, ToClient) and a.client == client]
    assert len(replies) == 1, acts
    return replies[0]


def test_control_status_info_peers(net, pair):
    alice, bob = pair
    r = net.call(alice, 5.0, "status")
    assert r["ok"] is True and r["result"] == {"pid": 4242, "id": "alice-id", "name": "alice", "uptime_s": 5.0}
    r = net.call(alice, 5.0, "info")["result"]
    assert r["pid"] == 4242 and r["id"] == "alice-id" and r["peers"] == 1 and r["peers_alive"] == 1 and r["peers_lost"] == 0
    assert r["protocol_version"] == 1 and r["address"] == {"addr": HOST, "port": 5001, "pub_port": 5002}
    assert r["started"] == P.utc_timestamp(WALL) and r["uptime_s"] == 5.0 and r["dropped_total"] == 0
    r = net.call(alice, 5.0, "peers")["result"]
    assert [p["name"] for p in r] == ["bob"] and r[0]["state"] == ALIVE and r[0]["subscribed"] is True


def test_control_disconnect(net, pair):
    alice, bob = pair
    watch(net, bob)
    r = net.call(alice, 2.0, "disconnect", peer="bob")
    assert r["ok"] is True and r["result"]["peer"]["id"] == bob.id
    assert state(alice, bob) is None and "bob-id" not in alice.links
    # the LEAVE went out before the link closed, so bob dropped alice too
    kinds = [type(a).__name__ for _, a in net.acts("alice", (Send, CloseLink), since=2.0)]
    assert kinds[:2] == ["Send", "CloseLink"]
    assert state(bob, alice) is None
    assert [e["peer"]["id"] for e in net.events(bob, "left")] == [alice.id]


def test_control_disconnect_lost_peer_allowed(net, pair):
    alice, bob = pair
    net.kill(bob)
    net.tick(6.0, alice)
    assert state(alice, bob) == LOST
    r = net.call(alice, 6.5, "disconnect", peer="bob")
    assert r["ok"] is True and state(alice, bob) is None
    assert not any(a.msg.type == P.LEAVE for _, a in net.acts("alice", Send, since=6.5))


def test_control_inbox_and_limit(net, pair):
    alice, bob = pair
    for t in ("one", "two", "three"):
        net.call(bob, 1.0, "send", peer="alice", text=t)
    assert [m["text"] for m in net.call(alice, 2.0, "inbox")["result"]] == ["one", "two", "three"]
    assert [m["text"] for m in net.call(alice, 2.0, "inbox", limit=2)["result"]] == ["two", "three"]
    assert [m["text"] for m in net.call(alice, 2.0, "inbox", limit=0)["result"]] == ["one", "two", "three"]
    assert [m["text"] for m in net.call(alice, 2.0, "inbox", limit=99)["result"]] == ["one", "two", "three"]


def test_control_watch_and_stop(net, pair):
    alice, bob = pair
    r = handle(alice, {"req": "w", "cmd": "watch"}, client=WATCH)
    assert r == {"req": "w", "ok": True, "result": {"watching": True, "id": "alice-id", "name": "alice"}}
    assert WATCH in alice.watchers
    acts = control.handle(alice, 2.0, CLI, b'{"req": 3, "cmd": "stop"}', {})
    assert acts[0] == ToClient(CLI, {"req": 3, "ok": True, "result": {"stopping": True}})
    assert [a.msg.type for a in acts if isinstance(a, Send)] == [P.LEAVE]
    assert isinstance(acts[-1], Shutdown) and alice.stopping is True


def test_control_ping_happy_path(net, pair):
    alice, bob = pair
    r = net.call(alice, 3.0, "ping", peer="bob-i")  # id prefix works too
    assert r["ok"] is True and r["result"]["id"] == "bob-id" and r["result"]["rtt_ms"] == 0.0


BAD_REQUESTS = [
    (b"not json", "bad_request"),
    (b"\xff\xfe", "bad_request"),
    (b"", "bad_request"),
    (b"[1, 2]", "bad_request"),
    (b'"status"', "bad_request"),
    (b"null", "bad_request"),
    (b"[" * 50_000, "bad_request"),
    (b" " * (control.MAX_REQUEST_BYTES + 1), "bad_request"),
    ({"cmd": "status", "args": []}, "bad_request"),
    ({"cmd": "status", "args": "x"}, "bad_request"),
    ({"cmd": "fly"}, "unknown_command"),
    ({}, "unknown_command"),
    ({"cmd": ["send"]}, "unknown_command"),
    ({"cmd": None}, "unknown_command"),
    ({"cmd": "send", "args": {"peer": "bob-1"}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": "bob-1", "text": ""}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": "bob-1", "text": 5}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": "bob-1", "text": "x" * (P.MAX_TEXT_LEN + 1)}}, "too_large"),
    ({"cmd": "send", "args": {"text": "hi"}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": "", "text": "hi"}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": 7, "text": "hi"}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": "b" * 257, "text": "hi"}}, "bad_request"),
    ({"cmd": "broadcast", "args": {}}, "bad_request"),
    ({"cmd": "broadcast", "args": {"text": None}}, "bad_request"),
    ({"cmd": "connect", "args": {"port": 5001}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 0}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 65536}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": "abc"}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": True}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 5001.5}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": "²"}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 5001, "wait_s": 0}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 5001, "wait_s": True}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 5001, "wait_s": "5"}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 5001, "wait_s": 3601}}, "bad_request"),
    ({"cmd": "ping", "args": {"peer": "bob-1", "wait_s": 0.001}}, "bad_request"),
    ({"cmd": "ping", "args": {"peer": "bob-1", "wait_s": 601}}, "bad_request"),
    ({"cmd": "ping", "args": {}}, "bad_request"),
    ({"cmd": "inbox", "args": {"limit": -1}}, "bad_request"),
    ({"cmd": "inbox", "args": {"limit": "3"}}, "bad_request"),
    ({"cmd": "inbox", "args": {"limit": False}}, "bad_request"),
    ({"cmd": "disconnect", "args": {}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": "dave", "text": "hi"}}, "unknown_peer"),
    ({"cmd": "ping", "args": {"peer": "nobody"}}, "unknown_peer"),
    ({"cmd": "disconnect", "args": {"peer": "xyz"}}, "unknown_peer"),
    ({"cmd": "send", "args": {"peer": "bob", "text": "hi"}}, "ambiguous"),
    ({"cmd": "ping", "args": {"peer": "bob"}}, "ambiguous"),
    ({"cmd": "disconnect", "args": {"peer": "bob"}}, "ambiguous"),
    ({"cmd": "ping", "args": {"peer": "carol"}}, "not_linked"),
]


@pytest.fixture
def busy_alice() -> Node:
    """alice knows two alive peers both named bob, and carol who never answered."""
    alice = Node("alice-id", "alice", P.PeerAddress(HOST, 5001, 5002), FAST, 0.0, WALL)
    alice.on_router_frames(0.0, join_frame("bob-1", 5003, HOST, name="bob"), HOST)
    alice.on_router_frames(0.0, join_frame("bob-2", 5005, HOST, name="bob"), HOST)
    alice.on_router_frames(0.0, peers_frame("bob-1", [{"id": "carol-id", "name": "carol", "addr": HOST, "port": 5007, "pub_port": 5008}]), HOST)
    assert [p.state for p in alice.table.all()] == [ALIVE, ALIVE, LINKING]
    return alice


@pytest.mark.parametrize("raw, code", BAD_REQUESTS, ids=[f"{i}-{c}" for i, (_, c) in enumerate(BAD_REQUESTS)])
def test_control_bad_requests(busy_alice, raw, code):
    if isinstance(raw, dict):
        raw = {"req": 17, **raw}
    before_peers = len(busy_alice.table)
    reply = handle(busy_alice, raw)
    assert reply["ok"] is False and reply["code"] == code, reply
    assert isinstance(reply["error"], str) and reply["error"] and "\n" not in reply["error"]
    assert reply["req"] == (17 if isinstance(raw, dict) else None)
    assert len(busy_alice.table) == before_peers
    counted = busy_alice.dropped["bad_control"]
    assert counted == (1 if code in ("bad_request", "unknown_command") else 0)


def test_control_ambiguous_lists_candidates_and_id_prefix_resolves(busy_alice):
    reply = handle(busy_alice, {"cmd": "send", "args": {"peer": "bob", "text": "hi"}})
    assert "bob (bob-1)" in reply["error"] and "bob (bob-2)" in reply["error"]
    assert handle(busy_alice, {"cmd": "send", "args": {"peer": "bob-2", "text": "hi"}})["ok"] is True


@pytest.mark.parametrize("req, echoed", [(7, 7), ("abc", "abc"), (None, None), (True, None), ([1], None), ({"a": 1}, None), (1.5, None)])
def test_control_req_echo(busy_alice, req, echoed):
    assert handle(busy_alice, {"req": req, "cmd": "status"})["req"] == echoed
    assert handle(busy_alice, {"req": req, "cmd": "nope"})["req"] == echoed


ARG_VALUES = st.none() | st.booleans() | st.integers(-10, 70000) | st.floats() | st.text(max_size=8) | st.sampled_from(["bob", "bob-1", "carol", "alice"]) | st.lists(st.integers(), max_size=2)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(list(control.COMMANDS) + ["nope"]),
    st.dictionaries(st.sampled_from(["peer", "text", "host", "port", "wait_s", "limit", "x"]), ARG_VALUES, max_size=4),
    st.none() | st.integers() | st.text(max_size=4) | st.lists(st.none(), max_size=1),
)
def test_control_never_raises(cmd, args, req):
    alice = Node("alice-id", "alice", P.PeerAddress(HOST, 5001, 5002), FAST, 0.0, WALL)
    alice.on_router_frames(0.0, join_frame("bob-1", 5003, HOST, name="bob"), HOST)
    acts = control.handle(alice, 1.0, CLI, json.dumps({"req": req, "cmd": cmd, "args": args}).encode(), {})
    replies = [a.payload for a in acts if isinstance(a, ToClient)]
    if cmd in ("connect", "ping") and not replies:
        assert any(isinstance(a, Send) for a in acts)  # the answer comes later
    else:
        assert len(replies) == 1 and replies[0]["ok"] in (True, False)
        assert replies[0]["ok"] or replies[0]["code"] in ("bad_request", "unknown_command", "unknown_peer", "ambiguous", "not_linked")


@settings(max_examples=40, deadline=None, database=None)
@given(st.binary(max_size=80))
def test_control_arbitrary_bytes_never_raise(raw):
    alice = Node("alice-id", "alice", P.PeerAddress(HOST, 5001, 5002), FAST, 0.0, WALL)
    acts = control.handle(alice, 1.0, CLI, raw, {})
    assert len(acts) >= 1 and isinstance(acts[0], ToClient)


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
    msg = lambda i: P.encode(P.make(P.MESSAGE, bob.id, "bob", WALL, {"text": f"m{i}"}, alice.id))  # noqa: E731
    frames = [bob.id.encode(), msg(1), b"\xff not json", msg(2), P.encode(P.make(P.PING, "ghost", "x", WALL)), msg(3)]
    acts = alice.on_router_frames(2.0, frames, HOST)
    assert [m["text"] for m in alice.inbox] == ["m1", "m2", "m3"]
    assert alice.dropped["not_json"] == 1 and alice.dropped["bad_routing_id"] == 1
    assert acts == [] or all(type(a).__name__ != "Send" or a.msg.type != "MESSAGE" for a in acts)


def test_batches_go_only_to_peers_that_announced_them(net, alice_bob):
    alice, bob = alice_bob
    assert alice.table.get(bob.id).batch  # p2pd's JOIN says "batch": true
    msgs = [P.make(P.MESSAGE, alice.id, "alice", WALL, {"text": str(i)}, bob.id) for i in range(P.MAX_BATCH + 3)]
    acts = alice._send_many(bob.id, msgs)
    assert [type(a).__name__ for a in acts] == ["SendBatch", "SendBatch"] and [len(a.msgs) for a in acts] == [P.MAX_BATCH, 3]
    alice.table.get(bob.id).batch = False  # a simple peer that did not say so
    assert [type(a).__name__ for a in alice._send_many(bob.id, msgs[:3])] == ["Send"] * 3


def test_a_join_from_a_linked_peer_reopens_the_link_only_when_it_restarted_or_lost_us():
    """Both sides dialling at once (gossip told each of the other) must not tear down fresh links."""
    alice = Node("alice-id", "alice", P.PeerAddress("10.0.0.1", 5001, 5002), FAST, 0.0, WALL)

    def join(t: float, **data) -> list:
        msg = P.make(P.JOIN, "bob-id", "bob", WALL, {"addr": "10.0.0.2", "port": 5003, "pub_port": 5004, **data})
        return alice.on_router_frames(t, [b"bob-id", P.encode(msg)], "10.0.0.2")

    join(0.0, boot="b1")
    assert alice.table.get("bob-id").state == ALIVE
    assert CloseLink("bob-id") not in join(5.0, boot="b1")  # the same run dialling us: keep our link
    assert CloseLink("bob-id") in join(6.0, boot="b1", again=True)  # it had lost us
    assert CloseLink("bob-id") in join(7.0, boot="b2")  # it restarted
    assert CloseLink("bob-id") not in join(7.5)  # a simple peer, our link is half a second old
    assert CloseLink("bob-id") in join(9.0)  # ... and now it is not


def test_a_pong_announces_broadcast_numbers_too(net, pair):
    """Of two idle peers only one may PING; the PONG carries the other's broadcast numbers."""
    alice, bob = pair
    net.request(bob, 0.5, "broadcast", text="one")
    bob.msgs.delivery.bcast_seq += 1  # a broadcast that alice never received (lost on the PUB)
    net.tick(2.0, alice)  # alice asks bob (silent for a while); bob does not ask alice
    pong = net.sent("bob", "alice", P.PONG)[-1][1]
    assert pong.data["bseq"] == 2
    assert not net.sent("alice", "bob", P.FETCH)  # it may still be on its way through the PUB ...
    net.tick(5.0, alice)  # ... but the next PONG, over ack_timeout_s later, still shows it missing
    assert net.sent("alice", "bob", P.FETCH)  # alice noticed the gap from the PONGs
