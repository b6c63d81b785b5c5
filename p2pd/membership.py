"""The membership table: who this node knows, how to reach them, and whether they are alive.

How this works
--------------
Each known peer is a `Peer` record keyed by node id, in one of three states:

* ``linking`` - we opened a link and sent JOIN, but have heard nothing back yet;
* ``alive``   - we have heard from it within the heartbeat timeout;
* ``lost``    - it went silent past the timeout; we keep its address and retry
  with exponential backoff (so a restarted peer is re-linked), and forget it
  after ``forget_after_s``.

A peer first heard of in another node's PEERS is a **rumour** until it has
spoken to us itself (answered our dial with its JOIN, or sent any frame that
its key vouches for): gossip is a claim by a third party.  Rumours do not
count against ``max_peers``, never resolve a name, are capped per introducer
(`RUMOURS_PER_INTRODUCER`) and in all (`MAX_RUMOURS`), and one that does not
answer within the heartbeat timeout is forgotten (not kept as ``lost``) and
not taken from gossip again for `RUMOUR_COOLDOWN_S`.  So one hostile PEERS
frame can neither fill the table nor shadow a real peer's name.

A graceful LEAVE removes a peer at once.  Like hashicorp/memberlist the table
is pure bookkeeping: every method takes ``now`` (monotonic seconds) and
returns what changed; the node decides what to send about it.  Any traffic
from a peer counts as a sign of life, not only PONG.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter

from .protocol import PeerAddress, host_port
from .targets import AmbiguousPeer, UnknownPeer, pick  # noqa: F401 (AmbiguousPeer, UnknownPeer: raised by resolve)

RUMOURS_PER_INTRODUCER = 64  # rumours from one peer's gossip waiting to answer, at most
MAX_RUMOURS = 256  # rumours waiting to answer, at most, from all introducers together
RUMOUR_COOLDOWN_S = 30.0  # a rumour that never answered is not taken from gossip again for this long
RUMOURS_COOLING_MAX = 4096  # bounded memory for those
SUBSCRIPTIONS_MAX = 4096  # node ids whose SUB we track on our XPUB, at most
SUBSCRIPTIONS_PER_ID = 64  # attached connections counted per node id, at most

_BY_NAME = attrgetter("name", "id")  # the order of Membership.all: (name, id), as a C-level key


class PeerState(StrEnum):
    """Where a peer is in its life with us.  A `StrEnum`: a state *is* its string, as `peers`
    shows it and tests and renderers compare it ("alive" == PeerState.ALIVE)."""

    LINKING = "linking"  # dialled (or it dialled us), no frame from it yet
    ALIVE = "alive"  # heard from within heartbeat_timeout_s
    LOST = "lost"  # silent past the timeout: retried with backoff until it answers or is forgotten


LINKING, ALIVE, LOST = PeerState.LINKING, PeerState.ALIVE, PeerState.LOST


@dataclass(slots=True)
class Peer:
    id: str
    name: str
    address: PeerAddress  # addr always resolved to a host we can dial
    state: PeerState = LINKING
    since: float = 0.0  # when the current state began (monotonic)
    last_seen: float | None = None
    rtt_ms: float | None = None
    subscribed: bool = False  # their SUB is attached to our PUB (whatever the peer's state)
    retry_at: float | None = None
    retry_backoff_s: float = 0.0
    msgs_in: int = 0  # direct messages from it delivered here (as info's messages_in, for this peer)
    msgs_out: int = 0  # direct messages to it stored for sending (as info's messages_out, for this peer)
    frames_in: int = 0  # envelopes of every type received from it (as info's frames_in)
    frames_out: int = 0  # envelopes of every type sent to it (as info's frames_out)
    key: str | None = None  # CURVE public key (secure mode)
    batch: bool = False  # its JOIN said it takes several envelopes per ZeroMQ message
    rid_suffix: bool = False  # its JOIN said it takes routing ids "<id>/<suffix>": our links to it use one
    digest: bool = False  # its JOIN said it takes a push-pull by digest (FACTS "have"; overlay.py)
    boot: str | None = None  # its JOIN's run id: a new one means it restarted
    learned: float = 0.0  # when we first heard of it (monotonic)
    rumour: bool = False  # heard of only in gossip: it has not spoken to us itself yet
    introducer: str | None = None  # for a rumour: the peer whose PEERS told us of it

    @property
    def leaf(self) -> bool:
        """A simple JSON peer (its JOIN did not say ``digest``, which every p2pd node says): it keeps
        no roster and speaks no VIEW, so it is linked outside the overlay's views, as a leaf, and
        gets gossip's PEERS rounds (the overlay's digests are how p2pd nodes catch up)."""
        return not self.digest

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
            "address": host_port(self.address.addr, self.address.port),
            "router": self.router_endpoint,
            "pub": self.pub_endpoint,
            "state": self.state,
            "state_for_s": round(now - self.since, 3),
            "known_for_s": round(now - self.learned, 3),
            "last_seen_s": None if self.last_seen is None else round(now - self.last_seen, 3),
            # Only while linked: a lost peer's last RTT says nothing about it now.
            "rtt_ms": None if self.rtt_ms is None or self.state != ALIVE else round(self.rtt_ms, 3),
            "subscribed": self.subscribed,
            "key": self.key,
            "msgs_in": self.msgs_in,
            "msgs_out": self.msgs_out,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
        }


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_key(host: str) -> str:
    """One spelling of a host for comparing addresses, without resolving anything (pure): an IP
    literal in its canonical form (``0:0::1`` and ``[::1]`` are ``::1``; an IPv4-mapped IPv6
    address is its IPv4 one), a host name in lower case without a trailing dot.  Names that
    resolve to an address are compared by the addresses the client resolved (`find_by_address`)."""
    h = host.strip("[]")
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return h.lower().rstrip(".")
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed


class Membership:
    def __init__(self, self_id: str, retry_min_s: float = 1.0, retry_max_s: float = 30.0, forget_after_s: float = 3600.0):
        self.self_id = self_id
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.forget_after_s = forget_after_s
        self._peers: dict[str, Peer] = {}
        # Node id -> how many SUBs naming it are attached to our XPUB (one per connection: a
        # reconnecting SUB may attach anew before its old connection is seen to end).  Kept
        # apart from the peers: a subscription may come before the JOIN that introduces the
        # peer, and stays in place while the peer is lost, removed and learned again.
        self._subscriptions: dict[str, int] = {}
        self._cooling: OrderedDict[str, float] = OrderedDict()  # rumour that never answered -> until when we ignore it
        # Grows whenever the set of members or a member's name may have changed: whoever keeps
        # something derived from them (the names index, names.py) knows when to build it again.
        self.version = 0
        self._book_entries: dict[str, tuple] = {}  # peer id -> (address, name, key, rid_suffix, its entry): see `book`
        self._quiet_until: dict[float, float] = {}  # timeout -> no peer is silent before then (see `silent`)
        self._awake_since = float("-inf")  # when we last resumed from a stall (`resumed`)
        self.get = self._peers.get  # peer id -> Peer or None: the hottest lookup, bound to the dict itself

    # ---- lookups
    def __contains__(self, peer_id: str) -> bool:
        return peer_id in self._peers

    def ids(self):
        """The ids of every peer (rumours included): a live view, for ``in`` at C speed in a loop."""
        return self._peers.keys()

    def __len__(self) -> int:
        return len(self._peers)

    def all(self) -> list[Peer]:
        """Every peer, rumours included, by name."""
        return sorted(self._peers.values(), key=_BY_NAME)

    def members(self) -> list[Peer]:
        """The peers that have spoken to us themselves (no rumours), by name."""
        return [p for p in self.all() if not p.rumour]

    def member_count(self) -> int:
        return sum(1 for p in self._peers.values() if not p.rumour)

    def rumour_count(self, introducer: str | None = None) -> int:
        """Rumours waiting to answer: all of them, or those from one introducer."""
        return sum(1 for p in self._peers.values() if p.rumour and (introducer is None or p.introducer == introducer))

    def cooling(self, peer_id: str, now: float) -> bool:
        """Did this id, as a rumour, fail to answer lately?  Then gossip about it is ignored for now."""
        until = self._cooling.get(peer_id)
        if until is None:
            return False
        if now >= until:
            del self._cooling[peer_id]
            return False
        return True

    def forget_rumour(self, peer_id: str, now: float) -> Peer | None:
        """A rumour did not answer: drop it, and ignore gossip about it for RUMOUR_COOLDOWN_S."""
        peer = self.remove(peer_id)
        self._cooling[peer_id] = now + RUMOUR_COOLDOWN_S
        self._cooling.move_to_end(peer_id)
        while len(self._cooling) > RUMOURS_COOLING_MAX:
            self._cooling.popitem(last=False)
        return peer

    def alive(self) -> list[Peer]:
        return [p for p in self._peers.values() if p.state == ALIVE]

    def leaves(self) -> list[Peer]:
        """The alive simple peers (`Peer.leaf`): gossip's rounds and our own broadcasts in plain."""
        return [p for p in self._peers.values() if p.state == ALIVE and p.leaf]

    def room_for_leaf(self, cap: int) -> tuple[bool, Peer | None]:
        """May one more simple peer (`Peer.leaf`) be linked, with ``cap`` leaves at most?  At the cap
        the leaf lost the longest makes room (it is dropped from the table, returned here for its
        link to be closed); with every leaf alive or linking there is none.  So simple peers,
        which anyone can make with fresh keys, never fill ``max_peers`` and crowd out the
        overlay's own links (docs/SECURITY.md, ``max_leaves``)."""
        leaves = [p for p in self._peers.values() if p.leaf and not p.rumour]
        if len(leaves) < cap:
            return True, None
        lost = [p for p in leaves if p.state == LOST]
        if not lost:
            return False, None
        oldest = min(lost, key=attrgetter("since"))
        self.remove(oldest.id)
        return True, oldest

    def find_by_endpoint(self, router_endpoint: str) -> Peer | None:
        for p in self._peers.values():
            if p.router_endpoint == router_endpoint:
                return p
        return None

    def find_by_address(self, hosts, port: int) -> Peer | None:
        """A peer whose address is any of ``hosts`` (spellings of one host: the name given and the
        addresses it resolves to) at ``port``; an alive one if there is one."""
        keys = {host_key(h) for h in hosts}
        found = [p for p in self._peers.values() if p.address.port == port and host_key(p.address.addr or "") in keys]
        return next((p for p in found if p.state == ALIVE), found[0] if found else None)

    def resolve(self, query: str) -> Peer:
        """Find a peer by exact id, name, or id prefix (at least 4 characters): see targets.py.

        Names are labels and may repeat; a full id always wins, and a target that
        matches several peers (by name, by prefix, or one by name and another by
        prefix) is an error that lists the candidates rather than a guess.
        """
        return pick(query, [p for p in self._peers.values() if not p.rumour])  # a rumour's name is only hearsay

    # ---- changes
    def learn(self, peer_id: str, name: str, address: PeerAddress, now: float, key: str | None = None,
              rumour_from: str | None = None) -> tuple[Peer, bool]:
        """Record a peer (from JOIN, PEERS or connect). Returns (peer, is_new).

        ``rumour_from``: the peer whose gossip named it (a new peer is then a rumour); without
        it the peer speaks for itself, and a rumour of it so far becomes a member."""
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = Peer(peer_id, name, address, LINKING, since=now, key=key, learned=now,
                        rumour=rumour_from is not None, introducer=rumour_from)
            peer.subscribed = peer_id in self._subscriptions
            self._peers[peer_id] = peer
            self.version += 1
            return peer, True
        self.version += 1
        if rumour_from is None:
            peer.rumour, peer.introducer = False, None
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
        peer.frames_in += 1
        if peer.rumour:
            peer.rumour = False  # its key vouches for the frame: it exists and talks to us
            self.version += 1
        if peer.state != ALIVE:
            peer.state = ALIVE
            peer.since = now
            peer.retry_at = None
            peer.retry_backoff_s = 0.0
            return True
        return False

    def remove(self, peer_id: str) -> Peer | None:
        self.version += 1
        return self._peers.pop(peer_id, None)

    def book(self) -> list[dict]:
        """The members as peers.json keeps them (`SavePeers`): enough to link again after a restart.

        Saved at every link-up, so while a full mesh forms that is O(n^3) entries: each is kept
        per peer and built again only when its address, name, key or rid_suffix is another
        object (the dicts are shared by the SavePeers that list them, and never changed)."""
        cache, book = self._book_entries, []
        for p in self.members():
            c = cache.get(p.id)
            if c is None or c[0] is not p.address or c[1] is not p.name or c[2] is not p.key or c[3] is not p.rid_suffix:
                if len(cache) >= 2 * len(self._peers) + 64:
                    cache.clear()  # peers come and go: bounded
                a = p.address
                c = cache[p.id] = (a, p.name, p.key, p.rid_suffix, {"id": p.id, "name": p.name, "addr": a.addr, "port": a.port,
                                                                    "pub_port": a.pub_port, "key": p.key, "rid_suffix": p.rid_suffix})
            book.append(c[4])
        return book

    def set_subscribed(self, peer_id: str, subscribed: bool) -> None:
        """Our XPUB saw a SUB naming ``peer_id`` attach (True) or detach (False).

        XPUB_VERBOSER reports each connection's subscribe and, when it ends, its unsubscribe,
        even while another connection holds the same topic: the peer is subscribed while at
        least one is attached.  Only these reports change the flag, not the peer's state: a
        peer we took for lost keeps its SUB attached unless its connection ends."""
        count = self._subscriptions.get(peer_id, 0) + (1 if subscribed else -1)
        if subscribed and (count > SUBSCRIPTIONS_PER_ID or (count == 1 and len(self._subscriptions) >= SUBSCRIPTIONS_MAX)):
            return  # anyone on our XPUB can send subscriptions: their bookkeeping stays bounded
        if count > 0:
            self._subscriptions[peer_id] = count
        else:
            self._subscriptions.pop(peer_id, None)
        peer = self._peers.get(peer_id)
        if peer is not None:
            peer.subscribed = count > 0

    def _schedule_retry(self, peer: Peer, now: float) -> None:
        peer.retry_backoff_s = min(self.retry_max_s, max(self.retry_min_s, peer.retry_backoff_s * 2))
        peer.retry_at = now + peer.retry_backoff_s

    def mark_lost(self, peer_id: str, now: float) -> Peer | None:
        peer = self._peers.get(peer_id)
        if peer is None or peer.state == LOST:
            return None
        peer.state = LOST
        peer.since = now
        peer.rtt_ms = None  # measured on the link that died: not shown again once it is back
        peer.retry_backoff_s = 0.0
        self._schedule_retry(peer, now)
        return peer

    def silent(self, now: float, timeout_s: float) -> list[Peer]:
        """Alive peers silent past the timeout, and links never answered.

        Asked every tick, and a scan of every peer: so the earliest moment any peer can be
        silent is kept (`_quiet_until`), and until then nobody is.  It stays a true bound
        because nothing moves a deadline earlier: ``last_seen``, ``since`` and the moment we last
        resumed from a stall only grow, a new peer's deadline is ``now + timeout``, and a lost
        peer is out of the count."""
        if now <= self._quiet_until.get(timeout_s, float("-inf")):
            return []
        out = []
        soonest = now + timeout_s  # a peer learned or heard from later cannot be silent before then
        awake = self._awake_since
        for p in self._peers.values():
            if p.state == ALIVE and p.last_seen is not None:
                deadline = max(p.last_seen, awake) + timeout_s
            elif p.state == LINKING:
                deadline = max(p.since, awake) + timeout_s
            else:
                continue
            if now > deadline:
                out.append(p)
            elif deadline < soonest:
                soonest = deadline
        # Those returned change state (lost, forgotten) or, if the caller leaves them, are found again.
        self._quiet_until[timeout_s] = soonest if not out else float("-inf")
        return out

    def resumed(self, now: float) -> None:
        """We were stalled (stopped, starved of CPU, a suspended laptop) and run again: the
        silence of our peers over that time says nothing about them (their frames may wait
        unread, or they gave up on us), so every peer gets a full timeout from now before it
        counts as silent.  Lifeguard's point: a node that is itself slow must not accuse."""
        self._awake_since = now

    def quiet_until(self, timeout_s: float) -> float | None:
        """No peer can fall silent past ``timeout_s`` before this moment (None: not known, ask
        `silent`): the event loop sleeps until then rather than polling for it."""
        at = self._quiet_until.get(timeout_s)
        return at if at is not None and at != float("-inf") else None

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
