"""Failure detection: silent peers are lost, lost peers are retried, long-lost ones forgotten.

How this works
--------------
Each tick: a peer silent past ``heartbeat_timeout_s`` (any frame counts as life, see
membership.py) is marked lost, its link closed and its PUB unsubscribed, and watchers are
told (but after a stall of our own, every peer first gets a full timeout: we were not
listening, and a node that is itself slow must not accuse, as in Lifeguard; and while this
node shows signs of being slow, the timeout is longer: health.py); a rumour
that never answered our dial is forgotten instead (it may never have existed), and a
link to a node of the network outside the overlay's active view is closed quietly (the
other end may have dropped it: overlay.py `stray`).  A lost
peer is retried with backoff (``retry_min_s`` doubling to ``retry_max_s``) by a fresh
link and a JOIN that says ``again``, unless the last try is still young (on a lossy path
its TCP and CURVE handshakes can take seconds, and a new socket would only start them
over).  A peer lost for ``forget_after_s`` is removed and peers.json saved without it.
Pure: no sockets; time is passed in.
"""

from __future__ import annotations

import logging

from .actions import SavePeers
from .gossip import Gossip
from .handshake import Handshake
from .health import LocalHealth
from .links import Links
from .membership import ALIVE, Membership
from .settings import Settings
from .watchers import Watchers

log = logging.getLogger("p2pd.node")

# Two ticks further apart than this mean the node did not run in between (ticks are at most
# node.TICK_MAX_S apart): SIGSTOP, a suspended machine, or CPU starvation on an overloaded host.
STALL_S = 2.0


class Liveness:
    def __init__(self, settings: Settings, table: Membership, links: Links, handshake: Handshake, gossip: Gossip,
                 watchers: Watchers, lost=lambda now, peer: [], stray=lambda peer_id: False, drop_stray=lambda now, peer: []):
        self.settings = settings
        self.table = table
        self.links = links
        self.handshake = handshake
        self.gossip = gossip
        self.watchers = watchers
        self.lost = lost  # the overlay's: a lost link is replaced, and the peer suspected
        self.stray, self.drop_stray = stray, drop_stray  # the overlay's: a link outside its view, closed quietly
        self.health = LocalHealth()  # how long a peer must be silent: longer while we are slow (health.py)
        self._last_tick = float("inf")  # no stall before the first tick

    def timeout(self, now: float) -> float:
        """How long a peer may be silent before it is lost, now: the configured heartbeat
        timeout, times up to four while this node shows signs of being slow itself."""
        return self.health.timeout(now, self.settings.heartbeat_timeout_s)

    def tick(self, now: float) -> list:
        acts: list = []
        table, links = self.table, self.links
        if now - self._last_tick > STALL_S:
            # Ticks are at most TICK_MAX_S (1 s) apart: we were stalled, not our peers silent.
            table.resumed(now)
            log.info("the event loop was stalled for %.1fs (stopped, or starved of CPU): peers get a full %.0fs "
                     "to be heard from before any is lost", now - self._last_tick, self.timeout(now))
        self._last_tick = now
        timeout = self.timeout(now)
        for peer in table.silent(now, timeout):
            if peer.rumour:  # heard of in gossip and never answered: forget it, it may never have existed
                table.forget_rumour(peer.id, now)
                self.gossip.forget(peer.id)
                acts += links.close(peer.id)
                log.debug("forgot %s (%s), heard of via gossip: no answer at %s", peer.name, peer.id[:12], peer.router_endpoint)
                continue
            if self.stray(peer.id):  # no sign of death: the other end may have closed its side
                acts += self.drop_stray(now, peer)
                continue
            was_alive = peer.state == ALIVE
            table.mark_lost(peer.id, now)
            acts += links.close(peer.id)
            if was_alive:
                acts.append(links.unsubscribe(peer))
                log.warning("peer lost: %s (%s), silent for %.1fs", peer.name, peer.id[:12], now - (peer.last_seen or now))
                acts += self.watchers.emit(now, "lost", peer=peer.describe(now))
                acts += self.lost(now, peer)
        for peer in table.due_retries(now):
            if links.get(peer.id) == peer.router_endpoint and links.age(now, peer.id) < timeout:
                continue  # the last try is still young: its JOIN goes out once it connects
            log.debug("retrying %s at %s (next in %.0fs)", peer.name, peer.router_endpoint, peer.retry_backoff_s)
            acts += self.handshake.link_to(now, peer, again=True)
        for peer in table.forgettable(now):
            table.remove(peer.id)
            log.info("forgot %s (%s): unreachable for %.0fs", peer.name, peer.id[:12], now - peer.since)
            acts.append(SavePeers(table.book()))
        return acts
