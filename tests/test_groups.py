"""Groups' pure core (p2pd/groups.py): name rules, the directory of who is in which group,
shout numbering on both sides, and the fan-out of a shout over routes (a hand-made graph,
then random 200-node overlays).  Fast: no processes, no sleeps."""

from __future__ import annotations

import json
import random

import pytest

from p2pd import groups as G
from p2pd.groups import Directory, ShoutOut
from p2pd.routes import Routes
from test_routes import random_overlay  # the same random overlays the route tests use

# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["rust-dev", "a", "x" * 64, "Rust", "café", "日本語", "a#b", "emoji-🎉"])
def test_valid_names(name):
    assert G.check_group_name(name) is None


@pytest.mark.parametrize("name, fix", [
    ("", "'rust-dev'"),
    ("x" * 65, "'" + "x" * 64 + "'"),
    ("rust dev", "'rust-dev'"),
    ("rust\tdev", "'rust-dev'"),
    (" rust  dev ", "'rust-dev'"),
    ("rust\x1b[2Jdev", "'rust[2Jdev'"),   # ESC (Cc)
    ("ab\u202ecd", "'abcd'"),              # RIGHT-TO-LEFT OVERRIDE (Cf)
    ("ab\u200bcd", "'abcd'"),              # ZERO WIDTH SPACE (Cf)
    ("ab\u2028cd", "'ab-cd'"),             # LINE SEPARATOR (Zl, and a space to isspace)
    ("ab\u2029cd", "'ab-cd'"),             # PARAGRAPH SEPARATOR (Zp)
    ("ab\u00a0cd", "'ab-cd'"),             # NO-BREAK SPACE (Zs: isspace)
    ("ab\x00", "'ab'"),
    ("#rust", "'rust'"),
    ("##rust", "'rust'"),
    ("\x07", "'rust-dev'"),                # nothing usable left: the example
    ("#", "'rust-dev'"),
])
def test_invalid_names_are_refused_with_a_valid_name_to_try(name, fix):
    error = G.check_group_name(name)
    assert error is not None and "\n" not in error
    assert error.endswith(": try " + fix)
    suggested = fix.strip("'")
    assert G.check_group_name(suggested) is None  # the fix offered is itself valid


def test_each_rule_says_what_is_wrong():
    assert G.check_group_name("") == ("group names are 1-64 characters without spaces or control characters: "
                                      "try 'rust-dev'")
    assert G.check_group_name("a b") == "group names have no spaces or control characters: try 'a-b'"
    assert G.check_group_name("y" * 70) == f"group names are at most 64 characters, this one has 70: try '{'y' * 64}'"
    assert G.check_group_name("#a") == ("group names do not start with '#' (the chat adds it when it shows them): "
                                        "try 'a'")
    assert G.check_group_name(None) == "a group name is text, 1-64 characters: try 'rust-dev'"
    assert G.check_group_name(b"rust") == "a group name is text, 1-64 characters: try 'rust-dev'"


def test_normalize_strips_exactly_one_hash_and_keeps_case():
    assert G.normalize_group("#Rust") == "Rust"
    assert G.normalize_group("##rust") == "#rust"
    assert G.check_group_name(G.normalize_group("##rust")) is not None
    assert G.normalize_group("rust#") == "rust#"
    assert G.normalize_group("") == ""
    assert G.check_group_name("Rust") is None and "Rust" != "rust"  # case is significant


def test_constants():
    assert (G.MAX_GROUP_NAME, G.MAX_GROUPS) == (64, 32)


# ---------------------------------------------------------------------------- directory


def test_directory_newer_versions_replace_older_ones_are_ignored():
    d = Directory()
    assert d.update("a", 5, ["rust", "go"]) == G.OK
    assert d.update("a", 4, ["c"]) == G.STALE
    assert d.update("a", 5, ["c"]) == G.STALE  # equal: the first one stands
    assert d.groups_of("a") == ("go", "rust") and d.version("a") == 5
    assert d.update("a", 6, ["c"]) == G.OK
    assert d.groups_of("a") == ("c",) and d.version("a") == 6
    assert d.members("rust") == [] and d.members("c") == ["a"]


