"""The overlay wired into the node (p2pd/overlay.py): bounded links, everyone known, routed and
sealed direct messages, broadcasts over the tree, suspicion and refutation.

In the simulator (keyless nodes, real `Node` code) for the network-wide properties, and in the
in-memory network with real keys for what the keys prove: signed records, sealed ROUTED bodies."""

from __future__ import annotations

from dataclasses import replace

import pytest
from nacl.bindings import crypto_box_keypair, crypto_scalarmult_base

import memnet
import testmsg
from memnet import Net
from p2pd import protocol as P
from p2pd.identity import Keys
from p2pd.records import z85_encode
from p2pd.sim import Sim
from p2pd.trust import Trust, node_id_for
from test_sim import FAST

SMALL = replace(FAST, active_view=4, passive_view=12)


def formed(n: int, settings=SMALL, seed: int = 1, seeds: int = 1) -> Sim:
    sim = Sim(n, seed, settings=settings, seeds=seeds)
    sim.run_until(1.0)
    sim.run_while(lambda s: not s.meshed(), 60.0)
    assert sim.meshed(), "the overlay did not form"
    return sim


def linked(s) -> set[str]:
    return {p.id for p in s.node.table.alive()}


# ---------------------------------------------------------------------------- links and members


def test_links_stay_within_the_active_view_and_everyone_knows_everyone():
    sim = formed(40)
    sim.run_until(sim.now + 15)  # past the sweep of links in neither view
    for s in sim.nodes:
        assert 1 <= len(linked(s)) <= SMALL.active_view, (s.name, len(linked(s)))
        rows = {r["id"]: r for r in sim.request(s.name, "peers")["result"]}
        assert len(rows) == 39 and s.id not in rows
        assert all(r["state"] == "alive" and r["hops"] is not None for r in rows.values())
        assert {i for i, r in rows.items() if r["linked"]} == linked(s)
        assert all(r["hops"] == 1 for r in rows.values() if r["linked"])
        assert all(r["hops"] >= 2 for r in rows.values() if not r["linked"])
    # links are symmetric: a link is watched from both ends
    for s in sim.nodes:
        for pid in linked(s):
            assert s.id in linked(sim.by_name[pid.removesuffix("-id")])


def test_a_network_no_bigger_than_the_active_view_is_a_full_mesh():
    sim = formed(5, settings=FAST)  # active_view 8
    for s in sim.nodes:
        assert len(linked(s)) == 4
        assert all(r["linked"] for r in sim.request(s.name, "peers")["result"])


def _count_facts(sim: Sim, to: str, strip_digest_of: str | None = None, old: dict | None = None) -> dict:
    """Watch what the nodes send ``to``: records in FACTS, digests, and from whom; with ``old``
    (id -> incarnation), the copies of those records.  With ``strip_digest_of``, that node's
    JOINs lose their ``digest`` flag on the way (a p2pd from before digests)."""
    seen = {"records": 0, "old_copies": 0, "digests": 0, "digest_senders": set(), "record_senders": set()}

    def watch(src, dst, msgs):
        for m in msgs:
            if src == strip_digest_of and m.type == P.JOIN:
                m.data.pop("digest", None)
            if dst == to and m.type == P.FACTS:
                facts = m.data["facts"]
                seen["records"] += len(facts)
                seen["old_copies"] += sum(1 for f in facts if old is not None and old.get(f.get("id")) == f.get("inc"))
                if facts:
                    seen["record_senders"].add(src)
                if "have" in m.data:
                    seen["digests"] += 1
                    seen["digest_senders"].add(src)
        return False

    sim.lose = watch
    return seen


