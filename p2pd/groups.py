"""Groups: who is in which room, the numbering of shouts, and their fan-out (issue 16).

How this works
--------------
A group is a name that nodes join and leave.  Chat users expect rooms, so names are checked
in one place (`check_group_name`) and every refusal says how to fix it: the CLI and the chat
show that line as is.  The chat writes ``#room``; the ``#`` is decoration, so
`normalize_group` strips one, and a stored name never starts with it (two spellings of one
room would split it in two).  Case is kept and significant, as in node names.

**Membership travels with records.**  Each node lists the open groups it is in in its signed
record (records.py), with the record's version, so every node learns who is in which group
the way routes.py learns the graph: `Directory.update` keeps a node's list when its version
is newer than the one held (gossip duplicates and reorders) and `Directory.remove` forgets a
node that died or left.  What a remote node can make us store is bounded (``max_nodes``
lists of at most `MAX_GROUPS` valid names); a list that breaks a rule is refused whole,
since an honest node never sends one and a truncated one would be a guess.  An index
group -> members answers `Directory.members` in the size of the group, not of the network.
`Directory.changes` says which joins and leaves a new list implies, so that the node can
show them as events; `remove` returns the leaves of the node it forgets.

**Shouts are numbered per sender per group** (`ShoutOut`, 1, 2, 3 ...): shouts.py binds the
number into a private group's sealed shout.  Which member stored which shout, exactly once and
in order, is the direct messages' numbering's job (delivery.py): a shout is one direct message
per member.

**Fan-out follows routes.**  A shout to m members must cost about m transmissions, not m
times the path length, so it is not sent once per member: `split_by_next_hop` groups the
members by the neighbour that starts a route to each, one copy goes to each such neighbour
with its share of the list, and every relay splits its share again.  A copy crosses each
edge of the union of the routes once (`plan_cost` counts those edges).  Routes.next_hop
spreads destinations over tied first hops on purpose (for load), which is the opposite of
what a shout wants: where several neighbours start a shortest path, members should share
them.  `split_by_next_hop_shared` picks first hops by greedy set cover;
`split_by_tree` does it at every depth of the shortest-path graph, from the deepest members
up, so that relays deeper down are shared too.  Measured (tests/test_groups.py's fan-out, a
copy per edge, 50 random overlays of 200 nodes of degree 8, a random group of 20 and a
random sender each): next hop 33-46 copies (median 41, over 2 x 20 in 27 of 50), shared
first hop 31-43 (median 36.5, over in 3), tree 31-41 (median 36.5, over in 2), against
49-60 for one unicast per member.  So the tree split is the one to use; 2 x members is a
typical bound, not a guarantee.

Pure, sans-I/O: no clock, no randomness, no I/O.  Nothing here checks a signature or decides
who is alive: the caller feeds lists from records it verified and removes nodes membership
declared dead or left.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping

MAX_GROUP_NAME = 64          # characters in a group name
MAX_GROUPS = 32              # groups one node may be in (and advertise in its record)
DEFAULT_MAX_NODES = 10_000   # nodes whose group lists a Directory holds
EXAMPLE = "rust-dev"         # what an error suggests when the name gives nothing to build on

# Verdicts of `Directory.update`.
OK = "ok"
STALE = "stale"              # not newer than the version held
BAD_VERSION = "bad_version"  # not a non-negative int
BAD_NAME = "bad_name"        # a name `check_group_name` refuses, or not a collection of names
TOO_MANY = "too_many"        # more than MAX_GROUPS groups
FULL = "full"                # a new node while the bound is held
_NO_GROUPS: frozenset[str] = frozenset()
JOIN = "join"
LEAVE = "leave"

_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})

Change = tuple[str, str, str]  # (group, node_id, JOIN or LEAVE)


# ---------------------------------------------------------------------------------- names


def normalize_group(name: str) -> str:
    """The name as typed, less one leading ``#``: the chat writes rooms as ``#room``, and
    ``p2pctl join '#room'`` should mean the same room.  Only one is stripped, so a name that
    still starts with ``#`` is refused with a hint rather than silently changed again."""
    if isinstance(name, str) and name.startswith("#"):
        return name[1:]
    return name


def _bad_char(c: str) -> bool:
    """Whitespace would split the name on a command line and in the chat; control, format and
    separator characters can rewrite a terminal or hide one name behind another."""
    return c.isspace() or unicodedata.category(c) in _FORBIDDEN_CATEGORIES


