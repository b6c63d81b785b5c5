"""Dialing: linking to a node by address, fetching and pinning its key, bootstraps.

How this works
--------------
A dial knows only host:port: a `connect` from the control socket, a
``--join`` bootstrap, a LAN beacon (`Node.on_lan_beacon`).  In secure mode we
need the peer's CURVE key before a CURVE link can be opened to it.  It is
given (a ``p2p://KEY@host:port`` connect string, a beacon), or fetched from
the peer's key port, port+2: a `FetchKey` effect, answered through `on_key`.
If the key port does not answer but the address is pinned, the pinned key is
used.  The key is then checked against the pin of that address (trust on
first use, as ssh pins host keys: the first key a node answers with at an
address is pinned, a `PinKey` effect saves it; another key there later is
refused with the command that forgets the pin) and, with authorized_keys,
against the allowlist.  The pin is made when the node of that key answers our
JOIN over the CURVE link to that address (`on_reply`), not before the dial: a
stale or mistyped ``p2p://`` key, or an address where nobody answers, pins
nothing.

Then we open a DEALER to the address and send JOIN.  Whose node answers there
we do not know yet, so the link is filed under ``pending:<endpoint>`` (and
the time of the dial) and the JOIN's id in `pending`.  The JOIN reply names
our JOIN in ``reply_to`` (`on_reply`): the pending link is re-keyed under the
peer's id (`RekeyLink`), and the client that asked is told whom it reached.
No reply by the deadline closes the link and answers ``unreachable``; our own
JOIN coming back means we dialled ourselves (`join_from_self`).

Crossing dials: two nodes may dial each other at once (two connects, two
bootstraps, both hearing the other's beacon).  Each then gets the other's
JOIN, links back to its sender and replies, so when the reply to our pending
dial comes we may already hold a link to that peer: the pending link is then
closed rather than re-keyed (so is one to another endpoint than the peer
advertises), and each side keeps one link each way.  Dials by id cross too
(gossip tells each of the other): a JOIN from a peer we are linked to closes
that link only if the peer says it is broken (a new ``boot``, or ``again``);
anything else is the crossing, and closing would only make both dial again
(`Handshake.stale_link`).

Bootstraps (``--join``) are dialled at start and again with backoff
(retry_min_s, doubling up to retry_max_s) until each answers; membership then
retries that peer like any other, and the bootstrap knocks again only once
the peer is gone from the table (it left, was disconnected or forgotten) and
from the network as we know it (with bounded links, overlay.py, most members
are not in the table: a knock then would only push it to link again).  A
background dial (bootstrap, beacon) has no client: a key it could not get or
may not use is logged instead of answered.

The control socket's `connect` to a peer we are already linked to answers at
once (``already``), whichever spelling of its address it names (``localhost``
or ``127.0.0.1``, compared by the addresses the client resolved it to);
`disconnect` sends LEAVE and forgets the peer.

Pure, like the node: no sockets; time is passed in, effects are returned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import protocol as P
from .actions import FetchKey, PinKey, ToClient
from .errors import ErrorCode
from .handshake import Handshake
from .links import Links
from .membership import ALIVE, Membership, Peer
from .messaging import Messaging
from .outbound import Outbound
from .replies import err, ok
from .settings import Settings
from .trust import Trust, node_id_for

log = logging.getLogger("p2pd.node")  # the node's logger: dialing was the node's, and its log lines say so

KEY_FETCH_S = 3.0  # a background dial's wait for a key port


@dataclass
class PendingConnect:
    key: str
    endpoint: str
    deadline: float | None
    client: bytes | None = None
    req: object = None
    since: float | None = None  # also fetch this peer's broadcasts since this UNIX time
    server_key: str | None = None  # the key we dialled with (secure mode) ...
    peer_id: str | None = None  # ... which names the node we expect there
    pin_at: str | None = None  # the address to pin server_key to once the node there answers (TOFU)


@dataclass
class PendingKey:
    """A key fetch from a peer's key port, before dialling it."""
    host: str
    port: int
    deadline: float | None
    client: bytes | None = None
    req: object = None
    since: float | None = None


