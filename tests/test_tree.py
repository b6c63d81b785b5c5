"""tree.py: broadcasts over a Plumtree of TREE envelopes, and the targeted Publish they go out by.

N `Tree`s on a random 6-regular graph, wired by a small loop that carries their effects
(`Publish(to=...)` to the named neighbours, `Send` on the link): every broadcast reaches every
node exactly once, costs about N - 1 payloads once the tree has settled, survives 20% of the
nodes going away, and a signing tree takes only what its origin signed.
"""

from __future__ import annotations

import random
from collections import Counter, deque

import pytest
from nacl import bindings as _na

from p2pd import protocol as P
from p2pd import records
from p2pd.actions import Publish, PublishBatch, Send
from p2pd.drops import Drops
from p2pd.intake import topic_for
from p2pd.membership import Membership
from p2pd.outbound import Outbound
from p2pd.tree import SIG_DOMAIN, Tree

import testmsg
from memnet import Net, net  # noqa: F401 (net is a fixture)


def regular_graph(n: int, d: int, seed: int) -> dict[int, set[int]]:
    """A random d-regular-ish simple graph (pairing model, retried until simple and connected)."""
    rng = random.Random(seed)
    while True:
        stubs = [i for i in range(n) for _ in range(d)]
        rng.shuffle(stubs)
        adj: dict[int, set[int]] = {i: set() for i in range(n)}
        ok = True
        for a, b in zip(stubs[::2], stubs[1::2]):
            if a == b or b in adj[a]:
                ok = False
                break
            adj[a].add(b)
            adj[b].add(a)
        if ok and len(component(adj, 0)) == n:
            return adj


def component(adj: dict, start) -> set:
    seen, todo = {start}, [start]
    while todo:
        for b in adj[todo.pop()]:
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


class World:
    """N trees and the wire between them: FIFO, no loss; time moves only when the wire is idle."""

    def __init__(self, n: int, seed: int = 7, signed: bool = False, d: int = 6, direct: bool = False):
        self.now = 0.0
        self.ids = [f"{i:032x}" for i in range(n)]
        self.adj = regular_graph(n, d, seed) if d < n - 1 else {a: [b for b in range(n) if b != a] for a in range(n)}
        self.stats = {i: Counter() for i in self.ids}
        self.drops = {i: Drops() for i in self.ids}
        self.delivered: dict[str, list] = {i: [] for i in self.ids}
        self.signers = {}
        self.keys = {}
        if signed:
            for i in self.ids:
                _, secret = _na.crypto_box_keypair()
                s = records.Signer.from_curve_secret(records.z85_encode(secret))
                self.signers[i], self.keys[i] = s, s.verify_key
        self.trees: dict[str, Tree] = {}
        self.outs: dict[str, Outbound] = {}
        rng = random.Random(seed)
        for i in self.ids:
            out = Outbound(i, f"n{i[-4:]}", 1.7e9, Membership(i), self.stats[i], rng)
            sign = self.signers[i].sign if signed else None
            self.outs[i] = out
            self.trees[i] = Tree(i, out.name, sign, self.keys.get, out, self.stats[i], self.drops[i],
                                 direct_of=self.neighbours if direct else None)
        for a, bs in self.adj.items():
            for b in bs:
                self.trees[self.ids[a]].neighbor_up(self.ids[b])
        self.up = set(self.ids)
        self.wire: deque = deque()
        self.sent: list = []  # everything ever put on the wire
        self.bseq = Counter()

    def neighbours(self, node_id: str) -> set[str] | None:
        """What Routes.star says: the origin's links if it is linked to every node, else None."""
        nbrs = {self.ids[b] for b in self.adj[self.ids.index(node_id)]}
        return nbrs if len(nbrs) == len(self.ids) - 1 else None

    def bcast(self, origin: str, text: str = "hi") -> P.Message:
        self.bseq[origin] += 1
        return self.outs[origin].msg(self.now, P.BROADCAST, {"text": text, "bseq": self.bseq[origin]})

    def emit(self, src: str, acts: list) -> None:
        for a in acts:
            if isinstance(a, Publish):
                assert a.msg.type == P.TREE
                subscribers = [self.ids[b] for b in self.adj[self.ids.index(src)]]  # untargeted: every SUB
                for peer in (a.to if a.to is not None else subscribers):
                    self.wire.append((src, peer, a.msg, "pub"))
                    self.sent.append(self.wire[-1])
            elif isinstance(a, Send):
                self.wire.append((src, a.key, a.msg, "link"))
                self.sent.append(self.wire[-1])
            else:
                raise AssertionError(f"unexpected effect {a!r}")

    def run(self, settle_s: float = 5.0) -> None:
        """Carry everything; then let time pass (ticks: IHAVEs, repair timers) until quiet."""
        end = self.now + settle_s
        while True:
            while self.wire:
                src, dst, msg, _ = self.wire.popleft()
                if dst not in self.up:
                    continue
                acts, got = self.trees[dst].on_tree(self.now, msg, src)
                self.delivered[dst] += got
                self.emit(dst, acts)
            deadlines = [d for i in self.up if (d := self.trees[i].next_deadline()) is not None]
            if not deadlines or self.now >= end:
                return
            self.now = max(self.now, min(deadlines))
            for i in sorted(self.up):
                self.emit(i, self.trees[i].tick(self.now))

    def originate(self, origin: str, msg: P.Message | None = None) -> P.Message:
        msg = msg or self.bcast(origin)
        self.emit(origin, self.trees[origin].originate(self.now, [msg]))
        self.run()
        return msg

    def payloads(self) -> int:
        return sum(self.stats[i]["tree_payloads_out"] for i in self.ids)

    def remove(self, victims: list[str]) -> None:
        for v in victims:
            self.up.discard(v)
        for v in victims:
            for b in self.adj[self.ids.index(v)]:
                self.trees[self.ids[b]].neighbor_down(v)

    def check_once(self, msg: P.Message, nodes) -> None:
        origin = msg.sender_id
        for i in nodes:
            got = [m for m in self.delivered[i] if m.id == msg.id]
            if i == origin:
                assert got == []
            else:
                assert len(got) == 1, (i, len(got))
                assert got[0].data == msg.data and got[0].sender_id == origin