def _suggest(name: str) -> str:
    """A valid name close to ``name`` for the error to offer: spaces become ``-``, control
    characters go, leading ``#`` go, cut to length; `EXAMPLE` if nothing usable is left."""
    out: list[str] = []
    for c in name:
        if c.isspace():
            if out and out[-1] != "-":
                out.append("-")
        elif not _bad_char(c):
            out.append(c)
    fixed = "".join(out).lstrip("#~").strip("-")[:MAX_GROUP_NAME]
    return fixed if fixed and check_group_name(fixed) is None else EXAMPLE


def check_group_name(name: str) -> str | None:
    """None if ``name`` is a valid group name, else one line that says what is wrong and
    offers a valid name to use instead (shown as is by the CLI and the chat)."""
    if not isinstance(name, str):
        return f"a group name is text, 1-{MAX_GROUP_NAME} characters: try '{EXAMPLE}'"
    if not name:
        return f"group names are 1-{MAX_GROUP_NAME} characters without spaces or control characters: try '{EXAMPLE}'"
    if any(_bad_char(c) for c in name):
        return f"group names have no spaces or control characters: try '{_suggest(name)}'"
    if len(name) > MAX_GROUP_NAME:
        return f"group names are at most {MAX_GROUP_NAME} characters, this one has {len(name)}: try '{_suggest(name)}'"
    if name.startswith("#"):
        return f"group names do not start with '#' (the chat adds it when it shows them): try '{_suggest(name)}'"
    if name.startswith("~"):  # a private group's id does (records.py), and the two must never be confused
        return f"group names do not start with '~': try '{_suggest(name)}'"
    return None


# ------------------------------------------------------------------------------ directory


def valid_group_key(key: object) -> bool:
    """What a `Directory` indexes groups by: an open group's name, or ``~`` and a private group's
    id (32 lowercase hex, groupkeys.group_id), which no name can be (`check_group_name`)."""
    if not isinstance(key, str):
        return False
    if key.startswith("~"):
        return len(key) == 33 and all(c in "0123456789abcdef" for c in key[1:])
    return check_group_name(key) is None


def _valid_version(version: object) -> bool:
    return isinstance(version, int) and not isinstance(version, bool) and version >= 0


class Directory:
    """Every node's advertised groups (from its signed record), indexed both ways: open groups
    by name, private ones (whose key we hold, and whose tag in the record proved membership)
    as ``~<group id>``."""

    def __init__(self, *, max_nodes: int = DEFAULT_MAX_NODES):
        if max_nodes < 0:
            raise ValueError("max_nodes must be >= 0")
        self.max_nodes = max_nodes
        self._groups_of: dict[str, frozenset[str]] = {}  # node -> the groups its record lists
        self._version: dict[str, int] = {}
        self._members: dict[str, set[str]] = {}          # group -> nodes (never an empty set)

    # -- inputs --------------------------------------------------------------------------

    def _check(self, node_id: str, version: int, groups: Iterable[str]) -> tuple[str, frozenset[str]]:
        """(verdict, the list as a set): the rules of `update`, without changing anything."""
        if not _valid_version(version):
            return BAD_VERSION, frozenset()
        held = self._version.get(node_id)
        if held is not None and version <= held:
            return STALE, frozenset()
        if isinstance(groups, (str, bytes)):
            return BAD_NAME, frozenset()  # frozenset("abc") would be three one-letter groups
        try:
            wanted = frozenset(groups)
        except TypeError:  # not iterable, or unhashable entries: not names
            return BAD_NAME, frozenset()
        if len(wanted) > MAX_GROUPS:
            return TOO_MANY, frozenset()
        if any(not valid_group_key(g) for g in wanted):
            return BAD_NAME, frozenset()
        if held is None and len(self._version) >= self.max_nodes:
            return FULL, frozenset()
        return OK, wanted

    def update(self, node_id: str, version: int, groups: Iterable[str]) -> str:
        """Take ``node_id``'s group list if ``version`` is newer than the one held.  Returns
        `OK` or why it was refused (`STALE`, `BAD_VERSION`, `BAD_NAME`, `TOO_MANY`, `FULL`);
        a refusal changes nothing.  Duplicates in the list count once."""
        verdict, wanted = self._check(node_id, version, groups)
        if verdict != OK:
            return verdict
        old = self._groups_of.get(node_id, frozenset())
        for g in old - wanted:
            self._drop_member(g, node_id)
        for g in wanted - old:
            self._members.setdefault(g, set()).add(node_id)
        self._groups_of[node_id] = wanted or _NO_GROUPS  # one shared empty set: most nodes are in none
        self._version[node_id] = version
        return OK

    def changes(self, node_id: str, version: int, groups: Iterable[str]) -> list[Change]:
        """The joins and leaves that `update` with the same arguments would make: leaves
        first, then joins, each sorted by group.  Empty if `update` would refuse the list.
        Call it before `update` to emit member events."""
        if not isinstance(groups, (str, bytes)) and isinstance(groups, Iterable):
            groups = list(groups)  # an iterator is read once, here
        verdict, wanted = self._check(node_id, version, groups)
        if verdict != OK:
            return []
        old = self._groups_of.get(node_id, frozenset())
        return ([(g, node_id, LEAVE) for g in sorted(old - wanted)]
                + [(g, node_id, JOIN) for g in sorted(wanted - old)])

    def remove(self, node_id: str) -> list[Change]:
        """Forget ``node_id`` (dead or left): it leaves every group it was in.  Returns those
        leaves, sorted by group (empty if the node was not held)."""
        old = self._groups_of.pop(node_id, None)
        self._version.pop(node_id, None)
        if old is None:
            return []
        for g in old:
            self._drop_member(g, node_id)
        return [(g, node_id, LEAVE) for g in sorted(old)]

    def _drop_member(self, group: str, node_id: str) -> None:
        members = self._members.get(group)
        if members is None:
            return
        members.discard(node_id)
        if not members:
            del self._members[group]  # groups() lists only groups with members

    # -- queries -------------------------------------------------------------------------

    def version(self, node_id: str) -> int | None:
        """The version of ``node_id``'s list we hold, for gossip to tell newer from old."""
        return self._version.get(node_id)

    def nodes(self) -> list[str]:
        """Every node whose list is held."""
        return list(self._version)

    def __len__(self) -> int:
        """How many nodes' lists are held (an empty list counts: its version does)."""
        return len(self._version)

    def members(self, group: str) -> list[str]:
        """The nodes in ``group``, sorted by id: O(members), from the index."""
        return sorted(self._members.get(group, ()))

    def groups(self) -> dict[str, int]:
        """Every group with at least one member -> how many, sorted by name."""
        return {g: len(self._members[g]) for g in sorted(self._members)}

    def groups_of(self, node_id: str) -> tuple[str, ...]:
        """The groups ``node_id``'s record lists, sorted (empty if none or not held)."""
        return tuple(sorted(self._groups_of.get(node_id, ())))