def test_a_node_joining_a_formed_network_takes_each_record_about_once():
    """Push-pull by digest: a restarted node's new neighbours each send what they hold as
    [id, incarnation, rank], and it asks one of them for each record it lacks, so it takes each
    record about once, not once from each neighbour (push-all: N records per link-up).  What
    comes besides is news: its neighbours' records signed again as their links change."""
    sim = formed(40)
    victim = sim.nodes[7]
    sim.crash(victim.name)
    sim.run_while(lambda s: any(o.up and o.node.roster.state_of(victim.id) == "alive" for o in s.nodes), 20.0)
    witness = sim.nodes[0].node.roster
    old = {i: witness.record_of(i).incarnation for i, _, _ in witness.states() if i != victim.id}
    seen = _count_facts(sim, victim.name, old=old)
    sim.restart(victim.name)
    sim.run_while(lambda s: not s.meshed(), 60.0)
    sim.run_until(sim.now + 5)
    assert sim.meshed()
    assert victim.node.roster.size() >= 40
    assert len(seen["digest_senders"]) >= 3, seen  # push-all would have sent >= 3 x 38 of the old records
    assert len(old) - 5 <= seen["old_copies"] <= 1.5 * len(old), seen  # news still pending at a neighbour: a few


def test_a_peer_whose_join_does_not_say_digest_gets_every_record():
    sim = formed(20)
    victim = sim.nodes[5]
    sim.crash(victim.name)
    sim.run_while(lambda s: any(o.up and o.node.roster.state_of(victim.id) == "alive" for o in s.nodes), 20.0)
    seen = _count_facts(sim, victim.name, strip_digest_of=victim.name)
    sim.restart(victim.name)
    sim.run_while(lambda s: not s.meshed(), 60.0)
    assert sim.meshed()
    assert seen["digests"] == 0, seen
    assert len(seen["record_senders"]) >= 3 and seen["records"] >= 3 * 19, seen


def test_what_a_neighbour_asks_for_again_is_not_sent_again():
    """A neighbour's digest is answered with asks for what we lack, and its asks with the
    records it is not known to have: asking again brings nothing (no amplification), nor does
    a digest again; ids nobody can send are given up after the wait."""
    net = Net()
    alice, bob, carol = net.add("alice"), net.add("bob"), net.add("charlie")
    assert net.connect(bob, alice, 0.0)["ok"] and net.connect(carol, alice, 0.0)["ok"]
    net.tick_range(0.5, 5.0, 0.5, alice, bob, carol)
    assert alice.overlay.roster.size() == bob.overlay.roster.size() == carol.overlay.roster.size() == 3
    digests = [m for _, m in net.sent("bob", "alice", P.FACTS) if "have" in m.data]
    assert digests and {e[0] for e in digests[0].data["have"]} >= {bob.id}
    before = len(net.sent("alice", "bob", P.FACTS))

    def from_bob(t, data):
        msg = testmsg.make(P.FACTS, bob.id, "bob", t, {"facts": [], **data}, alice.id)
        net.apply(alice, alice.on_router_frames(t, [bob.id.encode(), P.encode(msg)], memnet.HOST), t)

    from_bob(6.0, {"want": [alice.id, carol.id]})  # it had them both: nothing to send
    from_bob(6.1, {"have": []})
    assert len(net.sent("alice", "bob", P.FACTS)) == before
    from_bob(6.2, {"have": [[f"nobody-{i}", 1, 0] for i in range(300)]})  # asked once, then given up
    asks = [m for _, m in net.sent("alice", "bob", P.FACTS)[before:]]
    assert [len(m.data.get("want", ())) for m in asks] == [300]
    net.tick_range(7.0, 12.0, 0.5, alice, bob, carol)
    assert alice.overlay.exchange.asking() == 0 and alice.overlay.roster.size() == 3
    assert not alice.dropped


