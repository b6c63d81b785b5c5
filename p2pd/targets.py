"""Which node a target given by the user means (`p2pctl send PEER`, `ping`, `disconnect`, `history --peer`).

How this works
--------------
A target is a full node id, a name, or an id prefix of at least 4
characters.  Names are labels that each node picks for itself, so one node
can take a name that is also another node's id prefix (`--name 360030ca`);
it must not silently receive what was meant for that id.  The order:

1. A **full node id** always wins: the node with that id, in the membership
   table or the address book, whatever names other nodes took.
2. Otherwise the target is looked up as a **name** (in the table; in the
   address book only when no table peer has it) and as an **id prefix** (in
   both).  If all of that finds exactly one node, that is the target.  A name
   that several nodes carry, a prefix of several ids, or a name of one node
   that is an id prefix of another, is refused as **ambiguous**, naming every
   candidate: the user gives more of the id.
3. Nothing found: unknown.

Pure: candidates are anything with ``id`` and ``name`` (table `Peer`s,
address-book rows).  docs/PROTOCOL.md 9.2 describes the same order.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

MIN_PREFIX = 4


class AmbiguousPeer(LookupError):
    """A target that several nodes match; ``candidates`` lists them."""

    def __init__(self, query: str, candidates: list):
        names = ", ".join(f"{p.name} ({p.id[:12]})" for p in candidates)
        super().__init__(f"{query!r} matches {len(candidates)} peers: {names}; use an id prefix")
        self.candidates = candidates


class UnknownPeer(LookupError):
    """A target that no node matches."""


class BookEntry(NamedTuple):
    """A node in the address book only (not in the table)."""

    id: str
    name: str


class AmbiguousTarget(AmbiguousPeer):
    """A target that is one node's name and another's id prefix."""

    def __init__(self, query: str, named: list, prefixed: list):
        candidates = sorted({c.id: c for c in named + prefixed}.values(), key=lambda c: c.id)
        super().__init__(query, candidates)
        names = ", ".join(f"{c.name} ({c.id[:12]})" for c in named)
        ids = ", ".join(f"{c.name} ({c.id[:12]})" for c in prefixed)
        self.args = (f"{query!r} is ambiguous: it is the name of {names} and the start of the id of {ids}; "
                     f"give more of the id (a full id always wins)",)


def pick(query: str, table: Iterable, book: Iterable = ()):
    """The one candidate ``query`` means (see the module's docstring); raises `AmbiguousPeer`
    (or its `AmbiguousTarget`) or `UnknownPeer`."""
    table = list(table)
    for c in table:
        if c.id == query:
            return c
    book = list(book)
    for c in book:
        if c.id == query:
            return c
    named = [c for c in table if c.name == query] or [c for c in book if c.name == query]
    prefixed = [c for c in table + book if c.id.startswith(query)] if len(query) >= MIN_PREFIX else []
    found = {c.id: c for c in named + prefixed}
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise UnknownPeer(f"no peer named {query!r} and no peer id starting with it")
    other_prefixed = [c for c in prefixed if all(c.id != n.id for n in named)]
    if named and other_prefixed:
        raise AmbiguousTarget(query, named, other_prefixed)
    raise AmbiguousPeer(query, sorted(found.values(), key=lambda c: c.id))
