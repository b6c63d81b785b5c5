"""HyParView views (p2pd/views.py): each rule alone, then networks of hundreds to a thousand
instances talking through an in-test message loop (no processes, seeded, a few seconds)."""

from __future__ import annotations

import random
from collections import deque

import pytest

from p2pd.views import (
    DISCONNECT, FORWARD_JOIN, JOIN, NEIGHBOR, NEIGHBOR_REPLY, SHUFFLE, SHUFFLE_REPLY, LinkDown, LinkUp, ToPeer, Views,
)


def views(me="me", seed=1, **kw) -> Views:
    return Views(me, random.Random(seed), **kw)


def sends(effects, kind=None):
    return [(e.peer, e.kind, e.data) for e in effects if isinstance(e, ToPeer) and (kind is None or e.kind == kind)]


def ups(effects):
    return [e.peer for e in effects if isinstance(e, LinkUp)]


def downs(effects):
    return [e.peer for e in effects if isinstance(e, LinkDown)]


def full(v: Views, n: int, prefix="a") -> list[str]:
    peers = [f"{prefix}{i}" for i in range(n)]
    for p in peers:
        v.on_neighbor(p, True, 0.0)
    return peers


# ---------------------------------------------------------------------------- join


def test_join_links_the_contact_and_sends_join():
    v = views()
    out = v.join("c", 0.0)
    assert ups(out) == ["c"] and sends(out) == [("c", JOIN, {})]
    assert list(v.active) == ["c"]
    assert v.join("me", 0.0) == [] and list(v.active) == ["c"]  # never self


def test_contact_links_the_joiner_and_starts_a_walk_from_each_other_neighbour():
    v = views(active_size=4)
    full(v, 3)
    out = v.on_join("j", 0.0)
    assert ups(out) == ["j"] and "j" in v.active
    assert sorted(sends(out, FORWARD_JOIN)) == [(f"a{i}", FORWARD_JOIN, {"new": "j", "ttl": 6}) for i in range(3)]


def test_contact_with_a_full_view_evicts_one_and_tells_it():
    v = views(active_size=3)
    full(v, 3)
    out = v.on_join("j", 0.0)
    assert len(v.active) == 3 and "j" in v.active
    [victim] = downs(out)
    assert (victim, DISCONNECT, {}) in sends(out) and victim in v.passive
    assert victim not in [p for p, *_ in sends(out, FORWARD_JOIN)]  # the evicted one starts no walk


def test_forward_join_with_room_offers_a_link_instead_of_walking_on():
    v = views(active_size=4)
    full(v, 2)
    out = v.on_forward_join("a0", "j", 5, 0.0)
    assert sends(out) == [("j", NEIGHBOR, {"high": False})] and "j" in v.pending
    assert "j" not in v.active  # linked only once j accepts: no one-sided link


def test_forward_join_in_a_full_view_walks_on_and_leaves_the_joiner_in_passive_at_prwl():
    v = views(active_size=3, arwl=6, prwl=3)
    full(v, 3)
    out = v.on_forward_join("a0", "j", 4, 0.0)
    [(to, kind, data)] = sends(out)
    assert kind == FORWARD_JOIN and to in ("a1", "a2") and data == {"new": "j", "ttl": 3}
    assert "j" not in v.passive
    out = v.on_forward_join("a0", "j", 3, 0.0)
    assert sends(out)[0][2]["ttl"] == 2 and "j" in v.passive


def test_forward_join_at_ttl_zero_or_with_nobody_to_pass_to_ends_the_walk_here():
    v = views(active_size=3)
    full(v, 3)
    assert sends(v.on_forward_join("a0", "j", 0, 0.0)) == [("j", NEIGHBOR, {"high": False})]
    w = views(active_size=1)
    full(w, 1)
    assert sends(w.on_forward_join("a0", "k", 5, 0.0)) == [("k", NEIGHBOR, {"high": False})]


def test_forward_join_about_ourselves_or_a_neighbour_is_dropped():
    v = views()
    full(v, 2)
    assert v.on_forward_join("a0", "me", 3, 0.0) == []
    assert v.on_forward_join("a0", "a1", 3, 0.0) == []