def test_a_digest_that_holds_us_suspect_makes_us_ask_for_the_accusation_to_refute_it():
    net = Net()
    alice, bob = net.add("alice"), net.add("bob")
    assert net.connect(bob, alice, 0.0)["ok"]
    net.tick_range(0.5, 3.0, 0.5, alice, bob)
    inc = alice.overlay.roster.own.incarnation
    before = len(net.sent("alice", "bob", P.FACTS))
    msg = testmsg.make(P.FACTS, bob.id, "bob", 3.2, {"facts": [], "have": [[alice.id, inc, 1]]}, alice.id)
    net.apply(alice, alice.on_router_frames(3.2, [bob.id.encode(), P.encode(msg)], memnet.HOST), 3.2)
    asks = [m.data["want"] for _, m in net.sent("alice", "bob", P.FACTS)[before:] if "want" in m.data]
    assert asks == [[alice.id]]
    msg = testmsg.make(P.FACTS, bob.id, "bob", 3.3, {"facts": [], "have": [[alice.id, inc, 0]]}, alice.id)
    net.apply(alice, alice.on_router_frames(3.3, [bob.id.encode(), P.encode(msg)], memnet.HOST), 3.3)
    assert len([m for _, m in net.sent("alice", "bob", P.FACTS)[before:] if "want" in m.data]) == 1  # no news: not asked


def test_a_digest_that_is_not_id_incarnation_rank_is_refused():
    base = testmsg.make(P.FACTS, "bob-id", "bob", 0.0, {"facts": [], "have": [["alice-id", 3, 0]], "want": ["carol-id"]}, "alice-id")
    assert P.decode(P.encode(base)).data["have"] == [["alice-id", 3, 0]]
    for bad in ({"have": "x"}, {"have": [["alice-id", 3]]}, {"have": [["alice-id", 3, 4]]}, {"have": [["alice-id", -1, 0]]},
                {"have": [["alice id", 3, 0]]}, {"have": [["alice-id", 3.0, 0]]}, {"have": [["alice-id", True, 0]]},
                {"have": [["a", 1, 0]] * (P.MAX_HAVE + 1)}, {"want": "alice-id"}, {"want": [3]}, {"want": ["a b"]},
                {"want": ["a"] * (P.MAX_HAVE + 1)}):
        msg = testmsg.make(P.FACTS, "bob-id", "bob", 0.0, {"facts": [], **bad}, "alice-id")
        with pytest.raises(P.ProtocolError):
            P.decode(P.encode(msg))


# ---------------------------------------------------------------------------- routed direct messages


def test_a_message_to_an_unlinked_node_is_routed_delivered_once_and_acknowledged():
    sim = formed(30)
    a = sim.nodes[0]
    far = next(s for s in sim.nodes[1:] if s.id not in linked(a))
    sent = [sim.send(a.name, far.name, f"over the overlay {i}") for i in range(20)]
    assert all(sent)
    sim.run_while(lambda s: not s.all_delivered(), 20.0)
    c = sim.counts()
    assert c["direct_delivered"] == 20 and c["direct_duplicates"] == 0
    assert a.node.stats["routed_out"] >= 20 and far.node.stats["routed_in"] >= 20
    assert sum(s.node.stats["routed_relayed"] for s in sim.nodes) >= 20  # someone relayed
    got = [m["text"] for m in far.node.store.history(a.id) if m["direction"] == "in"]
    assert got == [f"over the overlay {i}" for i in range(20)]  # in order, once
    sim.run_until(sim.now + 3)
    assert a.node.info(sim.now)["outbox_pending"] == 0  # the ACKs came back through the overlay
    for s in sim.nodes:  # relays keep nothing of it
        if s not in (a, far):
            assert not [m for m in s.node.store.history() if "over the overlay" in m["text"]]


def test_broadcasts_reach_every_node_once_over_the_tree_and_settle_near_n_payloads():
    sim = formed(40)
    sim.run_until(sim.now + 5)
    origin = sim.nodes[3]
    for i in range(3):  # the first broadcasts prune the tree
        sim.broadcast(origin.name, f"warm {i}")
        sim.run_until(sim.now + 2)
    before = sum(s.node.stats["tree_payloads_out"] for s in sim.nodes)
    for i in range(5):
        sim.broadcast(origin.name, f"b{i}")
        sim.run_until(sim.now + 2)
    after = sum(s.node.stats["tree_payloads_out"] for s in sim.nodes)
    assert sim.exactly_once(), sim.counts()
    assert (after - before) / 5 <= 1.3 * 40, (after - before) / 5


