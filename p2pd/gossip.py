"""Gossip: how a node learns of peers it was never told to dial.

How this works
--------------
On link-up (`became_alive`) we send the new peer PEERS (our alive peers with their
addresses), and every ``gossip_interval_s`` (a round) to ``GOSSIP_FANOUT`` alive peers
picked at random among the leaves (simple JSON peers, `Peer.leaf`): not to every one, which
in a full mesh of n is n - 1 lists of n - 1 entries from each node, O(n^3) a round; a few
random ones keep the tables converging, as anti-entropy, at O(n^2).  A p2pd peer takes part
in the overlay's roster (overlay.py), whose digests and FACTS are its anti-entropy: a round
to it would name only nodes it holds records of (which it does not dial on our word,
`may_dial`), so in a network of p2pd nodes there are no rounds (they were a tenth of an
idle node's frames, and the largest).  A node dials every peer it learns of (`on_peers`).  A peer
heard of only in PEERS is a rumour (membership.py) until it answers that dial: bounded
per introducer and in all, never named, forgotten quickly if it does not answer
(liveness.py calls `forget`).  A peer that just joined (its JOIN reached us before any
gossip did: `first_contact`) is also pushed at once, at the next tick, to every other
alive peer, so a new node meets the whole cluster in about one round trip instead of one
gossip interval; a rumour is passed on the same way once it has answered us, never before
(to all but whoever told us of it), so made-up peers do not travel.
Pure: no sockets; time is passed in.
"""

from __future__ import annotations

import logging

from . import protocol as P
from .drops import Drops
from .handshake import Handshake
from .membership import ALIVE, MAX_RUMOURS, RUMOURS_PER_INTRODUCER, Membership, Peer, is_loopback
from .outbound import Outbound
from .payloads import PeersData
from .settings import Settings
from .trust import Trust

log = logging.getLogger("p2pd.node")

GOSSIP_FANOUT = 3  # alive peers sent our full PEERS each gossip_interval_s (see the top)