# ---------------------------------------------------------------------------- neighbour requests


def test_low_priority_neighbor_accepted_only_with_room():
    v = views(active_size=2)
    out = v.on_neighbor("x", False, 0.0)
    assert ups(out) == ["x"] and sends(out) == [("x", NEIGHBOR_REPLY, {"accepted": True})]
    v.on_neighbor("y", False, 0.0)
    out = v.on_neighbor("z", False, 0.0)
    assert sends(out) == [("z", NEIGHBOR_REPLY, {"accepted": False})] and not ups(out)
    assert list(v.active) == ["x", "y"] and "z" in v.passive


def test_high_priority_neighbor_always_accepted_evicting_one():
    v = views(active_size=2)
    full(v, 2)
    out = v.on_neighbor("z", True, 0.0)
    assert ups(out) == ["z"] and len(v.active) == 2 and len(downs(out)) == 1
    assert ("z", NEIGHBOR_REPLY, {"accepted": True}) in sends(out)


def test_neighbor_from_a_neighbour_is_accepted_again_without_change():
    v = views()
    full(v, 1)
    out = v.on_neighbor("a0", False, 0.0)
    assert sends(out) == [("a0", NEIGHBOR_REPLY, {"accepted": True})] and not ups(out)


def test_accepted_reply_links_refused_reply_asks_another_candidate():
    v = views(active_size=4)
    full(v, 3)
    v.passive.update(dict.fromkeys(["p", "q"]))
    out = v.tick(0.0)
    [(asked, kind, data)] = sends(out)
    assert kind == NEIGHBOR and data == {"high": False} and asked in v.pending
    other = "q" if asked == "p" else "p"
    out = v.on_neighbor_reply(asked, False, 0.0)
    assert sends(out) == [(other, NEIGHBOR, {"high": False})] and asked in v.passive
    assert sends(v.on_neighbor_reply(other, False, 1.0)) == []  # both refused lately: no one asked, no loop
    [(again, *_)] = sends(v.tick(5.0))  # the cooldown over, asked again
    out = v.on_neighbor_reply(again, True, 5.0)
    assert ups(out) == [again] and list(v.active) == ["a0", "a1", "a2", again] and not v.pending and again not in v.passive


def test_an_acceptance_we_no_longer_wait_for_is_undone():
    """We gave up on the request (timed out): the peer linked us, we must not leave that one-sided."""
    v = views()
    assert sends(v.on_neighbor_reply("late", True, 0.0)) == [("late", DISCONNECT, {})]
    assert "late" not in v.active


def test_an_unanswered_request_times_out_and_the_candidate_is_forgotten():
    v = views(active_size=1, neighbor_timeout_s=5.0)
    v.passive["p"] = None
    v.tick(0.0)
    assert "p" in v.pending
    v.tick(4.9)
    assert "p" in v.pending
    v.tick(5.0)
    assert "p" not in v.pending and "p" not in v.passive and v.isolated


# ---------------------------------------------------------------------------- failures


def test_disconnect_moves_the_peer_to_passive_and_refills_from_passive():
    v = views(active_size=4)
    full(v, 4)
    v.passive["p"] = None
    out = v.on_disconnect("a0", 0.0)
    assert downs(out) == ["a0"] and "a0" in v.passive and "a0" not in v.active
    [(asked, kind, data)] = sends(out, NEIGHBOR)
    assert data == {"high": False}  # three links left of four: we must not force anyone
    assert v.on_disconnect("stranger", 0.0) == []


def test_a_failed_active_peer_is_forgotten_and_replaced_from_passive():
    v = views(active_size=2)
    full(v, 2)
    v.passive.update(dict.fromkeys(["p", "q", "r"]))
    out = v.link_failed("a0", 0.0)
    assert downs(out) == ["a0"] and "a0" not in v.passive
    assert len(sends(out, NEIGHBOR)) == 1  # one free slot, one request
    out = v.link_failed("a1", 0.0)
    asked = sends(out, NEIGHBOR)
    assert len(asked) == 1 and all(d == {"high": True} for _, _, d in asked)  # no link left: high priority