# ---------------------------------------------------------------------------- failures


def test_a_crashed_node_is_suspected_then_dead_everywhere_and_its_links_replaced():
    sim = formed(30)
    victim = sim.nodes[7]
    neighbours = [sim.by_name[p.removesuffix("-id")] for p in linked(victim)]
    crashed_at = sim.now
    sim.crash(victim.name)
    sim.run_while(lambda s: any(o.up and o.node.roster.state_of(victim.id) == "alive" for o in s.nodes), 20.0)
    assert all(o.node.roster.state_of(victim.id) != "alive" for o in sim.nodes if o.up)
    noticed = sim.now
    sim.run_while(lambda s: any(o.up and o.node.roster.state_of(victim.id) != "dead" for o in s.nodes), 60.0)
    assert all(o.node.roster.state_of(victim.id) == "dead" for o in sim.nodes if o.up)
    sim.run_until(sim.now + 10)
    for n in neighbours:
        assert victim.id not in linked(n) and len(linked(n)) >= 2
    far = next(o for o in sim.nodes if o.up and o not in neighbours)
    rows = {r["id"]: r for r in sim.request(far.name, "peers")["result"]}
    assert rows[victim.id]["state"] == "lost"
    # down_for_s dates the failure from when this node first stopped listing it alive (the
    # suspicion), which state_for_s, reset when the suspicion became a death, does not
    row = rows[victim.id]
    assert sim.now - noticed <= row["down_for_s"] <= sim.now - crashed_at
    assert row["state_for_s"] < row["down_for_s"]
    assert all(r["down_for_s"] is None for r in rows.values() if r["state"] == "alive")
    # ... and so it does at a neighbour, whose link to it was lost before the death (it once
    # dated the loss from the death, seconds late: the bench's kill figure at 200)
    for n in neighbours:
        row = next((r for r in sim.request(n.name, "peers")["result"] if r["id"] == victim.id), None)
        if row is not None:
            assert row["state"] == "lost"
            assert sim.now - noticed <= row["down_for_s"] <= sim.now - crashed_at, row


def test_a_death_is_signed_by_an_accuser_whose_suspicion_is_held_not_by_every_node_that_timed_it_out():
    """Every node times a suspicion out itself; a signed death only serves who missed that, so
    only an accuser signs one (a mass failure at 200 made ten per dead node, each verified by
    every node, and nothing faster)."""
    sim = formed(40, seeds=3)
    signed: dict[tuple[str, str], set[str]] = {}  # (subject, status) -> who signed such an accusation

    def recording(keys, signer):
        accuse = keys.accuse

        def wrapped(node_id, incarnation, status):
            signed.setdefault((node_id, status), set()).add(signer)
            return accuse(node_id, incarnation, status)
        return wrapped

    for o in sim.nodes:
        o.node.overlay.keys.accuse = recording(o.node.overlay.keys, o.id)
    victims = [sim.nodes[i] for i in (5, 11, 17, 23, 29, 35)]
    for v in victims:
        sim.crash(v.name)
    ids = {v.id for v in victims}

    def all_dead(sim):
        return all(o.node.roster.state_of(i) == "dead" for o in sim.nodes if o.up for i in ids)

    sim.run_while(lambda s: not all_dead(s), 60.0)
    assert all_dead(sim)
    sim.run_until(sim.now + 10)
    for v in victims:
        suspects, deaths = signed.get((v.id, "suspect"), set()), signed.get((v.id, "dead"), set())
        assert suspects and deaths <= suspects, (v.name, suspects, deaths)
        assert len(deaths) < len(sim.nodes) - len(victims) - 1, "every survivor signed a death: the rule is gone"
    assert any(signed.get((v.id, "dead")) for v in victims), "no death signed at all: the test shows nothing"


