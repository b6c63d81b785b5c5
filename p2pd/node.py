"""The node's decisions: what to do with each frame, tick and control request.

How this works
--------------
`Node` is a sans-I/O state machine (in the spirit of h11): the event loop in
`transport.py` (or the simulator, sim.py) feeds it events (raw frames, ticks, answers
to its effects) with the current monotonic time, through `handle` or the method each
event names, and it returns a list of effects from `actions.py` (open a link, send an
envelope, reply to a control client ...).  It owns no socket, reads no clock and draws
no randomness of its own (a random source is given), so every rule below is
unit-tested without ZeroMQ and a simulated run replays exactly.

The node is thin: it builds its components, each owning its state and returning
effects, and composes them where one event concerns several (a JOIN, a link coming
up, a tick).  Components get the collaborators they need, never the node:

* intake.py: the checks every inbound frame passes (origin, rate limit): a verdict;
* membership.py: the peer table; links.py: our DEALER links and subscriptions;
* handshake.py: our JOIN, links to known peers, stale links; gossip.py: PEERS;
* heartbeat.py: PING/PONG and round trips; liveness.py: lost, retried, forgotten;
* messaging.py (on delivery.py): messages, broadcasts, ACK, FETCH;
* dialer.py: dials by address, key fetch and pinning, ``--join`` bootstraps;
* outbound.py: envelopes and frame counts; watchers.py: events to `watch` clients;
  names.py: the names shown and the peer a name means; drops.py: bad input.

The peer protocol (docs/PROTOCOL.md):

* Link: to reach a peer we open a DEALER to its ROUTER and send JOIN.  A JOIN
  that is not itself a reply is answered with a JOIN carrying ``reply_to``,
  over the receiver's own DEALER to the sender's ROUTER, so both sides end
  up with one link each way.  A dial by address (``connect``, ``--join``, a
  LAN beacon) is `dialer.py`'s until the JOIN reply tells us whose it is.
* Gossip (gossip.py): on link-up we send the new peer PEERS (our alive peers with
  their addresses), and every ``gossip_interval_s`` to a few alive peers picked at
  random; a node dials every peer it learns of.  A peer heard of only in gossip is
  a rumour (membership.py) until it answers that dial.  A peer that just joined is
  pushed at the next tick to every other alive peer, so a new node meets the whole
  cluster in about one round trip.
* Heartbeat: every ``heartbeat_interval_s``, PING each peer not heard from
  within that interval (so of two idle peers usually only one asks, and a
  busy link needs no PINGs); any frame counts as life;
  a peer silent past ``heartbeat_timeout_s`` is marked lost, its sockets are
  closed and it is retried with backoff until it answers or is forgotten.
* Leave: LEAVE removes the sender at once.
"""

from __future__ import annotations

import logging
from collections import Counter

from . import lan
from . import protocol as P
from .actions import LanBeacon, SavePeers, Shutdown, ToClient
from .dialer import Dialer
from .drops import Drops
from .gossip import Gossip
from .handshake import Handshake
from .heartbeat import Heartbeat
from .inputs import Flush, KeyAnswer, LanBeaconHeard, LinkHandshakeFailed, LinkRefused, RouterFrames, SubFrames, Subscription, Tick
from .intake import Intake
from .links import Links
from .liveness import Liveness
from .membership import ALIVE, LOST, Membership, Peer
from .messaging import Messaging
from .identity import NoKeys
from .names import Names
from .outbound import Outbound
from .overlay import Overlay, own_addresses
from .relay import Relay
from .roster import Roster
from .records import MAX_LINKS
from .routes import Routes
from .payloads import JoinData
from .replies import ok
from .seeded import for_node
from .shouts import Groups
from .settings import Settings
from .storage import Storage
from .tree import Tree
from .trust import Trust
from .watchers import Watchers

# The overlay's stats counters, as `info` lists them under "counters".
COUNTERS = ("routed_out", "routed_relayed", "routed_in", "routed_unreachable", "routed_too_large",
            "accusations_outdated",  # suspicions and deaths naming an older incarnation than our record: ignored
            # linked peers we suspected (the heartbeat lost them), and claims against us we refuted
            # (each one a false suspicion somewhere: a slow machine, a cut link)
            "suspicions_raised", "refutations",
            # silent links outside the active view closed without accusing (overlay.py `stray`), and
            # nodes that PINGed on a link we do not hold told DISCONNECT (`not_linked`)
            "strays_closed", "unlinked_told",
            "tree_payloads_out", "tree_payloads_in", "tree_duplicates",
            # groups (shouts.py): shouts sent, stored, SHOUT copies sent (ours and relayed), relayed,
            # taken unstored (not a member), members no route reached, replayed for join --since,
            # sent to one member as a MESSAGE (a resend, or its link had earlier messages to send first),
            # members whose route went back to the hop a SHOUT came from (left to the outbox)
            "shouts_out", "shouts_in", "shout_copies_out", "shouts_relayed", "shouts_not_member", "shout_unreachable",
            "shouts_replayed", "shout_unicasts", "shout_loops")

log = logging.getLogger("p2pd.node")

