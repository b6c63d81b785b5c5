"""The node's decisions: what to do with each frame, tick and control request.

How this works
--------------
`Node` is a sans-I/O state machine (in the spirit of h11): the event loop in
`transport.py` feeds it raw frames and the current monotonic time, and it
returns a list of effects from `actions.py` (open a link, send an envelope,
reply to a control client ...).  It owns the membership table, the links, the
counters and the in-flight pings, and hands parts to helpers it owns:
messages and broadcasts to `messaging.py`, dialing by address (key fetch,
pinning, pending links, ``--join`` bootstraps) to `dialer.py`; the checks
every inbound frame passes (origin, rate limit) are `intake.py`'s.  It owns no
socket and reads no clock, so every rule below is unit-tested without ZeroMQ.

The peer protocol (docs/PROTOCOL.md):

* Link: to reach a peer we open a DEALER to its ROUTER and send JOIN.  A JOIN
  that is not itself a reply is answered with a JOIN carrying ``reply_to``,
  over the receiver's own DEALER to the sender's ROUTER, so both sides end
  up with one link each way.  A dial by address (``connect``, ``--join``, a
  LAN beacon) is `dialer.py`'s until the JOIN reply tells us whose it is.
* Gossip: on link-up we send PEERS (our alive peers with their addresses) to
  the new peer, and every ``gossip_interval_s`` to ``GOSSIP_FANOUT`` alive peers
  picked at random (not to every one: in a full mesh of n that would be n - 1
  lists of n - 1 entries from each node, O(n^3) a round; a few random ones keep
  the lists converging, as anti-entropy, at O(n^2)); a node dials every peer it
  learns of.  A peer
  heard of only in gossip is a rumour (membership.py) until it answers that
  dial: bounded per introducer and in all, never named, forgotten quickly if
  it does not answer.  A peer that just joined is also pushed at once (at the
  next tick) to every other alive peer, so a new node meets the whole cluster
  in about one round trip instead of one gossip interval; a rumour is passed
  on the same way once it has answered us, never before (to all but whoever
  told us of it), so made-up peers do not travel.
* Heartbeat: every ``heartbeat_interval_s``, PING each peer not heard from
  within that interval (so of two idle peers usually only one asks, and a
  busy link needs no PINGs); any frame counts as life;
  a peer silent past ``heartbeat_timeout_s`` is marked lost, its sockets are
  closed and it is retried with backoff until it answers or is forgotten.
* Leave: LEAVE removes the sender at once.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from dataclasses import dataclass

from . import lan
from . import protocol as P
from .actions import CloseLink, LanBeacon, OpenLink, SavePeers, Send, SendBatch, Shutdown, Subscribe, ToClient, Unsubscribe
from .dialer import Dialer
from .errors import ErrorCode
from .intake import Intake
from .membership import ALIVE, LOST, MAX_RUMOURS, RUMOURS_PER_INTRODUCER, Membership, Peer, is_loopback
from .targets import BookEntry, pick
from .messaging import Messaging
from .ratelimit import LogRateLimiter
from .settings import Settings
from .store import Store
from .trust import Trust

# The node's own randomness (its boot tag).  Only the deterministic simulator (p2pd/sim.py)
# replaces it, with a seeded source, so that a run can be replayed; the daemon never does.
_urandom = os.urandom

GOSSIP_FANOUT = 3  # alive peers sent our full PEERS each gossip_interval_s (see the top)

log = logging.getLogger("p2pd.node")

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "*", ""})


@dataclass
class PendingPing:
    peer_id: str
    sent_at: float
    client: bytes | None = None
    req: object = None
    deadline: float = 0.0


class Node(Intake):
    def __init__(self, node_id: str, name: str, address: P.PeerAddress, settings: Settings, now: float, wall: float,
                 store: Store | None = None, trust: Trust | None = None):
        self.id = node_id
        self.name = name
        self.address = address  # what we advertise; addr None = "use what you see"
        self.settings = settings
        self.started = now
        self.started_wall = wall
        self.wall_offset = wall - now  # epoch = monotonic + offset, for timestamps
        self.table = Membership(node_id, settings.retry_min_s, settings.retry_max_s, settings.forget_after_s)
        self.link_since: dict[str, float] = {}  # link key -> when we opened it
        self.links: dict[str, str] = {}  # link key -> router endpoint
        self.pings: dict[str, PendingPing] = {}
        self.watchers: set[bytes] = set()
        self.stats: Counter = Counter()
        self.trust = trust if trust is not None else Trust(None, secure=False)
        self.store = store if store is not None else Store(":memory:")
        self.msgs = Messaging(self, self.store, settings)
        self.dial = Dialer(self)  # connect by address, key fetch and pinning, pending links, bootstraps
        self.dropped: Counter = Counter()
        self._limiter = LogRateLimiter(1.0)
        self._next_heartbeat = now
        self._next_gossip = now + settings.gossip_interval_s
        self._joined: list[str] = []  # peers that became alive since the last tick
        self._rumors: dict[str, str] = {}  # peers first heard of in PEERS, not yet passed on -> who told us
        # Peers whose JOIN reached us before any gossip did: new to the cluster as far as we know.
        # They are pushed once alive; peers first heard of in gossip (_rumors) are passed on once they
        # have answered our dial, to all but whoever told us (see the top).
        self._first_contact: set[str] = set()
        self._name_index: dict[str, set[str]] | None = None  # see `sender`; None: build again
        self._entries: dict[str, tuple] = {}  # peer id -> (address, name, key, its PEERS entry): see _peer_entry
        self._book_entries: dict[str, tuple] = {}  # peer id -> (address, name, key, rid_suffix, its entry): see _save_peers
        self._book_names: dict[str, str] = {}
        self.stopping = False
        self.boot = _urandom(4).hex()  # this run of the node: a peer that sees it change knows we restarted
        self._rng = random.Random(_urandom(16))  # who gets each round of gossip
        self.lan = None  # LAN discovery (--discover lan): beacons out and in
        if settings.discover == "lan":
            self.lan = lan.LanDiscovery(node_id, address.port, self.trust.public_key if self.trust.secure else None,
                                        settings.discover_interval_s, now)
        self._handlers = {
            P.MESSAGE: self._on_message,
            P.BROADCAST: self.msgs.on_broadcast,
            P.PEERS: self._on_peers,
            P.PING: self._on_ping,
            P.PONG: self._on_pong,
            P.ACK: self.msgs.on_ack,
            P.FETCH: self.msgs.on_fetch,
        }

    @property
    def inbox(self) -> list[dict]:
        """The newest received messages (at most ``inbox_size``), oldest first."""
        return self.msgs.inbox(self.settings.inbox_size)

    # The dialer's state, still readable here: tests and tools look at it on the node.
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

    # ------------------------------------------------------------------ helpers
    def _epoch(self, now: float) -> float:
        return now + self.wall_offset

    def _msg(self, now: float, type_: str, data: dict | None = None, target: str | None = None) -> P.Message:
        return P.make(type_, self.id, self.name, self._epoch(now), data, target)

    def _join(self, now: float, reply_to: str | None = None, again: bool = False, to: str | None = None) -> P.Message:
        """A JOIN; ``to``: the peer it goes to, if known (it then says how far we received that peer's numbering)."""
        data = {"addr": self.address.addr, "port": self.address.port, "pub_port": self.address.pub_port, "reply_to": reply_to,
                "key": self.trust.public_key, "batch": True, "rid_suffix": True, "boot": self.boot, **self.msgs.beacon(), **self.msgs.received(to)}
        if again:
            data["again"] = True
        return self._msg(now, P.JOIN, data)

    def _peers_msg(self, now: float, exclude: str, peers: list[Peer] | None = None) -> P.Message:
        # Each entry is kept per peer (see _peer_entry): a full mesh lists every peer at every
        # link-up, O(n^3) entries while it forms.  The dicts are shared by the messages that list
        # them, and never changed.
        cache, entries = self._entries, []
        for p in self.table.alive() if peers is None else peers:
            if p.id == exclude:
                continue
            c = cache.get(p.id)
            entries.append(c[3] if c is not None and c[0] is p.address and c[1] is p.name and c[2] is p.key else self._peer_entry(p))
        return self._msg(now, P.PEERS, {"peers": entries})

    def _peer_entry(self, p: Peer) -> dict:
        """A peer as PEERS lists it, kept until its name, address or key is another object."""
        if len(self._entries) >= 2 * self.settings.max_peers + MAX_RUMOURS:
            self._entries.clear()  # peers come and go: bounded
        a = p.address
        entry = {"id": p.id, "name": p.name, "addr": a.addr, "port": a.port, "pub_port": a.pub_port, "key": p.key}
        self._entries[p.id] = (a, p.name, p.key, entry)
        return entry

    def drop(self, now: float, kind: str, reason: str, source="") -> None:
        """Count and (rate-limited) log one piece of bad input.

        ``source`` may be a function returning it: looked up only when logged."""
        self.dropped[kind] += 1
        ok, suppressed = self._limiter.allow(kind, now)
        if ok:
            if callable(source):
                source = source()
            more = f" ({suppressed} more like it suppressed)" if suppressed else ""
            log.warning("dropped bad input [%s] from %s: %s%s", kind, source or "?", reason, more)

    def emit(self, now: float, event: str, **fields) -> list:
        if not self.watchers:
            return []
        payload = {"event": event, "time": P.utc_timestamp(self._epoch(now)), **fields}
        return [ToClient(c, payload) for c in self.watchers]

    def _save_peers(self) -> SavePeers:
        # Written at every link-up: each entry is kept per peer as in _peers_msg (shared, never changed).
        cache, book = self._book_entries, []
        for p in self.table.members():
            c = cache.get(p.id)
            if c is None or c[0] is not p.address or c[1] is not p.name or c[2] is not p.key or c[3] is not p.rid_suffix:
                if len(cache) >= 2 * self.settings.max_peers:
                    cache.clear()  # peers come and go: bounded
                a = p.address
                c = cache[p.id] = (a, p.name, p.key, p.rid_suffix, {"id": p.id, "name": p.name, "addr": a.addr, "port": a.port,
                                                                    "pub_port": a.pub_port, "key": p.key, "rid_suffix": p.rid_suffix})
            book.append(c[4])
        return SavePeers(book)

    def _ensure_link(self, now: float, peer: Peer) -> list:
        endpoint = peer.router_endpoint
        current = self.links.get(peer.id)
        if current == endpoint:
            return []
        acts = [CloseLink(peer.id)] if current is not None else []
        self.links[peer.id] = endpoint
        self.link_since[peer.id] = now
        return acts + [OpenLink(peer.id, endpoint, self._server_key(peer), peer.rid_suffix)]

    def _server_key(self, peer: Peer) -> str | None:
        return peer.key if self.trust.secure else None

    def _sub(self, peer: Peer) -> Subscribe:
        return Subscribe(peer.pub_endpoint, peer.id, self._server_key(peer))

    def _unsub(self, peer: Peer, endpoint: str | None = None) -> Unsubscribe:
        return Unsubscribe(endpoint or peer.pub_endpoint, peer.id)

    def _close_link(self, key: str) -> list:
        self.link_since.pop(key, None)
        return [CloseLink(key)] if self.links.pop(key, None) is not None else []

    def _send(self, key: str, msg: P.Message) -> Send:
        self.stats["frames_out"] += 1
        peer = self.table.get(key)
        if peer is not None:
            peer.frames_out += 1
        return Send(key, msg)

    def _send_many(self, key: str, msgs: list) -> list:
        """Envelopes for one link: batched (MAX_BATCH a message) if the peer takes batches."""
        peer = self.table.get(key)
        if peer is None or not peer.batch or len(msgs) < 2:
            return [self._send(key, m) for m in msgs]
        self.stats["frames_out"] += len(msgs)
        peer.frames_out += len(msgs)
        return [SendBatch(key, msgs[k:k + P.MAX_BATCH]) for k in range(0, len(msgs), P.MAX_BATCH)]

    def _became_alive(self, now: float, peer: Peer) -> list:
        acts = self._ensure_link(now, peer)
        acts.append(self._sub(peer))
        acts.append(self._send(peer.id, self._peers_msg(now, exclude=peer.id)))
        acts.append(self._save_peers())
        if peer.id in self._first_contact:  # news to the cluster: pushed to the others at the next tick
            self._first_contact.discard(peer.id)
            self._joined.append(peer.id)
        a = peer.address
        self.store.remember_peer(peer.id, peer.name, a.addr, a.port, a.pub_port, self._epoch(now))
        self._name_index = None
        log.info("peer joined: %s (%s) at %s", peer.name, peer.id[:12], peer.router_endpoint)
        acts += self.emit(now, "joined", peer=peer.describe(now))
        return acts + self.msgs.link_up(now, peer)

    def _link_to(self, now: float, peer: Peer, again: bool = False) -> list:
        """Open (or reopen) a link to a known peer and introduce ourselves (``again``: we had lost it)."""
        acts = self._close_link(peer.id)
        if self.trust.may_link(peer.id, peer.key) is not None:
            return acts
        self.links[peer.id] = peer.router_endpoint
        self.link_since[peer.id] = now
        return acts + [OpenLink(peer.id, peer.router_endpoint, self._server_key(peer), peer.rid_suffix),
                       self._send(peer.id, self._join(now, again=again, to=peer.id))]

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
            acts += self._link_to(now, peer)
        self._name_index = None
        return acts + self.dial.start(now, join_endpoints)

    def leave(self, now: float) -> list:
        """Graceful stop: LEAVE to every linked peer, then shut down."""
        self.stopping = True
        acts = [self._send(p.id, self._msg(now, P.LEAVE)) for p in self.table.alive()]
        log.info("leaving: sent LEAVE to %d peers", len(acts))
        return acts + [Shutdown()]

    def _dispatch(self, now: float, msg: P.Message, peer_host: str | None, source: str) -> list:
        if msg.sender_id == self.id:
            if msg.type == P.JOIN:
                return self.dial.join_from_self(now, msg)
            self.drop(now, "self", "frame claims to come from this node", source)
            return []
        if msg.type == P.JOIN:
            return self._on_join(now, msg, peer_host, source)
        peer = self.table.get(msg.sender_id)
        if peer is None:
            if msg.type != P.LEAVE:
                self.drop(now, "not_linked", f"{msg.type} from unknown node {msg.sender_id[:12]} (no JOIN yet)", source)
            return []
        if msg.type == P.LEAVE:
            return self._on_leave(now, peer)
        handler = self._handlers[msg.type]
        if self.table.heard_from(peer.id, now):
            return self._became_alive(now, peer) + handler(now, msg, peer)
        return handler(now, msg, peer)

    def _on_join(self, now: float, msg: P.Message, peer_host: str | None, source: str) -> list:
        adv = P.parse_address(msg.data)
        if callable(peer_host):
            peer_host = peer_host()
        host = adv.addr if adv.addr not in WILDCARD_HOSTS and adv.addr is not None else peer_host
        if not host:
            self.drop(now, "bad_field", "JOIN without an address and no peer address to use instead", source)
            return []
        known = self.table.get(msg.sender_id)
        if (known is None or known.rumour) and self.table.member_count() >= self.settings.max_peers:
            self.drop(now, "peer_limit", f"already at max_peers={self.settings.max_peers}", source)
            return []
        key = msg.data.get("key")
        refusal = self.trust.may_link(msg.sender_id, key)
        if refusal is not None:
            self.drop(now, "bad_key", f"JOIN from {msg.sender_id[:12]} refused: {refusal}", source)
            return []
        problem = self.dial.pin_refusal(host, adv.port, key)
        if problem is not None:  # else a new key at a pinned address just dials in, and we would link back to it
            self.drop(now, "key_changed", f"JOIN from {msg.sender_id[:12]} refused: {problem}", source)
            return []
        address = P.PeerAddress(host, adv.port, adv.pub_port)
        old = self.table.get(msg.sender_id)
        old_pub = old.pub_endpoint if old is not None else None
        if old is None:
            self._first_contact.add(msg.sender_id)
        peer, _ = self.table.learn(msg.sender_id, msg.sender_name, address, now, key)  # the name bound to its key
        self._name_index = None
        peer.batch = msg.data.get("batch") is True
        peer.rid_suffix = msg.data.get("rid_suffix") is True
        boot = msg.data.get("boot")
        restarted = old is not None and old.boot is not None and boot != old.boot
        peer.boot = boot
        acts: list = self.msgs.on_join(now, peer, msg.data)  # first: it may start a new store epoch
        reply_to = msg.data.get("reply_to")
        pc, replied = self.dial.on_reply(now, peer, reply_to)  # the answer to our dial, if it is one
        acts += replied
        if not reply_to and old is not None and peer.id in self.links and self._stale_link(now, peer, msg, restarted):
            # It introduced itself again: it restarted, or it stopped hearing us although ZeroMQ sees
            # our link as up (e.g. its ROUTER handed our routing id to another connection and left
            # ours open but unread).  A fresh connection heals both; the outbox resends what was lost.
            acts += self._close_link(peer.id)
        acts += self._ensure_link(now, peer)
        if old_pub is not None and old_pub != peer.pub_endpoint and old.state == ALIVE:
            acts += [self._unsub(peer, old_pub), self._sub(peer)]
        if not reply_to:
            acts.append(self._send(peer.id, self._join(now, reply_to=msg.id, to=peer.id)))
        if self.table.heard_from(peer.id, now):
            acts += self._became_alive(now, peer)
        elif not reply_to:
            # A peer we thought alive introduced itself again (it restarted
            # quickly): it has forgotten what it knew, so tell it again.
            acts.append(self._send(peer.id, self._peers_msg(now, exclude=peer.id)))
        if pc is not None and pc.since is not None:
            acts += self.msgs.request_since(now, peer, pc.since)
        acts += self.msgs.announced(now, peer, msg.data)
        if pc is not None and pc.client is not None:
            acts.append(ToClient(pc.client, _ok(pc.req, {"peer": peer.describe(now)})))
        return acts

    def _stale_link(self, now: float, peer: Peer, join: P.Message, restarted: bool) -> bool:
        """Does a JOIN from a peer we are linked to mean our link to it is broken?

        A p2pd peer says so: a new ``boot`` (it restarted) or ``again`` (it had
        lost us).  Anything else is both of us dialling at once (gossip told
        each of the other), and closing the link would only make both dial
        again.  A peer that sends neither: assume broken unless we opened the
        link moments ago.
        """
        if join.data.get("boot") is not None:
            return restarted or join.data.get("again") is True
        return self._link_age(now, peer.id) > self.settings.heartbeat_interval_s

    def _link_age(self, now: float, key: str) -> float:
        """How long ago we opened our link ``key`` (forever, if we have none)."""
        return now - self.link_since.get(key, float("-inf"))

    def _on_leave(self, now: float, peer: Peer) -> list:
        self.table.remove(peer.id)
        acts = self._close_link(peer.id)
        if peer.state == ALIVE:
            acts.append(self._unsub(peer))
        acts.append(self._save_peers())
        log.info("peer left: %s (%s)", peer.name, peer.id[:12])
        return acts + self.emit(now, "left", peer=peer.describe(now))

    def _on_message(self, now: float, msg: P.Message, peer: Peer) -> list:
        if msg.target_id != self.id:
            self.drop(now, "misrouted", f"MESSAGE for {str(msg.target_id)[:12]} delivered to this node", peer.name)
            return []
        before = self.stats["messages_in"]
        acts = self.msgs.on_message(now, msg, peer)
        peer.msgs_in += self.stats["messages_in"] - before  # delivered here: counted as info's messages_in is
        return acts

    def _push_joined(self, now: float) -> list:
        """Tell every alive peer about the peers that joined, or that gossip first told us of, since
        the last tick (one PEERS each; a rumour never goes back to whoever told it)."""
        joined = [p for p in (self.table.get(pid) for pid in dict.fromkeys(self._joined)) if p is not None and p.state == ALIVE]
        rumors = []
        for pid, src in list(self._rumors.items()):
            p = self.table.get(pid)
            if p is None or p.state == ALIVE:  # gone, or answered us: passed on now
                del self._rumors[pid]
                if p is not None:
                    rumors.append((p, src))
        self._joined.clear()
        acts = []
        for peer in self.table.alive():
            news = [p for p in joined if p.id != peer.id] + [p for p, src in rumors if p.id != peer.id and src != peer.id]
            if news:
                acts.append(self._send(peer.id, self._peers_msg(now, exclude=peer.id, peers=news)))
        return acts

    def _on_peers(self, now: float, msg: P.Message, gossiper: Peer) -> list:
        acts: list = []
        known = self.table.ids()  # live: peers learned below count at once
        for entry in msg.data["peers"]:
            pid = entry["id"]
            if pid == self.id or pid in known or self.table.cooling(pid, now):
                continue
            if self.table.member_count() >= self.settings.max_peers:
                self.drop(now, "peer_limit", f"not linking {pid[:12]}: at max_peers={self.settings.max_peers}", gossiper.name)
                break
            if self.table.rumour_count(gossiper.id) >= RUMOURS_PER_INTRODUCER or self.table.rumour_count() >= MAX_RUMOURS:
                self.drop(now, "rumour_limit", f"not dialling {pid[:12]} and the rest of this PEERS: {self.table.rumour_count(gossiper.id)} "
                          f"of the peers {gossiper.name} told us of have not answered yet", gossiper.name)
                break
            refusal = self.trust.may_link(pid, entry.get("key"))
            if refusal is not None:
                log.debug("not linking %s learned from %s: %s", pid[:12], gossiper.name, refusal)
                continue
            addr = P.parse_address(entry)
            host = addr.addr
            # The gossiper saw this peer on loopback: it shares the gossiper's host.
            if host is None or host in WILDCARD_HOSTS or (is_loopback(host) and not is_loopback(gossiper.address.addr)):
                host = gossiper.address.addr
            problem = self.dial.pin_refusal(host, addr.port, entry.get("key"))
            if problem is not None:  # counted and rate-limited: gossip repeats it every gossip_interval_s
                self.drop(now, "key_changed", f"not linking {pid[:12]} learned from {gossiper.name}: {problem}", gossiper.name)
                continue
            peer, _ = self.table.learn(pid, entry["name"], P.PeerAddress(host, addr.port, addr.pub_port), now, entry.get("key"),
                                       rumour_from=gossiper.id)
            self._name_index = None
            log.debug("heard of %s (%s) at %s via %s: dialling it", peer.name, pid[:12], peer.router_endpoint, gossiper.name)
            self._rumors[pid] = gossiper.id
            acts += self._link_to(now, peer)
        return acts

    def _on_ping(self, now: float, msg: P.Message, peer: Peer) -> list:
        # The PONG announces our broadcast numbers too: of two idle peers only one may PING.
        pong = self._send(peer.id, self._msg(now, P.PONG, {"ping_id": msg.id, **self.msgs.beacon()}, target=peer.id))
        return [pong] + self.msgs.announced(now, peer, msg.data, patience_s=self.settings.ack_timeout_s)

    def ping_leaving(self, ping_id: str, now: float) -> None:
        """The transport is about to put a PING on the wire: time the round trip from here, not
        from when it was decided (the rest of that loop turn is not the network's doing)."""
        pp = self.pings.get(ping_id)
        if pp is not None:
            pp.sent_at = now

    def _on_pong(self, now: float, msg: P.Message, peer: Peer) -> list:
        announced = self.msgs.announced(now, peer, msg.data, patience_s=self.settings.ack_timeout_s)
        pp = self.pings.pop(msg.data["ping_id"], None)
        if pp is None or pp.peer_id != peer.id:
            return announced
        rtt_ms = (now - pp.sent_at) * 1000.0
        peer.rtt_ms = rtt_ms
        if pp.client is not None:
            return announced + [ToClient(pp.client, _ok(pp.req, {"peer": peer.name, "id": peer.id, "rtt_ms": round(rtt_ms, 3)}))]
        return announced

    # ------------------------------------------------------------------ timers
    def next_deadline(self, now: float) -> float:
        """How long the event loop may sleep before calling `tick`."""
        soonest = min(self._next_heartbeat, self._next_gossip, now + 0.25)
        if self.lan is not None:
            soonest = min(soonest, self.lan.next_at)
        return max(0.0, soonest - now)

    def tick(self, now: float) -> list:
        acts: list = []
        if self.lan is not None:
            payload = self.lan.due(now)
            if payload is not None:
                acts.append(LanBeacon(payload))
        timeout = self.settings.heartbeat_timeout_s
        for peer in self.table.silent(now, timeout):
            if peer.rumour:  # heard of in gossip and never answered: forget it, it may never have existed
                self.table.forget_rumour(peer.id, now)
                self._rumors.pop(peer.id, None)
                acts += self._close_link(peer.id)
                log.debug("forgot %s (%s), heard of via gossip: no answer at %s", peer.name, peer.id[:12], peer.router_endpoint)
                continue
            was_alive = peer.state == ALIVE
            self.table.mark_lost(peer.id, now)
            acts += self._close_link(peer.id)
            if was_alive:
                acts.append(self._unsub(peer))
                log.warning("peer lost: %s (%s), silent for %.1fs", peer.name, peer.id[:12], now - (peer.last_seen or now))
                acts += self.emit(now, "lost", peer=peer.describe(now))
        for peer in self.table.due_retries(now):
            if self.links.get(peer.id) == peer.router_endpoint and self._link_age(now, peer.id) < timeout:
                # The last try is still young: on a lossy path its TCP and CURVE handshakes can take
                # seconds, and a new socket would only start them over.  Its JOIN goes out once it connects.
                continue
            log.debug("retrying %s at %s (next in %.0fs)", peer.name, peer.router_endpoint, peer.retry_backoff_s)
            acts += self._link_to(now, peer, again=True)
        for peer in self.table.forgettable(now):
            self.table.remove(peer.id)
            log.info("forgot %s (%s): unreachable for %.0fs", peer.name, peer.id[:12], now - peer.since)
            acts.append(self._save_peers())
        if now >= self._next_heartbeat:
            interval = self.settings.heartbeat_interval_s
            self._next_heartbeat = now + interval
            beacon = self.msgs.beacon()
            for peer in self.table.alive():
                if peer.last_seen is not None and now - peer.last_seen < interval:
                    continue  # heard from it within the interval (its own PING, a message): no need to ask
                ping = self._msg(now, P.PING, beacon, target=peer.id)
                self.pings[ping.id] = PendingPing(peer.id, now, deadline=now + timeout)
                acts.append(self._send(peer.id, ping))
        if self._joined or self._rumors:
            acts += self._push_joined(now)
        if now >= self._next_gossip:
            self._next_gossip = now + self.settings.gossip_interval_s
            alive = self.table.alive()
            for peer in alive if len(alive) <= GOSSIP_FANOUT else self._rng.sample(alive, GOSSIP_FANOUT):
                acts.append(self._send(peer.id, self._peers_msg(now, exclude=peer.id)))
        for pid, pp in list(self.pings.items()):
            if now >= pp.deadline:
                del self.pings[pid]
                if pp.client is not None:
                    acts.append(ToClient(pp.client, _err(pp.req, ErrorCode.TIMEOUT, "no PONG within the timeout")))
        return acts + self.dial.tick(now) + self.msgs.tick(now)

    def flush(self, now: float) -> list:
        """End of an input batch: what may go out only once the store is committed."""
        return self.msgs.flush(now)

    def on_key(self, now: float, tag: str, key: str | None, error: str | None, refused: bool = False) -> list:
        """The transport's answer to FetchKey (see `Dialer.on_key`)."""
        return self.dial.on_key(now, tag, key, error, refused)

    def on_link_refused(self, now: float, key: str) -> list:
        """The transport saw the connection of link ``key`` (an `OpenLink` with report_refused) refused."""
        return self.dial.on_refused(now, key)

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
        linked = peer is not None and (peer.state == ALIVE or beacon.node_id in self.links)
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
        """Tell the peer we are leaving it and forget it (see `Dialer.disconnect`)."""
        return self.dial.disconnect(now, peer)

    def resolve_target(self, query: str) -> tuple[str, str]:
        """A peer to send to: a current member, or one from the address book (offline or left).
        A full id always wins; a name or prefix that fits several nodes, across the table and the
        address book, is refused as ambiguous (targets.py)."""
        peer = self.table.get(query)
        if peer is not None and not peer.rumour:
            return peer.id, peer.name
        self._names()  # loads the address book (kept until a link-up adds to it)
        members = self.table.members()  # a rumour is no target: only hearsay says it exists
        book = [BookEntry(pid, name) for pid, name in self._book_names.items() if pid not in self.table]
        found = pick(query, members, book)
        return found.id, found.name

    # ------------------------------------------------------------------ names shown for senders
    def _names(self) -> dict[str, set[str]]:
        """Every name this node knows -> the ids of the nodes that carry it: the table, the address
        book, and this node.  Kept until a JOIN, a PEERS entry or a link-up may have changed it."""
        if self._name_index is None:
            index: dict[str, set[str]] = {self.name: {self.id}}
            self._book_names = {k["id"]: k["name"] for k in self.store.known_peers()}
            for pid, name in self._book_names.items():
                index.setdefault(name, set()).add(pid)
            for p in self.table.members():  # a rumour's name is hearsay: it neither names nor shadows anyone
                index.setdefault(p.name, set()).add(p.id)
            self._name_index = index
        return self._name_index

    def sender(self, node_id: str, stored_name: str) -> tuple[str, str]:
        """(name, label) to show for a message from ``node_id``.

        The name is the one bound to its key at JOIN: the table's, else the address book's, else
        ``stored_name`` (what was stored with the message: the JOIN-bound name at the time; rows
        from p2pd before December 2026 hold the sender's claim).  Never the message's own
        ``sender_name``: a peer could claim any.  The label is the name, plus a short id when
        another node (or this one) has that name too."""
        index = self._names()
        peer = self.table.get(node_id)
        name = peer.name if peer is not None else self._book_names.get(node_id, stored_name)
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

    def ping(self, now: float, peer: Peer, timeout_s: float, client: bytes, req) -> list:
        msg = self._msg(now, P.PING, target=peer.id)
        self.pings[msg.id] = PendingPing(peer.id, now, client, req, now + timeout_s)
        return [self._send(peer.id, msg)]

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
            "heartbeat_interval_s": self.settings.heartbeat_interval_s,
            "heartbeat_timeout_s": self.settings.heartbeat_timeout_s,
            "discover": None if self.lan is None else {
                "mode": "lan", "port": self.settings.discover_port, "to": self.settings.discover_to,
                "beacons_sent": self.lan.sent, "beacons_heard": self.lan.heard, "dials": len(self.lan.dialed)},
        }


def _ok(req, result) -> dict:
    return {"req": req, "ok": True, "result": result}


def _err(req, code: ErrorCode, error: str) -> dict:
    """A failed request's reply.  ``code`` must be an `ErrorCode` the daemon sends (a wire
    code): the reply carries its plain string, so the wire format is the bare code as
    documented in docs/PROTOCOL.md 9.3, and a code missing from the table fails here, in
    the tests, rather than reaching a client that maps it to no particular exit code."""
    code = ErrorCode(code)
    assert code.wire, f"{code} is a client-side code, never sent by the daemon"
    return {"req": req, "ok": False, "code": code.value, "error": error}