def test_a_frozen_node_refutes_its_suspicion_and_is_never_taken_for_dead():
    sim = formed(20)
    slow = sim.nodes[4]
    inc = slow.node.roster.own.incarnation
    sim.freeze(slow.name, 6.0)  # past the heartbeat timeout: its neighbours suspect it
    sim.run_until(sim.now + 6.2)
    assert any(o.node.roster.state_of(slow.id) == "suspect" for o in sim.nodes if o is not slow)
    sim.run_while(lambda s: any(o.node.roster.state_of(slow.id) != "alive" for o in s.nodes if o is not slow), 20.0)
    assert all(o.node.roster.state_of(slow.id) == "alive" for o in sim.nodes if o is not slow)
    assert slow.node.roster.own.incarnation > inc  # it refuted by a newer record


def test_a_suspected_seed_is_not_joined_again_by_everyone_that_joined_through_it():
    """Every node joined through n000.  Frozen past the heartbeat timeout, it is suspected, then
    refutes; meanwhile nobody knocks on it again with a JOIN (it is still one of the network's
    nodes while only suspected): knocking by every node at once was a storm of random walks."""
    sim = formed(20)
    seed = sim.nodes[0]
    joins: list = []

    def watch(src, dst, msgs):
        joins.extend(src for m in msgs if dst == seed.name and m.type == P.VIEW and m.data.get("kind") == "JOIN")
        return False

    sim.lose = watch
    sim.freeze(seed.name, 6.0)
    sim.run_until(sim.now + 6.2)
    assert any(o.node.roster.state_of(seed.id) == "suspect" for o in sim.nodes if o is not seed)
    sim.run_while(lambda s: any(o.node.roster.state_of(seed.id) != "alive" for o in s.nodes if o is not seed), 20.0)
    sim.run_until(sim.now + 10)
    assert all(o.node.roster.state_of(seed.id) == "alive" for o in sim.nodes if o is not seed)
    assert joins == []


def test_a_node_back_from_a_stall_is_shown_its_suspicion_and_refutes_at_once():
    """Frozen past the heartbeat timeout, the node's neighbours suspect it and close their
    links.  Its first PINGs when it runs again reach them: each shows it the accusation it
    holds (overlay `_show_accusation`), and it refutes within a second.  Before, it heard of
    its suspicion only from a neighbour that took it back into its view: in this run (seed 8)
    5 s after it resumed, its suspicion timers running out meanwhile."""
    sim = formed(20, seed=8)
    frozen = sim.nodes[0]
    incarnation = frozen.node.roster.own.incarnation
    sim.freeze(frozen.name, 6.0)
    resumes = sim.now + 6.0
    sim.run_while(lambda sim: not any(s.node.roster.state_of(frozen.id) == "suspect" for s in sim.nodes[1:]), 6.0)
    assert sim.now < resumes
    sim.run_until(resumes + 1.0)
    assert frozen.node.roster.own.incarnation > incarnation
    sim.run_until(resumes + 3.0)
    assert all(s.node.roster.state_of(frozen.id) == "alive" for s in sim.nodes[1:])


def test_broadcasts_missed_during_a_partition_are_fetched_after_it_heals():
    sim = formed(16)
    names = [s.name for s in sim.nodes]
    sim.partition(names[:8])
    sim.run_until(sim.now + 12)
    for i in range(3):
        sim.broadcast(names[0], f"cut {i}")  # its last: no later broadcast shows the gap
    sim.run_until(sim.now + 2)
    sim.heal()
    sim.run_while(lambda s: not s.all_delivered(), 60.0)
    assert sim.exactly_once(), sim.counts()


def _apart(sim) -> bool:
    """Does some node hold another for anything but alive?"""
    return any(a.node.roster.state_of(b.id) != "alive" for a in sim.nodes for b in sim.nodes if a is not b)