@pytest.mark.parametrize("direct", [False, True], ids=["tree-only", "star-when-full-mesh"])
@pytest.mark.parametrize("n", [30, 100])
def test_every_node_gets_every_broadcast_once_and_the_tree_settles_to_n_minus_1(n, direct):
    w = World(n, direct=direct)
    costs = []
    for k in range(8):
        before = w.payloads()
        msg = w.originate(w.ids[(k * 7) % n])
        costs.append(w.payloads() - before)
        w.check_once(msg, w.ids)
    assert costs[0] > 2 * n  # the first floods every link
    assert all(c <= 1.3 * n for c in costs[2:]), costs
    assert costs[-1] == n - 1, costs
    assert sum(sum(d.counts.values()) for d in w.drops.values()) == 0


def test_in_a_full_mesh_each_origin_publishes_plain_broadcasts_to_everyone():
    """No bigger than the active view: an origin's BROADCASTs never enter the tree; `originate`
    leaves them to its caller, which publishes them plain (next test)."""
    n = 8
    w = World(n, d=n - 1, direct=True, signed=True)
    o = w.ids[0]
    msgs = [w.bcast(o, f"t{i}") for i in range(3)]
    assert w.trees[o].originate(0.0, msgs[:1]) is None and w.trees[o].originate(0.0, msgs[1:]) is None
    assert w.stats[o]["tree_payloads_out"] == 3 * (n - 1)
    assert not w.trees[o].pt.has_seen(msgs[0].id) and w.trees[o].next_deadline() is None
    # not linked to everyone (one link gone): the tree again, signed
    w.trees[o].neighbor_down(w.ids[1])
    w.adj[0] = [b for b in w.adj[0] if b != 1]
    (push,) = w.trees[o].originate(0.0, [w.bcast(o)])
    assert push.msg.type == P.TREE and push.msg.data["sig"] and len(push.to) == n - 2


