"""Events the outside world hands the node: the inputs to `Node.handle`.

The mirror of actions.py: the transport (or the simulator) turns what its sockets and timers
saw into one of these records and passes it in with the monotonic time; the node returns the
effects.  Control requests are not here: they go through control.py, which validates them
and calls the node's operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class RouterFrames:
    """A message on our ROUTER: [routing id, envelope, ...].  ``peer_host``: where it came from,
    or a function that looks it up (only a JOIN or a log line needs it); ``user_id``: the node id
    ZAP derived from the sender's CURVE key (None without CURVE)."""
    frames: list
    peer_host: str | Callable[[], str | None] | None = None
    user_id: str | None = None


@dataclass(frozen=True)
class SubFrames:
    """A message on the SUB we hold to ``source_peer``'s PUB: BROADCASTs."""
    frames: list
    source: str = "sub"
    source_peer: str | None = None


@dataclass(frozen=True)
class Subscription:
    """Our XPUB saw a subscriber (un)subscribe: the raw subscription frame."""
    frame: bytes


@dataclass(frozen=True)
class Tick:
    """Timers: the loop calls at least every `Node.next_deadline`."""


@dataclass(frozen=True)
class Flush:
    """End of an input batch, the store committed: what may go out only now (ACKs)."""


@dataclass(frozen=True)
class KeyAnswer:
    """The answer to a `FetchKey`: the key, or why not (``refused``: nothing listens there)."""
    tag: str
    key: str | None
    error: str | None
    refused: bool = False


@dataclass(frozen=True)
class LinkRefused:
    """The connection of link ``key`` (an `OpenLink` with ``report_refused``) was refused at once."""
    key: str


@dataclass(frozen=True)
class LinkHandshakeFailed:
    """The first handshake on link ``key`` failed (the node at its address lacks the key we expect)."""
    key: str


@dataclass(frozen=True)
class LanBeaconHeard:
    """A LAN discovery beacon from ``host``."""
    data: bytes
    host: str


ALL_INPUTS = (RouterFrames, SubFrames, Subscription, Tick, Flush, KeyAnswer, LinkRefused, LinkHandshakeFailed, LanBeaconHeard)
