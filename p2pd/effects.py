"""The effect registry: every effect the node may ask for, and how a performer declares its handlers.

How this works
--------------
The node core returns effect records (actions.py).  Three performers carry them out: the real
event loop (transport.py, with ZeroMQ), the deterministic simulator (sim.py) and the in-memory
network of the unit tests (tests/memnet.py).  `ALL_EFFECTS` lists every effect type.

A performer is a class decorated with ``@performer(not_modelled={...})``.  For each type in
`ALL_EFFECTS` it either has a method named for it (`handler_name`: ``perform_send`` for `Send`,
``perform_open_link`` for `OpenLink`), or names the type in ``not_modelled`` with the reason it
does not model it (the simulator's nodes run --insecure: there is no key port to fetch a key
from).  The decorator raises at import if a type is neither, or both: a new effect cannot be
forgotten by one performer unnoticed (tests/test_effects.py checks the three).

At run time `handlers` gives a dict ``type -> bound method``: performing one effect costs one
dict lookup and one call, ``table[type(act)](act)`` (the transport performs about 100,000 a
second).  Handlers take what their performer needs besides the effect (the simulator passes the
time and the simulated node first); the registry does not care.  An effect declared not modelled
raises `NotModelled` when one does come: a performer never drops an effect silently.

Pure: no sockets, no I/O.
"""

from __future__ import annotations

import re
from types import MappingProxyType

from .actions import (CloseLink, EditAuthorizedKeys, FetchKey, ForgetPin, LanBeacon, OpenLink, PinKey, Publish, PublishBatch, RekeyLink,
                      SavePeers, Send, SendBatch, Shutdown, Subscribe, ToClient, Unsubscribe)

ALL_EFFECTS: tuple[type, ...] = (
    OpenLink, RekeyLink, CloseLink, Send, SendBatch, Publish, PublishBatch, Subscribe, Unsubscribe,
    PinKey, FetchKey, LanBeacon, ToClient, SavePeers, Shutdown, EditAuthorizedKeys, ForgetPin,
)

_WORD = re.compile(r"(?<!^)(?=[A-Z])")


class NotModelled(Exception):
    """A performer was handed an effect it declared it does not model."""


def handler_name(effect: type) -> str:
    """The method a performer handles ``effect`` with: ``perform_`` and the type's name in snake case."""
    return "perform_" + _WORD.sub("_", effect.__name__).lower()


def performer(not_modelled: dict[type, str] | None = None):
    """Class decorator: check the class covers every effect type, by a handler or a stated reason.

    ``not_modelled`` maps an effect type to why this performer does not carry it out; the
    class keeps it as ``NOT_MODELLED`` (read-only)."""
    reasons = dict(not_modelled or {})

    def decorate(cls: type) -> type:
        problems = []
        for effect, reason in reasons.items():
            if effect not in ALL_EFFECTS:
                problems.append(f"{effect!r} is named not modelled but is no effect type")
            elif not (isinstance(reason, str) and reason.strip()):
                problems.append(f"{effect.__name__} is named not modelled without a reason")
        for effect in ALL_EFFECTS:
            has = callable(getattr(cls, handler_name(effect), None))
            if has and effect in reasons:
                problems.append(f"{effect.__name__} has a handler and is named not modelled")
            elif not has and effect not in reasons:
                problems.append(f"{effect.__name__} has no {handler_name(effect)} and is not named not modelled")
        if problems:
            raise TypeError(f"{cls.__qualname__} is no complete effect performer: " + "; ".join(problems))
        cls.NOT_MODELLED = MappingProxyType(reasons)
        return cls

    return decorate


def coverage(cls: type) -> dict[type, str]:
    """How a performer class covers each effect type: ``"performed"``, or the reason it does not model it."""
    reasons = getattr(cls, "NOT_MODELLED", {})
    return {effect: reasons[effect] if effect in reasons else "performed"
            for effect in ALL_EFFECTS if effect in reasons or callable(getattr(cls, handler_name(effect), None))}


def handlers(obj) -> dict[type, object]:
    """The dispatch table of a performer instance: effect type -> its bound handler, or for a type
    it does not model a function that raises `NotModelled` with the reason."""
    cls = type(obj)
    if not hasattr(cls, "NOT_MODELLED"):
        raise TypeError(f"{cls.__qualname__} is not declared with @performer")
    table = {}
    for effect in ALL_EFFECTS:
        reason = cls.NOT_MODELLED.get(effect)
        table[effect] = getattr(obj, handler_name(effect)) if reason is None else _refuse(cls.__qualname__, effect, reason)
    return table


def _refuse(who: str, effect: type, reason: str):
    def refuse(*args):
        raise NotModelled(f"{who} does not model {effect.__name__} ({reason}): {args[-1]!r}")
    return refuse