def test_a_failed_candidate_is_dropped_and_the_next_one_asked():
    v = views(active_size=1)
    v.passive.update(dict.fromkeys(["p", "q"]))
    [(asked, *_)] = sends(v.tick(0.0))
    [(nxt, *_)] = sends(v.link_failed(asked, 0.0))
    assert nxt != asked and asked not in v.passive
    assert sends(v.link_failed(nxt, 0.0)) == [] and v.isolated


# ---------------------------------------------------------------------------- views' bounds


def test_views_never_exceed_their_sizes_nor_hold_self():
    v = views(active_size=3, passive_size=5)
    for i in range(20):
        v.on_neighbor(f"n{i}", True, 0.0)
        v.on_shuffle_reply("x", [f"s{i}", f"t{i}", "me"], 0.0)
    assert len(v.active) == 3 and len(v.passive) == 5
    assert "me" not in v.active and "me" not in v.passive
    assert not set(v.active) & set(v.passive)


def test_bad_sizes_are_refused_and_bad_messages_ignored():
    with pytest.raises(ValueError):
        views(active_size=0)
    with pytest.raises(ValueError):
        views(arwl=2, prwl=3)
    v = views()
    assert v.handle("x", FORWARD_JOIN, {"new": "j"}, 0.0) == []
    assert v.handle("x", SHUFFLE, {"nodes": 3}, 0.0) == []
    assert v.handle("x", "NOPE", {}, 0.0) == []
    assert v.handle("x", NEIGHBOR, ["not", "a", "dict"], 0.0) == []
    assert v.handle("x", FORWARD_JOIN, {"new": "j", "ttl": "many"}, 0.0) == []
    assert not v.active and not v.passive


def test_what_one_peer_can_make_us_do_is_bounded():
    v = views(active_size=3, passive_size=30, arwl=6, shuffle_ka=3, shuffle_kp=4, shuffle_ttl=5)
    full(v, 3)
    [(_, _, data)] = sends(v.handle("a0", FORWARD_JOIN, {"new": "j", "ttl": 10**9}, 0.0))
    assert data["ttl"] == 5  # capped at arwl, then one hop
    [(_, _, data)] = sends(v.handle("a0", SHUFFLE, {"origin": "o", "nodes": [f"x{i}" for i in range(100)], "ttl": 10**9}, 0.0))
    assert data["ttl"] == 4 and len(data["nodes"]) == 8  # capped at shuffle_ttl and 1 + ka + kp
    v.passive.update(dict.fromkeys(f"p{i}" for i in range(30)))
    v.handle("far", SHUFFLE_REPLY, {"nodes": [f"y{i}" for i in range(100)]}, 0.0)
    assert len(v.passive) == 30 and sum(p.startswith("p") for p in v.passive) == 22  # at most 8 replaced


def test_leave_tells_every_neighbour_which_refills_its_slot():
    v = views(active_size=2)
    full(v, 2)
    out = v.leave(0.0)
    assert sorted(sends(out)) == [("a0", DISCONNECT, {}), ("a1", DISCONNECT, {})] and sorted(downs(out)) == ["a0", "a1"]
    assert v.isolated
    w = views("a0", active_size=2)
    w.on_neighbor("me", True, 0.0)
    w.passive["spare"] = None
    out = w.handle("me", DISCONNECT, {}, 0.0)
    assert downs(out) == ["me"] and sends(out, NEIGHBOR) == [("spare", NEIGHBOR, {"high": True})]


# ---------------------------------------------------------------------------- shuffles


def test_shuffle_is_sent_once_per_interval_with_self_active_and_passive_samples():
    v = views(active_size=5, shuffle_ka=2, shuffle_kp=3, shuffle_ttl=4, shuffle_interval_s=10.0)
    full(v, 4)
    v.passive.update(dict.fromkeys(["p0", "p1", "p2", "p3"]))
    assert v.shuffle_due(0.0) == []
    assert v.shuffle_due(9.9) == []
    [(to, kind, data)] = sends(v.shuffle_due(10.0))
    assert kind == SHUFFLE and to in v.active and data["origin"] == "me" and data["ttl"] == 4
    nodes = data["nodes"]
    assert nodes[0] == "me" and len(nodes) == 6 and to not in nodes
    assert sum(n in v.active for n in nodes) == 2 and sum(n in v.passive for n in nodes) == 3
    assert v.shuffle_due(15.0) == [] and len(sends(v.shuffle_due(20.0))) == 1