def test_directory_refusals_change_nothing():
    d = Directory(max_nodes=2)
    assert d.update("a", -1, []) == G.BAD_VERSION
    assert d.update("a", True, []) == G.BAD_VERSION
    assert d.update("a", "1", []) == G.BAD_VERSION
    assert d.update("a", 1, [f"g{i}" for i in range(33)]) == G.TOO_MANY
    assert d.update("a", 1, ["ok", "bad name"]) == G.BAD_NAME
    assert d.update("a", 1, ["ok", "#x"]) == G.BAD_NAME
    assert d.update("a", 1, ["ok", 3]) == G.BAD_NAME
    assert d.update("a", 1, "rust") == G.BAD_NAME  # a string is not a list of names
    assert d.update("a", 1, [["x"]]) == G.BAD_NAME
    assert len(d) == 0 and d.version("a") is None and d.groups() == {}
    assert d.update("a", 1, [f"g{i}" for i in range(32)] + ["g0"]) == G.OK  # 32, duplicates count once
    assert d.update("b", 1, []) == G.OK
    assert d.update("c", 1, ["g1"]) == G.FULL and d.version("c") is None
    assert d.update("b", 2, ["g1"]) == G.OK  # a held node may still change its list
    assert d.members("g1") == ["a", "b"]


def test_directory_queries_and_index():
    d = Directory()
    d.update("b", 1, ["rust", "go"])
    d.update("a", 1, ["rust"])
    d.update("c", 1, [])
    assert d.members("rust") == ["a", "b"]
    assert d.members("go") == ["b"]
    assert d.members("nope") == []
    assert d.groups() == {"go": 1, "rust": 2}
    assert list(d.groups()) == ["go", "rust"]
    assert d.groups_of("b") == ("go", "rust") and d.groups_of("c") == () and d.groups_of("zz") == ()
    assert len(d) == 3
    d.update("b", 2, ["rust"])
    assert d.groups() == {"rust": 2}  # go lost its last member: not listed
    assert d._members == {"rust": {"a", "b"}}


def test_directory_changes_are_the_joins_and_leaves_of_a_new_list():
    d = Directory()
    assert d.changes("a", 1, ["rust", "go"]) == [("go", "a", "join"), ("rust", "a", "join")]
    d.update("a", 1, ["rust", "go"])
    assert d.changes("a", 2, ["rust", "zig", "c"]) == [("go", "a", "leave"), ("c", "a", "join"), ("zig", "a", "join")]
    assert d.changes("a", 2, ["rust", "go"]) == []
    assert d.changes("a", 1, ["x"]) == []       # stale: update would refuse it
    assert d.changes("a", 2, ["bad name"]) == []
    assert d.changes("a", 2, iter(["go"])) == [("rust", "a", "leave")]
    assert d.groups_of("a") == ("go", "rust")   # changes() changes nothing


def test_directory_remove_returns_the_leaves():
    d = Directory()
    d.update("a", 3, ["rust", "go"])
    d.update("b", 1, ["rust"])
    assert d.remove("a") == [("go", "a", "leave"), ("rust", "a", "leave")]
    assert d.remove("a") == []
    assert d.members("rust") == ["b"] and d.groups() == {"rust": 1}
    assert d.version("a") is None and len(d) == 1
    assert d.update("a", 1, ["go"]) == G.OK  # forgotten: any version is taken again


def test_directory_remove_frees_a_slot():
    d = Directory(max_nodes=1)
    assert d.update("a", 1, ["x"]) == G.OK
    assert d.update("b", 1, ["x"]) == G.FULL
    d.remove("a")
    assert d.update("b", 1, ["x"]) == G.OK and d.members("x") == ["b"]


# ---------------------------------------------------------------------------- shouts: sender


def test_shout_out_numbers_per_group_from_one():
    out = ShoutOut()
    assert out.last("rust") == 0 and out.heads() == {}
    assert [out.next("rust"), out.next("rust"), out.next("go"), out.next("rust")] == [1, 2, 1, 3]
    assert out.last("rust") == 3 and out.last("go") == 1
    assert out.heads() == {"go": 1, "rust": 3}
    assert list(out.heads()) == ["go", "rust"]


def test_shout_out_round_trip():
    out = ShoutOut()
    for g in ["b", "a", "b"]:
        out.next(g)
    data = json.loads(json.dumps(out.to_dict()))
    assert data == {"last": {"a": 1, "b": 2}}
    back = ShoutOut.from_dict(data)
    assert back.heads() == {"a": 1, "b": 2} and back.next("b") == 3


