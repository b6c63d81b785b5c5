"""Control clients that asked to `watch`: each event goes to every one of them.

The set is the node's (a watch request adds to it, the transport reports a client that
went away); components that have something to tell (a peer joined, a message arrived, one
expired) return `emit`'s effects.  Nothing is built when nobody watches.  A client may watch
one group only (``watch --group``): it gets the events that name that group (a shout's
``message.group``, a member's join or leave ``group``) and no others.
"""

from __future__ import annotations

from . import protocol as P
from .actions import ToClient
from .outbound import Outbound


class Watchers:
    def __init__(self, outbound: Outbound):
        self.clients: set[bytes] = set()
        self._only: dict[bytes, str] = {}  # client -> the one group it watches
        self._outbound = outbound

    def __bool__(self) -> bool:
        return bool(self.clients)

    def __len__(self) -> int:
        return len(self.clients)

    def __contains__(self, client: bytes) -> bool:
        return client in self.clients

    def __iter__(self):
        return iter(self.clients)

    def add(self, client: bytes, group: str | None = None) -> None:
        self.clients.add(client)
        if group is not None:
            self._only[client] = group
        else:
            self._only.pop(client, None)

    def discard(self, client: bytes) -> None:
        self.clients.discard(client)
        self._only.pop(client, None)

    def emit(self, now: float, event: str, **fields) -> list:
        if not self.clients:
            return []
        payload = {"event": event, "time": P.utc_timestamp(self._outbound.epoch(now)), **fields}
        if not self._only:
            return [ToClient(c, payload) for c in self.clients]
        message = fields.get("message")
        group = fields.get("group", message.get("group") if isinstance(message, dict) else None)
        return [ToClient(c, payload) for c in self.clients if self._only.get(c, group) == group]