# The longest the loop sleeps between ticks: the timers without a deadline of their own (retries,
# the overlay's rounds) are looked at this often.  Each idle tick costs every node a little CPU,
# all the time: 0.5 s gave 2.29-2.85 ms of CPU a second per idle daemon among 60 on the slower
# machine of 2026-12-07, 1.0 s 1.77-2.24 (wakes 8.7-11.1 -> 5.5-7.8 a second).  Resends and waiting
# clients make the node busy (full rate), and the first moment a linked peer can fall silent is a
# deadline of its own (`next_deadline`), so failure detection is not later.
TICK_MAX_S = 1.0
LIVELY_S = 3.0  # after a frame other than a heartbeat, tick at full rate this long (next_deadline)
# Frames that say nothing changed: heartbeats, peer-list gossip and HyParView's periodic shuffles.
QUIET_TYPES = frozenset((P.PING, P.PONG, P.PEERS, P.ROUTED))  # ROUTED: by what it holds (_liven)
QUIET_VIEWS = frozenset(("SHUFFLE", "SHUFFLE_REPLY"))


class Node:
    def __init__(self, node_id: str, name: str, address: P.PeerAddress, settings: Settings, now: float, wall: float,
                 store: Storage | None = None, trust: Trust | None = None, rng: P.RandomBits | None = None,
                 keys=None, incarnation: int | None = None, hosts: tuple[str, ...] | None = None, randbytes=None):
        self.id = node_id
        self.name = name
        self.settings = settings
        self.started = now
        self.started_wall = wall
        self.wall_offset = wall - now  # epoch = monotonic + offset, for timestamps
        self.rng = rng if rng is not None else for_node(node_id, wall)
        self.stats: Counter = Counter()
        self.trust = trust if trust is not None else Trust(None, secure=False)
        # Without a store given (unit tests), an in-memory one: the daemon gives its SQLite store,
        # and never loads memstore (0.1 MiB of an idle daemon's memory).
        if store is None:
            from .memstore import MemoryStore

            store = MemoryStore(lambda n: self.rng.getrandbits(8 * n).to_bytes(n, "big"))
        self.store = store
        self.stopping = False
        self.boot = f"{self.rng.getrandbits(32):08x}"  # this run of the node: a peer that sees it change knows we restarted
        table = self.table = Membership(node_id, settings.retry_min_s, settings.retry_max_s, settings.forget_after_s)
        self.drop = Drops()
        self.links = Links(self.trust.secure)
        # The overlay (overlay.py): our few links, every node's signed record, routes to all.
        # The incarnation starts from the wall clock, so a restarted node's beats its last run's.
        self.keys = keys if keys is not None else NoKeys(node_id)
        inc = incarnation if incarnation is not None else int(wall * 1000)
        # The hosts our record lists (the daemon's: every advertised one, or the one peers likely see).
        hosts = hosts if hosts is not None else ((address.addr,) if address.addr not in P.WILDCARD_HOSTS and address.addr else ())
        self.roster = Roster(self.keys.record(name, own_addresses(hosts, address.port), inc, pub_port=address.pub_port),
                             verify=self.keys.verify, suspect_timeout_s=2.0, forget_after_s=settings.forget_after_s,
                             max_new_per_frame=P.MAX_FACTS)
        # Any node's record may list up to MAX_LINKS neighbours (active_view may be set up to 16):
        # a graph that kept 8 only would leave the better-linked nodes unroutable.
        self.routes = Routes(node_id, max_degree=MAX_LINKS)
        self.relay = Relay(node_id, name, self.keys.secret, self.keys.public, self.routes.next_hop, self._key_of, self.stats,
                           self.drop, self.rng, settings.max_frame_bytes)
        out = self.out = Outbound(node_id, name, self.wall_offset, table, self.stats, self.rng, self.links, self.relay)
        self.watchers = Watchers(out)
        self.names = Names(node_id, name, table, self.store, self._network, lambda: self.roster.changes)
        self.tree = Tree(node_id, name, self.keys.sign if self.keys.signed else None, self._verify_key_of, out, self.stats,
                         self.drop, self.rng, max_frame_bytes=settings.max_frame_bytes, links_authenticated=self.trust.secure,
                         direct_of=self.routes.star)
        self.msgs = Messaging(self.store, settings, out, table, self.links, self.watchers, self.names, self.drop, self.stats,
                              publish=self.tree.originate, reach=self._reach)
        self.handshake = Handshake(address, self.boot, settings, self.trust, out, self.links, self.msgs)
        # Groups (shouts.py).  Private groups' keys need random bytes from a cryptographic source:
        # the daemon gives os.urandom; nodes of tests and the simulator draw from their seeded rng.
        randbytes = randbytes if randbytes is not None else (lambda n: self.rng.getrandbits(8 * n).to_bytes(n, "big"))
        self.groups = Groups(node_id, name, self.store, self.msgs, out, self.routes, self.roster, self.watchers, self.stats,
                             self.drop, self.keys.sign if self.keys.signed else None, self._verify_key_of, randbytes,
                             self._reach, self._deliver, lambda now: self.overlay.resign_now(now),
                             lambda: self.roster.own.incarnation, settings.message_expiry_s)
        self.msgs.attach_groups(self.groups)
        # Origins whose signed record showed broadcasts we miss: asked again (`_refetch`) until we
        # have them, since a FETCH or its replay sent through the overlay may be lost on the way
        # (routes still forming after a heal) and the record, unchanged, will not tell us again.
        self._behind: dict[str, None] = {}
        self._lively_until = now + LIVELY_S  # starting up: see next_deadline
        self._refetch_at = now
        self.overlay = Overlay(node_id, name, address, hosts, settings, self.keys, self.trust, self.roster, self.routes, table, self.links,
                               self.handshake, out, self.drop, self.stats, self.rng, now, neighbours=self._neighbour,
                               beacon=self.msgs.beacon, announced=self._record_beacon, watchers=self.watchers,
                               groups=self.groups.record_entries, record_news=self.groups.on_record,
                               refuted=lambda now: self.liveness.health.degraded(now, "refuted a suspicion of this node"))
        if self.groups.joined:
            self.overlay.resign_now(now)  # our record lists the groups we were in before a restart
        self.gossip = Gossip(node_id, settings, table, out, self.handshake, self.trust, self.drop, now, self.rng,
                             may_dial=self.overlay.may_dial)
        self.heartbeat = Heartbeat(settings, table, out, now)
        self.liveness = Liveness(settings, table, self.links, self.handshake, self.gossip, self.watchers,
                                 lost=self.overlay.link_lost, stray=self.overlay.stray, drop_stray=self.overlay.drop_stray)
        self.dial = Dialer(settings, table, self.links, out, self.handshake, self.trust, self.msgs,
                           in_network=self.overlay.in_network)
        self.intake = Intake(node_id, settings, table, self.trust, self.msgs.delivery, self.drop, self.stats)
        self.lan = None  # LAN discovery (--discover lan): beacons out and in
        if settings.discover == "lan":
            self.lan = lan.LanDiscovery(node_id, address.port, self.trust.public_key if self.trust.secure else None,
                                        settings.discover_interval_s, now)
        self._handlers = {
            P.MESSAGE: self._on_message,
            P.BROADCAST: self.msgs.on_broadcast,
            P.PEERS: self.gossip.on_peers,
            P.PING: self._on_ping,
            P.PONG: self._on_pong,
            P.ACK: self.msgs.on_ack,
            P.FETCH: self._on_fetch,
            P.VIEW: self.overlay.on_view,
            P.ROUTED: self._on_routed,
            P.TREE: self._on_tree,
            P.FACTS: self.overlay.on_facts,
            P.SHOUT: self.groups.on_shout,
        }
        # What may come through the overlay from a node we hold no link to (relay.ROUTABLE).
        self._routed_handlers = {P.MESSAGE: self._on_message, P.ACK: self.msgs.on_ack, P.FETCH: self._on_fetch,
                                 P.BROADCAST: self.msgs.on_broadcast, P.VIEW: self.overlay.on_view}
        self._events = {
            RouterFrames: lambda now, e: self.on_router_frames(now, e.frames, e.peer_host, e.user_id),
            SubFrames: lambda now, e: self.on_sub_frames(now, e.frames, e.source, e.source_peer),
            Subscription: lambda now, e: self.on_subscription(now, e.frame),
            Tick: lambda now, e: self.tick(now),
            Flush: lambda now, e: self.flush(now),
            KeyAnswer: lambda now, e: self.on_key(now, e.tag, e.key, e.error, e.refused),
            LinkRefused: lambda now, e: self.on_link_refused(now, e.key),
            LinkHandshakeFailed: lambda now, e: self.on_link_handshake_failed(now, e.key),
            LanBeaconHeard: lambda now, e: self.on_lan_beacon(now, e.data, e.host),
        }

    def handle(self, now: float, event) -> list:
        """The one entry point for an event (inputs.py) at monotonic ``now``: the effects it asks for."""
        return self._events[type(event)](now, event)

    # ------------------------------------------------------------------ what tests and tools read
    @property
    def address(self) -> P.PeerAddress:
        """What we advertise; addr None = "use what you see"."""
        return self.handshake.address

    @property
    def dropped(self) -> Counter:
        return self.drop.counts

    @property
    def pings(self) -> dict:
        return self.heartbeat.pings

    @property
    def inbox(self) -> list[dict]:
        """The newest received messages (at most ``inbox_size``), oldest first."""
        return self.msgs.inbox(self.settings.inbox_size)

    @property
    def pending(self) -> dict:
        """JOIN message id -> `dialer.PendingConnect`: our dials by address not answered yet."""
        return self.dial.pending

    @property
    def key_fetches(self) -> dict:
        """Tag -> `dialer.PendingKey`: key fetches from a peer's key port not answered yet."""
        return self.dial.key_fetches

    @property
    def bootstraps(self) -> dict:
        """Endpoint -> `dialer.Bootstrap`: the ``--join`` addresses and their backoff."""
        return self.dial.bootstraps

    def epoch(self, now: float) -> float:
        """UNIX time at monotonic ``now``."""
        return now + self.wall_offset

    # ------------------------------------------------------------------ start / stop
    def start(self, now: float, saved_peers: list, join_endpoints: list[str]) -> list:
        acts: list = []
        for entry in saved_peers:
            try:
                addr = P.parse_address(entry)
                pid, name = entry["id"], entry["name"]
            except (P.ProtocolError, KeyError, TypeError):
                continue
            if pid == self.id or not P.valid_node_id(pid) or not P.valid_name(name) or addr.addr is None:
                continue
            key = entry.get("key") if P.valid_key(entry.get("key")) else None
            peer, _ = self.table.learn(pid, name, addr, now, key)
            peer.rid_suffix = entry.get("rid_suffix") is True  # known from its last JOIN: our first link already uses one
            acts += self.handshake.link_to(now, peer)
        return acts + self.dial.start(now, join_endpoints)

    def leave(self, now: float) -> list:
        """Graceful stop: LEAVE to every linked peer, then shut down."""
        self.stopping = True
        acts = self.overlay.leave(now)
        acts += [self.out.send(p.id, self.out.msg(now, P.LEAVE)) for p in self.table.alive()]
        log.info("leaving: sent LEAVE to %d peers", len(acts))
        return acts + [Shutdown()]

    # ------------------------------------------------------------------ frames in
    def on_router_frames(self, now: float, frames: list[bytes], peer_host, user_id: str | None = None) -> list:
        """A message on our ROUTER: [routing id, envelope, ...] from a peer's DEALER.

        ``user_id`` is the node id that ZAP derived from the sender's CURVE key (intake.py).
        ``peer_host`` is the address the frame came from, or a function that returns it: the
        transport's lookup costs a call into libzmq, and only a JOIN or a log line needs it."""
        source = peer_host or "?"  # a function is called only if a line is logged (drops.py)
        intake = self.intake
        if not intake.frames_ok(now, frames, user_id, source):
            return []
        rid = frames[0]
        if len(frames) == 2:
            msg = intake.envelope(now, rid, frames[1], user_id, source)
            return [] if msg is None else self._dispatch(now, msg, peer_host, source)
        acts: list = []
        for raw in frames[1:]:  # a batch: each envelope stands alone, in order
            msg = intake.envelope(now, rid, raw, user_id, source)
            if msg is not None:
                acts += self._dispatch(now, msg, peer_host, source)
        return acts

    def on_sub_frames(self, now: float, frames: list[bytes], source: str = "sub", source_peer: str | None = None) -> list:
        """A message on one of our SUB sockets: BROADCASTs (one, or a batch) from the PUB of ``source_peer``."""
        if not self.intake.sub_frames_ok(now, frames, source):
            return []
        acts: list = []
        for raw in frames:
            msg = self.intake.sub_envelope(now, raw, source, source_peer)
            if msg is not None:
                acts += self._dispatch(now, msg, None, source)
        return acts

    def on_subscription(self, now: float, frame: bytes) -> list:
        """XPUB told us a subscriber (un)subscribed."""
        self.intake.subscription(frame)
        return []

    def debt(self, now: float, peer_id: str) -> int:
        """How many frames the peer has had on credit and not yet repaid (intake.py)."""
        return self.intake.debt(now, peer_id)

    def _dispatch(self, now: float, msg: P.Message, peer_host: str | None, source) -> list:
        if msg.sender_id == self.id:
            if msg.type == P.JOIN:
                return self.dial.join_from_self(now, msg)
            self.drop(now, "self", "frame claims to come from this node", source)
            return []
        self._liven(now, msg)
        if msg.type == P.JOIN:
            return self._on_join(now, msg, peer_host, source)
        peer = self.table.get(msg.sender_id)
        if peer is None:
            if msg.type == P.LEAVE:
                return []
            self.drop(now, "not_linked", f"{msg.type} from unknown node {msg.sender_id[:12]} (no JOIN yet)", source)
            return self.overlay.not_linked(now, msg) if peer_host is not None else []  # on our ROUTER: it thinks we are linked
        if msg.type == P.LEAVE:
            return self._on_leave(now, peer)
        handler = self._handlers[msg.type]
        if self.table.heard_from(peer.id, now):
            return self._became_alive(now, peer) + handler(now, msg, peer)
        return handler(now, msg, peer)

    # ------------------------------------------------------------------ links up and down
    def _became_alive(self, now: float, peer: Peer, dialled: bool = False, explicit: bool = False) -> list:
        acts = self.links.ensure(now, peer)
        acts.append(self.links.subscribe(peer))
        acts += self.gossip.became_alive(now, peer)
        acts.append(SavePeers(self.table.book()))
        a = peer.address
        self.store.remember_peer(peer.id, peer.name, a.addr, a.port, a.pub_port, self.epoch(now))
        self.names.book_changed()
        log.info("peer joined: %s (%s) at %s", peer.name, peer.id[:12], peer.router_endpoint)
        acts += self.watchers.emit(now, "joined", peer=peer.describe(now))
        acts += self.overlay.link_up(now, peer, dialled, explicit)
        return acts + self.msgs.link_up(now, peer)

    def _on_join(self, now: float, msg: P.Message, peer_host: str | None, source) -> list:
        """Admit or refuse a JOIN; learn its sender; answer it (unless it is the answer to ours)."""
        data: JoinData = msg.data
        adv = P.parse_address(data)
        if callable(peer_host):
            peer_host = peer_host()
        host = adv.addr if adv.addr not in P.WILDCARD_HOSTS and adv.addr is not None else peer_host
        if not host:
            self.drop(now, "bad_field", "JOIN without an address and no peer address to use instead", source)
            return []
        known = self.table.get(msg.sender_id)
        if (known is None or known.rumour) and self.table.member_count() >= self.settings.max_peers:
            self.drop(now, "peer_limit", f"already at max_peers={self.settings.max_peers}", source)
            return []
        key = data.get("key")
        refusal = self.trust.may_link(msg.sender_id, key)
        if refusal is not None:
            self.drop(now, "bad_key", f"JOIN from {msg.sender_id[:12]} refused: {refusal}", source)
            return []
        problem = self.trust.pin_refusal(host, adv.port, key)
        if problem is not None:  # else a new key at a pinned address just dials in, and we would link back to it
            self.drop(now, "key_changed", f"JOIN from {msg.sender_id[:12]} refused: {problem}", source)
            return []
        evicted = self._room_for_leaf(now, msg, known, source)  # last: a JOIN refused above makes no one room
        if evicted is None:
            return []
        address = P.PeerAddress(host, adv.port, adv.pub_port)
        old = known
        old_pub = old.pub_endpoint if old is not None else None
        if old is None:
            self.gossip.first_contact(msg.sender_id)
        peer, _ = self.table.learn(msg.sender_id, msg.sender_name, address, now, key)  # the name bound to its key
        peer.batch = data.get("batch") is True
        peer.rid_suffix = data.get("rid_suffix") is True
        peer.digest = data.get("digest") is True
        boot = data.get("boot")
        restarted = old is not None and old.boot is not None and boot != old.boot
        peer.boot = boot
        acts: list = evicted + self.msgs.on_join(now, peer, data)  # first: it may start a new store epoch
        reply_to = data.get("reply_to")
        pc, replied = self.dial.on_reply(now, peer, reply_to)  # the answer to our dial, if it is one
        acts += replied
        if not reply_to and old is not None and peer.id in self.links and self.handshake.stale_link(now, peer, msg, restarted):
            # It introduced itself again: it restarted, or it stopped hearing us although ZeroMQ sees
            # our link as up (e.g. its ROUTER handed our routing id to another connection and left
            # ours open but unread).  A fresh connection heals both; the outbox resends what was lost.
            acts += self.links.close(peer.id)
        acts += self.links.ensure(now, peer)
        if old_pub is not None and old_pub != peer.pub_endpoint and old.state == ALIVE:
            acts += [self.links.unsubscribe(peer, old_pub), self.links.subscribe(peer)]
        if not reply_to:
            acts.append(self.out.send(peer.id, self.handshake.join(now, reply_to=msg.id, to=peer.id)))
        if self.table.heard_from(peer.id, now):
            acts += self._became_alive(now, peer, dialled=bool(reply_to), explicit=pc is not None)
        elif not reply_to:
            # A peer we thought alive introduced itself again (it restarted
            # quickly): it has forgotten what it knew, so tell it again.
            acts.append(self.out.send(peer.id, self.gossip.peers_msg(now, exclude=peer.id)))
            acts += self.overlay.reintroduced(now, peer)
        if pc is not None and pc.since is not None:
            acts += self.msgs.request_since(now, peer, pc.since)
        acts += self.msgs.announced(now, peer, data)
        if pc is not None and pc.client is not None:
            acts.append(ToClient(pc.client, ok(pc.req, {"peer": peer.describe(now)})))
        return acts

    def _room_for_leaf(self, now: float, msg: P.Message, known: Peer | None, source) -> list | None:
        """A new simple peer (its JOIN does not say ``digest``) within ``max_leaves``: None if refused,
        else what making room took (the link of the leaf lost the longest, dropped).  A dial the
        user asked for (``connect``, a bootstrap) is never refused here."""
        data = msg.data
        if data.get("digest") is True or (known is not None and not known.rumour) or self.dial.asked_for(data.get("reply_to")):
            return []
        cap = min(self.settings.max_leaves, self.settings.max_peers)
        ok, gone = self.table.room_for_leaf(cap)
        if not ok:
            self.drop(now, "leaf_limit", f"JOIN from simple peer {msg.sender_id[:12]} refused: {cap} leaves linked or linking "
                      f"(max_leaves={self.settings.max_leaves})", source)
            return None
        if gone is None:
            return []
        log.info("forgot %s (%s), a lost simple peer, to make room for %s (max_leaves=%d)",
                 gone.name, gone.id[:12], msg.sender_id[:12], self.settings.max_leaves)
        return self.links.close(gone.id) + [SavePeers(self.table.book())]

    def _on_leave(self, now: float, peer: Peer) -> list:
        self.table.remove(peer.id)
        acts = self.links.close(peer.id) + self.overlay.peer_gone(now, peer.id)
        if peer.state == ALIVE:
            acts.append(self.links.unsubscribe(peer))
        acts.append(SavePeers(self.table.book()))
        log.info("peer left: %s (%s)", peer.name, peer.id[:12])
        return acts + self.watchers.emit(now, "left", peer=peer.describe(now))

    def _on_message(self, now: float, msg: P.Message, peer: Peer) -> list:
        if msg.target_id != self.id:
            self.drop(now, "misrouted", f"MESSAGE for {str(msg.target_id)[:12]} delivered to this node", peer.name)
            return []
        before = self.stats["messages_in"]
        acts = self.msgs.on_message(now, msg, peer)
        peer.msgs_in += self.stats["messages_in"] - before  # delivered here: counted as info's messages_in is
        return acts

    def _on_fetch(self, now: float, msg: P.Message, peer: Peer) -> list:
        """FETCH: a group's shouts since a time (``join --since``, shouts.py), or our broadcasts."""
        if "group" in msg.data:
            return self.groups.on_fetch(now, msg, peer)
        return self.msgs.on_fetch(now, msg, peer)

    def _deliver(self, now: float, msg: P.Message) -> list:
        """A MESSAGE a SHOUT stood for (shouts.py), handled as if it had come from its origin."""
        origin = self.table.get(msg.sender_id)
        if origin is None or origin.id not in self.links:
            origin = self.overlay.remote_peer(msg.sender_id, now)
        if origin is None:
            self.drop(now, "not_linked", f"shout from {msg.sender_id[:12]}, a node we have no record of", "shout")
            return []
        return self._on_message(now, msg, origin)

    def _key_of(self, node_id: str) -> str | None:
        """The CURVE key a node's signed record names (what routed messages are sealed to)."""
        rec = self.roster.record_of(node_id)
        return rec.curve_key if rec is not None and self.keys.signed else None

    def _network(self) -> list[tuple[str, str]]:
        """(id, name) of every node in the overlay's roster (whatever its state: a message to a node
        that is down waits in the outbox), as signed by each."""
        return [(m.node_id, m.name) for m in self.roster.members() if m.node_id != self.id]

    def _verify_key_of(self, node_id: str) -> bytes | None:
        """The Ed25519 key a node's signed record names (what its broadcasts are checked with)."""
        rec = self.roster.record_of(node_id)
        return rec.verify_key if rec is not None and self.keys.signed else None

    def _reach(self, peer_id: str) -> bool:
        """Can a direct message go to this peer now: linked and alive, or through the overlay?"""
        peer = self.table.get(peer_id)
        return (peer is not None and peer.state == ALIVE) or self.overlay.reachable(peer_id)

    def _record_beacon(self, now: float, node_id: str, data: dict) -> list:
        """A node's signed record gave its broadcast numbers: fetch (routed if need be) what we missed."""
        def peer_of():
            peer = self.table.get(node_id)
            return peer if peer is not None and node_id in self.links else self.overlay.remote_peer(node_id, now)

        if node_id == self.id or self.roster.record_of(node_id) is None:
            return []  # as remote_peer would say: no origin to fetch from
        if len(self._behind) < 4 * self.settings.max_peers:
            self._behind[node_id] = None
        return self.msgs.announced_by(now, node_id, data, peer_of)

    def _refetch(self, now: float) -> list:
        """Fetch again, from the origins we are behind, what their records say we miss (one FETCH
        in flight per origin, `Delivery._want`); an origin is forgotten once we have caught up."""
        if now < self._refetch_at or not self._behind:
            return []
        self._refetch_at = now + self.settings.ack_timeout_s
        acts: list = []
        for node_id in list(self._behind):
            rec = self.roster.record_of(node_id)
            if rec is None or not rec.bepoch or self.roster.state_of(node_id) != ALIVE:
                del self._behind[node_id]
                continue
            have = self.msgs.delivery.link(node_id).bcast_seq
            if have is not None and have >= rec.bseq:
                del self._behind[node_id]
                continue
            acts += self._record_beacon(now, node_id, {"bseq": rec.bseq, "boldest": rec.boldest, "epoch": rec.bepoch})
        return acts

    def _neighbour(self, peer_id: str, up: bool) -> None:
        """A link came up or went: the broadcast tree spans our links (tree.py)."""
        (self.tree.neighbor_up if up else self.tree.neighbor_down)(peer_id)

    def _on_tree(self, now: float, msg: P.Message, peer: Peer) -> list:
        """The broadcast tree (tree.py): a broadcast pushed to us (GOSSIP, on our SUB), or its repair
        (IHAVE, GRAFT, PRUNE, on our ROUTER).  Each broadcast seen first is delivered as if from its origin."""
        acts, fresh = self.tree.on_tree(now, msg, peer.id)
        for bcast in fresh:
            origin = self.table.get(bcast.sender_id)
            if origin is None:
                origin = self.overlay.remote_peer(bcast.sender_id, now)
            if origin is None:  # no record of it yet (a keyless node; a signed one was checked against its record)
                origin = Peer(bcast.sender_id, bcast.sender_name, P.PeerAddress(None, 0, 0), ALIVE, since=now, learned=now)
            acts += self.msgs.on_broadcast(now, bcast, origin)
        return acts

    def _liven(self, now: float, msg: P.Message) -> None:
        """Tick at full rate for LIVELY_S after a frame that may need quick reactions (see
        `next_deadline`): not after upkeep (heartbeats, gossip, shuffles), nor after a ROUTED
        envelope as such: passed on at once, or judged by what it holds (`_on_routed`).  A routed
        shuffle reply once kept every node ticking 20 times a second for 3 s in 10 when idle."""
        kind = msg.type
        if kind in QUIET_TYPES or (kind == P.VIEW and isinstance(msg.data, dict) and msg.data.get("kind") in QUIET_VIEWS):
            return
        self._lively_until = now + LIVELY_S

    def _on_routed(self, now: float, msg: P.Message, hop: Peer) -> list:
        """A sealed envelope on its way through the overlay (relay.py): passed on, or opened and
        handled as if it had come over a link from its origin."""
        acts, inner = self.relay.on_routed(now, msg, hop.id)
        if inner is None:
            return acts
        origin = self.table.get(inner.sender_id)
        if origin is None or origin.id not in self.links:
            origin = self.overlay.remote_peer(inner.sender_id, now)
        if origin is None:
            self.drop(now, "not_linked", f"routed {inner.type} from {inner.sender_id[:12]}, a node we have no record of", hop.name)
            return acts
        self.stats["frames_in"] += 1
        self._liven(now, inner)
        return acts + self._routed_handlers[inner.type](now, inner, origin)

    def _on_ping(self, now: float, msg: P.Message, peer: Peer) -> list:
        # The PONG announces our broadcast numbers too: of two idle peers only one may PING.
        pong = self.heartbeat.pong(now, msg, peer, self.msgs.beacon())
        return pong + self.msgs.announced(now, peer, msg.data, patience_s=self.settings.ack_timeout_s)

    def _on_pong(self, now: float, msg: P.Message, peer: Peer) -> list:
        announced = self.msgs.announced(now, peer, msg.data, patience_s=self.settings.ack_timeout_s)
        return announced + self.heartbeat.on_pong(now, msg, peer)

    # ------------------------------------------------------------------ events from the performer (transport, simulator)
    def on_sent(self, now: float, key: str, msg: P.Message) -> None:
        """A `Send` with report_sent went on the wire at ``now``: a PING's round trip is timed from
        here, not from when it was decided (the rest of that loop turn is not the network's doing)."""
        self.heartbeat.sent(msg.id, now)

    def watch(self, client: bytes, group: str | None = None) -> None:
        """Stream events to control client ``client`` (`p2pctl watch`, the chat) until it goes;
        ``group``: only the events of that group (as shown: its shouts, its members' joins and leaves)."""
        self.watchers.add(client, group)

    def on_client_gone(self, client: bytes) -> None:
        """The control socket cannot reach ``client`` any more (it disconnected): stop streaming to it."""
        self.watchers.discard(client)

    # ------------------------------------------------------------------ timers
    def next_deadline(self, now: float) -> float:
        """How long the event loop may sleep before calling `tick`: no time at all while the node
        is lively (frames other than heartbeats came in the last LIVELY_S: a network forming or
        repairing, traffic), messages await acknowledgement or a connect its answer, so that the
        loop ticks at its fastest rate (transport.TICK_S) as the overlay's reactions expect; else
        until the next timer, at most TICK_MAX_S.  An idle node so wakes a few times a second
        instead of twenty, which was the largest part of its idle cost at scale."""
        if now < self._lively_until or self.msgs.busy() or self.dial.busy():
            return 0.0
        soonest = min(self.heartbeat.next_at, self.gossip.next_at, now + TICK_MAX_S)
        quiet = self.table.quiet_until(self.liveness.timeout(now))  # the next peer that can fall silent
        if quiet is not None:
            soonest = min(soonest, quiet + 0.001)  # `silent` counts a peer silent strictly after it
        tree_at = self.tree.next_deadline()
        if tree_at is not None:
            soonest = min(soonest, tree_at)
        if self.lan is not None:
            soonest = min(soonest, self.lan.next_at)
        return max(0.0, soonest - now)

    def tick(self, now: float) -> list:
        acts: list = []
        if self.lan is not None:
            payload = self.lan.due(now)
            if payload is not None:
                acts.append(LanBeacon(payload))
        acts += self.liveness.tick(now)
        if self.heartbeat.due(now):
            acts += self.heartbeat.ping_silent(now, self.msgs.beacon())
        acts += self.gossip.tick(now)
        acts += self.overlay.tick(now)
        acts += self._refetch(now)
        acts += self.tree.tick(now)
        acts += self.groups.tick(now)
        acts += self.heartbeat.expire(now)
        return acts + self.dial.tick(now) + self.msgs.tick(now)

    def flush(self, now: float) -> list:
        """End of an input batch: what may go out only once the store is committed."""
        return self.msgs.flush(now, unpaid=lambda peer_id: self.intake.debt(now, peer_id))

    def on_key(self, now: float, tag: str, key: str | None, error: str | None, refused: bool = False) -> list:
        """The transport's answer to FetchKey (see `Dialer.on_key`)."""
        return self.dial.on_key(now, tag, key, error, refused)

    def on_link_refused(self, now: float, key: str) -> list:
        """The transport saw the connection of link ``key`` (an `OpenLink` with report_refused) refused."""
        return self.dial.on_refused(now, key)

    def on_link_handshake_failed(self, now: float, key: str) -> list:
        """The first handshake on link ``key`` failed: the node at its address does not hold the key
        we expect (another node there now, or a new key), or is not p2pd.  libzmq would try it
        again every 100 ms for as long as the link stayed open (its backoff is undone by each
        TCP connect that succeeds): closed, it is retried on our own backoff (liveness.py)."""
        endpoint = self.links.get(key)
        if endpoint is None:
            return []
        peer = self.table.get(key)
        who = f"{peer.name} ({key[:12]})" if peer is not None else key[:60]
        self.drop(now, "handshake_failed", f"our link to {who} at {endpoint} failed its handshake: the node there does not "
                  f"hold the key we expect, or is not p2pd; closed, tried again later", endpoint)
        return self.links.close(key)

    def on_lan_beacon(self, now: float, data: bytes, host: str) -> list:
        """A UDP beacon from ``host`` (LAN discovery, p2pd/lan.py): dial its sender unless we are linked to it."""
        if self.lan is None:
            return []
        try:
            beacon = lan.decode(data)
        except lan.BadBeacon as e:
            self.drop(now, "bad_beacon", str(e), f"{host} (LAN beacon)")
            return []
        peer = self.table.get(beacon.node_id)
        # Linked, or a member of the network we are in (the overlay links us to a few only): no dial.
        linked = peer is not None and (peer.state == ALIVE or beacon.node_id in self.links) or self.overlay.in_network(beacon.node_id)
        if not self.lan.should_dial(now, beacon, linked):
            return []
        refusal = self.trust.may_link(beacon.node_id, beacon.key)
        if refusal is not None:
            log.debug("LAN beacon from %s at %s ignored: %s", beacon.node_id[:12], host, refusal)
            return []
        log.info("LAN beacon from %s at %s:%d: linking", beacon.node_id[:12], host, beacon.port)
        return self.dial.dial_address(now, host, beacon.port, deadline=now + lan.REDIAL_S, key=beacon.key)

    # ------------------------------------------------------------------ control-socket operations
    def connect(self, now: float, host: str, port: int, wait_s: float, client: bytes, req, since: float | None = None,
                key: str | None = None, addrs: tuple[str, ...] = ()) -> list:
        """Link to host:port, or say we already are (see `Dialer.connect`)."""
        return self.dial.connect(now, host, port, wait_s, client, req, since, key, addrs)

    def disconnect(self, now: float, peer: Peer) -> list:
        """Tell the peer we are leaving it and forget it (it may come back by JOIN)."""
        acts = [self.out.send(peer.id, self.out.msg(now, P.LEAVE))] if peer.id in self.links else []
        self.table.remove(peer.id)
        # The LEAVE must go out before the link closes: the transport lingers on close.
        acts += self.links.close(peer.id) + self.overlay.peer_gone(now, peer.id)
        if peer.state == ALIVE:
            acts.append(self.links.unsubscribe(peer))
        acts.append(SavePeers(self.table.book()))
        log.info("disconnected from %s (%s) on request", peer.name, peer.id[:12])
        return acts + self.watchers.emit(now, "left", peer=peer.describe(now))

    def resolve_target(self, query: str) -> tuple[str, str]:
        """A peer to send to (see `Names.resolve_target`)."""
        return self.names.resolve_target(query)

    def label_rows(self, rows: list[dict], peer_key: str = "peer_name") -> list[dict]:
        """History or outbox rows, labelled (see `Names.label_rows`)."""
        return self.names.label_rows(rows, peer_key)

    def ping(self, now: float, peer: Peer, timeout_s: float, client: bytes, req) -> list:
        return self.heartbeat.ping(now, peer, timeout_s, client, req)

    def info(self, now: float) -> dict:
        peers = self.table.members()
        return {
            "id": self.id,
            "name": self.name,
            "address": {"addr": self.address.addr, "port": self.address.port, "pub_port": self.address.pub_port},
            "uptime_s": round(now - self.started, 3),
            "started": P.utc_timestamp(self.started_wall),
            "peers": len(peers),
            "peers_alive": sum(1 for p in peers if p.state == ALIVE),
            "peers_lost": sum(1 for p in peers if p.state == LOST),
            "rumours": self.table.rumour_count(),
            "unread": self.msgs.unread_count(),
            "read_upto": self.msgs.read_upto(),
            "messages_in": self.stats["messages_in"],
            "messages_out": self.stats["messages_out"],
            "broadcasts_in": self.stats["broadcasts_in"],
            "broadcasts_out": self.stats["broadcasts_out"],
            "groups": len(self.groups.joined),
            "outbox_pending": self.msgs.pending_count(),
            "messages_delivered": self.stats["messages_delivered"],
            "messages_expired": self.stats["messages_expired"],
            "duplicates_dropped": self.stats["duplicates_dropped"],
            "out_of_order_dropped": self.stats["out_of_order_dropped"],
            "broadcast_fetches": self.stats["broadcast_fetches"],
            "broadcasts_replayed": self.stats["broadcasts_replayed"],
            "store_rollbacks_detected": self.stats["store_rollbacks_detected"],
            "frames_in": self.stats["frames_in"],
            "frames_out": self.stats["frames_out"],
            "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()),
            "watchers": len(self.watchers),
            "security": "curve" if self.trust.secure else "insecure",
            "public_key": self.trust.public_key,
            "allowlist": self.trust.allowlist_mode,
            "protocol_version": P.PROTOCOL_VERSION,
            "overlay": self.overlay.describe(),
            "counters": {k: self.stats[k] for k in COUNTERS},
            "heartbeat_interval_s": self.settings.heartbeat_interval_s,
            "heartbeat_timeout_s": self.settings.heartbeat_timeout_s,
            # Longer while this node shows signs of being slow itself (health.py)
            "heartbeat_timeout_now_s": self.liveness.timeout(now),
            "discover": None if self.lan is None else {
                "mode": "lan", "port": self.settings.discover_port, "to": self.settings.discover_to,
                "beacons_sent": self.lan.sent, "beacons_heard": self.lan.heard, "dials": len(self.lan.dialed)},
        }