def test_a_node_linked_to_everyone_publishes_its_broadcasts_plain_untargeted_and_batched(net):
    """What the caller does with them: a BROADCAST as it is, no topic frame, no TREE wrapper, no
    signature (every SUB takes it; its CURVE link proves the publisher), several as one batch."""
    alice, bob, charlie = net.add("alice"), net.add("bob"), net.add("charlie")
    assert net.connect(bob, alice, 0.0)["ok"] and net.connect(charlie, alice, 0.1)["ok"]
    net.tick_range(0.25, 4.0, 0.25, alice, bob, charlie)
    assert alice.routes.star(alice.id) is not None
    assert net.call(alice, 4.0, "broadcast", text="one")["ok"]
    assert net.call(alice, 4.0, "broadcast", texts=["two", "three"])["ok"]
    (one,) = [a for _, a in net.acts("alice", Publish, 4.0) if a.msg.type == P.BROADCAST]
    assert one.to is None and one.msg.data["text"] == "one"
    (batch,) = [a for _, a in net.acts("alice", PublishBatch, 4.0)]
    assert [m.data["text"] for m in batch.msgs] == ["two", "three"] and all(m.type == P.BROADCAST for m in batch.msgs)
    assert not [a for _, a in net.acts("alice", Publish, 4.0) if a.msg.type == P.TREE]