def test_shuffle_walks_on_then_is_answered_and_merged_at_its_end():
    v = views(active_size=3)
    full(v, 3)
    v.passive.update(dict.fromkeys(["p0", "p1"]))
    [(to, kind, data)] = sends(v.on_shuffle("a0", "o", ["o", "x"], 3, 0.0))
    assert kind == SHUFFLE and to in ("a1", "a2") and data == {"origin": "o", "nodes": ["o", "x"], "ttl": 2}
    [(to, kind, data)] = sends(v.on_shuffle("a0", "o", ["o", "x"], 1, 0.0))
    assert (to, kind) == ("o", SHUFFLE_REPLY) and sorted(data["nodes"]) == ["p0", "p1"]
    assert {"o", "x"} <= set(v.passive)


def test_shuffle_reply_evicts_what_we_sent_first():
    v = views(active_size=2, passive_size=3, shuffle_ka=0, shuffle_kp=2)
    full(v, 1)
    v.passive.update(dict.fromkeys(["p0", "p1", "p2"]))
    v.shuffle_due(0.0)
    [(_, _, data)] = sends(v.shuffle_due(10.0))
    sent = data["nodes"][1:]
    v.on_shuffle_reply("far", ["n0", "n1"], 10.0)
    assert set(v.passive) == {"n0", "n1"} | ({"p0", "p1", "p2"} - set(sent))


# ---------------------------------------------------------------------------- networks


class Net:
    """Instances exchanging messages through one FIFO queue (so per-pair order holds, as on a
    link).  A message to a dead node fails back to its sender as `link_failed`, as a dial or
    send would."""

    def __init__(self, n: int, seed: int, **kw):
        self.rng = random.Random(seed)
        self.ids = [f"n{i:04d}" for i in range(n)]
        self.nodes = {i: Views(i, self.rng, **kw) for i in self.ids}
        self.dead: set[str] = set()
        self.queue: deque = deque()
        self.now = 0.0
        self.delivered = 0

    def emit(self, src: str, effects) -> None:
        for e in effects:
            if isinstance(e, ToPeer):
                self.queue.append((src, e.peer, e.kind, e.data))

    def drain(self) -> None:
        while self.queue:
            src, dst, kind, data = self.queue.popleft()
            if src in self.dead:
                continue
            self.delivered += 1
            if dst in self.dead:
                self.emit(src, self.nodes[src].link_failed(dst, self.now))
            else:
                self.emit(dst, self.nodes[dst].handle(src, kind, data, self.now))

    def alive(self) -> list[str]:
        return [i for i in self.ids if i not in self.dead]

    def rounds(self, k: int, step: float = 10.0) -> None:
        for _ in range(k):
            self.now += step
            for i in self.alive():
                self.emit(i, self.nodes[i].tick(self.now))
            self.drain()

    def reached(self) -> set[str]:
        alive = self.alive()
        seen, todo = {alive[0]}, [alive[0]]
        while todo:
            for p in self.nodes[todo.pop()].active:
                if p not in seen and p not in self.dead:
                    seen.add(p)
                    todo.append(p)
        return seen

    def check_invariants(self, bound: int) -> None:
        for i in self.alive():
            v = self.nodes[i]
            assert len(v.active) <= bound and i not in v.active and len(v.passive) <= v.passive_size
            for p in v.active:
                assert p in self.dead or i in self.nodes[p].active, f"{i} -> {p} one-sided"


def grow(n: int, seed: int, **kw) -> Net:
    net = Net(n, seed, **kw)
    for k, i in enumerate(net.ids[1:], start=1):
        net.emit(i, net.nodes[i].join(net.ids[net.rng.randrange(k)], net.now))
        net.drain()
    return net