# ------------------------------------------------------------------------- shout numbering


def _valid_seq(seq: object) -> bool:
    return isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0


class ShoutOut:
    """Our own shouts' numbers, per group.  A group's count is never forgotten, not even
    when we leave it: numbering again from 1 in the same store epoch would make every
    member drop the new shouts as duplicates of the old ones."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def next(self, group: str) -> int:
        """Number a new shout in ``group``: 1 for the first, then one more each time."""
        n = self._last.get(group, 0) + 1
        self._last[group] = n
        return n

    def last(self, group: str) -> int:
        """The number of our latest shout in ``group``, 0 if none."""
        return self._last.get(group, 0)

    def heads(self) -> dict[str, int]:
        """Every group we shouted in -> our latest number, sorted by group."""
        return {g: self._last[g] for g in sorted(self._last)}

    def to_dict(self) -> dict:
        return {"last": self.heads()}

    @classmethod
    def from_dict(cls, data: Mapping) -> ShoutOut:
        """The inverse of `to_dict`; ValueError if ``data`` is not what it wrote."""
        last = data.get("last") if isinstance(data, Mapping) else None
        if not isinstance(last, Mapping):
            raise ValueError("ShoutOut: 'last' must be a mapping of group -> number")
        out = cls()
        for group, n in last.items():
            if not isinstance(group, str) or not _valid_seq(n):
                raise ValueError(f"ShoutOut: bad entry {group!r}: {n!r}")
            out._last[group] = n
        return out


# ---------------------------------------------------------------------------------- fan-out


def split_by_next_hop(dests: Iterable[str], next_hop: Callable[[str], str | None]
                      ) -> tuple[dict[str, list[str]], list[str]]:
    """Group ``dests`` by the neighbour to hand each to (``next_hop``, e.g. `Routes.next_hop`):
    ({hop: sorted dests}, sorted unreachable ones), hops in sorted order.  One copy of the
    shout goes to each hop with its list; the hop delivers it if it is on the list and splits
    the rest again, so a copy crosses each edge of the union of the routes once.  Duplicates
    in ``dests`` count once; leave ourselves out (a route to us has no next hop)."""
    by_hop: dict[str, list[str]] = {}
    unreachable: list[str] = []
    for d in sorted(set(dests)):
        hop = next_hop(d)
        if hop is None:
            unreachable.append(d)
        else:
            by_hop.setdefault(hop, []).append(d)
    return {h: by_hop[h] for h in sorted(by_hop)}, unreachable


def split_by_next_hop_shared(dests: Iterable[str], candidates: Callable[[str], list[str]]
                             ) -> tuple[dict[str, list[str]], list[str]]:
    """As `split_by_next_hop`, where ``candidates(dest)`` lists every neighbour that starts a
    shortest path to ``dest`` (empty: unreachable).  Members whose routes can share a first
    hop should share it, since each distinct hop is one more copy and the copies meet again
    further on less often.  Greedy set cover: the hop that most unassigned members can take
    takes them all (ties: the smallest hop id), until none is left."""
    want: dict[str, set[str]] = {}
    unreachable: list[str] = []
    for d in sorted(set(dests)):
        hops = set(candidates(d))
        if hops:
            want[d] = hops
        else:
            unreachable.append(d)
    by_hop = dict(_greedy_cover(want))
    return {h: by_hop[h] for h in sorted(by_hop)}, unreachable


def _greedy_cover(want: dict[str, list[str]]) -> Iterator[tuple[str, list[str]]]:
    """Greedy set cover, emptying ``want`` (item -> the candidates that would serve it): again
    and again the candidate most remaining items share (ties: the smallest id), with the items
    it takes (sorted).  Deterministic whatever the dict order."""
    while want:
        load: dict[str, int] = {}
        for cands in want.values():
            for c in cands:
                load[c] = load.get(c, 0) + 1
        best = min(load, key=lambda c: (-load[c], c))
        taken = sorted(d for d, cands in want.items() if best in cands)
        for d in taken:
            del want[d]
        yield best, taken


def plan_cost(dests: Iterable[str], paths: Mapping[str, list[str]]) -> int:
    """The payload transmissions of a fan-out along ``paths``: for each destination, its path
    from the sender (exclusive) to it (inclusive); the cost is the number of distinct edges in
    their union, since a relay forwards one copy per neighbour however many members are behind
    it.  Destinations without a path (unreachable) cost nothing."""
    edges: set[tuple[str | None, str]] = set()
    for d in set(dests):
        prev: str | None = None  # None stands for the sender
        for node in paths.get(d, ()):
            edges.add((prev, node))
            prev = node
    return len(edges)


def split_by_tree(dests: Iterable[str], hops: Callable[[str], int | None],
                  neighbours: Callable[[str], Iterable[str]]) -> tuple[dict[str, list[str]], list[str]]:
    """As `split_by_next_hop`, choosing first hops so that the routes share as much as they
    can at every depth, not at the first hop only.  ``hops(node)`` is its distance from us
    (`Routes.hops`: 0 for us, None if unreachable) and ``neighbours(node)`` its neighbours in
    the graph.  The copies cross one edge per node of the tree, so the tree should have few
    nodes: from the deepest members up, each level's nodes are given parents one hop closer,
    members of that level first (they are in the tree anyway), then by greedy set cover (the
    candidate most of them can take, ties by id).  The first hop of a member is its ancestor
    one hop from us.  Shortest paths only, so relays never send a copy back."""
    level: dict[int, set[str]] = {}
    unreachable: list[str] = []
    for d in sorted(set(dests)):
        h = hops(d)
        if h is None or h <= 0:
            unreachable.append(d)  # unreachable, or us
        else:
            level.setdefault(h, set()).add(d)
    parent: dict[str, str] = {}
    for k in range(max(level, default=0), 1, -1):
        above = level.setdefault(k - 1, set())
        orphans = _adopt(sorted(level.get(k, ())), k - 1, above, hops, neighbours, parent)
        for v in orphans:  # views disagree (no neighbour one hop closer): treat as unreachable
            level[k].discard(v)
    by_hop: dict[str, list[str]] = {}
    for d in sorted(set(dests) - set(unreachable)):
        node = d
        while node in parent:
            node = parent[node]
        if hops(node) == 1:
            by_hop.setdefault(node, []).append(d)
        else:
            unreachable.append(d)
    return {h: by_hop[h] for h in sorted(by_hop)}, sorted(unreachable)


def _adopt(nodes: list[str], k: int, above: set[str], hops: Callable[[str], int | None],
           neighbours: Callable[[str], Iterable[str]], parent: dict[str, str]) -> list[str]:
    """Give each of ``nodes`` a parent at distance ``k`` (added to ``above``): one already in
    ``above`` if it can, else by greedy set cover.  Returns the nodes that have no candidate."""
    want: dict[str, set[str]] = {}
    orphans = []
    for v in nodes:
        cands = {p for p in neighbours(v) if hops(p) == k}
        free = sorted(cands & above)
        if free:
            parent[v] = free[0]
        elif cands:
            want[v] = cands
        else:
            orphans.append(v)
    for best, taken in _greedy_cover(want):
        above.add(best)
        for v in taken:
            parent[v] = best
    return orphans
