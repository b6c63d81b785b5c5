"""Control clients that asked to `watch`: each event goes to every one of them.

The set is the node's (a watch request adds to it, the transport reports a client that
went away); components that have something to tell (a peer joined, a message arrived, one
expired) return `emit`'s effects.  Nothing is built when nobody watches.
"""

from __future__ import annotations

from . import protocol as P
from .actions import ToClient
from .outbound import Outbound


class Watchers:
    def __init__(self, outbound: Outbound):
        self.clients: set[bytes] = set()
        self._outbound = outbound

    def __bool__(self) -> bool:
        return bool(self.clients)

    def __len__(self) -> int:
        return len(self.clients)

    def __contains__(self, client: bytes) -> bool:
        return client in self.clients

    def __iter__(self):
        return iter(self.clients)

    def add(self, client: bytes) -> None:
        self.clients.add(client)

    def discard(self, client: bytes) -> None:
        self.clients.discard(client)

    def emit(self, now: float, event: str, **fields) -> list:
        if not self.clients:
            return []
        payload = {"event": event, "time": P.utc_timestamp(self._outbound.epoch(now)), **fields}
        return [ToClient(c, payload) for c in self.clients]