class Gossip:
    def __init__(self, node_id: str, settings: Settings, table: Membership, outbound: Outbound, handshake: Handshake,
                 trust: Trust, drops: Drops, now: float, rng: P.RandomBits, may_dial=lambda peer_id: True):
        self.id = node_id
        self.settings = settings
        self.table = table
        self.out = outbound
        self.handshake = handshake
        self.trust = trust
        self.drop = drops
        self.next_at = now + settings.gossip_interval_s
        self._joined: list[str] = []  # peers that became alive since the last tick
        self._rumors: dict[str, str] = {}  # peers first heard of in PEERS, not yet passed on -> who told us
        # Peers whose JOIN reached us before any gossip did: new to the cluster as far as we know.
        # They are pushed once alive; peers first heard of in gossip (_rumors) are passed on once they
        # have answered our dial, to all but whoever told us (see the top).
        self._first_contact: set[str] = set()
        self._rng = rng  # who gets each round
        # The overlay's: dial a peer we hear of only while our active view has room, and only one it
        # does not know (its members are linked by its own rules, to the address their record gives).
        self._may_dial = may_dial
        self._entries: dict[str, tuple] = {}  # peer id -> (address, name, key, its PEERS entry): see _entry

    def peers_msg(self, now: float, exclude: str, peers: list[Peer] | None = None) -> P.Message:
        # Each entry is kept per peer (`_entry`): a full mesh lists every peer at every link-up,
        # O(n^3) entries while it forms.  The dicts are shared by the messages that list them,
        # and never changed.
        cache, entries = self._entries, []
        for p in self.table.alive() if peers is None else peers:
            if p.id == exclude:
                continue
            c = cache.get(p.id)
            entries.append(c[3] if c is not None and c[0] is p.address and c[1] is p.name and c[2] is p.key else self._entry(p))
        return self.out.msg(now, P.PEERS, {"peers": entries})

    def _entry(self, p: Peer) -> dict:
        """A peer as PEERS lists it, kept until its name, address or key is another object."""
        if len(self._entries) >= 2 * self.settings.max_peers + MAX_RUMOURS:
            self._entries.clear()  # peers come and go: bounded
        a = p.address
        entry = {"id": p.id, "name": p.name, "addr": a.addr, "port": a.port, "pub_port": a.pub_port, "key": p.key}
        self._entries[p.id] = (a, p.name, p.key, entry)
        return entry

    def to_pass_on(self) -> dict[str, str]:
        """Peers first heard of in PEERS and not passed on yet -> the peer that told us of them."""
        return dict(self._rumors)

    def first_contact(self, peer_id: str) -> None:
        """``peer_id`` introduced itself before any gossip named it: news to the cluster."""
        self._first_contact.add(peer_id)

    def became_alive(self, now: float, peer: Peer) -> list:
        """A link came up: tell the peer whom we know; queue it for the others if it is news."""
        if peer.id in self._first_contact:  # news to the cluster: pushed to the others at the next tick
            self._first_contact.discard(peer.id)
            self._joined.append(peer.id)
        return [self.out.send(peer.id, self.peers_msg(now, exclude=peer.id))]

    def forget(self, peer_id: str) -> None:
        """A rumour that never answered was forgotten: nothing of it to pass on."""
        self._rumors.pop(peer_id, None)

    def on_peers(self, now: float, msg: P.Message, gossiper: Peer) -> list:
        data: PeersData = msg.data
        acts: list = []
        table, settings = self.table, self.settings
        known = table.ids()  # live: peers learned below count at once
        for entry in data["peers"]:
            pid = entry["id"]
            if pid == self.id or pid in known or table.cooling(pid, now):
                continue
            if not self._may_dial(pid):
                continue  # our links are full, or the overlay knows it (overlay.py): not ours to dial
            if table.member_count() >= settings.max_peers:
                self.drop(now, "peer_limit", f"not linking {pid[:12]}: at max_peers={settings.max_peers}", gossiper.name)
                break
            if table.rumour_count(gossiper.id) >= RUMOURS_PER_INTRODUCER or table.rumour_count() >= MAX_RUMOURS:
                self.drop(now, "rumour_limit", f"not dialling {pid[:12]} and the rest of this PEERS: {table.rumour_count(gossiper.id)} "
                          f"of the peers {gossiper.name} told us of have not answered yet", gossiper.name)
                break
            refusal = self.trust.may_link(pid, entry.get("key"))
            if refusal is not None:
                log.debug("not linking %s learned from %s: %s", pid[:12], gossiper.name, refusal)
                continue
            addr = P.parse_address(entry)
            host = addr.addr
            # The gossiper saw this peer on loopback: it shares the gossiper's host.
            if host is None or host in P.WILDCARD_HOSTS or (is_loopback(host) and not is_loopback(gossiper.address.addr)):
                host = gossiper.address.addr
            problem = self.trust.pin_refusal(host, addr.port, entry.get("key"))
            if problem is not None:  # counted and rate-limited: gossip repeats it every gossip_interval_s
                self.drop(now, "key_changed", f"not linking {pid[:12]} learned from {gossiper.name}: {problem}", gossiper.name)
                continue
            peer, _ = table.learn(pid, entry["name"], P.PeerAddress(host, addr.port, addr.pub_port), now, entry.get("key"),
                                  rumour_from=gossiper.id)
            log.debug("heard of %s (%s) at %s via %s: dialling it", peer.name, pid[:12], peer.router_endpoint, gossiper.name)
            self._rumors[pid] = gossiper.id
            acts += self.handshake.link_to(now, peer)
        return acts

    def tick(self, now: float) -> list:
        """The news since the last tick to everyone (`_push`); every gossip_interval_s, also our
        full list to GOSSIP_FANOUT alive leaves, picked at random (a round reaches only a few, so
        the news goes out at a round all the same)."""
        acts = self._push(now) if self._joined or self._rumors else []
        if now >= self.next_at:
            self.next_at = now + self.settings.gossip_interval_s
            alive = self.table.leaves()
            for peer in alive if len(alive) <= GOSSIP_FANOUT else sample(self._rng, alive, GOSSIP_FANOUT):
                acts.append(self.out.send(peer.id, self.peers_msg(now, exclude=peer.id)))
        return acts

    def _push(self, now: float) -> list:
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
                acts.append(self.out.send(peer.id, self.peers_msg(now, exclude=peer.id, peers=news)))
        return acts


def _below(rng: P.RandomBits, n: int) -> int:
    """A uniform integer in [0, n) from a source of random bits (rejection sampling)."""
    k = n.bit_length()
    while True:
        r = rng.getrandbits(k)
        if r < n:
            return r


def sample(rng: P.RandomBits, items: list, k: int) -> list:
    """``k`` of ``items`` picked uniformly without replacement (a partial Fisher-Yates), from the
    node's own random source: the simulator's seeded one replays, the daemon's is the OS's."""
    pool = list(items)
    for i in range(k):
        j = i + _below(rng, len(pool) - i)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]
