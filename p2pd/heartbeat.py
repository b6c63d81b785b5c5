"""Heartbeat: PING the peers we have not heard from, answer PINGs, time round trips.

How this works
--------------
Every ``heartbeat_interval_s`` we PING each alive peer not heard from within that interval
(so of two idle peers usually only one asks, and a busy link needs no PINGs); any frame
counts as life (membership.py), and a peer silent past ``heartbeat_timeout_s`` is marked
lost by liveness.py, not here.  A PONG names the PING it answers; the round trip is timed
from when the transport put the PING on the wire (`sent`), not from when it was decided.
A `p2pctl ping` is a PING with a client waiting: answered with the RTT, or with
``timeout`` at its deadline.  PINGs and PONGs also carry our broadcast numbers (the caller
passes them in as ``beacon``), so a peer that missed a broadcast learns of it within a
heartbeat.  Pure: no sockets; time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import protocol as P
from .actions import ToClient
from .errors import ErrorCode
from .membership import Membership, Peer
from .outbound import Outbound
from .payloads import PongData
from .replies import err, ok
from .settings import Settings


@dataclass
class PendingPing:
    peer_id: str
    sent_at: float
    client: bytes | None = None
    req: object = None
    deadline: float = 0.0


class Heartbeat:
    def __init__(self, settings: Settings, table: Membership, outbound: Outbound, now: float):
        self.settings = settings
        self.table = table
        self.out = outbound
        self.pings: dict[str, PendingPing] = {}
        self.next_at = now

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def ping_silent(self, now: float, beacon: dict) -> list:
        """The interval is up: PING every alive peer we have not heard from within it."""
        interval = self.settings.heartbeat_interval_s
        self.next_at = now + interval
        acts = []
        for peer in self.table.alive():
            if peer.last_seen is not None and now - peer.last_seen < interval:
                continue  # heard from it within the interval (its own PING, a message): no need to ask
            ping = self.out.msg(now, P.PING, beacon, target=peer.id)
            self.pings[ping.id] = PendingPing(peer.id, now, deadline=now + self.settings.heartbeat_timeout_s)
            acts.append(self.out.send(peer.id, ping, report_sent=True))  # timed from when it leaves: `sent`
        return acts

    def expire(self, now: float) -> list:
        """PINGs past their deadline: forgotten; a waiting client is told."""
        acts = []
        for pid, pp in list(self.pings.items()):
            if now >= pp.deadline:
                del self.pings[pid]
                if pp.client is not None:
                    acts.append(ToClient(pp.client, err(pp.req, ErrorCode.TIMEOUT, "no PONG within the timeout")))
        return acts

    def ping(self, now: float, peer: Peer, timeout_s: float, client: bytes, req) -> list:
        """`p2pctl ping`: a PING whose PONG (or its absence) is the client's answer."""
        msg = self.out.msg(now, P.PING, target=peer.id)
        self.pings[msg.id] = PendingPing(peer.id, now, client, req, now + timeout_s)
        return [self.out.send(peer.id, msg, report_sent=True)]  # timed from when it leaves: `sent`

    def pong(self, now: float, msg: P.Message, peer: Peer, beacon: dict) -> list:
        """The PONG to a PING of ``peer``.  It describes nothing stored: it need not wait for the
        turn's commit (``before_commit``)."""
        return [self.out.send(peer.id, self.out.msg(now, P.PONG, {"ping_id": msg.id, **beacon}, target=peer.id), before_commit=True)]

    def sent(self, ping_id: str, now: float) -> None:
        """The transport is about to put a PING on the wire: time the round trip from here, not
        from when it was decided (the rest of that loop turn is not the network's doing)."""
        pp = self.pings.get(ping_id)
        if pp is not None:
            pp.sent_at = now

    def on_pong(self, now: float, msg: P.Message, peer: Peer) -> list:
        data: PongData = msg.data
        pp = self.pings.pop(data["ping_id"], None)
        if pp is None or pp.peer_id != peer.id:
            return []
        rtt_ms = (now - pp.sent_at) * 1000.0
        peer.rtt_ms = rtt_ms
        if pp.client is not None:
            return [ToClient(pp.client, ok(pp.req, {"peer": peer.name, "id": peer.id, "rtt_ms": round(rtt_ms, 3)}))]
        return []