@dataclass
class Bootstrap:
    endpoint: str
    next_try: float
    backoff_s: float = 0.0
    peer_id: str | None = None


class Dialer:
    """Owns the dials by address, the key fetches and the ``--join`` bootstraps; links, the table
    and JOINs are its collaborators', given to it (no node behind it)."""

    def __init__(self, settings: Settings, table: Membership, links: Links, outbound: Outbound, handshake: Handshake,
                 trust: Trust, messaging: Messaging, in_network=lambda peer_id: False):
        self.settings = settings
        # The overlay's: is this node alive in the network we are part of (linked to it or not)?
        self._in_network = in_network
        self.table = table
        self.links = links
        self.out = outbound
        self.handshake = handshake
        self.trust = trust
        self.msgs = messaging
        self.pending: dict[str, PendingConnect] = {}  # JOIN message id -> pending connect
        self.bootstraps: dict[str, Bootstrap] = {}
        self.key_fetches: dict[str, PendingKey] = {}
        self._key_tags = 0

    def start(self, now: float, join_endpoints: list[str]) -> list:
        for ep in join_endpoints:
            self.bootstraps[ep] = Bootstrap(ep, next_try=now)
        return self._tick_bootstraps(now)

    # ------------------------------------------------------------------ JOIN replies
    def join_from_self(self, now: float, msg: P.Message) -> list:
        pc = self.pending.pop(msg.data.get("reply_to") or msg.id, None)  # our own connect JOIN has no reply_to
        if pc is None:
            return []
        acts = self.links.close(pc.key)
        if pc.client is not None:
            acts.append(ToClient(pc.client, err(pc.req, ErrorCode.SELF, f"{pc.endpoint} is this node itself (our own JOIN came back): nothing to link")))
        return acts

    def asked_for(self, reply_to: str | None) -> bool:
        """Does a JOIN replying to ``reply_to`` answer a dial someone asked for (``connect``, a
        bootstrap, a LAN beacon), rather than one gossip led us to?"""
        return bool(reply_to) and reply_to in self.pending

    def on_reply(self, now: float, peer: Peer, reply_to: str | None) -> tuple[PendingConnect | None, list]:
        """A JOIN from ``peer`` replying to ``reply_to`` (or to nothing): the dial it answers, if any,
        and that dial's link re-keyed or closed."""
        acts: list = []
        pc = self.pending.pop(reply_to, None) if reply_to else self._dialled(peer)
        if pc is not None:
            if pc.pin_at is not None and pc.server_key == peer.key and self.trust.pin(pc.pin_at, peer.key):
                # our CURVE dial to pin_at with this key got through, and the node of that key answered
                log.info("pinned the key of %s: %s (node %s)", pc.pin_at, peer.key, peer.id[:12])
                acts.append(PinKey(pc.pin_at, peer.key))
            if peer.id in self.links or self.links.get(pc.key) != peer.router_endpoint:
                acts += self.links.close(pc.key)
            else:
                acts += self.links.rekey(now, pc.key, peer.id)
            for b in self.bootstraps.values():
                if b.endpoint == pc.endpoint:
                    b.peer_id = peer.id
        return pc, acts

    def _dialled(self, peer: Peer) -> PendingConnect | None:
        """A pending dial that reached ``peer`` although its reply has not come: the peer's own JOIN
        (a retry of its link to us, after our JOIN got through and its answer was lost) says so.
        Matched by the key we dialled with, or without CURVE by the address."""
        for mid, pc in self.pending.items():
            if (pc.peer_id == peer.id if pc.peer_id else pc.endpoint == peer.router_endpoint):
                return self.pending.pop(mid)
        return None

    # ------------------------------------------------------------------ timers
    def busy(self) -> bool:
        """A connect awaits its answer (its timeout is checked at every tick)."""
        return bool(self.pending)

    def tick(self, now: float) -> list:
        acts: list = []
        for mid, pc in list(self.pending.items()):
            if pc.deadline is not None and now >= pc.deadline:
                del self.pending[mid]
                acts += self.links.close(pc.key)
                if pc.client is not None:
                    acts.append(ToClient(pc.client, err(pc.req, ErrorCode.UNREACHABLE, f"no answer from {pc.endpoint} within the timeout: is p2pd running there, and is the port open? "
                                                                             f"(a node in --insecure mode and a secure one cannot link; in a closed network, is our key in its authorized_keys?"
                                                                             f"{' dialled with key ' + pc.server_key[:8] + '...: is it the key of the node there (p2pctl info there)?' if pc.server_key else ''})")))
        return acts + self._tick_bootstraps(now)

    def _tick_bootstraps(self, now: float) -> list:
        acts: list = []
        for b in self.bootstraps.values():
            if b.peer_id is not None:
                peer = self.table.get(b.peer_id)
                if peer is not None or self._in_network(b.peer_id):
                    continue  # membership retries it from here on; or we are in its network, unlinked by the overlay
                b.peer_id = None  # it left: keep knocking
            if now < b.next_try:
                continue
            b.backoff_s = min(self.settings.retry_max_s, max(self.settings.retry_min_s, b.backoff_s * 2))
            b.next_try = now + b.backoff_s
            for mid, pc in list(self.pending.items()):
                if pc.endpoint == b.endpoint and pc.client is None:
                    del self.pending[mid]
                    acts += self.links.close(pc.key)
            host, _, port = b.endpoint[len("tcp://"):].rpartition(":")
            acts += self.dial_address(now, host.strip("[]"), int(port), deadline=None)
        return acts

    # ------------------------------------------------------------------ dialing
    def _dial(self, now: float, endpoint: str, deadline: float | None, client: bytes | None = None, req=None,
              since: float | None = None, server_key: str | None = None, pin_at: str | None = None) -> list:
        key = f"pending:{endpoint}:{now:.6f}"
        # With its key we know whom we dial: the JOIN can say how far we received its numbering.
        peer_id = node_id_for(server_key) if server_key else None
        join = self.handshake.join(now, to=peer_id)
        self.pending[join.id] = PendingConnect(key, endpoint, deadline, client, req, since, server_key, peer_id, pin_at)
        # A user waits on this dial: a refused connection is answered at once (`on_refused`).
        return [self.links.open(now, key, endpoint, server_key, report_refused=client is not None), self.out.send(key, join)]

    def _fail(self, client: bytes | None, req, code: ErrorCode, text: str) -> list:
        if client is not None:
            return [ToClient(client, err(req, code, text))]
        log.warning("%s", text)
        return []

    def dial_address(self, now: float, host: str, port: int, deadline: float | None, client: bytes | None = None, req=None,
                     since: float | None = None, key: str | None = None) -> list:
        """Dial host:port.  In secure mode we need its key first: given, or fetched from its key port (port+2)."""
        trust = self.trust
        endpoint = P.tcp_endpoint(host, port)
        if not trust.secure:
            return self._dial(now, endpoint, deadline, client, req, since)
        address = P.host_port(host, port)
        if key is None:
            self._key_tags += 1
            tag = f"key{self._key_tags}"
            self.key_fetches[tag] = PendingKey(host, port, deadline, client, req, since)
            # A user's connect waits as long as its --timeout allows (on a lossy link one lost
            # SYN costs 1 s, two cost 3 s); a background dial is retried with backoff anyway.
            timeout_s = KEY_FETCH_S if deadline is None else max(0.05, deadline - now)
            return [FetchKey(P.tcp_endpoint(host, port + 2), tag, timeout_s)]
        if key == trust.public_key:  # our own key port answered (or our own connect string): never pinned
            return self._fail(client, req, ErrorCode.SELF, f"{address} is this node itself (it answered with this node's own key): "
                                                           f"nothing to link, and no key was pinned; connect to another node's address")
        problem = trust.check_pin(address, key)
        if problem is not None:
            log.warning("refused %s: %s", address, problem)
            return self._fail(client, req, ErrorCode.KEY_CHANGED, problem)
        if trust.allowlist_mode and key not in trust.allowed:
            return self._fail(client, req, ErrorCode.NOT_AUTHORIZED, f"the key of {address} is not in authorized_keys; add it with: p2pctl trust add {key}")
        # Pinned when the node there answers with this key (`on_reply`, unless pinned meanwhile), not
        # now: a wrong key (a stale or mistyped p2p:// string) or an address nobody answers at pins nothing.
        return self._dial(now, endpoint, deadline, client, req, since, key, pin_at=address)

    def on_key(self, now: float, tag: str, key: str | None, error: str | None, refused: bool = False) -> list:
        """The transport's answer to FetchKey: the key the peer's key port told us, or why not
        (``refused``: the connection to the key port was refused at once, nothing listens there)."""
        pk = self.key_fetches.pop(tag, None)
        if pk is None:
            return []
        address = P.host_port(pk.host, pk.port)
        if key is None or not P.valid_key(key):
            pinned = self.trust.pins.get(address)
            if pinned is None and refused:
                return self._fail(pk.client, pk.req, ErrorCode.REFUSED,
                                  f"connection refused at {P.host_port(pk.host, pk.port + 2)}, the key port of {address}: nothing listens there; "
                                  f"is p2pd running at {address}, and not in --insecure mode (which has no key port)? "
                                  f"(a node with another key port is reached with the p2p:// string from `p2pctl info` there)")
            if pinned is None:
                return self._fail(pk.client, pk.req, ErrorCode.UNREACHABLE,
                                  f"could not get the key of {address} from its key port {pk.port + 2} ({error or 'bad answer'}): "
                                  f"is p2pd running there, not in --insecure mode? Or connect with the p2p://KEY@{address} string from `p2pctl info` there")
            key = pinned  # the key port is down, but we know whom to expect
        return self.dial_address(now, pk.host, pk.port, pk.deadline, pk.client, pk.req, pk.since, key)

    def on_refused(self, now: float, link_key: str) -> list:
        """The transport's report that our dial ``link_key`` (one a client waits on, see `_dial`) was
        refused at once: answer the client now instead of at its deadline, and stop dialling."""
        for mid, pc in list(self.pending.items()):
            if pc.key == link_key:
                del self.pending[mid]
                return self.links.close(link_key) + self._fail(
                    pc.client, pc.req, ErrorCode.REFUSED, f"connection refused at {pc.endpoint[len('tcp://'):]}: nothing listens there; is p2pd running at that address?")
        return []

    # ------------------------------------------------------------------ control-socket operations
    def connect(self, now: float, host: str, port: int, wait_s: float, client: bytes, req, since: float | None = None,
                key: str | None = None, addrs: tuple[str, ...] = ()) -> list:
        """``addrs``: the IP addresses the client resolved ``host`` to, so that another spelling of
        an address we are linked to (``localhost`` for 127.0.0.1) is recognised: a second dial
        would only displace the link we have.  Resolving is the client's job: the node does no I/O."""
        known = self.table.find_by_address((host, *addrs), port)
        if known is not None and known.state == ALIVE and (key is None or key == known.key):
            problem = self.trust.pin_refusal(host, port, known.key)
            if problem is not None:
                return self._fail(client, req, ErrorCode.KEY_CHANGED, problem)
            acts = self.msgs.request_since(now, known, since) if since is not None else []
            linked_at = P.host_port(known.address.addr, port)  # the spelling we dialled it by, not a second one
            if self.trust.secure and known.key is not None and self.trust.pin(linked_at, known.key):
                acts.append(PinKey(linked_at, known.key))  # "the next connect pins the key it finds"
            return acts + [ToClient(client, ok(req, {"peer": known.describe(now), "already": True}))]
        return self.dial_address(now, host, port, now + wait_s, client, req, since, key)
