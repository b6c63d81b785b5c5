"""The names this node shows for other nodes, and the peer a name or prefix means.

How this works
--------------
A node's name is the one bound to its key at JOIN: the membership table's, else the one
its signed record in the overlay's roster names (a node we hold no link to, roster.py),
else the address book's (every peer we were ever linked to, in the store), else what was
stored with a message.  Never a message's own ``sender_name``: a peer could claim any.
Where two nodes carry the same name (or one carries ours), linked or not, the label adds a
short id, so "bob" in the chat is always one node.  The index of name -> ids is built on
demand and kept until the table or the roster changes (`Membership.version`, the
``network_version`` given) or the address book gains a peer (`book_changed`).  Rumours
(peers heard of only in PEERS gossip, no record) neither name nor shadow anyone.
"""

from __future__ import annotations

from .membership import Membership
from .storage import Storage
from .targets import BookEntry, pick


class Names:
    def __init__(self, node_id: str, name: str, table: Membership, store: Storage, network=lambda: (),
                 network_version=lambda: 0):
        self.id = node_id
        # Every other node the overlay knows of, as (id, name) from its signed record (roster.py):
        # a node we hold no link to is still one to send to (routed, relay.py), and one that
        # names the messages it sent us.  ``network_version`` changes whenever that list may have.
        self._network = network
        self._network_version = network_version
        self._roster: dict[str, str] = {}
        self.name = name
        self._table = table
        self._store = store
        self._index: dict[str, set[str]] | None = None
        self._index_version: tuple = ()
        self._book: dict[str, str] = {}

    def book_changed(self) -> None:
        """The address book gained or renamed a peer: build the index again when next asked."""
        self._index = None

    def _names(self) -> dict[str, set[str]]:
        """Every name this node knows -> the ids of the nodes that carry it: the table, the
        roster, the address book, and this node."""
        version = (self._table.version, self._network_version())
        if self._index is None or self._index_version != version:
            index: dict[str, set[str]] = {self.name: {self.id}}
            self._book = {k["id"]: k["name"] for k in self._store.known_peers()}
            self._roster = dict(self._network())
            for pid, name in self._book.items():
                if pid not in self._roster:
                    index.setdefault(name, set()).add(pid)
            for pid, name in self._roster.items():
                index.setdefault(name, set()).add(pid)
            for p in self._table.members():
                index.setdefault(p.name, set()).add(p.id)
            self._index, self._index_version = index, version
        return self._index

    def sender(self, node_id: str, stored_name: str) -> tuple[str, str]:
        """(name, label) to show for a message from ``node_id``.

        The name is the one bound to its key at JOIN: the table's, else its signed record's,
        else the address book's, else ``stored_name`` (what was stored with the message: the
        JOIN-bound name at the time; rows from p2pd before December 2026 hold the sender's
        claim).  The label is the name, plus a short id when another node (or this one) has
        that name too, linked or not."""
        index = self._names()
        peer = self._table.get(node_id)
        if peer is not None and not peer.rumour:
            name = peer.name
        else:
            name = self._roster.get(node_id) or self._book.get(node_id, stored_name)
        ids = index.get(name)
        if ids is None or len(ids) > 1 or node_id not in ids:
            return name, f"{name} ({node_id[:12]})"
        return name, name

    def label_rows(self, rows: list[dict], peer_key: str = "peer_name") -> list[dict]:
        """History or outbox rows: the sender named as `sender` does (``sender_name``, ``sender_label``),
        and the other side's label (``peer_label``) next to its address-book name ``peer_key``."""
        for r in rows:
            if "sender_id" in r:
                if r["sender_id"] == self.id:
                    r["sender_label"] = r["sender_name"] = self.name
                else:
                    r["sender_name"], r["sender_label"] = self.sender(r["sender_id"], r["sender_name"])
            if r.get("peer_id"):
                r[peer_key], r["peer_label"] = self.sender(r["peer_id"], r.get(peer_key) or r["peer_id"][:12])
        return rows

    def resolve_target(self, query: str) -> tuple[str, str]:
        """A peer to send to: a current member, or one from the address book (offline or left).
        A full id always wins; a name or prefix that fits several nodes, across the table and the
        address book, is refused as ambiguous (targets.py)."""
        peer = self._table.get(query)
        if peer is not None and not peer.rumour:
            return peer.id, peer.name
        self._names()  # loads the address book (kept until it changes)
        members = self._table.members()
        linked = {p.id for p in members}
        # (a node our table holds only as a rumour is named by its own signed record, if we have it)
        network = {pid: name for pid, name in self._network() if pid not in linked}
        book = [BookEntry(pid, name) for pid, name in network.items()]
        book += [BookEntry(pid, name) for pid, name in self._book.items() if pid not in self._table and pid not in network]
        found = pick(query, members, book)
        return found.id, found.name
