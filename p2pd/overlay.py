"""The overlay: which few peers we link to, who exists, and how far each one is (issue 15).

How this works
--------------
Three pure blocks, composed here and fed from the node's links:

* `views.Views` (HyParView) decides our **links**: an active view of at most
  ``active_view`` peers (default 8), symmetric, and a passive view of candidates.  A link
  that comes up by our dial asks the peer to be a neighbour (NEIGHBOR; a dial the user
  asked for, ``connect`` or ``--join``, is a HyParView JOIN, which the contact always
  accepts); one that comes up by the peer's dial waits for its request.  A link in neither
  view after ``neighbor_timeout_s`` twice over is closed (`_sweep`).  `LinkUp` opens a link
  to the peer's address from its signed record, `LinkDown` closes ours quietly (the peer
  is not gone from the network, only from our links).  A network no bigger than the
  active view stays a full mesh.
* `roster.Roster` knows **every node**: its latest signed record (records.py: name, keys,
  addresses, PUB port, incarnation, status and its active neighbours) or an accusation
  against it.  A new neighbour gets a digest of all we know and asks for what it lacks, as
  we do from its digest (push-pull by digest, wants.py; all our records to a peer whose JOIN
  did not say ``digest``); news is piggybacked, a few items per FACTS frame, to a few random neighbours each round
  until it was sent λ·log2 N times.  A neighbour lost by the heartbeat is accused
  (suspect); a live node refutes with a higher incarnation; a suspicion not refuted in
  time turns dead (Lifeguard timer) at every node that holds it, and the accuser whose
  suspicion a node holds, if that is the node itself, signs the death.  We sign a new record of ourselves when our links
  change (at most once a second) and ``left`` when we stop.
* `routes.Routes` turns every record's neighbour list into next hops and hop counts, over
  edges both ends claim.

Routed direct messages (relay.py) and broadcasts over the tree (tree.py) are built on this.
Pure: no sockets; time is passed in; randomness from the node's source.
"""

from __future__ import annotations

import logging
import ipaddress
from collections import Counter

from . import protocol as P
from .drops import Drops
from .exchange import Exchange, Told, fact_key
from .handshake import Handshake
from .links import Links
from .membership import ALIVE, LOST, Membership, Peer
from .outbound import Outbound
from .records import DEAD, LEFT, RANK, SUSPECT, BadRecord, NodeRecord, encode
from .resign import Resigning
from .roster import Roster
from .routes import OK, Routes
from .settings import Settings
from .trust import Trust
from .watchers import Watchers
from .views import LinkDown, LinkUp, ToPeer, Views, sample

log = logging.getLogger("p2pd.node")

FACTS_FANOUT = 3  # neighbours sent news each round
FACTS_PER_FRAME = 48  # news items piggybacked on one FACTS frame (P.MAX_FACTS is the most a frame may hold)
FACTS_ROUND_S = 0.5  # how often news goes out
LINK_WAIT_S = 5.0  # a neighbour agreed to whose link is not up by then is unreachable from here
SHUFFLE_INTERVAL_S = 30.0  # HyParView's shuffle period (views.py)
UNROUTABLE_S = 4.0  # a member alive in our roster that no route has reached this long is suspected
MEMBER_QUIET_S = 10.0  # after our first link, news of members is not told to watchers for this long (see _tell)  # ... and when only our broadcast numbers changed
UNLINKED_TOLD_S = 1.0  # a node that sends on a link we do not hold is told so at most this often
UNLINKED_TOLD_MAX = 256  # ... and so many such nodes remembered at once (bounded: cleared when full)
RECORDS_PER_VIEW = 8  # records of the nodes a VIEW message names, attached so the receiver can dial them
SHOWN = {ALIVE: "alive", SUSPECT: "suspect", DEAD: "lost", LEFT: "left"}


def _split(a: str) -> tuple[str, int] | None:
    host, _, port = a.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return host, int(port)
    except ValueError:
        return None


def _shared_bits(a: str, ours: tuple[str, ...]) -> int:
    """How many leading bits host ``a`` shares with the closest of our hosts (0: not an IP)."""
    try:
        ip = ipaddress.ip_address(a)
    except ValueError:
        return 0
    best = 0
    for o in ours:
        try:
            mine = ipaddress.ip_address(o)
        except ValueError:
            continue
        if mine.version == ip.version:
            diff = int(mine) ^ int(ip)
            best = max(best, mine.max_prefixlen - diff.bit_length())
    return best


def address_of(rec: NodeRecord, ours: tuple[str, ...] = ()) -> P.PeerAddress | None:
    """Where to dial the node of a record (None: it lists no address).  A multi-homed node lists
    several: the one on our own subnet if there is one (the longest prefix shared with one of our
    hosts), else the first; a dial that fails is not repeated, the node being reached through others."""
    best, best_bits = None, -1
    for a in rec.addresses:
        hp = _split(a)
        if hp is None:
            continue
        bits = _shared_bits(hp[0], ours)
        if bits > best_bits:
            best, best_bits = hp, bits
    if best is None:
        return None
    return P.PeerAddress(best[0], best[1], rec.pub_port or best[1] + 1)