@pytest.mark.parametrize("data", [{}, {"last": []}, {"last": {"a": -1}}, {"last": {"a": "1"}}, {"last": {1: 1}}, [],
                                  {"last": {"a": True}}])
def test_shout_out_from_bad_dict(data):
    with pytest.raises(ValueError):
        ShoutOut.from_dict(data)


def test_constructors_refuse_negative_bounds():
    with pytest.raises(ValueError):
        Directory(max_nodes=-1)


# ---------------------------------------------------------------------------- fan-out


def adjacency(edges: list[tuple[str, str]]) -> dict[str, set[str]]:
    adj: dict[str, set[str]] = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    return adj


def tables(adj: dict[str, set[str]]) -> dict[str, Routes]:
    """A Routes table at every node of an undirected graph: every record lists the node's
    neighbours (both ends claim each edge), and each node's local view is its neighbours."""
    out = {}
    for me in adj:
        r = Routes(me)
        for node, nbrs in adj.items():
            if node != me:
                assert r.update(node, 1, nbrs) == "ok"
        r.set_local(adj[me])
        out[me] = r
    return out


def fanout(sender: str, dests: list[str], split) -> tuple[int, dict[str, list[str]]]:
    """Send one shout from ``sender``: each node splits the list it got with ``split(at,
    dests)``, hands one copy to each hop, and a hop on its list delivers it.  Returns the
    copies sent and, per member, the path it came by (sender exclusive).  Every member gets
    it exactly once."""
    sent, paths = 0, {}
    queue = [(sender, [], sorted(dests))]
    while queue:
        at, path, share = queue.pop()
        by_hop, unreachable = split(at, share)
        assert unreachable == []
        for hop, got in by_hop.items():
            sent += 1
            assert hop not in path and hop != sender  # never back
            if hop in got:
                assert hop not in paths
                paths[hop] = path + [hop]
            rest = [d for d in got if d != hop]
            if rest:
                queue.append((hop, path + [hop], rest))
    assert sorted(paths) == sorted(dests)
    return sent, paths


#   s - a - b - c
#       |   |
#       d   e - f        and s - g
HAND = [("s", "a"), ("a", "b"), ("b", "c"), ("a", "d"), ("b", "e"), ("e", "f"), ("s", "g")]


def test_split_groups_by_next_hop():
    t = tables(adjacency(HAND))
    by_hop, unreachable = G.split_by_next_hop(["f", "c", "g", "d", "zz", "c"], t["s"].next_hop)
    assert by_hop == {"a": ["c", "d", "f"], "g": ["g"]}
    assert list(by_hop) == ["a", "g"]
    assert unreachable == ["zz"]
    assert G.split_by_next_hop([], t["s"].next_hop) == ({}, [])
    assert G.split_by_next_hop(["s"], t["s"].next_hop) == ({}, ["s"])  # us: no next hop


def test_shared_prefixes_are_sent_once():
    t = tables(adjacency(HAND))
    dests = ["c", "d", "f", "g"]
    sent, paths = fanout("s", dests, lambda at, ds: G.split_by_next_hop(ds, t[at].next_hop))
    assert paths == {"c": ["a", "b", "c"], "d": ["a", "d"], "f": ["a", "b", "e", "f"], "g": ["g"]}
    # s-a and a-b carry one copy for three and two members: 7 edges, not the 10 hops of unicast
    assert sent == 7 == G.plan_cost(dests, paths)
    assert sum(len(p) for p in paths.values()) == 10


def test_plan_cost_counts_distinct_edges():
    assert G.plan_cost([], {}) == 0
    assert G.plan_cost(["x"], {}) == 0  # unreachable: costs nothing
    assert G.plan_cost(["b"], {"b": ["a", "b"]}) == 2
    assert G.plan_cost(["b", "c"], {"b": ["a", "b"], "c": ["a", "c"]}) == 3
    assert G.plan_cost(["b", "c", "b"], {"b": ["a", "b"], "c": ["a", "b", "c"]}) == 3
    # the same node reached over two different edges is two transmissions
    assert G.plan_cost(["c", "d"], {"c": ["a", "c"], "d": ["b", "c", "d"]}) == 5


