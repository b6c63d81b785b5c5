"""Our outgoing links: which DEALER is open to which ROUTER endpoint, since when.

A link's key is the peer's id, or ``pending:<endpoint>:<time>`` while a dial by address
waits to learn whose it is (the dialer re-keys it then).  This table is the node's idea of
what the transport has open: every change returns the `OpenLink`/`CloseLink`/`RekeyLink`
effect that makes the transport agree.  Subscriptions to a peer's PUB are built here too,
since they follow the same keys and the same CURVE rule (the server key only when secure).
"""

from __future__ import annotations

from .actions import CloseLink, OpenLink, RekeyLink, Subscribe, Unsubscribe
from .membership import Peer


class Links:
    def __init__(self, secure: bool):
        self.secure = secure
        self.endpoints: dict[str, str] = {}  # link key -> router endpoint
        self.since: dict[str, float] = {}  # link key -> when we opened it

    # A read-only mapping of link key -> endpoint, as the node's `links` always was.
    def __contains__(self, key: str) -> bool:
        return key in self.endpoints

    def __getitem__(self, key: str) -> str:
        return self.endpoints[key]

    def __iter__(self):
        return iter(self.endpoints)

    def __len__(self) -> int:
        return len(self.endpoints)

    def __eq__(self, other) -> bool:
        return self.endpoints == (other.endpoints if isinstance(other, Links) else other)

    __hash__ = None

    def get(self, key: str, default=None):
        return self.endpoints.get(key, default)

    def items(self):
        return self.endpoints.items()

    def server_key(self, peer: Peer) -> str | None:
        return peer.key if self.secure else None

    def open(self, now: float, key: str, endpoint: str, server_key: str | None, suffix: bool = False,
             report_refused: bool = False) -> OpenLink:
        self.endpoints[key] = endpoint
        self.since[key] = now
        return OpenLink(key, endpoint, server_key, suffix, report_refused)

    def open_to(self, now: float, peer: Peer) -> OpenLink:
        return self.open(now, peer.id, peer.router_endpoint, self.server_key(peer), peer.rid_suffix)

    def ensure(self, now: float, peer: Peer) -> list:
        """A link to the peer's current endpoint: none if it is open already, else (re)open it."""
        current = self.endpoints.get(peer.id)
        if current == peer.router_endpoint:
            return []
        acts = [CloseLink(peer.id)] if current is not None else []
        return acts + [self.open_to(now, peer)]

    def close(self, key: str) -> list:
        self.since.pop(key, None)
        return [CloseLink(key)] if self.endpoints.pop(key, None) is not None else []

    def rekey(self, now: float, old: str, new: str) -> list:
        """A dial by address turned out to reach peer ``new``: its link is that peer's from now on."""
        self.endpoints[new] = self.endpoints.pop(old)
        self.since[new] = self.since.pop(old, now)
        return [RekeyLink(old, new)]

    def age(self, now: float, key: str) -> float:
        """How long ago we opened link ``key`` (forever, if we have none)."""
        return now - self.since.get(key, float("-inf"))

    def subscribe(self, peer: Peer) -> Subscribe:
        return Subscribe(peer.pub_endpoint, peer.id, self.server_key(peer))

    def unsubscribe(self, peer: Peer, endpoint: str | None = None) -> Unsubscribe:
        return Unsubscribe(endpoint or peer.pub_endpoint, peer.id)