def _cut_for_a_minute_then_heal(sim):
    """Cut the network in halves for a minute (each half takes the other for dead: routes, then
    the Lifeguard timer), then heal it; the two halves."""
    half = len(sim.nodes) // 2
    left, right = sim.nodes[:half], sim.nodes[half:]
    sim.partition([s.name for s in left])
    sim.run_until(sim.now + 60)
    assert all(a.node.roster.state_of(b.id) == "dead" for a in left for b in right)
    sim.heal()
    return left, right


def test_a_partition_longer_than_the_suspicion_timer_heals_and_every_node_is_alive_everywhere_again():
    """After the heal the lost links are redialled and each node refutes its death."""
    sim = formed(16)
    _cut_for_a_minute_then_heal(sim)
    sim.run_while(_apart, 30.0)
    assert not _apart(sim)


def test_a_partition_heals_without_bootstraps_through_the_links_it_cut():
    """The nodes met through ``connect`` (no ``--join`` to knock on): after the heal, only the
    retries of the links the cut lost can bridge the two parts.  The first retry that gets
    through to a node held dead and unrouted is a JOIN, not a NEIGHBOR a full node refuses, so
    the link stays and each part learns the other is alive.  Without that, the link closed,
    each part suspected the other's members again (alive but unrouted) and stayed apart (this
    run, and 3 of 5 others tried)."""
    sim = formed(24)
    for s in sim.nodes:
        s.node.bootstraps.clear()
        s.joins = []
    left, right = _cut_for_a_minute_then_heal(sim)
    sim.run_while(_apart, 30.0)
    assert not _apart(sim)
    sim.run_until(sim.now + 30)  # and it stays merged: past the sweep of links and the route checks
    assert not _apart(sim)
    assert any(p.id in {b.id for b in right} for a in left for p in a.node.table.alive())


# ---------------------------------------------------------------------------- with real keys


def _keyed(net: Net, name: str, settings, seed: int | None = None):
    """A node with a real CURVE keypair: its id is the key's, its records are signed.  With
    ``seed``, a fixed keypair (its id, hence the node's random choices, the same every run)."""
    if seed is None:
        secret, public = (z85_encode(k) for k in reversed(crypto_box_keypair()))
    else:
        raw = bytes([seed]) * 32
        secret, public = z85_encode(raw), z85_encode(crypto_scalarmult_base(raw))
    keys = Keys(secret, public)
    return net.add(name, node_id=node_id_for(public), settings=settings, trust=Trust(public, secure=False), keys=keys), keys


def test_records_are_signed_and_forged_ones_refused():
    from p2pd.records import BadRecord, encode, verify

    net = Net()
    alice, akeys = _keyed(net, "alice", memnet.FAST)
    assert akeys.node_id == alice.id and alice.roster.own.signature
    rec = akeys.record("alice", ("127.0.0.1:5001",), 5, pub_port=5002)
    verify(rec)
    forged = encode(rec)
    forged["name"] = "mallory"
    with pytest.raises(BadRecord):
        verify(akeys.decode(forged))


def test_keyed_nodes_route_sealed_messages_that_relays_cannot_read():
    net = Net()
    settings = replace(memnet.FAST, active_view=3, passive_view=8)
    pairs = [_keyed(net, n, settings, seed=i + 1) for i, n in enumerate(("alice", "bob", "charlie", "dave", "erin"))]
    nodes = [n for n, _ in pairs]
    alice, far = nodes[0], nodes[4]
    # alice and erin cannot link (another subnet, a firewall): only routed frames pass between them
    net.lose = lambda frm, to, msg: {frm, to} == {"alice", "erin"} and msg.type != P.ROUTED
    # a chain of introductions; the overlay keeps two links each
    for i in range(1, 5):
        assert net.connect(nodes[i], nodes[i - 1], 0.1 * i)["ok"]
    net.tick_range(1.0, 20.0, 0.25)
    assert far.id not in {p.id for p in alice.table.alive()} and alice.routes.hops(far.id) >= 2
    secret = "sealed text nobody in between may read"
    net.call(alice, 20.0, "send", peer=far.id, text=secret)
    net.tick_range(20.25, 25.0, 0.25)
    assert secret in [e["text"] for e in far.inbox]
    routed = [m for _, f, _, m in net.delivered if m.type == P.ROUTED]
    assert routed and all(secret not in P.encode(m).decode() for m in routed)
    assert alice.stats["routed_out"] >= 1 and far.stats["routed_in"] >= 1
    # every node's roster holds every other's signed record
    for n in nodes:
        assert {m.node_id for m in n.roster.members()} == {o.id for o in nodes if o is not n}