def own_addresses(hosts: tuple[str, ...], port: int) -> tuple[str, ...]:
    """What our record lists: each host we can be reached at, with our ROUTER port."""
    return tuple(P.host_port(h, port) for h in hosts if h and h not in P.WILDCARD_HOSTS)[:8]


class Overlay:
    def __init__(self, node_id: str, name: str, address: P.PeerAddress, hosts: tuple[str, ...], settings: Settings, keys, trust: Trust, roster: Roster,
                 routes: Routes, table: Membership, links: Links, handshake: Handshake, outbound: Outbound, drops: Drops,
                 stats: Counter, rng: P.RandomBits, now: float, neighbours=None, beacon=None, announced=None,
                 watchers: Watchers | None = None, groups=None, record_news=None, refuted=None):
        self.id = node_id
        self.name = name
        self.address = address
        self.hosts = hosts  # where we can be reached (our record lists them)
        self.settings = settings
        self.keys = keys
        self.trust = trust
        self.roster = roster
        self.routes = routes
        self.table = table
        self.links = links
        self.handshake = handshake
        self.out = outbound
        self.drop = drops
        self.stats = stats
        self.rng = rng
        # Shuffles every 30 s: each walks up to 6 hops, a steady cost to every node; the passive
        # view only needs to stay fresh enough to hold live candidates after a failure.
        self.views = Views(node_id, rng, active_size=settings.active_view, passive_size=settings.passive_view,
                           shuffle_interval_s=SHUFFLE_INTERVAL_S)
        self.incarnation = roster.own.incarnation
        self.resigning = Resigning(now)  # when our record is signed again (resign.py)
        self._next_facts = now
        self._waiting: dict[str, float] = {}  # linked peers in neither view -> when the link is closed (_sweep)
        self._remote: dict[str, tuple[NodeRecord, Peer]] = {}  # unlinked members as peers (routed messages)
        # Our broadcast numbers (messaging.py `beacon`), signed into our record so that a node that
        # missed broadcasts (cut off, restarted) learns it and fetches them; and what to do with
        # another node's (``announced(now, node id, beacon dict)``).
        self._beacon = beacon if beacon is not None else (lambda: {"bseq": 0, "boldest": 0, "epoch": ""})
        self._announced = announced if announced is not None else (lambda now, node_id, data: [])
        # The groups our record lists (``groups(incarnation)``: their entries, shouts.py), and who
        # to tell of another node's live record taken (``record_news(now, node id, record)``).
        self._groups = groups if groups is not None else (lambda incarnation: ())
        self._record_news = record_news if record_news is not None else (lambda now, node_id, rec: [])
        # Told (``refuted(now)``) when we refute a suspicion of ourselves: a sign we are slow (health.py).
        self._refuted = refuted if refuted is not None else (lambda now: None)
        self.watchers = watchers
        self._told_unlinked: dict[str, float] = {}  # node -> when we last told it we hold no link to it (not_linked)
        self._expect: dict[str, float] = {}  # neighbours agreed to whose link is not up yet -> until when we wait
        self._unroutable: dict[str, float] = {}  # alive members no route reaches -> since when (see _check_routes)
        self._next_route_check = now
        self._routes_checked: tuple | None = None  # (routes.changes, roster.changes) at the last full check
        self._settled_at: float | None = None  # when we first had a neighbour, plus MEMBER_QUIET_S (see _tell)
        self._member_news: dict[str, str | None] = {}  # node id -> its state before, for watchers (_tell_members)
        self.exchange = Exchange(node_id, roster, outbound)  # what each neighbour has; the push-pull
        # Called with (peer id, up) as a link comes up or goes (the broadcast tree spans our links).
        self._neighbours = neighbours if neighbours is not None else (lambda peer_id, up: None)

    # ------------------------------------------------------------------ our own record
    def _linked_neighbours(self) -> tuple[str, ...]:
        """Our active neighbours that we do hold a live link to: what our record claims and our
        routes use (a neighbour agreed to but not reachable, as a node on a subnet we cannot
        reach, must not attract traffic)."""
        table = self.table
        return tuple(sorted(p for p in self.views.active if (peer := table.get(p)) is not None and peer.state == ALIVE))

    def _beacon_now(self) -> tuple:
        b = self._beacon()
        return (b["bseq"] or 0, b["boldest"] or 0, b["epoch"] or "")

    def own_record(self, incarnation: int, status: str = ALIVE) -> NodeRecord:
        bseq, boldest, bepoch = self._beacon_now()
        return self.keys.record(self.name, own_addresses(self.hosts, self.address.port), incarnation, status, self.address.pub_port,
                                self._linked_neighbours()[:16], bseq, boldest, bepoch, self._groups(incarnation))

    def resign_now(self, now: float) -> None:
        """Sign our record again at once: the groups we are in changed (a join or a leave should
        reach the members in one gossip round, not after resign.py's debounce)."""
        self._sign_own(now, max(self.incarnation, self.roster.own.incarnation) + 1)

    def _sign_own(self, now: float, incarnation: int) -> None:
        """Sign and hold our record at ``incarnation``, listing the links we hold now: every
        path that signs one (a change of groups, of links or broadcast numbers, a refutation)."""
        self.incarnation = incarnation
        rec = self.own_record(incarnation)
        self.resigning.signed(self._linked_neighbours(), (rec.bseq, rec.boldest, rec.bepoch))
        self.roster.set_own(now, rec)

    def _resign(self, now: float) -> None:
        """Sign our record again if our links or broadcast numbers changed, when resign.py says."""
        if self.resigning.due(now, self._linked_neighbours(), self._beacon_now(), self.roster.state_of):
            self._sign_own(now, max(self.incarnation, self.roster.own.incarnation) + 1)

    # ------------------------------------------------------------------ queries
    def may_dial(self, peer_id: str) -> bool:
        """May gossip (gossip.py) dial a peer it heard of?  Only one we have no record of (the
        members we know are linked by HyParView's walks, shuffles and repairs, at the address
        their record gives for our subnet: gossip's is the one its teller sees), and only while
        the active view has a free slot and our links, open or opening, are fewer than it holds."""
        return (self.roster.record_of(peer_id) is None and self.views.room() > 0
                and len(self.links) < self.views.active_size)

    def in_network(self, node_id: str) -> bool:
        """Is the node alive, or only suspected, in the network we are part of (we hold a link to
        someone)?  A suspicion ends within the suspicion timer, refuted or a death; until then
        the node is one of ours.  Counting it out made every node that had joined through a busy
        seed knock on it again the moment one neighbour of the seed suspected it: explicit joins
        by the hundred, each a round of random walks, which loaded the seed further (the
        simulator, 200 nodes joining through 3 seeds)."""
        return bool(self.views.active) and self.roster.state_of(node_id) in (ALIVE, SUSPECT)

    def key_of(self, node_id: str) -> str | None:
        """The CURVE key a node's own record names (None: no record, or a keyless one)."""
        rec = self.roster.record_of(node_id)
        return rec.curve_key if rec is not None and self.keys.signed else None

    def hops(self, node_id: str) -> int | None:
        return self.routes.hops(node_id)

    def reachable(self, node_id: str) -> bool:
        """Can a message reach the node through the overlay now (it is alive and routed)?"""
        return self.roster.state_of(node_id) == ALIVE and self.routes.next_hop(node_id) is not None

    def remote_peer(self, node_id: str, now: float) -> Peer | None:
        """An unlinked member as a `Peer`, for the messages it sends us through relays."""
        rec = self.roster.record_of(node_id)
        if rec is None or node_id == self.id:
            return None
        held = self._remote.get(node_id)
        if held is not None and held[0] is rec:
            return held[1]
        if len(self._remote) >= 4 * self.settings.max_peers:
            self._remote.clear()  # bounded: they are rebuilt from the records as needed
        addr = address_of(rec) or P.PeerAddress(None, 0, 0)
        peer = Peer(node_id, rec.name, addr, ALIVE, since=now, key=self.key_of(node_id), learned=now)
        self._remote[node_id] = (rec, peer)
        return peer

    def members(self, now: float) -> list[dict]:
        """Every node we know of: the linked ones as the table describes them, the others from
        their records; each with ``linked`` and ``hops`` (`p2pctl peers`)."""
        rows, seen = [], set()
        for p in self.table.members():
            row = p.describe(now)
            linked = p.state == ALIVE and p.id in self.links
            row["linked"] = linked
            row["leaf"] = linked and p.leaf  # a simple peer, linked outside the overlay (link_up)
            row["hops"] = 1 if linked else self.routes.hops(p.id)
            state = self.roster.state_of(p.id)
            down = self.roster.down_since(p.id)
            if p.state == LOST and state == ALIVE and row["hops"] is not None:
                row["state"] = "alive"  # our link is down, the network still reaches it
            elif p.state == LOST and state is not None:
                # Shown lost since the later of our link's loss and the network's word: when the
                # roster stopped taking it for alive (not its last change: a suspicion turning into
                # a death is no news here, and dated every neighbour's loss from the death), or,
                # alive with no route, since it was last taken for alive.
                word = down if down is not None else self.roster.since_of(p.id)
                row["state_for_s"] = min(row["state_for_s"], round(now - word, 3))
            row["down_for_s"] = None if row["state"] in ("alive", "linking") else (
                row["state_for_s"] if down is None else min(row["state_for_s"], round(now - down, 3)))
            rows.append(row)
            seen.add(p.id)
        for m in self.roster.members():
            if m.node_id in seen or m.node_id == self.id:
                continue
            rec = self.roster.record_of(m.node_id)
            addr = address_of(rec) if rec is not None else None
            rows.append({
                "id": m.node_id, "name": m.name,
                "address": P.host_port(addr.addr, addr.port) if addr else None,
                "router": addr.router_endpoint() if addr else None, "pub": addr.pub_endpoint() if addr else None,
                "state": SHOWN.get(m.state, m.state), "state_for_s": round(now - self.roster.since_of(m.node_id), 3),
                "down_for_s": None if m.state == ALIVE else round(now - (self.roster.down_since(m.node_id) or now), 3),
                "known_for_s": None, "last_seen_s": None,
                "rtt_ms": None, "subscribed": False, "key": self.key_of(m.node_id), "msgs_in": 0, "msgs_out": 0,
                "frames_in": 0, "frames_out": 0, "linked": False, "leaf": False, "hops": self.routes.hops(m.node_id),
                "incarnation": m.incarnation})
        return rows

    def describe(self) -> dict:
        """For `info`: our views and what we know of the network."""
        return {"active": sorted(self.views.active), "passive": len(self.views.passive), "members": self.roster.size(),
                "routes": len(self.routes), "incarnation": self.roster.own.incarnation, "news_pending": self.roster.pending()}

    # ------------------------------------------------------------------ links coming and going
    def link_up(self, now: float, peer: Peer, dialled: bool = False, explicit: bool = False) -> list:
        """A link came up (the JOIN handshake finished).  ``dialled``: by our dial; ``explicit``:
        one the user asked for (connect, --join, a LAN beacon).  A leaf (a simple JSON peer,
        `Peer.leaf`) stays out of the views and our record: it speaks no VIEW, so waiting for
        its NEIGHBOR would close the link after 10 s (docs/PROTOCOL.md 12.2); the heartbeat
        keeps or loses it as it would any peer."""
        if peer.leaf:
            log.info("%s (%s) is a simple peer (its JOIN did not say digest): linked as a leaf, outside the overlay",
                     peer.name, peer.id[:12])
            return []
        self._neighbours(peer.id, True)
        self._expect.pop(peer.id, None)
        if self._settled_at is None:
            self._settled_at = now + MEMBER_QUIET_S
        views = self.views
        acts: list = self._show_accusation(now, peer.id)
        if peer.id in views.active:
            self.routes.set_local(self._linked_neighbours())
            return acts + self._push_all(now, peer.id)
        if explicit or (dialled and self._across(peer.id)):
            acts += self._apply(now, views.join(peer.id, now))
        elif dialled and peer.id not in views.pending:
            acts += self._apply(now, views.ask(peer.id, now))
        if peer.id not in views.active:
            self._waiting[peer.id] = now + 2 * views.neighbor_timeout_s
        return acts

    def _across(self, peer_id: str) -> bool:
        """Is a node our dial just reached one we hold suspect or dead that no route reaches: the
        other side of a healed partition (our retry of a link the cut lost got through), or a node
        back from a long stall?  Our link is then the only edge between its part of the overlay
        and ours, so it is a HyParView JOIN, which the node always accepts and walks on into its
        part, not a NEIGHBOR request that a full node refuses.  Refused, the link closed after
        10 s, and each part, holding the other's members alive yet unrouted, suspected them again:
        a partition of 30 nodes without ``--join`` bootstraps stayed split for good once healed
        (the simulator)."""
        return self.roster.state_of(peer_id) in (SUSPECT, DEAD) and self.routes.next_hop(peer_id) is None

    def _show_accusation(self, now: float, peer_id: str) -> list:
        """A node we hold suspected (or dead, its suspicion timed out) speaks to us again: it is
        alive, but only its own record at a higher incarnation can say so everywhere.  Show it
        the accusation, so that it refutes at once.  A node back from a stall had its links
        closed by its neighbours and was in nobody's view: news of its suspicion reached it only
        once a neighbour took it back, up to 5 s after it resumed in the simulator, while the
        suspicion timers ran out elsewhere."""
        if self.roster.state_of(peer_id) not in (SUSPECT, DEAD):
            return []
        fact = self.roster.fact_of(peer_id)
        if getattr(fact, "accuser_id", None) is None or fact_key(fact) in self.exchange.told_to(peer_id):
            return []
        return [self.out.send(peer_id, self.exchange.facts_msg(now, [fact], peer_id))]

    def reintroduced(self, now: float, peer: Peer) -> list:
        """A neighbour we still held for alive introduced itself again: it restarted within
        our heartbeat timeout and has forgotten what it knew.  Our digest, as to a new
        neighbour (else it learns the network only from its other neighbours' digests)."""
        return self._push_all(now, peer.id) if peer.id in self.views.active else []

    def not_linked(self, now: float, msg: P.Message) -> list:
        """A PING on our ROUTER from a node of the network we hold no link to: the sender believes
        we are linked (we dropped it since, a refusal or a DISCONNECT of ours crossing its
        messages, or its JOIN was lost).  Tell it DISCONNECT, routed, so that it unlinks us and
        fills the slot: left alone, it PINGed into the void and accused us once the heartbeat
        timed out (a live node made to refute, its watchers told it was lost).  Only a PING: it
        comes within a heartbeat interval on any link its sender holds, while the PEERS that
        follows a JOIN we turned away was 85 % of these frames in a forming overlay and needs
        no answer.  At most once a second per node, and only to a node whose record we hold (in
        secure mode its key proved the sender)."""
        sender = msg.sender_id
        if msg.type != P.PING or self.roster.record_of(sender) is None:
            return []
        told = self._told_unlinked
        if now - told.get(sender, -UNLINKED_TOLD_S) < UNLINKED_TOLD_S:
            return []
        if len(told) >= UNLINKED_TOLD_MAX:
            told.clear()
        told[sender] = now
        self.stats["unlinked_told"] += 1
        return [self.out.send(sender, self.out.msg(now, P.VIEW, {"kind": "DISCONNECT"}, target=sender))]

    def stray(self, peer_id: str) -> bool:
        """Is our link to this node of the network one outside our active view?  Opened to ask
        it to be our neighbour, or to answer its JOIN, or kept a moment after one of us refused:
        the other end may have closed its side and forgotten us (it drops our PINGs as from a
        node it holds no link to), so silence on it is no sign of death (see `drop_stray`)."""
        return peer_id not in self.views.active and self.roster.record_of(peer_id) is not None

    def drop_stray(self, now: float, peer: Peer) -> list:
        """A stray link fell silent: close it quietly, accusing nobody.  Accused, a live node
        had to refute (a new incarnation signed and spread) and its watchers were told it was
        lost: 2-3 times in each 100-node formation in the simulator, before."""
        self.stats["strays_closed"] += 1
        log.debug("closed the link to %s (%s): silent, and not a neighbour", peer.name, peer.id[:12])
        return self._close(now, peer.id)

    def link_lost(self, now: float, peer: Peer) -> list:
        """The heartbeat lost a linked peer: replace it, and say it may be dead (a live node refutes)."""
        self._unlinked(peer.id)
        acts: list = []
        rec = self.roster.record_of(peer.id)
        if rec is not None and self.roster.state_of(peer.id) == ALIVE:
            self.stats["suspicions_raised"] += 1
            acts += self._heard(now, [self.keys.accuse(peer.id, rec.incarnation, SUSPECT)], None, "ourselves")
        # After the accusation: a link to a node we suspect need not be signed away at once (_resign).
        return acts + self._apply(now, self.views.link_failed(peer.id, now))

    def peer_gone(self, now: float, peer_id: str) -> list:
        """It left (LEAVE) or we disconnected it on request: out of our views, and out of our roster
        unless its own record says it left (listed as left) or another route still reaches it."""
        self._waiting.pop(peer_id, None)
        self._unlinked(peer_id)
        acts = self._apply(now, self.views.link_failed(peer_id, now))
        if self.roster.state_of(peer_id) not in (LEFT, None) and self.routes.next_hop(peer_id) is None:
            self.roster.forget(peer_id)
            self.routes.remove(peer_id)
        return acts

    def dial_failed(self, now: float, peer_id: str) -> list:
        """A dial to a candidate was refused or never answered."""
        return self._apply(now, self.views.link_failed(peer_id, now))

    # ------------------------------------------------------------------ frames in
    def on_view(self, now: float, msg: P.Message, peer: Peer) -> list:
        data = msg.data
        records = data.get("records")
        acts: list = []
        if isinstance(records, list):
            acts += self._heard(now, self._decode(now, records[:RECORDS_PER_VIEW], peer.name), peer.id, peer.name)
        kind = data["kind"]
        acts += self._apply(now, self.views.handle(peer.id, kind, data, now))
        if kind in ("NEIGHBOR", "NEIGHBOR_REPLY", "DISCONNECT") and peer.id not in self.views.active \
                and peer.id not in self.views.pending and peer.id in self.links:
            # Refused (either way) or dropped: the link has no use.  Our answer goes out first
            # (the transport sends what is queued on a link before it closes it).
            acts += self._close(now, peer.id)
        return acts

    def on_facts(self, now: float, msg: P.Message, peer: Peer) -> list:
        data = msg.data
        ex = self.exchange
        told = ex.told_to(peer.id)
        items = data["facts"]
        facts = self._decode(now, items, peer.name, told)
        for f in facts:
            told.add(fact_key(f))
        acts = self._heard(now, facts, peer.id, peer.name)
        if items:
            ex.came(items)
        have = data.get("have")
        if have is not None:  # a peer we are about to drop may never answer: only noted as offering
            acts += ex.on_digest(now, peer.id, have, peer.id in self.views.active)
        want = data.get("want")
        if want:
            acts += ex.answer_want(now, peer.id, want)
        return acts

    def _askable(self) -> set:
        """Neighbours a record may be asked of: in our active view, over a link we hold."""
        links = self.links
        return {p for p in self.views.active if p in links}

    def _decode(self, now: float, items: list, source: str, told: Told | None = None) -> list:
        """The records and accusations of a frame that parse and that our trust allows: a node
        outside the allowlist, or claiming an address pinned to another key, is not taken (as
        gossip about it is not: docs/SECURITY.md 6.1).  A record that is no news (what we hold
        about the node beats it or equals it: the roster would find it stale) is not decoded at
        all, only noted in ``told``: most of a new neighbour's push-pull is such."""
        out = []
        fact_of = self.roster.fact_of
        for obj in items:
            if type(obj) is dict and "by" not in obj:
                node_id = obj.get("id")
                held = fact_of(node_id) if type(node_id) is str else None
                inc, status = obj.get("inc"), obj.get("status")
                if held is not None and type(inc) is int and status in RANK \
                        and (inc, RANK[status]) <= (held.incarnation, RANK[held.status]):
                    if told is not None:
                        told.add((held.node_id, inc, status, None))
                    continue
            try:
                fact = self.keys.decode(obj)
            except BadRecord as e:
                self.drop(now, f"fact_{e.kind}", f"a record or accusation that does not parse: {e}", source)
                continue
            if isinstance(fact, NodeRecord) and self.keys.signed:
                refusal = self.trust.may_link(fact.node_id, fact.curve_key)
                addr = address_of(fact)
                if refusal is None and addr is not None:
                    refusal = self.trust.pin_refusal(addr.addr, addr.port, fact.curve_key)
                if refusal is not None:
                    self.drop(now, "fact_refused", f"record of {fact.node_id[:12]} not taken: {refusal}", source)
                    continue
            out.append(fact)
        return out

    def _heard(self, now: float, facts: list, from_id: str | None, source: str) -> list:
        """Offer facts to the roster; news updates the routes; a claim against us is refuted."""
        roster, routes = self.roster, self.routes
        acts: list = []
        before = {f.node_id: roster.state_of(f.node_id) for f in facts}
        for fact, heard in zip(facts, roster.offer_many(now, facts)):
            if heard.news:
                node_id = fact.node_id
                state = roster.state_of(node_id)
                rec = roster.record_of(node_id)
                if state == ALIVE and rec is not None:
                    verdict = routes.update(node_id, rec.incarnation, rec.links)
                    if verdict not in (OK, "stale"):
                        self.drop(now, f"route_{verdict}", f"record of {node_id[:12]} not routable", source)
                    self.views.remember(node_id)
                    acts += self._record_news(now, node_id, rec)
                    if rec.bepoch:
                        acts += self._announced(now, node_id, {"bseq": rec.bseq, "boldest": rec.boldest, "epoch": rec.bepoch})
                elif state in (DEAD, LEFT):
                    acts += self._gone(now, node_id)
            elif heard.refute is not None:
                self.stats["refutations"] += 1
                if getattr(fact, "status", None) == SUSPECT:  # not our death or old record after a restart
                    self._refuted(now)
                self._sign_own(now, max(self.incarnation, heard.refute.incarnation))
                log.info("refuted a claim that this node is %s (incarnation now %d)",
                         getattr(fact, "status", "?"), self.incarnation)
            elif heard.reason == "stale" and hasattr(fact, "accuser_id"):
                held = roster.fact_of(fact.node_id)
                if held is not None and held.incarnation > fact.incarnation:
                    # The accuser had not heard the node's last re-sign: counted, since it delays
                    # the news of a death (docs/SCALE.md, failure detection)
                    self.stats["accusations_outdated"] += 1
            elif heard.reason not in ("stale", "confirmation", "about_us"):
                self.drop(now, f"fact_{heard.reason}", f"record or accusation of {fact.node_id[:12]} refused: {heard.reason}", source)
        for node_id, was in before.items():
            self._tell(node_id, was)
        return acts

    def _gone(self, now: float, node_id: str) -> list:
        """A node dead or left, by news or by our own timer: no routes through it, out of our views."""
        self.routes.remove(node_id)
        if node_id in self.views.active:  # a linked one is the heartbeat's to judge
            return []
        return self._apply(now, self.views.link_failed(node_id, now))

    def _tell(self, node_id: str, was: str | None) -> None:
        """Note a possible ``member`` event for watchers (the chat's join and leave notices for the
        whole network); `_tell_members` says it at the next tick.  Not noted with nobody watching."""
        if self.watchers and node_id != self.id:
            self._member_news.setdefault(node_id, was)

    def _tell_members(self, now: float) -> list:
        """The ``member`` events noted since the last tick: one per node whose state changed (a
        change undone meanwhile says nothing), for nodes we hold no link to.  Once a tick, since
        each event's ``hops`` costs a route recompute after new records: per frame, that was a
        fifth of a watched survivor's time while a mass failure repaired.  Not while we are
        joining: a new node learns every member at once, and a notice for each would flood the chat."""
        news, self._member_news = self._member_news, {}
        acts: list = []
        if not self.watchers:
            return acts
        for node_id, was in news.items():
            state = self.roster.state_of(node_id)
            if state == was or state is None:
                continue
            if was is None and (self._settled_at is None or now < self._settled_at):
                continue
            peer = self.table.get(node_id)
            if peer is not None and peer.state == ALIVE and node_id in self.links:
                continue  # linked: its own joined/left/lost events say it
            rec = self.roster.record_of(node_id)
            acts += self.watchers.emit(now, "member", state=SHOWN.get(state, state),
                                       peer={"id": node_id, "name": rec.name if rec else "?", "hops": self.routes.hops(node_id)})
        return acts

    # ------------------------------------------------------------------ effects of the views
    def _unlinked(self, peer_id: str) -> None:
        """Our link to a neighbour is gone, however it went."""
        self.exchange.forget(peer_id)
        self._neighbours(peer_id, False)

    def _apply(self, now: float, effects: list) -> list:
        acts: list = []
        changed = False
        for e in effects:
            if type(e) is ToPeer:
                acts += self._to_peer(now, e)
            elif type(e) is LinkUp:
                changed = True
                self._waiting.pop(e.peer, None)
                peer = self.table.get(e.peer)
                if peer is not None and peer.state == ALIVE and e.peer in self.links:
                    acts += self._push_all(now, e.peer)  # a new neighbour on a link we hold: all we know
                else:
                    acts += self._open(now, e.peer)  # ... or once the link is up (link_up)
                    self._expect[e.peer] = now + LINK_WAIT_S
            elif type(e) is LinkDown:
                changed = True
                self._expect.pop(e.peer, None)
                acts += self._close(now, e.peer)
        if changed:
            self.routes.set_local(self._linked_neighbours())
            self._resign(now)
        return acts

    def _attached(self, data: dict) -> list:
        ids = [data["new"]] if "new" in data else list(data.get("nodes", ()))
        recs = [self.roster.record_of(i) for i in ids[:RECORDS_PER_VIEW]]
        return [encode(r) for r in recs if r is not None]

    def _to_peer(self, now: float, e: ToPeer) -> list:
        data = {"kind": e.kind, **e.data}
        records = self._attached(e.data)
        if e.kind in ("NEIGHBOR", "JOIN"):
            records.append(encode(self.roster.own))  # who asks, and where to reach it
        if records:
            data["records"] = records
        msg = self.out.msg(now, P.VIEW, data, target=e.peer)
        if e.peer in self.links or e.kind not in ("NEIGHBOR", "JOIN") or self.routes.next_hop(e.peer) is not None:
            # To a node we hold no link to: routed (relay.py).  A NEIGHBOR too, when a route
            # exists: the link is opened only if it says yes (LinkUp), not for every refusal.
            return [self.out.send(e.peer, msg)]
        # Asking to link a node no route reaches: a link of its own, with our JOIN first on it.
        return self._open(now, e.peer) + [self.out.send(e.peer, msg)]

    def _open(self, now: float, peer_id: str) -> list:
        """A link to a neighbour, unless we hold one (or are opening it)."""
        if peer_id in self.links:
            return []
        peer = self.table.get(peer_id)
        if peer is None:
            rec = self.roster.record_of(peer_id)
            addr = address_of(rec, self.hosts) if rec is not None else None
            if addr is None or not P.valid_name(rec.name) or self.table.member_count() >= self.settings.max_peers:
                return []
            peer, _ = self.table.learn(peer_id, rec.name, addr, now, self.key_of(peer_id), rumour_from=self.id)
        return self.handshake.link_to(now, peer)

    def _close(self, now: float, peer_id: str) -> list:
        """Out of our active view: close our link quietly (it is still a member of the network)."""
        self._waiting.pop(peer_id, None)
        peer = self.table.get(peer_id)
        if peer is None or peer.state == LOST:
            return []  # lost: liveness.py closed the link and retries it; if it answers, it may ask again
        acts = self.links.close(peer_id)
        if peer.state == ALIVE:
            acts.append(self.links.unsubscribe(peer))
        self.table.remove(peer_id)
        self._unlinked(peer_id)
        log.debug("unlinked %s (%s): out of the active view", peer.name, peer_id[:12])
        return acts

    # ------------------------------------------------------------------ news out
    def _push_all(self, now: float, peer_id: str) -> list:
        """All we know, to a new neighbour: a digest if its JOIN said it takes one (exchange.py)."""
        peer = self.table.get(peer_id)
        return self.exchange.push_all(now, peer_id, peer is not None and peer.digest)

    def tick(self, now: float) -> list:
        acts = self._apply(now, self.views.tick(now))
        for node_id, inc in self.roster.tick(now):
            log.info("node %s presumed dead: suspected and not refuted in time", node_id[:12])
            # Every node holding the suspicion times it out itself; a signed death is only for who
            # missed it.  Signed by the accuser whose suspicion we hold, if that is us: one death
            # or a few per node, not one from every node whose timer ran out before another's death
            # reached it (a mass failure made ten per dead node, each verified by everyone).
            acts += self._gone(now, node_id)
            if getattr(self.roster.fact_of(node_id), "accuser_id", None) == self.id:
                acts += self._heard(now, [self.keys.accuse(node_id, inc, DEAD)], None, "ourselves")
            self._tell(node_id, SUSPECT)
        self._resign(now)
        acts += self._sweep(now)
        acts += self.exchange.due(now, self._askable())
        acts += self._check_routes(now)
        acts += self._unreachable_neighbours(now)
        if self._member_news:
            acts += self._tell_members(now)
        if now >= self._next_facts:
            self._next_facts = now + FACTS_ROUND_S
            if self.roster.pending():
                linked = [p for p in self.views.active if p in self.links]
                # A backlog (a burst of joins), or bad news or its denial (a death must be known
                # everywhere fast): every neighbour, not three.  Joins and routine news (new
                # links, broadcast numbers) alone are not hurried.
                busy = self.roster.pending() > FACTS_PER_FRAME or self.roster.alarm_pending()
                fanout = len(linked) if busy else FACTS_FANOUT
                peers = sample(self.rng, linked, fanout)
                for peer_id, frame in zip(peers, self.roster.piggyback_round(FACTS_PER_FRAME, len(peers))):
                    told = self.exchange.told_to(peer_id)
                    facts = [f for f in frame if fact_key(f) not in told]
                    if facts:
                        acts.append(self.out.send(peer_id, self.exchange.facts_msg(now, facts, peer_id)))
        return acts

    def _unreachable_neighbours(self, now: float) -> list:
        """Neighbours agreed to (through a routed NEIGHBOR) whose link never came up: we cannot
        reach each other directly (another subnet, a firewall).  Out of the view, and told so, so
        that neither keeps claiming a link nor dialling an address it cannot reach."""
        acts: list = []
        for peer_id, until in list(self._expect.items()):
            if now < until:
                continue
            del self._expect[peer_id]
            peer = self.table.get(peer_id)
            if peer_id in self.views.active and (peer is None or peer.state != ALIVE):
                log.info("no link to neighbour %s within %.0fs: unreachable from here, dropped from the view", peer_id[:12], LINK_WAIT_S)
                acts.append(self.out.send(peer_id, self.out.msg(now, P.VIEW, {"kind": "DISCONNECT"}, target=peer_id)))
                acts += self._apply(now, self.views.link_failed(peer_id, now))
        return acts

    def _check_routes(self, now: float) -> list:
        """Suspect the members no route reaches for UNROUTABLE_S, or only routes through nodes we
        suspect (once a second, while we have a neighbour).  Only a node's neighbours notice it die by their heartbeats: a node whose
        neighbours all died with it (a mass failure) is noticed by nobody.  But a live node keeps
        links, and its signed record lists them: alive in the roster yet unreachable for long means
        dead, or cut off from us; a live one refutes as soon as it is reached again."""
        if now < self._next_route_check:
            return []
        self._next_route_check = now + 1.0
        if not self.views.active:
            self._unroutable.clear()  # we are the one cut off: nothing to say of the others
            return []
        roster, routes, seen = self.roster, self.routes, self._unroutable
        # Nothing changed since a check that found everyone routed: skip the BFS (most seconds,
        # in a quiet network of hundreds, where it was a good part of a daemon's idle time).
        key = (routes.changes, roster.changes)
        if key == self._routes_checked and not seen:
            return []
        self._routes_checked = key
        acts: list = []
        states = roster.states()
        # Reached only through nodes we already suspect counts as not reached (routes.py).
        reach = routes.reachable_avoiding({i for i, state, _ in states if state != ALIVE})
        for node_id, state, incarnation in states:
            if state != ALIVE or node_id in reach:
                seen.pop(node_id, None)
                continue
            since = seen.setdefault(node_id, now)
            if now - since >= UNROUTABLE_S:
                del seen[node_id]
                log.info("no route to %s for %.0fs: suspecting it", node_id[:12], now - since)
                acts += self._heard(now, [self.keys.accuse(node_id, incarnation, SUSPECT)], None, "ourselves")
        return acts

    def _sweep(self, now: float) -> list:
        """Links in neither view for too long: one end asked, the other never answered."""
        acts: list = []
        for peer_id, deadline in list(self._waiting.items()):
            if peer_id in self.views.active or peer_id in self.views.pending:
                del self._waiting[peer_id]
            elif now >= deadline:
                del self._waiting[peer_id]
                if peer_id in self.links:
                    acts.append(self.out.send(peer_id, self.out.msg(now, P.VIEW, {"kind": "DISCONNECT"}, target=peer_id)))
                    acts += self._close(now, peer_id)
        return acts

    def leave(self, now: float) -> list:
        """We stop: a signed ``left`` to our neighbours, and DISCONNECT so they refill at once."""
        left = self.own_record(max(self.incarnation, self.roster.own.incarnation) + 1, LEFT)
        self.roster.set_own(now, left)
        acts = [self.out.send(p, self.exchange.facts_msg(now, [left], p)) for p in self.views.active if p in self.links]
        self.views.leave(now)  # its DISCONNECTs are not sent: the LEAVE that follows says more
        return acts