def test_a_fifth_of_the_nodes_gone_the_survivors_still_get_everything_once():
    n = 100
    w = World(n, seed=11)
    for k in range(3):
        w.originate(w.ids[k])
    victims = random.Random(3).sample(w.ids[1:], n // 5)
    w.remove(victims)
    survivors = set(w.up)
    alive_adj = {i: {b for b in w.adj[i] if w.ids[b] in survivors} for i in range(n) if w.ids[i] in survivors}
    assert len(component(alive_adj, 0)) == len(survivors)  # this seed leaves the survivors connected
    costs = []
    for k in range(6):
        before = w.payloads()
        msg = w.originate(w.ids[0] if k % 2 == 0 else sorted(survivors)[k])
        costs.append(w.payloads() - before)
        w.check_once(msg, survivors)
    assert costs[-1] <= 1.3 * len(survivors), costs


def test_signed_broadcasts_verify_and_forged_tampered_or_unknown_ones_are_dropped():
    w = World(12, signed=True, d=4)
    a, b = w.ids[0], w.ids[1]
    msg = w.originate(a)
    w.check_once(msg, w.ids)
    ta, tb = w.trees[a], w.trees[b]
    dups = w.stats[b]["tree_duplicates"]
    good = w.bcast(a, "genuine")
    (push,) = [x for x in ta.originate(w.now, [good]) if isinstance(x, Publish)]
    data = dict(push.msg.data)
    assert len(data["sig"]) == 128

    def gossip(d: dict) -> P.Message:
        return w.outs[a].msg(w.now, P.TREE, d)

    # tampered: the text changed, the signature kept
    tampered = dict(data, bcast=data["bcast"].replace("genuine", "forged!"))
    assert tb.on_tree(w.now, gossip(tampered), a) == ([], [])
    assert w.drops[b].counts["tree_bad_sig"] == 1
    # forged: signed by another key (c's) in a's name
    c = w.ids[2]
    forged = dict(data, sig=w.signers[c].sign(SIG_DOMAIN + data["bcast"].encode()).hex())
    assert tb.on_tree(w.now, gossip(forged), a) == ([], [])
    assert w.drops[b].counts["tree_bad_sig"] == 2
    # unsigned, or a signature that is not hex
    for bad in ({k: v for k, v in data.items() if k != "sig"}, dict(data, sig="zz" * 64)):
        assert tb.on_tree(w.now, gossip(bad), a) == ([], [])
    assert w.drops[b].counts["tree_bad_sig"] == 4
    # unknown origin: no verify key for it
    del w.keys[a]
    assert tb.on_tree(w.now, gossip(data), a) == ([], [])
    assert w.drops[b].counts["tree_unverified"] == 1
    w.keys[a] = w.signers[a].verify_key
    # none of that entered the seen window: the genuine copy is taken
    acts, got = tb.on_tree(w.now, gossip(data), a)
    assert [m.text for m in got] == ["genuine"]
    assert w.stats[b]["tree_duplicates"] == dups


def test_an_unsigned_tree_takes_unsigned_broadcasts_and_a_signing_one_does_not():
    w = World(4, d=2)
    a, b = w.ids[0], w.ids[1]
    (push,) = w.trees[a].originate(0.0, [w.bcast(a)])
    assert "sig" not in push.msg.data
    _, got = w.trees[b].on_tree(0.0, push.msg, a)
    assert len(got) == 1
    signer = records.Signer.from_curve_secret(records.z85_encode(_na.crypto_box_keypair()[1]))
    strict = Tree(b, "b", signer.sign, lambda _: signer.verify_key, w.outs[b], Counter(), Drops())
    strict.neighbor_up(a)
    assert strict.on_tree(0.0, push.msg, a) == ([], [])
    assert strict.drop.counts["tree_bad_sig"] == 1


@pytest.mark.parametrize("data", [
    {"kind": "GOSSIP"},
    {"kind": "GOSSIP", "bcast": 5, "round": 0},
    {"kind": "GOSSIP", "bcast": "{}", "round": 0},
    {"kind": "GOSSIP", "bcast": "not json", "round": 1},
    {"kind": "GOSSIP", "bcast": "x", "round": -1},
    {"kind": "GOSSIP", "bcast": "x", "round": True},
    {"kind": "GOSSIP", "bcast": "x", "round": 10 ** 9},
    {"kind": "GOSSIP", "bcast": "x", "round": 0, "sig": 7},
    {"kind": "IHAVE"},
    {"kind": "IHAVE", "ids": []},
    {"kind": "IHAVE", "ids": "abc"},
    {"kind": "IHAVE", "ids": [["abc"]]},
    {"kind": "IHAVE", "ids": [["abc", "1"]]},
    {"kind": "IHAVE", "ids": [[["x"], 1]]},
    {"kind": "IHAVE", "ids": [["a b", 1]]},
    {"kind": "IHAVE", "ids": [["abc", 1]] * 65},
    {"kind": "IHAVE", "ids": [["abc", 1, "abc"]]},
    {"kind": "IHAVE", "ids": [["abc", 1, "a b", 3]]},
    {"kind": "IHAVE", "ids": [["abc", 1, "abc", -1]]},
    {"kind": "IHAVE", "ids": [["abc", 1, "abc", 2**60]]},
    {"kind": "IHAVE", "ids": [["abc", 1, "abc", True]]},
    {"kind": "GRAFT", "id": {"x": 1}},
    {"kind": "GRAFT", "id": "no spaces allowed"},
    {"kind": "NOPE"},
])
def test_malformed_tree_data_is_dropped_never_raised(data):
    w = World(4, d=2)
    a, b = w.ids[0], w.ids[1]
    msg = w.outs[a].msg(0.0, P.TREE, data)
    assert w.trees[b].on_tree(0.0, msg, a) == ([], [])
    assert sum(w.drops[b].counts.values()) == 1


def test_a_gossip_whose_bcast_is_another_type_is_dropped():
    w = World(4, d=2)
    a, b = w.ids[0], w.ids[1]
    ping = w.outs[a].msg(0.0, P.PING, {})
    unnumbered = w.outs[a].msg(0.0, P.BROADCAST, {"text": "x"})
    for inner in (ping, unnumbered):
        msg = w.outs[a].msg(0.0, P.TREE, {"kind": "GOSSIP", "bcast": P.encode(inner).decode(), "round": 1})
        assert w.trees[b].on_tree(0.0, msg, a) == ([], [])
    assert w.drops[b].counts["tree_bad_bcast"] == 2


def test_ihave_graft_prune_go_on_the_link_and_a_graft_resends():
    w = World(4, d=2)
    a = w.ids[0]
    ta = w.trees[a]
    (b, c) = sorted(ta.eager)
    ta.on_tree(0.0, w.outs[b].msg(0.0, P.TREE, {"kind": "PRUNE"}), b)
    assert ta.lazy == [b]
    msg = w.bcast(a)
    (push,) = ta.originate(0.0, [msg])
    assert push.to == (c,) and push.msg.data["round"] == 1
    assert ta.next_deadline() == pytest.approx(0.05)
    (ihave,) = ta.tick(0.05)
    assert isinstance(ihave, Send) and ihave.key == b and ihave.msg.data == {"kind": "IHAVE", "ids": [[msg.id, 1, a, 1]]}
    assert ta.next_deadline() is None
    acts, _ = ta.on_tree(0.1, w.outs[b].msg(0.1, P.TREE, {"kind": "GRAFT", "id": msg.id}), b)
    (resend,) = acts
    assert resend.to == (b,) and resend.msg.data["bcast"] == P.encode(msg).decode()
    assert sorted(ta.eager) == [b, c]
    assert w.stats[a]["tree_payloads_out"] == 2


def test_memory_stays_bounded():
    w = World(3, d=2)
    a, b = w.ids[0], w.ids[1]
    small = Tree(b, "b", None, lambda _: None, w.outs[b], Counter(), Drops(), seen_window=16, cache_size=8)
    small.neighbor_up(a)
    for _ in range(100):
        (push,) = w.trees[a].originate(0.0, [w.bcast(a)])
        small.on_tree(0.0, push.msg, a)
    assert len(small.pt._seen) == 16 and len(small.pt._cache) == 8


# ---------------------------------------------------------------------------- targeted publish


def test_memnet_publish_to_reaches_only_the_named_subscribers_behind_their_topic():
    net = Net()
    alice, bob, charlie = net.add("alice"), net.add("bob"), net.add("charlie")
    for other in (bob, charlie):
        assert net.connect(other, alice, 0.0)["ok"] is True
    got = []
    for other in (bob, charlie):
        other.on_sub_frames = lambda now, frames, *a, who=other.name, **k: got.append((who, list(frames))) or []
    msg = testmsg.make(P.TREE, alice.id, "alice", 0.0, {"kind": "PRUNE"})
    net.apply(alice, [Publish(msg, to=(bob.id,))], 1.0)
    assert got == [("bob", [topic_for(bob.id), P.encode(msg)])]
    got.clear()
    bcast = testmsg.make(P.BROADCAST, alice.id, "alice", 0.0, {"text": "all", "bseq": 1})
    net.apply(alice, [Publish(bcast)], 1.0)
    assert sorted(got) == [("bob", [P.encode(bcast)]), ("charlie", [P.encode(bcast)])]


def test_intake_strips_our_topic_refuses_anothers_and_takes_tree_only_from_the_pub_owner():
    net = Net()
    alice, bob = net.add("alice"), net.add("bob")
    assert net.connect(bob, alice, 0.0)["ok"] is True
    intake = bob.intake
    tree = testmsg.make(P.TREE, alice.id, "alice", 0.0, {"kind": "PRUNE"})
    frames = [topic_for(bob.id), P.encode(tree)]
    assert intake.sub_frames_ok(1.0, frames, "sub") and frames == [P.encode(tree)]
    assert intake.sub_envelope(1.0, frames[0], "sub", alice.id).type == P.TREE
    assert not intake.sub_frames_ok(1.0, [topic_for(alice.id), P.encode(tree)], "sub")
    assert not intake.sub_frames_ok(1.0, [topic_for(bob.id)], "sub")  # a topic and nothing after it
    assert bob.dropped["bad_topic"] == 1 and bob.dropped["bad_frames"] == 1
    assert intake.sub_envelope(1.0, P.encode(tree), "sub", "someone-else") is None
    assert bob.dropped["spoofed"] == 1
    ping = testmsg.make(P.PING, alice.id, "alice", 0.0, {}, bob.id)
    assert intake.sub_envelope(1.0, P.encode(ping), "sub", alice.id) is None
    assert bob.dropped["bad_type"] == 1


def test_sim_publish_to_reaches_only_the_named_subscribers():
    from p2pd import sim as simmod
    s = simmod.Sim.__new__(simmod.Sim)  # only _publish's own state
    pushed = []
    s.frames, s.lost, s.sent = 0, 0, [0, 0, 0]
    s._cut = lambda *a: False
    s._arrival = lambda *a: 1.0
    s._push = lambda *a: pushed.append(a)

    class N:
        def __init__(self, i, pub):
            self.index, self.id, self.name, self.pub, self.up, self.incarnation = i, f"{i:032x}", f"n{i}", pub, True, 0
            self.subs = {}

    a, b, c = N(0, "pa"), N(1, "pb"), N(2, "pc")
    b.subs["pa"] = a.id
    c.subs["pa"] = a.id
    s.nodes = [a, b, c]
    msg = testmsg.make(P.TREE, a.id, "n0", 0.0, {"kind": "PRUNE"})
    s._publish(a, [msg], (c.id,))
    ((_, _, dst, _, _, frames, sub_from),) = pushed
    assert dst is c and frames == [topic_for(c.id), P.encode(msg)] and sub_from == "pa"


def test_the_transport_publishes_to_each_named_peer_behind_its_topic_over_real_zeromq():
    """Transport.perform_publish on a real XPUB, SUBs subscribed as dealers.py subscribes them."""
    import time

    import zmq

    from p2pd.intake import TOPIC_ALL
    from p2pd.transport import Transport

    ctx = zmq.Context()
    try:
        pub = ctx.socket(zmq.XPUB)
        pub.bind("inproc://tree-pub")
        ids = [f"{i:032x}" for i in (1, 2, 3)]
        subs = {}
        for i in ids:
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, TOPIC_ALL)
            s.setsockopt(zmq.SUBSCRIBE, topic_for(i))
            s.connect("inproc://tree-pub")
            subs[i] = s
        seen = set()
        while len(seen) < len(ids) + 1:  # every subscription has reached the XPUB (it reports "{" once)
            assert pub.poll(2000)
            seen.add(pub.recv())

        class Fake:
            pass

        fake = Fake()
        fake.pub = pub
        tree_msg = testmsg.make(P.TREE, "a" * 32, "a", 0.0, {"kind": "PRUNE"})
        bcast = testmsg.make(P.BROADCAST, "a" * 32, "a", 0.0, {"text": "all", "bseq": 1})
        Transport.perform_publish(fake, Publish(tree_msg, to=(ids[0], ids[2])))
        Transport.perform_publish(fake, Publish(bcast))
        time.sleep(0.05)
        got = {}
        for i, s in subs.items():
            got[i] = []
            while s.poll(100):
                got[i].append(s.recv_multipart())
        assert got[ids[0]] == [[topic_for(ids[0]), P.encode(tree_msg)], [P.encode(bcast)]]
        assert got[ids[1]] == [[P.encode(bcast)]]
        assert got[ids[2]] == [[topic_for(ids[2]), P.encode(tree_msg)], [P.encode(bcast)]]
    finally:
        ctx.destroy(linger=0)