def test_a_neighbour_that_cannot_be_reached_directly_is_dropped_and_reached_through_others():
    """alice and charlie cannot open a link to each other (another subnet, a firewall), yet
    charlie agrees to be alice's neighbour through a routed NEIGHBOR: the link never comes up, so
    it drops her from its view within LINK_WAIT_S (and tells her), neither claims such a link in
    its record, and messages between them go through bob."""
    from p2pd.overlay import LINK_WAIT_S

    net = Net()
    alice, bob, charlie = net.add("alice"), net.add("bob"), net.add("charlie")
    direct = {("alice", "charlie"), ("charlie", "alice")}
    # frames on a link of their own between alice and charlie are lost (routed ones go via bob)
    net.lose = lambda frm, to, msg: (frm, to) in direct and msg.type != P.ROUTED
    assert net.connect(bob, alice, 0.0)["ok"] and net.connect(charlie, bob, 0.1)["ok"]
    net.tick_range(0.5, 8.0, 0.25)  # (alice's first asks, over a link that never came up, timed out)
    assert alice.routes.hops(charlie.id) == 2 and charlie.id not in alice.overlay.views.pending  # through bob
    # alice asks charlie to be her neighbour (as her repair would): routed, since a route exists
    t = 8.25
    net.apply(alice, alice.overlay._apply(t, alice.overlay.views.ask(charlie.id, t)), t)
    assert alice.id in charlie.overlay.views.active  # charlie agreed (its answer, on the link it opens to alice, is lost)
    net.tick_range(8.5, 8.5 + LINK_WAIT_S + 5.0, 0.25)
    for a, b in ((alice, charlie), (charlie, alice)):
        assert b.id not in a.overlay.views.active and b.id not in {p.id for p in a.table.alive()}
        assert b.id not in a.roster.own.links and a.routes.hops(b.id) == 2
    assert net.call(alice, 20.0, "send", peer="charlie", text="around the wall")["ok"]
    net.tick_range(20.25, 23.0, 0.25)
    assert [e["text"] for e in charlie.inbox] == ["around the wall"]
    assert alice.stats["routed_out"] >= 1 and bob.stats["routed_relayed"] >= 1


def test_told_keeps_the_newest_fact_per_node_and_counts_older_ones_as_known():
    """A neighbour that has a node's record at incarnation 5 needs neither that record again nor
    anything older; an accusation at 5 or a record at 6 is news to it.  One entry per node."""
    from p2pd.exchange import Told
    told = Told()
    told.add(("n1", 5, "alive", None))
    assert ("n1", 5, "alive", None) in told and ("n1", 4, "dead", "a") in told
    assert ("n1", 5, "suspect", "a") not in told and ("n1", 6, "alive", None) not in told
    told.add(("n1", 3, "alive", None))  # an older one noted later changes nothing
    told.add(("n1", 5, "suspect", "a"))
    assert ("n1", 5, "suspect", "b") in told  # a confirmation is no news to it
    assert ("n1", 5, "dead", "b") not in told and ("n2", 1, "alive", None) not in told
    for i in range(100):
        told.add(("n1", 5 + i, "alive", None))
    assert len(told) == 1
