"""An in-memory network for unit tests of the node: `Net`, its fixtures and frame helpers.

Several `Node` objects talk to each other through `Net`, a tiny stand-in for
transport.py: it performs every effect a node returns (links, sends,
subscriptions, replies to control clients, key fetches from the other nodes'
key ports, pins, LAN beacons heard by every node) and hands encoded frames to
the receiving node, all at a time the test chooses.  No sockets, no sleeps: time
is a plain float.  Used by test_node*.py and test_store_rollback.py.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict, deque

import testmsg
import pytest

from p2pd import control, trustfiles
from p2pd import protocol as P
from p2pd.actions import (CloseLink, FetchKey, LanBeacon, OpenLink, PinKey, Publish, PublishBatch,
                          RekeyLink, SavePeers, Send, SendBatch, Shutdown, Subscribe, ToClient, Unsubscribe)
from p2pd.home import Home
from p2pd.effects import handlers, performer
from p2pd.intake import SUB_TOPIC_PREFIX, topic_for
from p2pd.membership import ALIVE, LINKING
from p2pd.memstore import MemoryStore
from p2pd.node import Node
from p2pd.settings import Settings

HOST = "127.0.0.1"
WALL = 1_700_000_000.0
CLI = b"cli"
WATCH = b"watcher"
PORTS = {"alice": 5001, "bob": 5003, "charlie": 5005, "dave": 5007, "erin": 5009, "frank": 5011, "grace": 5013}

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


@performer()
class Net:
    """Carries out node effects in memory, like transport.py does with ZeroMQ (every type: p2pd/effects.py)."""

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
        self.pins: dict[str, dict[str, str]] = defaultdict(dict)  # node name -> address -> key (PinKey)
        self.beacons: list = []  # (time, node name, payload): LAN beacons sent
        self.by_key_port: dict[str, Node] = {}  # key port endpoint -> running node
        self.lose = None  # (from name, to name, Message) -> True to lose that frame on the wire
        self._effects = handlers(self)
        self.homes: dict[str, Home] = {}  # node name -> its home, for the trust files (`trust`, `known forget`); set by a test

    # ---- membership of the fake network
    def add(self, name: str, node_id: str | None = None, settings: Settings = FAST, now: float = 0.0, addr: str | None = HOST,
            store=None, trust=None, keys=None) -> Node:
        """``keys``: an identity.Keys (signed records, sealed routed messages; the node id is then its key's)."""
        port = PORTS[name]
        store = store if store is not None else MemoryStore(os.urandom)  # the in-memory store, as the simulator's
        node = Node(node_id or (keys.node_id if keys is not None else f"{name}-id"), name, P.PeerAddress(addr, port, port + 1),
                    settings, now, WALL, store, trust, keys=keys)
        self.nodes[name] = node
        self.by_router[ep(port)] = node
        self.by_pub[ep(port + 1)] = node
        self.by_key_port[ep(port + 2)] = node
        self.dealers.pop(node.id, None)
        self.subs.pop(node.id, None)
        return node

    def kill(self, node: Node) -> None:
        """The process dies: nothing reaches it any more, and it sends nothing; the XPUBs its SUBs
        were attached to see them go."""
        self.by_router = {k: v for k, v in self.by_router.items() if v is not node}
        self.by_pub = {k: v for k, v in self.by_pub.items() if v is not node}
        self.by_key_port = {k: v for k, v in self.by_key_port.items() if v is not node}
        self.dealers.pop(node.id, None)
        for endpoint in self.subs.pop(node.id, ()):
            pub = self.by_pub.get(endpoint)
            if pub is not None:
                pub.on_subscription(0.0, b"\x00" + SUB_TOPIC_PREFIX + node.id.encode())

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
        self._effects[type(act)](now, node, act)

    # ---- effects, one handler per type (p2pd/effects.py), as transport.py performs them
    def perform_open_link(self, now: float, node: Node, act: OpenLink) -> None:
        self.dealers[node.id][act.key] = act.endpoint

    def perform_close_link(self, now: float, node: Node, act: CloseLink) -> None:
        self.dealers[node.id].pop(act.key, None)

    def perform_rekey_link(self, now: float, node: Node, act: RekeyLink) -> None:
        links = self.dealers[node.id]
        endpoint = links.pop(act.old, None)
        if endpoint is not None and act.new not in links:
            links[act.new] = endpoint

    def perform_send(self, now: float, node: Node, act: Send) -> None:
        # Here an envelope leaves when the node returns it (a test's flush time is when it arrives): a
        # PING's round trip is timed from there already, report_sent has nothing to add.
        self._send_on_link(now, node, act.key, [act.msg])

    def perform_send_batch(self, now: float, node: Node, act: SendBatch) -> None:
        self._send_on_link(now, node, act.key, act.msgs)

    def _send_on_link(self, now: float, node: Node, key: str, msgs: list) -> None:
        endpoint = self.dealers[node.id].get(key)
        target = self.by_router.get(endpoint) if endpoint else None
        if target is None:
            return  # no link, or nobody listening there: lost on the wire
        msgs = [m for m in msgs if self.lose is None or not self.lose(node.name, target.name, m)]
        if msgs:
            self.delivered.extend((now, node.name, target.name, m) for m in msgs)
            frames = [node.id.encode(), *(P.encode(m) for m in msgs)]
            self.apply(target, target.on_router_frames(now, frames, HOST), flush=False)

    def perform_publish(self, now: float, node: Node, act: Publish) -> None:
        self._publish(now, node, [act.msg], act.to)

    def perform_publish_batch(self, now: float, node: Node, act: PublishBatch) -> None:
        self._publish(now, node, act.msgs)

    def _publish(self, now: float, node: Node, msgs: list, to: tuple | None = None) -> None:
        """One ZeroMQ message (a frame per envelope) to every node whose SUB is attached to our PUB;
        with ``to``, only to those nodes, each behind its topic frame (as the transport sends it)."""
        wire = [P.encode(m) for m in msgs]
        mine = ep(node.address.pub_port)
        for other in list(self.by_router.values()):
            if mine in self.subs.get(other.id, ()) and (to is None or other.id in to):
                self.delivered.extend((now, node.name, other.name, m) for m in msgs)
                frames = wire if to is None else [topic_for(other.id), *wire]
                self.apply(other, other.on_sub_frames(now, list(frames)), flush=False)

    def perform_subscribe(self, now: float, node: Node, act: Subscribe) -> None:
        # As the transport: a SUB already attached there stays (no second subscribe), and
        # the XPUB reports one subscribe per attachment and one unsubscribe when it ends.
        if act.endpoint in self.subs[node.id]:
            return
        self.subs[node.id].add(act.endpoint)
        pub = self.by_pub.get(act.endpoint)
        if pub is not None:
            pub.on_subscription(now, b"\x01" + SUB_TOPIC_PREFIX + node.id.encode())

    def perform_unsubscribe(self, now: float, node: Node, act: Unsubscribe) -> None:
        if act.endpoint not in self.subs[node.id]:
            return
        self.subs[node.id].discard(act.endpoint)
        pub = self.by_pub.get(act.endpoint)
        if pub is not None:
            pub.on_subscription(now, b"\x00" + SUB_TOPIC_PREFIX + node.id.encode())

    def perform_pin_key(self, now: float, node: Node, act: PinKey) -> None:
        self.pins[node.name][act.address] = act.key  # the node's known_peers file

    def perform_fetch_key(self, now: float, node: Node, act: FetchKey) -> None:
        """The key port at router port + 2 answers with the node's public key; an insecure node has none
        (nothing listens there: refused), as has an endpoint where no node runs."""
        target = self.by_key_port.get(act.endpoint)
        if target is None or not target.trust.secure:
            acts = node.on_key(now, act.tag, None, "connection refused", refused=True)
        else:
            acts = node.on_key(now, act.tag, target.trust.public_key, None)
        self.apply(node, acts, flush=False)

    def perform_lan_beacon(self, now: float, node: Node, act: LanBeacon) -> None:
        """A UDP broadcast: every running node hears it (its sender too, which ignores its own)."""
        self.beacons.append((now, node.name, act.payload))
        source = node.address.addr or HOST
        for other in list(self.by_router.values()):
            self.apply(other, other.on_lan_beacon(now, act.payload, source), flush=False)

    def perform_to_client(self, now: float, node: Node, act: ToClient) -> None:
        self.replies[(node.name, act.client)].append(act.payload)

    def perform_save_peers(self, now: float, node: Node, act: SavePeers) -> None:
        self.saved[node.name] = act.peers

    def perform_shutdown(self, now: float, node: Node, act: Shutdown) -> None:
        self.shutdown.add(node.name)

    def perform_edit_authorized_keys(self, now: float, node: Node, act) -> None:
        """As the transport does: the file edit in the home the test gave the node, then its reply."""
        self.perform_to_client(now, node, trustfiles.perform(self.homes[node.name], node.trust, act))

    def perform_forget_pin(self, now: float, node: Node, act) -> None:
        self.perform_edit_authorized_keys(now, node, act)

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
        """Envelopes ``frm`` sent (to ``to``; of ``type_``).  A BROADCAST pushed over the broadcast
        tree travels inside a TREE GOSSIP (tree.py): asked for BROADCASTs, those count too, as
        the BROADCAST they carry (whoever relays it)."""
        out = []
        for t, f, dst, m in self.delivered:
            if f != frm or (to is not None and dst != to):
                continue
            if type_ == P.BROADCAST and m.type == P.TREE and m.data.get("kind") == "GOSSIP":
                m = P.decode(m.data["bcast"].encode())
            if type_ is None or m.type == type_:
                out.append((t, m))
        return out

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
def mem_pair(net):
    """Two in-memory nodes, alice and bob, linked at t=0 by `bob connect alice` (conftest's `daemon_*`: processes)."""
    alice, bob = net.add("alice"), net.add("bob")
    reply = net.connect(bob, alice, 0.0)
    assert reply["ok"] is True
    return alice, bob


@pytest.fixture
def mem_trio(net, mem_pair):
    """Three in-memory nodes, alice, bob, charlie: charlie connected to bob at t=0 and found alice through bob."""
    alice, bob = mem_pair
    charlie = net.add("charlie")
    assert net.connect(charlie, bob, 0.0)["ok"] is True
    return alice, bob, charlie


def join_frame(sender: str, port: int, addr, reply_to=None, name: str | None = None, **extra) -> list[bytes]:
    data = {"addr": addr, "port": port, "pub_port": port + 1, "reply_to": reply_to, **extra}
    return [sender.encode(), P.encode(testmsg.make(P.JOIN, sender, name or sender.split("-")[0], WALL, data))]


def peers_frame(sender: str, entries: list[dict]) -> list[bytes]:
    return [sender.encode(), P.encode(testmsg.make(P.PEERS, sender, sender.split("-")[0], WALL, {"peers": entries}))]


def handle(node: Node, raw, now: float = 5.0, client: bytes = CLI) -> dict:
    if not isinstance(raw, bytes):
        raw = json.dumps(raw).encode()
    acts = control.handle(node, now, client, raw, {"pid": 1})
    replies = [a.payload for a in acts if isinstance(a, ToClient) and a.client == client]
    assert len(replies) == 1, acts
    return replies[0]


@pytest.fixture
def busy_alice() -> Node:
    """alice knows two alive peers both named bob, and carol (from her peer book) who has not answered yet."""
    alice = Node("alice-id", "alice", P.PeerAddress(HOST, 5001, 5002), FAST, 0.0, WALL)
    alice.start(0.0, [{"id": "carol-id", "name": "carol", "addr": HOST, "port": 5007, "pub_port": 5008}], [])
    alice.on_router_frames(0.0, join_frame("bob-1", 5003, HOST, name="bob"), HOST)
    alice.on_router_frames(0.0, join_frame("bob-2", 5005, HOST, name="bob"), HOST)
    assert [p.state for p in alice.table.all()] == [ALIVE, ALIVE, LINKING]
    return alice


def linked_alice(bob_addr: str = "10.0.0.2") -> Node:
    alice = Node("alice-id", "alice", P.PeerAddress("10.0.0.1", 5001, 5002), FAST, 0.0, WALL)
    alice.on_router_frames(0.0, join_frame("bob-id", 5003, bob_addr), bob_addr)
    assert alice.table.get("bob-id").state == ALIVE
    return alice


@pytest.fixture
def alice_bob(net, mem_pair):
    """`mem_pair` under the names the tests unpack it to."""
    return mem_pair
