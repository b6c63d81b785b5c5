"""Link-state routes over the overlay: the next hop towards any node, and how far it is (issue 15).

How this works
--------------
With bounded links (views.py: at most 8 active neighbours per node) most nodes are not
linked to each other, yet ``p2pctl send NAME`` must reach every node and ``p2pctl peers``
must say how many hops away each one is.  Each node's gossiped, signed record (records.py,
overlay.py) lists its current active neighbours with a version, so every node learns the
whole overlay graph (N nodes x <= 8 edges: 10,000 nodes is 80,000 ids) and computes its
routes itself, link-state style, as OSPF and IS-IS do.  This module is that table:

- ``update(node_id, version, neighbours)`` stores a node's list if its version is newer
  than the one held; older or equal ones are ignored (gossip delivers duplicates and
  reorders).  What a remote node can make us store is bounded: at most ``max_nodes``
  records (a new node beyond that is refused), at most ``max_degree`` neighbours each (a
  longer list is refused whole: an honest node never sends one, and a truncated one would
  be a guess).  Every refusal says why (`Verdict`), for the caller's drop counters.
- ``remove(node_id)`` forgets a node (it died or left, as membership decides);
  ``set_local(neighbours)`` is our own active view.
- An edge is used only if **both ends claim it**: B is a neighbour of A in the graph only
  when A's record lists B *and* B's record lists A.  A node cannot attract traffic (to drop
  or delay it) by claiming links to others it does not hold, and a node with no record yet
  is reachable through nobody.  The one exception is our own links: ``set_local`` is
  first-hand (we hold those links), so a neighbour is one hop away even before its record
  arrives, but its onward edges still need its record.
- Routes are a breadth-first search from us, recomputed **lazily**: every change sets a
  dirty flag and the first query after it runs one BFS, so a burst of a thousand gossiped
  updates costs one recompute.  (A new version of a record with the same neighbours, an
  incarnation refresh, does not even set the flag.)

For each reachable node the BFS keeps its distance and, as a bit mask over our own
neighbours (bit i = the i-th of them, sorted), the set of **every first hop that starts a
shortest path** to it: a node's mask is the union of its parents' masks (its neighbours one
level closer), one integer OR per edge.  ``next_hop(dest)`` picks one of them by a hash of
(dest, hop) (rendezvous hashing): deterministic, whatever the order of updates, yet the
destinations tied between two first hops are spread over both instead of all crowding onto
the neighbour with the smallest id.

``alternates(dest, k)``, for a retry when the first hop fails or does not acknowledge, gives
the other first hops: first the other shortest ones, then the **near-shortest** ones, those
that start a path one hop longer.  A second pass over the same levels computes them exactly
(``near``): a path of length d+1 to v (at distance d) ends with an edge from a neighbour u
of v at distance d (a shortest path to u: u's mask) or at distance d-1 (a near-shortest
path to u: u's ``near``).  Such a path is always simple (a walk of length d+1 that repeats
a node would shorten to one of length <= d-1 < d).  Both kinds are loop-free when
everyone's view agrees: a first hop h on a path of length <= d+1 is at most d from dest,
and a path from h back through us would be at least 1 + d, so h never routes back to us.

Measured (tests/test_routes.py, Python 3.11 on the 2-core build machine, random graphs
with every node of degree 8 or just under, best of three): one recompute (both passes)
costs about 2 ms at 1,000 nodes and 25-32 ms at 10,000 nodes (39,837 links, at most 6 hops
from n0), linear in the number of edges.  A recompute runs at most once per query after a
change, so routes are cheap next to the gossip that feeds them.  In the 1,000-node graph
the next hops from one node spread over its 8 neighbours from 104 to 147 destinations each.

Pure, sans-I/O: no clock, no randomness, no I/O.  Nothing here decides who is alive or
checks a signature: the caller feeds in records it has verified (records.py) and removes
nodes membership has declared dead or left, with the version (incarnation) rules of that
layer; a stale record arriving after ``remove`` would be taken again, so the caller only
feeds records it accepts as current.

The node's use (overlay.py): ``set_local`` from our active view, ``update`` from each
verified record's links and incarnation, ``remove`` when a node turns dead or left;
``next_hop`` behind relay.py's routed messages, ``hops`` in the ``peers`` reply.
"""

from __future__ import annotations

from collections.abc import Iterable
from .digest import sha256

# Verdicts of `Routes.update`.  OK: stored (or a newer version of the same list).
OK = "ok"
STALE = "stale"                          # not newer than the version we hold
SELF = "self"                            # our own record: our links come from set_local
BAD_VERSION = "bad_version"              # not a non-negative int
BAD_NEIGHBOURS = "bad_neighbours"        # not a collection of id strings
LISTS_ITSELF = "lists_itself"            # a node is not its own neighbour
TOO_MANY_NEIGHBOURS = "too_many_neighbours"
TABLE_FULL = "table_full"                # a new node while max_nodes are held
Verdict = str

