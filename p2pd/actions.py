"""Effects the pure node asks the transport to carry out.

The node never touches a socket: each of its handlers returns a list of these
small records, and the event loop in `transport.py` performs them in order (as do the
simulator and the tests' in-memory network: `effects.py` lists every type and checks
that each performer handles all of them).
Keys for links are peer ids, or ``pending:<endpoint>`` for a link opened by
address before we know who answers there.
"""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import Message


@dataclass(frozen=True)
class OpenLink:
    """Open a DEALER to a peer's ROUTER endpoint.

    ``server_key`` is the peer's CURVE public key (None: plaintext link).  ``suffix``: the
    DEALER's routing id is our node id, "/" and a fresh random suffix (the peer's JOIN said
    ``rid_suffix``); else our bare node id, which every p2pd takes (docs/PROTOCOL.md 2.2).
    ``report_refused``: if the first TCP connection attempt fails at once (nothing listens
    there), tell the node (`Node.on_link_refused`) instead of letting ZeroMQ retry unseen."""
    key: str
    endpoint: str
    server_key: str | None = None
    suffix: bool = False
    report_refused: bool = False


@dataclass(frozen=True)
class RekeyLink:
    """A pending link turned out to be peer ``new``: file it under that key."""
    old: str
    new: str


@dataclass(frozen=True)
class CloseLink:
    key: str


@dataclass(frozen=True)
class Send:
    """Send one envelope on the link ``key``.

    ``report_sent``: tell the node (`Node.on_sent`) the moment the envelope goes on the wire, so
    that it times a round trip (a PING's) from there, not from when it decided to send it.
    ``before_commit``: the envelope describes nothing the store holds (a PONG), so when it is all
    a frame asked for it may go out at once instead of after the turn's commit."""
    key: str
    msg: Message
    report_sent: bool = False
    before_commit: bool = False


@dataclass(frozen=True)
class SendBatch:
    """Send several envelopes on the link ``key`` as one ZeroMQ message, a frame each
    (only to a peer whose JOIN said ``batch``; see docs/PROTOCOL.md)."""
    key: str
    msgs: list


@dataclass(frozen=True)
class Publish:
    """Send one envelope on our PUB socket: to every subscriber, or (``to``) only to those peers.

    With ``to`` (peer ids) the transport sends one ZeroMQ message per peer: a topic frame
    ``b"@" + peer id`` (which only that peer's SUB subscribes to), then the envelope; without,
    the envelope alone (every SUB subscribes to ``b"{"``, how an envelope starts).  Tree pushes
    (tree.py) go to their eager peers this way."""
    msg: Message
    to: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PublishBatch:
    """Publish several envelopes as one ZeroMQ message, a frame each (every subscriber takes batches)."""
    msgs: list


@dataclass(frozen=True)
class Subscribe:
    """Subscribe to a peer's PUB endpoint, with a SUB socket of its own so
    every broadcast is known to come from that peer."""
    endpoint: str
    peer_id: str | None = None
    server_key: str | None = None


@dataclass(frozen=True)
class Unsubscribe:
    endpoint: str
    peer_id: str | None = None


@dataclass(frozen=True)
class PinKey:
    """Remember (trust on first use) that ``address`` (host:port) has ``key``."""
    address: str
    key: str


@dataclass(frozen=True)
class FetchKey:
    """Ask the key port at ``endpoint`` (plaintext) for the node's public key."""
    endpoint: str
    tag: str
    timeout_s: float = 3.0


@dataclass(frozen=True)
class LanBeacon:
    """Send our LAN discovery beacon (p2pd/lan.py) to the configured broadcast address."""
    payload: bytes


@dataclass(frozen=True)
class ToClient:
    """A frame (JSON-able dict) for one control-socket client."""
    client: bytes
    payload: dict


@dataclass(frozen=True)
class EditAuthorizedKeys:
    """`trust` (docs/PROTOCOL.md 9.2): read authorized_keys and, for ``action`` "add" (``key``,
    ``comment``) or "remove" (``match``), rewrite it; make what it then lists the node's
    allowlist, and answer ``client`` (its ``req``).  The node does no file I/O, so the edge does
    all of it (p2pd/trustfiles.py), with the reply: the result, ``unknown_peer`` (nothing
    matched), ``bad_file`` (the file is unreadable) or ``internal``."""
    action: str  # "list", "add" or "remove" (checked by the command)
    client: bytes
    req: object
    key: str = ""
    comment: str = ""
    match: str = ""


@dataclass(frozen=True)
class ForgetPin:
    """`known forget`: remove the pins of ``match`` (an address, a key or a node id) from
    known_peers and from the node's pins, and answer ``client`` (its ``req``) with the pins
    left; done at the edge (p2pd/trustfiles.py), as `EditAuthorizedKeys` is."""
    match: str
    client: bytes
    req: object


@dataclass(frozen=True)
class SavePeers:
    """Persist the peer book so a restarted node can rejoin its peers."""
    peers: list


@dataclass(frozen=True)
class Shutdown:
    """Leave was sent; flush and stop the event loop."""