@pytest.mark.parametrize("n", [2, 5, 9])
def test_a_network_no_bigger_than_the_active_view_is_a_full_mesh(n):
    net = grow(n, seed=n)
    net.rounds(3)
    for i in net.ids:
        assert set(net.nodes[i].active) == set(net.ids) - {i}
    net.check_invariants(8)


def test_a_thousand_nodes_join_connected_bounded_symmetric_then_survive_half_failing():
    net = grow(1000, seed=15)
    net.check_invariants(8)
    assert len(net.reached()) == 1000
    degrees = [len(v.active) for v in net.nodes.values()]
    assert min(degrees) >= 1 and sum(degrees) / len(degrees) > 5  # not a thin tree
    net.rounds(5)  # shuffles spread the passive views
    assert len(net.reached()) == 1000
    net.check_invariants(8)
    assert sum(len(v.passive) for v in net.nodes.values()) / 1000 > 20

    # Half of them die at once; each survivor learns it of its own links (heartbeats) ...
    net.dead = set(net.rng.sample(net.ids, 500))
    for i in net.alive():
        v = net.nodes[i]
        for p in [p for p in v.active if p in net.dead]:
            net.emit(i, v.link_failed(p, net.now))
    net.drain()
    # ... and repairs from its passive view; shuffles refresh what is left.
    net.rounds(5)
    net.check_invariants(8)
    survivors = net.alive()
    assert not [i for i in survivors if net.nodes[i].isolated]
    assert not [i for i in survivors for p in net.nodes[i].active if p in net.dead]
    assert len(net.reached()) == 500
    assert min(len(net.nodes[i].active) for i in survivors) >= 3  # issue 15: every survivor keeps >= 3 links
    assert sum(len(net.nodes[i].active) for i in survivors) / 500 > 7


def test_a_run_replays_for_its_seed():
    a, b = grow(200, seed=7), grow(200, seed=7)
    a.rounds(2)
    b.rounds(2)
    assert [list(a.nodes[i].active) for i in a.ids] == [list(b.nodes[i].active) for i in b.ids]
    assert a.delivered == b.delivered


def test_a_node_short_of_links_asks_with_high_priority():
    """Fewer than half the active view plus one: a request that is never refused (in a network
    whose views are all full, low requests would leave it short for good)."""
    v = views(active_size=8)
    full(v, 4)
    v.passive["p"] = None
    [(_, _, data)] = sends(v.tick(0.0), NEIGHBOR)
    assert data == {"high": True}
    v = views(active_size=8)
    full(v, 5)
    v.passive["p"] = None
    [(_, _, data)] = sends(v.tick(0.0), NEIGHBOR)
    assert data == {"high": False}


def test_a_candidate_that_keeps_refusing_is_asked_ever_less_often():
    v = views(active_size=8, neighbor_timeout_s=5.0)
    full(v, 7)
    v.passive["p"] = None
    asked_at = []
    t = 0.0
    while t < 200.0:
        out = sends(v.tick(t), NEIGHBOR)
        if out:
            asked_at.append(t)
            v.on_neighbor_reply("p", False, t)
        t += 0.5
    gaps = [b - a for a, b in zip(asked_at, asked_at[1:])]
    assert gaps[:4] == [5.0, 10.0, 20.0, 40.0] and max(gaps) == 60.0  # doubling, then at most once a minute


def test_short_of_links_a_node_asks_even_candidates_that_refused_it_lately():
    """After a mass failure a node may be left with a few links and a passive view of candidates
    that refused its low requests when they were full: its high requests do not wait for them."""
    v = views(active_size=8, neighbor_timeout_s=5.0)
    full(v, 7)
    v.passive["p"] = None
    for t in (0.0, 5.0, 15.0):  # three refusals: next ask not before 35 s
        [(asked, _, _)] = sends(v.tick(t), NEIGHBOR)
        v.on_neighbor_reply(asked, False, t)
    assert sends(v.tick(16.0), NEIGHBOR) == []
    asked = []
    for a in ("a0", "a1", "a2", "a3"):  # four neighbours die: short of links
        asked += sends(v.link_failed(a, 16.0), NEIGHBOR)
    asked += sends(v.tick(16.5), NEIGHBOR)
    assert ("p", NEIGHBOR, {"high": True}) in asked