DEFAULT_MAX_NODES = 20_000
DEFAULT_MAX_DEGREE = 8


def _rank(dest: str, hop: str) -> int:
    """The tie-break between first hops: a hash of the pair, the same on every run and
    machine (unlike ``hash``, salted per process), different per destination.  A real hash,
    not a CRC: a CRC is linear, so ids differing in one character would compare the same
    way for most destinations (measured: 150 of 200 ties to one hop of two)."""
    return int.from_bytes(sha256(f"{dest}\x00{hop}".encode()).digest()[:8], "big")


class Routes:
    """The overlay graph as the nodes' records describe it, and the routes from us over it."""

    def __init__(self, self_id: str, *, max_nodes: int = DEFAULT_MAX_NODES, max_degree: int = DEFAULT_MAX_DEGREE):
        if max_nodes < 0 or max_degree < 0:
            raise ValueError("max_nodes and max_degree must be >= 0")
        self.self_id = self_id
        self.max_nodes = max_nodes
        self.max_degree = max_degree
        # node -> the neighbours its record lists, sorted: a tuple of at most max_degree ids is a
        # seventh of a frozenset's memory, and as quick to search at that size
        self._nbrs: dict[str, tuple[str, ...]] = {}
        self._version: dict[str, int] = {}
        self._local: frozenset[str] = frozenset()
        # u -> its edges both ends claim (`_edges`), kept across recomputes: a record's change
        # drops only its node's and its old and new neighbours' entries (`_touch`).
        self._edge_cache: dict[str, list[str]] = {}
        self._dirty = False
        self.changes = 0  # bumped with every change of the graph: lets once-a-second checks skip
        self.recomputes = 0  # how many BFS ran: for tests and the daemon's counters
        # The last BFS: distance, and (bit masks over _hops) shortest and near-shortest first hops.
        self._hops: list[str] = []
        self._dist: dict[str, int] = {self_id: 0}
        self._mask: dict[str, int] = {}
        self._near: dict[str, int] = {}

    # -- inputs --------------------------------------------------------------------------

    def update(self, node_id: str, version: int, neighbours: Iterable[str]) -> Verdict:
        """Take ``node_id``'s neighbour list if ``version`` is newer than the one held.
        Returns `OK` or why it was refused; a refusal changes nothing."""
        if node_id == self.self_id:
            return SELF
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            return BAD_VERSION
        held = self._version.get(node_id)
        if held is not None and version <= held:
            return STALE
        if isinstance(neighbours, (str, bytes)):
            return BAD_NEIGHBOURS  # frozenset("abc") would be three one-letter ids
        try:
            nbrs = tuple(sorted(set(neighbours)))
        except TypeError:  # unhashable entries, or ones that do not compare with str
            return BAD_NEIGHBOURS
        if not all(isinstance(n, str) for n in nbrs):
            return BAD_NEIGHBOURS
        if node_id in nbrs:
            return LISTS_ITSELF
        if len(nbrs) > self.max_degree:
            return TOO_MANY_NEIGHBOURS
        if held is None and len(self._nbrs) >= self.max_nodes:
            return TABLE_FULL
        self._version[node_id] = version
        old = self._nbrs.get(node_id)
        if old != nbrs:
            self._nbrs[node_id] = nbrs
            self._touch(node_id, (*nbrs, *(old or ())))
            self._dirty = True
            self.changes += 1
        return OK

    def remove(self, node_id: str) -> bool:
        """Forget ``node_id`` (dead or left): its edges go with it.  True if it was held."""
        if node_id not in self._nbrs:
            return False
        self._touch(node_id, self._nbrs.pop(node_id))
        del self._version[node_id]
        self._dirty = True
        self.changes += 1
        return True

    def set_local(self, neighbours: Iterable[str]) -> None:
        """Our own active view, the first hops we can use (trusted: we hold these links)."""
        local = frozenset(neighbours) - {self.self_id}
        if local != self._local:
            self._touch(self.self_id, local ^ self._local)  # their edge to us depends on our view
            self._local = local
            self._dirty = True
            self.changes += 1

    def _touch(self, node_id: str, others: Iterable[str]) -> None:
        """``node_id``'s list changed: its cached edges and those of every node it listed before
        or lists now are stale (whether u-v is an edge depends on both lists, and a node that
        claims ``node_id`` without being listed by it had no such edge before or after)."""
        cache = self._edge_cache
        cache.pop(node_id, None)
        for v in others:
            cache.pop(v, None)

    # -- queries -------------------------------------------------------------------------

    def version(self, node_id: str) -> int | None:
        """The version of ``node_id``'s record we hold, for gossip to tell newer from old."""
        return self._version.get(node_id)

    def __len__(self) -> int:
        """How many records are held (not counting us)."""
        return len(self._nbrs)

    def hops(self, dest: str) -> int | None:
        """How many hops ``dest`` is from us (0: us, 1: a neighbour), None if unreachable."""
        self._refresh()
        return self._dist.get(dest)

    def next_hop(self, dest: str) -> str | None:
        """Our neighbour to hand a message for ``dest`` to: one that starts a shortest path
        (chosen by `_rank` among them).  None for us and for unreachable nodes."""
        self._refresh()
        mask = self._mask.get(dest, 0)
        if not mask:
            return None
        return min(self._bits(mask), key=lambda h: _rank(dest, h))

    def alternates(self, dest: str, k: int) -> list[str]:
        """Up to ``k`` other first hops towards ``dest``, best first: the other neighbours
        that start a shortest path, then those that start a path one hop longer (each group
        in `_rank` order).  For a retry when ``next_hop(dest)`` fails."""
        self._refresh()
        shortest = self._mask.get(dest, 0)
        if not shortest or k <= 0:
            return []
        best = self.next_hop(dest)
        out = sorted((h for h in self._bits(shortest) if h != best), key=lambda h: _rank(dest, h))
        out += sorted(self._bits(self._near.get(dest, 0) & ~shortest), key=lambda h: _rank(dest, h))
        return out[:k]

    def neighbours(self, node_id: str) -> list[str]:
        """``node_id``'s neighbours over edges both ends claim (for a shout's fan-out, groups.split_by_tree)."""
        return list(self._edges(node_id))

    def star(self, node_id: str) -> list[str] | None:
        """``node_id``'s neighbours if it is linked to every node we hold a record of (the network
        is no bigger than its active view: a full mesh from its side), else None.  Its broadcasts
        then go straight to everyone and nobody relays them (plumtree.py, the origin's own links)."""
        nbrs = self._edges(node_id)
        # the nodes besides it: those we hold records of (it among them, if it is not us), and us
        return nbrs if len(nbrs) >= len(self._nbrs) else None

    def distances(self) -> dict[str, int]:
        """Every reachable node (us included, at 0) and its distance: for ``p2pctl peers``."""
        self._refresh()
        return dict(self._dist)

    def reachable_avoiding(self, avoid: set[str]) -> set[str]:
        """The nodes a path reaches that relays through none of ``avoid`` (nodes membership
        suspects or has given up on); ``avoid`` themselves are not in it.  For failure
        detection: two nodes that died together still claim their link to each other, and
        that edge keeps them routable from us until their live neighbours' new records have
        spread; through no live node, they are cut off already.  One BFS, O(edges)."""
        seen = {self.self_id}
        frontier = [h for h in self._local if h not in avoid]
        seen.update(frontier)
        while frontier:
            nxt = []
            for u in frontier:
                for v in self._edges(u):
                    if v not in seen and v not in avoid:
                        seen.add(v)
                        nxt.append(v)
            frontier = nxt
        return seen

    # -- the BFS -------------------------------------------------------------------------

    def _bits(self, mask: int) -> list[str]:
        return [h for i, h in enumerate(self._hops) if mask >> i & 1]

    def _edges(self, u: str) -> Iterable[str]:
        """``u``'s neighbours over edges both ends claim (ours: our local view, as is)."""
        if u == self.self_id:
            return self._local
        cached = self._edge_cache.get(u)
        if cached is not None:
            return cached
        nbrs = self._nbrs.get(u, ())
        me = self.self_id
        out = []
        for v in nbrs:
            if v == me:
                if u in self._local:
                    out.append(v)
            elif u in self._nbrs.get(v, ()):
                out.append(v)
        self._edge_cache[u] = out  # read-only for callers
        return out

    def _refresh(self) -> None:
        if self._dirty:
            self._recompute()

    def _recompute(self) -> None:
        """One BFS from us, level by level.  Pass one: distance, and the mask of first hops
        over shortest paths (the union of the parents' masks).  Pass two, over the levels
        again: ``near``, the first hops over paths exactly one hop longer than shortest."""
        self.recomputes += 1
        self._dirty = False
        me = self.self_id
        hops = sorted(self._local)
        dist: dict[str, int] = {me: 0}
        mask: dict[str, int] = {}
        levels: list[list[str]] = [[me]]
        frontier = []
        for i, h in enumerate(hops):
            dist[h] = 1
            mask[h] = 1 << i
            frontier.append(h)
        adj: dict[str, Iterable[str]] = {me: self._local}
        depth = 1
        while frontier:
            levels.append(frontier)
            nxt = []
            for u in frontier:
                edges = adj[u] = self._edges(u)
                mu = mask[u]
                for v in edges:
                    dv = dist.get(v)
                    if dv is None:
                        dist[v] = depth + 1
                        mask[v] = mu
                        nxt.append(v)
                    elif dv == depth + 1:
                        mask[v] |= mu
            frontier = nxt
            depth += 1
        near: dict[str, int] = {me: 0}
        for d in range(1, len(levels)):
            for v in levels[d]:
                acc = 0
                for u in adj[v]:
                    du = dist[u]
                    if du == d:
                        acc |= mask[u]
                    elif du == d - 1:
                        acc |= near[u]
                near[v] = acc
        self._hops, self._dist, self._mask, self._near = hops, dist, mask, near
