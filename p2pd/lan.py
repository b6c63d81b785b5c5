"""LAN discovery: UDP beacons that let nodes on one network find each other (pure: no sockets).

How this works
--------------
With ``discover = "lan"`` every node sends a small UDP datagram, a beacon, to
the broadcast address (``discover_to``, default 255.255.255.255) on
``discover_port`` (default 5670) every ``discover_interval_s``, and listens on
that port.  A beacon says just enough to link: the node id, its peer (ROUTER)
port and, under CURVE, its public key; the address is the datagram's source.
A node hearing a beacon from a node it has no link to dials it as `connect`
would (with the key from the beacon, pinned on first use), and from then on
everything is the usual JOIN / PEERS / PING protocol: the beacon is only an
introduction, as in Zyre.

Wire format (big-endian; docs/PROTOCOL.md, "LAN discovery"):

    0   4  magic b"P2PB"
    4   1  version, 1
    5   1  flags: bit 0 = secure (a key follows)
    6   2  peer (ROUTER) port
    8  16  node id, the 32 hex digits as 16 bytes
    24 40  (secure only) CURVE public key, Z85 text

So a beacon is exactly 24 bytes (insecure) or 64 (secure); anything else is
dropped and counted as ``bad_beacon``.  Under CURVE the id must be the one the
key gives (the first 32 hex of its SHA-256), so a beacon cannot claim another
node's id for its own key.

Both nodes of a pair hear each other; to avoid two crossing dials only the one
with the smaller id dials at once, the other waits a few intervals first (in
case the first is not allowed to, or its dial failed).  Beacons are not
authenticated: anyone on the LAN can send one.  What they can make a node do is
bounded - at most `MAX_DIALS_PER_S` beacon dials a second, each id at most once
per `REDIAL_S` - and with an authorized_keys allowlist a beacon from an unknown
key is ignored.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .trust import node_id_for
from .protocol import valid_key

MAGIC = b"P2PB"
VERSION = 1
FLAG_SECURE = 0x01
_HEAD = struct.Struct(">4sBBH16s")
INSECURE_SIZE = _HEAD.size  # 24
SECURE_SIZE = INSECURE_SIZE + 40
DEFAULT_PORT = 5670
REDIAL_S = 5.0  # a beacon from the same unlinked node dials it again at most this often
WAIT_INTERVALS = 3  # the larger id waits this many beacon intervals for the smaller one to dial
MAX_DIALS_PER_S = 5
MAX_TRACKED = 1024


class BadBeacon(ValueError):
    pass


class Beacon(NamedTuple):
    node_id: str
    port: int
    key: str | None  # None from an --insecure node


def encode(node_id: str, port: int, key: str | None) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, FLAG_SECURE if key else 0, port, bytes.fromhex(node_id))
    return head + key.encode("ascii") if key else head


def decode(data: bytes) -> Beacon:
    """The beacon in ``data``; raises BadBeacon saying what is wrong with it."""
    if len(data) not in (INSECURE_SIZE, SECURE_SIZE):
        raise BadBeacon(f"{len(data)} bytes, a beacon has {INSECURE_SIZE} or {SECURE_SIZE}")
    magic, version, flags, port, raw_id = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise BadBeacon("not a p2pd beacon (wrong magic)")
    if version != VERSION:
        raise BadBeacon(f"beacon version {version}, this node speaks {VERSION}")
    secure = bool(flags & FLAG_SECURE)
    if flags & ~FLAG_SECURE:
        raise BadBeacon(f"unknown flags {flags:#04x}")
    if secure != (len(data) == SECURE_SIZE):
        raise BadBeacon("the secure flag does not match the length")
    if port == 0:
        raise BadBeacon("port 0")
    node_id = raw_id.hex()
    key = None
    if secure:
        try:
            key = data[INSECURE_SIZE:].decode("ascii")
        except UnicodeDecodeError:
            raise BadBeacon("the key is not Z85 text") from None
        if not valid_key(key):
            raise BadBeacon("the key is not a Z85 CURVE key")
        if node_id_for(key) != node_id:
            raise BadBeacon("the node id is not the one its key gives")
    return Beacon(node_id, port, key)


class LanDiscovery:
    """When to send our beacon, and which beacons heard are worth a dial."""

    def __init__(self, node_id: str, port: int, key: str | None, interval_s: float, now: float):
        self.node_id = node_id
        self.interval_s = interval_s
        self.payload = encode(node_id, port, key)
        self.secure = key is not None
        self.next_at = now  # the first beacon goes out at once
        self.first_heard: dict[str, float] = {}
        self.dialed: dict[str, float] = {}
        self._recent_dials: list[float] = []
        self.sent = 0
        self.heard = 0

    def due(self, now: float) -> bytes | None:
        """Our beacon, if it is time to send it."""
        if now < self.next_at:
            return None
        self.next_at = now + self.interval_s
        self.sent += 1
        return self.payload

    def should_dial(self, now: float, beacon: Beacon, linked: bool) -> bool:
        """Whether to dial the sender of ``beacon`` now (``linked``: we already have it as a live peer)."""
        self.heard += 1
        if beacon.node_id == self.node_id or (beacon.key is not None) != self.secure:
            return False  # our own beacon back, or a node we could not talk to anyway
        if linked:
            self.first_heard.pop(beacon.node_id, None)
            return False
        if len(self.first_heard) >= MAX_TRACKED or len(self.dialed) >= MAX_TRACKED:
            self._forget_old(now)
        first = self.first_heard.setdefault(beacon.node_id, now)
        if self.node_id > beacon.node_id and now - first < WAIT_INTERVALS * self.interval_s:
            return False  # it dials us (smaller id); step in only if it has not after a while
        last = self.dialed.get(beacon.node_id)
        if last is not None and now - last < REDIAL_S:
            return False
        self._recent_dials = [t for t in self._recent_dials if now - t < 1.0]
        if len(self._recent_dials) >= MAX_DIALS_PER_S:
            return False
        self._recent_dials.append(now)
        self.dialed[beacon.node_id] = now
        return True

    def _forget_old(self, now: float) -> None:
        horizon = max(REDIAL_S, WAIT_INTERVALS * self.interval_s) * 2
        self.first_heard = {k: t for k, t in self.first_heard.items() if now - t < horizon}
        self.dialed = {k: t for k, t in self.dialed.items() if now - t < horizon}
        if len(self.first_heard) >= MAX_TRACKED:
            self.first_heard.clear()
        if len(self.dialed) >= MAX_TRACKED:
            self.dialed.clear()
