"""Routed direct messages: hop by hop to a node we hold no link to, sealed end to end (issue 15).

How this works
--------------
With bounded links (views.py) a node is linked to a few neighbours only.  A direct envelope
(MESSAGE, ACK, FETCH, a BROADCAST replay, VIEW) for any other node is *wrapped*: `Relay.wrap`
seals the whole envelope (``msg.to_dict()``) to the destination's CURVE key (sealed.py) and
puts the sealed body in a ``ROUTED`` envelope from us to ``routes.next_hop(destination)``.
Each relay on the way (`Relay.on_routed`) sees only the outer ids and the hop limit: it checks
the body's shape, takes one off ``ttl`` (`sealed.forward`) and sends a new ``ROUTED`` envelope
of its own to its next hop.  The destination opens the box, decodes what was inside with the
codec's every check (``P.decode``), and hands it back to the caller as if it had come over a
link from its origin: ``on_routed`` returns it, and the node dispatches it as usual.

**What a relay can and cannot do.**  It cannot read or alter the inner envelope (the box), nor
make one in another node's name (the box is made with the origin's secret key, and the inner
``sender_id`` must be the outer ``from``, which the box binds: sealed.py).  It can drop,
delay, replay or misdirect; the delivery layer's sequence numbers and acknowledgements (inside
the box) deal with those, as on a direct link.  Only these types travel this way: an envelope
about a *link* (JOIN, PING, PONG, PEERS, LEAVE) or about the overlay's flooding (TREE, FACTS)
means nothing from a node we are not linked to, so a sealed one is dropped (``bad_type``).

**Routing checks.**  ``ttl`` bounds a message's path whatever the routing tables say (they
converge by gossip and may loop for a while); a message is never sent back to the hop it came
from (``routing_loop``: our table and theirs disagree, and ping-pong would burn the ttl for
nothing), nor relayed when it is our own coming back.

**Plain mode.**  A Relay built without a secret key (unit tests of the node and the simulator
make nodes without keys) carries the inner envelope unsealed, in a body
``{"sv": 0, "from", "to", "ttl", "msg": <inner dict>}``, with the same routing and the same
checks of the inner envelope.  It exists for those builds only: no daemon runs keyless (the
daemon always has a CURVE keypair, even with ``--insecure``, which only stops it checking its
*peers'* keys), so a Relay with a secret refuses every plain body (``sealed_plain_refused``):
if it relayed or believed one, any node could write a message in another's name.  A keyless
Relay likewise drops a sealed body (``sealed_no_key``): it can neither open nor check it.

**Cost.**  `sealed.Sealer` derives our id once and caches the pair keys of busy peers: with a
cached pair key a short MESSAGE costs ~12 µs to wrap and ~8 µs to open, plus ~40 µs the first
time per peer (``tests/test_relay.py::test_cost`` prints the round trip).  A relay does no
crypto at all.

Everything here is pure: the routes, the key table, the drop counter and the random source are
given to the constructor; nothing refers back to the node.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Optional

import orjson

from . import protocol as P
from . import sealed
from .actions import Send, SendBatch
from .drops import Drops
from .sealed import BadSeal
from .trust import node_id_for

PLAIN_VERSION = 0  # the unsealed body of a keyless Relay (see "Plain mode")
PLAIN_FIELDS = frozenset({"sv", "from", "to", "ttl", "msg"})
# Direct envelopes between two nodes, meaningful without a link between them (see the module doc).
ROUTABLE = frozenset({P.MESSAGE, P.ACK, P.FETCH, P.BROADCAST, P.VIEW})

_MS_PREFIX = re.compile(r"^[0-9a-f]{12}")

Lookup = Callable[[str], Optional[str]]


class Relay:
    """Wraps direct envelopes for nodes we hold no link to, relays others', opens ours."""

    def __init__(self, node_id: str, name: str, secret_z85: str | None, public_z85: str | None,
                 next_hop: Lookup, key_of: Lookup, stats: Counter, drops: Drops, rng,
                 max_frame: int = P.DEFAULT_MAX_FRAME_BYTES, ttl: int = sealed.DEFAULT_TTL):
        """``next_hop(node_id)``: the linked neighbour towards that node, or None (routes.Routes.next_hop).
        ``key_of(node_id)``: the Z85 CURVE key we hold for that node, or None.  ``rng`` has
        ``getrandbits`` (envelope ids and the seal's nonce input).  Raises ``ValueError`` if the
        keys are not a pair or are not ``node_id``'s: a Relay that sealed as another node would
        have every message it sends refused."""
        self.node_id, self.name = node_id, name
        self._sealer = sealed.Sealer(secret_z85, public_z85) if secret_z85 is not None else None
        if self._sealer is not None and self._sealer.node_id != node_id:
            raise ValueError("the secret key is not this node id's")
        self._next_hop, self._key_of = next_hop, key_of
        self.stats, self._drops, self._rng = stats, drops, rng
        self.max_frame, self.ttl = max_frame, ttl

    # --- sending ------------------------------------------------------------------------

    def wrap(self, key: str, msg: P.Message) -> Send | None:
        """The `Send` that carries ``msg`` towards node ``key``, or None when it cannot go: no route,
        no key for it, or too large to seal (counted: ``routed_unreachable``, ``routed_too_large``).
        None is for the caller to treat as a link that is down (keep the message, retry later)."""
        hop = self._next_hop(key)  # first: no sealing for a message that cannot go
        if hop is None:
            self.stats["routed_unreachable"] += 1
            return None
        body = self._body(key, msg)
        if body is None:
            return None
        self.stats["routed_out"] += 1
        return Send(hop, self._envelope(msg.id, msg.timestamp, key, body))

    def wrap_many(self, key: str, msgs: list) -> list:
        """The effects carrying ``msgs`` towards ``key``: one ROUTED envelope each, in `SendBatch`es of
        at most `P.MAX_BATCH` to the hop when there are several (the hop is a linked peer, so it
        takes batches as any link does: the caller batches only where its links do; a bigger
        batch, such as a routed FETCH reply of 1,000 broadcasts, would be refused whole as
        ``bad_frames``).  Messages that cannot go are left out (counted as in `wrap`); [] when
        none can."""
        hop = self._next_hop(key)
        if hop is None:
            self.stats["routed_unreachable"] += len(msgs)
            return []
        envelopes = []
        for msg in msgs:
            body = self._body(key, msg)
            if body is not None:
                envelopes.append(self._envelope(msg.id, msg.timestamp, key, body))
        self.stats["routed_out"] += len(envelopes)
        if len(envelopes) > 1:
            return [SendBatch(hop, envelopes[k:k + P.MAX_BATCH]) for k in range(0, len(envelopes), P.MAX_BATCH)]
        return [Send(hop, e) for e in envelopes]

    def _body(self, key: str, msg: P.Message) -> dict | None:
        inner = msg.to_dict()
        if self._sealer is None:
            body = {"sv": PLAIN_VERSION, "from": self.node_id, "to": key, "ttl": self.ttl, "msg": inner}
            if len(orjson.dumps(body)) + sealed.ENVELOPE_RESERVE > self.max_frame:
                self.stats["routed_too_large"] += 1
                return None
            return body
        public = self._key_of(key)
        if public is None or not P.valid_key(public) or node_id_for(public) != key:
            self.stats["routed_unreachable"] += 1  # no key for it (yet), or one that is not its own
            return None
        try:
            return self._sealer.seal(public, inner, self._rng, self.ttl, self.max_frame)
        except BadSeal:  # too_large: the only kind seal raises
            self.stats["routed_too_large"] += 1
        except ValueError:  # a key with no pair key (a low-order point): nobody holds its secret
            self.stats["routed_unreachable"] += 1
        return None

    def _envelope(self, inner_id: str, timestamp: str, to: str, body: dict) -> P.Message:
        """A ROUTED envelope from us.  Its id is fresh, in the same millisecond as the message it
        carries when that id says one (`P.new_message_id`'s layout), so the ids still sort by time
        without a clock here; its timestamp is the inner message's."""
        prefix = inner_id[:12] if _MS_PREFIX.match(inner_id) else "0" * 12
        envelope_id = f"{prefix}{self._rng.getrandbits(80):020x}"
        return P.Message(P.ROUTED, envelope_id, self.node_id, self.name, timestamp, body, to)

    # --- receiving ----------------------------------------------------------------------

    def on_routed(self, now: float, msg: P.Message, hop_id: str) -> tuple[list, P.Message | None]:
        """A ROUTED envelope from linked neighbour ``hop_id``: ``(effects, None)`` when it is
        relayed or dropped, ``([], inner)`` when it is for us (the inner envelope, checked as if it
        had arrived on a link from its origin, for the caller to dispatch)."""
        data = msg.data

        def drop(kind: str, reason: str):
            self._drops(now, kind, reason, hop_id)
            return [], None

        if msg.type != P.ROUTED:
            return drop("bad_type", f"{msg.type} is not a ROUTED envelope")
        sv = data.get("sv")
        plain = type(sv) is int and sv == PLAIN_VERSION
        if plain and self._sealer is not None:
            return drop("sealed_plain_refused", "an unsealed routed body (only keyless test builds make them)")
        if not plain and self._sealer is None:
            return drop("sealed_no_key", "a sealed routed body, and this node has no key to open or check it")
        if plain:
            if set(data) != PLAIN_FIELDS or type(data["msg"]) is not dict:
                return drop("sealed_malformed", "fields")
        else:
            try:
                sealed.check_shape(data)
            except BadSeal as e:
                return drop(f"sealed_{e.kind}", str(e))
        origin, destination = data["from"], data["to"]
        if msg.target_id != destination:
            return drop("misrouted", "the envelope's target is not its body's destination")
        if destination != self.node_id:
            return self._relay(now, msg, hop_id, drop)
        return self._deliver(now, data, origin, plain, drop)

    def _relay(self, now: float, msg: P.Message, hop_id: str, drop):
        data = msg.data
        if data["from"] == self.node_id:
            return drop("routing_loop", "our own routed message came back")
        if data["ttl"] == 0:
            return drop("ttl_expired", f"for {data['to']}")
        if not data["sv"] and len(orjson.dumps(data["msg"])) > self.max_frame - sealed.ENVELOPE_RESERVE:
            return drop("sealed_too_large", "a body too large to pass on")
        if data["sv"] and len(data["box"]) > self.max_frame - sealed.ENVELOPE_RESERVE:
            return drop("sealed_too_large", "a body too large to pass on")
        hop = self._next_hop(data["to"])
        if hop is None:
            return drop("no_route", f"to {data['to']}")
        if hop == hop_id:
            return drop("routing_loop", f"the next hop to {data['to']} is the node it came from")
        body = {**data, "ttl": data["ttl"] - 1} if data["sv"] == PLAIN_VERSION else sealed.forward(data)
        self.stats["routed_relayed"] += 1
        return [Send(hop, self._envelope(msg.id, msg.timestamp, data["to"], body))], None

    def _deliver(self, now: float, data: dict, origin: str, plain: bool, drop):
        if plain:
            inner = data["msg"]
        else:
            try:
                inner = self._sealer.open_(data, self._key_of, self.max_frame)
            except BadSeal as e:
                return drop(f"sealed_{e.kind}", str(e))
        try:  # every codec check, as on a link: the origin's node is authenticated, not trusted
            msg = P.decode(orjson.dumps(inner), self.max_frame)
        except (P.ProtocolError, TypeError) as e:
            return drop("sealed_bad_inner", f"the routed envelope is not valid: {e}")
        if msg.sender_id != origin:
            return drop("spoofed", f"a routed {msg.type} from {origin} in the name of {msg.sender_id}")
        if msg.type not in ROUTABLE:
            return drop("bad_type", f"{msg.type} is not sent routed")
        if msg.target_id is not None and msg.target_id != self.node_id:
            return drop("misrouted", f"a routed {msg.type} for {msg.target_id}")
        self.stats["routed_in"] += 1
        return [], msg
