"""The membership table: who this node knows, how to reach them, and whether they are alive.

How this works
--------------
Each known peer is a `Peer` record keyed by node id, in one of three states:

* ``linking`` - we opened a link and sent JOIN, but have heard nothing back yet;
* ``alive``   - we have heard from it within the heartbeat timeout;
* ``lost``    - it went silent past the timeout; we keep its address and retry
  with exponential backoff (so a restarted peer is re-linked), and forget it
  after ``forget_after_s``.

A graceful LEAVE removes a peer at once.  Like hashicorp/memberlist the table
is pure bookkeeping: every method takes ``now`` (monotonic seconds) and
returns what changed; the node decides what to send about it.  Any traffic
from a peer counts as a sign of life, not only PONG.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .protocol import PeerAddress

LINKING = "linking"
ALIVE = "alive"
LOST = "lost"


@dataclass
class Peer:
    id: str
    name: str
    address: PeerAddress  # addr always resolved to a host we can dial
    state: str = LINKING
    since: float = 0.0  # when the current state began (monotonic)
    last_seen: float | None = None
    rtt_ms: float | None = None
    subscribed: bool = False  # their SUB has subscribed to our PUB
    retry_at: float | None = None
    retry_backoff_s: float = 0.0
    ever_alive: bool = False
    msgs_in: int = 0
    msgs_out: int = 0
    key: str | None = None  # CURVE public key (secure mode)
    batch: bool = False  # its JOIN said it takes several envelopes per ZeroMQ message
    boot: str | None = None  # its JOIN's run id: a new one means it restarted
    learned: float = 0.0  # when we first heard of it (monotonic)
    tokens: float = 0.0  # rate-limit bucket (below 0: in debt, see intake.py)
    tokens_at: float | None = None  # last refill; None: not started
    tags: set = field(default_factory=set)

    @property
    def router_endpoint(self) -> str:
        return self.address.router_endpoint()

    @property
    def pub_endpoint(self) -> str:
        return self.address.pub_endpoint()

    def describe(self, now: float) -> dict:
        """The view of this peer that `p2pctl peers --json` prints."""
        return {
            "id": self.id,
            "name": self.name,
            "address": f"{self.address.addr}:{self.address.port}",
            "router": self.router_endpoint,
            "pub": self.pub_endpoint,
            "state": self.state,
            "state_for_s": round(now - self.since, 3),
            "known_for_s": round(now - self.learned, 3),
            "last_seen_s": None if self.last_seen is None else round(now - self.last_seen, 3),
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 3),
            "subscribed": self.subscribed,
            "key": self.key,
            "msgs_in": self.msgs_in,
            "msgs_out": self.msgs_out,
        }


class AmbiguousPeer(LookupError):
    def __init__(self, query: str, candidates: list[Peer]):
        names = ", ".join(f"{p.name} ({p.id[:12]})" for p in candidates)
        super().__init__(f"{query!r} matches {len(candidates)} peers: {names}; use an id prefix")
        self.candidates = candidates


class UnknownPeer(LookupError):
    pass


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Membership:
    def __init__(self, self_id: str, retry_min_s: float = 1.0, retry_max_s: float = 30.0, forget_after_s: float = 3600.0):
        self.self_id = self_id
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.forget_after_s = forget_after_s
        self._peers: dict[str, Peer] = {}
        # XPUB subscriptions may arrive before the JOIN that introduces the peer.
        self._subscribed_ids: set[str] = set()

    # ---- lookups
    def get(self, peer_id: str) -> Peer | None:
        return self._peers.get(peer_id)

    def __contains__(self, peer_id: str) -> bool:
        return peer_id in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def all(self) -> list[Peer]:
        return sorted(self._peers.values(), key=lambda p: (p.name, p.id))

    def alive(self) -> list[Peer]:
        return [p for p in self._peers.values() if p.state == ALIVE]

    def find_by_endpoint(self, router_endpoint: str) -> Peer | None:
        for p in self._peers.values():
            if p.router_endpoint == router_endpoint:
                return p
        return None

    def resolve(self, query: str) -> Peer:
        """Find a peer by exact id, name, or id prefix (at least 4 characters): see targets.py.

        Names are labels and may repeat; a full id always wins, and a target that
        matches several peers (by name, by prefix, or one by name and another by
        prefix) is an error that lists the candidates rather than a guess.
        """
        from .targets import pick

        return pick(query, self._peers.values())

    # ---- changes
    def learn(self, peer_id: str, name: str, address: PeerAddress, now: float, key: str | None = None) -> tuple[Peer, bool]:
        """Record a peer (from JOIN, PEERS or connect). Returns (peer, is_new)."""
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = Peer(peer_id, name, address, LINKING, since=now, key=key, learned=now)
            peer.subscribed = peer_id in self._subscribed_ids
            self._peers[peer_id] = peer
            return peer, True
        peer.name = name
        peer.address = address
        if key is not None:
            peer.key = key
        return peer, False

    def heard_from(self, peer_id: str, now: float) -> bool:
        """Any frame from a peer: refresh it; True if it just became alive."""
        peer = self._peers.get(peer_id)
        if peer is None:
            return False
        peer.last_seen = now
        peer.msgs_in += 1
        if peer.state != ALIVE:
            peer.state = ALIVE
            peer.since = now
            peer.ever_alive = True
            peer.retry_at = None
            peer.retry_backoff_s = 0.0
            return True
        return False

    def remove(self, peer_id: str) -> Peer | None:
        self._subscribed_ids.discard(peer_id)
        return self._peers.pop(peer_id, None)

    def set_subscribed(self, peer_id: str, subscribed: bool) -> None:
        if subscribed:
            self._subscribed_ids.add(peer_id)
        else:
            self._subscribed_ids.discard(peer_id)
        peer = self._peers.get(peer_id)
        if peer is not None:
            peer.subscribed = subscribed

    def _schedule_retry(self, peer: Peer, now: float) -> None:
        peer.retry_backoff_s = min(self.retry_max_s, max(self.retry_min_s, peer.retry_backoff_s * 2))
        peer.retry_at = now + peer.retry_backoff_s

    def mark_lost(self, peer_id: str, now: float) -> Peer | None:
        peer = self._peers.get(peer_id)
        if peer is None or peer.state == LOST:
            return None
        peer.state = LOST
        peer.since = now
        peer.subscribed = False
        peer.retry_backoff_s = 0.0
        self._schedule_retry(peer, now)
        return peer

    def silent(self, now: float, timeout_s: float) -> list[Peer]:
        """Alive peers silent past the timeout, and links never answered."""
        out = []
        for p in self._peers.values():
            if p.state == ALIVE and p.last_seen is not None and now - p.last_seen > timeout_s:
                out.append(p)
            elif p.state == LINKING and now - p.since > timeout_s:
                out.append(p)
        return out

    def due_retries(self, now: float) -> list[Peer]:
        """Lost peers whose backoff has run out; each is rescheduled."""
        due = []
        for p in self._peers.values():
            if p.state == LOST and p.retry_at is not None and now >= p.retry_at:
                self._schedule_retry(p, now)
                due.append(p)
        return due

    def forgettable(self, now: float) -> list[Peer]:
        return [p for p in self._peers.values() if p.state == LOST and now - p.since > self.forget_after_s]