def test_over_authenticated_links_the_origins_own_push_needs_no_signature_check_and_a_relays_does():
    """With CURVE links the link proves who pushed: a GOSSIP pushed by its origin itself is taken
    without the signature check (the cost of a flood); one relayed by another node is checked."""
    w = World(4, signed=True, d=3)
    a, b, c = w.ids[0], w.ids[1], w.ids[2]
    data = dict(next(x for x in w.trees[a].originate(w.now, [w.bcast(a, "from a")]) if isinstance(x, Publish)).msg.data)
    data["sig"] = "00" * 64  # a signature that would not verify
    trusting = Tree(b, "b", w.signers[b].sign, w.keys.get, w.outs[b], Counter(), Drops(), links_authenticated=True)
    for peer in (a, c):
        trusting.neighbor_up(peer)
    relayed = w.outs[c].msg(w.now, P.TREE, dict(data, round=2))
    assert trusting.on_tree(w.now, relayed, c)[1] == []  # from c: checked, refused
    assert [m.text for m in trusting.on_tree(w.now, w.outs[a].msg(w.now, P.TREE, data), a)[1]] == ["from a"]
    wary = Tree(b, "b", w.signers[b].sign, w.keys.get, w.outs[b], Counter(), Drops())  # --insecure links
    wary.neighbor_up(a)
    assert wary.on_tree(w.now, w.outs[a].msg(w.now, P.TREE, data), a)[1] == []
