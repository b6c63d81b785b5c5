"""Gossip: how a node learns of peers it was never told to dial.

How this works
--------------
On link-up (`became_alive`) and every ``gossip_interval_s`` we send PEERS (our alive
peers with their addresses); a node dials every peer it learns of (`on_peers`).  A peer
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
from .payloads import PeersData
from .drops import Drops
from .handshake import Handshake
from .membership import ALIVE, MAX_RUMOURS, RUMOURS_PER_INTRODUCER, Membership, Peer, is_loopback
from .outbound import Outbound
from .settings import Settings
from .trust import Trust

log = logging.getLogger("p2pd.node")


class Gossip:
    def __init__(self, node_id: str, settings: Settings, table: Membership, outbound: Outbound, handshake: Handshake,
                 trust: Trust, drops: Drops, now: float):
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

    def peers_msg(self, now: float, exclude: str, peers: list[Peer] | None = None) -> P.Message:
        entries = [
            {"id": p.id, "name": p.name, "addr": p.address.addr, "port": p.address.port, "pub_port": p.address.pub_port, "key": p.key}
            for p in (self.table.alive() if peers is None else peers)
            if p.id != exclude
        ]
        return self.out.msg(now, P.PEERS, {"peers": entries})

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
        for entry in data["peers"]:
            pid = entry["id"]
            if pid == self.id or pid in table or table.cooling(pid, now):
                continue
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
        """Every gossip_interval_s our full list to every alive peer; between, the news (`_push`)."""
        if now >= self.next_at:
            self.next_at = now + self.settings.gossip_interval_s
            self._joined.clear()  # the full list below includes them
            for pid in [pid for pid in self._rumors if (p := self.table.get(pid)) is None or p.state == ALIVE]:
                del self._rumors[pid]  # the full list above has those that answered; the rest wait for it
            return [self.out.send(peer.id, self.peers_msg(now, exclude=peer.id)) for peer in self.table.alive()]
        if self._joined or self._rumors:
            return self._push(now)
        return []

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