#   s - a - x - m1        s's two neighbours a and b both start a shortest path to m1 (via x),
#   s - b - x             only b to m2: sharing b sends two copies fewer than using a and b.
#       b - m2
TIE = [("s", "a"), ("s", "b"), ("a", "x"), ("b", "x"), ("x", "m1"), ("b", "m2")]


def first_hops(adj: dict[str, set[str]], t: dict[str, Routes], at: str):
    """Every neighbour of ``at`` that starts a shortest path to a destination."""
    def candidates(dest: str) -> list[str]:
        h = t[at].hops(dest)
        if not h:
            return []
        return sorted(n for n in adj[at] if t[n].hops(dest) == h - 1)
    return candidates


def test_shared_split_prefers_a_hop_others_take():
    adj = adjacency(TIE)
    t = tables(adj)
    assert first_hops(adj, t, "s")("m1") == ["a", "b"]
    by_hop, unreachable = G.split_by_next_hop_shared(["m1", "m2", "zz"], first_hops(adj, t, "s"))
    assert by_hop == {"b": ["m1", "m2"]} and unreachable == ["zz"]
    sent, paths = fanout("s", ["m1", "m2"], lambda at, ds: G.split_by_next_hop_shared(ds, first_hops(adj, t, at)))
    assert paths == {"m1": ["b", "x", "m1"], "m2": ["b", "m2"]} and sent == 4 == G.plan_cost(["m1", "m2"], paths)
    tree = G.split_by_tree(["m1", "m2", "zz", "s"], t["s"].hops, adj.__getitem__)
    assert tree == ({"b": ["m1", "m2"]}, ["s", "zz"])


def test_shared_split_ties_go_to_the_smallest_id():
    by_hop, _ = G.split_by_next_hop_shared(["p", "q"], lambda d: ["h2", "h1"])
    assert by_hop == {"h1": ["p", "q"]}
    by_hop, _ = G.split_by_next_hop_shared(["p", "q", "r"], {"p": ["h1"], "q": ["h1", "h2"], "r": ["h2", "h3"]}.get)
    assert by_hop == {"h1": ["p", "q"], "h2": ["r"]}


def test_tree_split_shares_deeper_relays():
    # s - a - x - m1, s - b - y - m2, and x - m2 too: the first hop alone ties (a or b for
    # m2), but through x both members share s-a-x: 4 edges instead of 6.
    adj = adjacency([("s", "a"), ("s", "b"), ("a", "x"), ("b", "y"), ("x", "m1"), ("y", "m2"), ("x", "m2")])
    t = tables(adj)
    sent, paths = fanout("s", ["m1", "m2"], lambda at, ds: G.split_by_tree(ds, t[at].hops, adj.__getitem__))
    assert paths == {"m1": ["a", "x", "m1"], "m2": ["a", "x", "m2"]} and sent == 4


# Copies per shout to 20 of 200 nodes (degree 8), seeds 0-4, measured with this file's
# fanout: (next hop by rendezvous hash, shared first hop, tree), and the unicast hops.
MEASURED = {0: (37, 33, 36, 54), 1: (41, 36, 35, 55), 2: (42, 38, 35, 58), 3: (41, 35, 36, 57), 4: (33, 31, 31, 50)}


@pytest.mark.parametrize("seed", sorted(MEASURED))
def test_a_shout_to_20_of_200_costs_at_most_twice_the_members(seed):
    rnd = random.Random(seed)
    adj = random_overlay(200, 8, rnd)
    t = tables(adj)
    sender = rnd.choice(sorted(adj))
    members = rnd.sample([x for x in sorted(adj) if x != sender], 20)
    costs = []
    for split in (lambda at, ds: G.split_by_next_hop(ds, t[at].next_hop),
                  lambda at, ds: G.split_by_next_hop_shared(ds, first_hops(adj, t, at)),
                  lambda at, ds: G.split_by_tree(ds, t[at].hops, adj.__getitem__)):
        sent, paths = fanout(sender, members, split)
        assert sent == G.plan_cost(members, paths)
        assert all(len(paths[m]) == t[sender].hops(m) for m in members)  # shortest paths only
        costs.append(sent)
    unicast = sum(t[sender].hops(m) for m in members)
    assert (*costs, unicast) == MEASURED[seed]
    # The bound of issue 16 (<= 2 x members) holds for the tree split on every seed measured;
    # the plain next-hop split exceeds it on three of these five (41, 42, 41).
    assert costs[2] <= 2 * len(members)
