"""Broadcasts over a Plumtree in the active view: envelopes, signatures and checks (issue 15).

How this works
--------------
`Tree` wraps plumtree.py's `Plumtree` (the pure eager/lazy logic) and speaks it as ``TREE``
envelopes (docs/PROTOCOL.md TREE and 12.6; data.kind GOSSIP, IHAVE, GRAFT or PRUNE):

- **GOSSIP** carries a whole broadcast: ``bcast``, the origin's BROADCAST envelope exactly as
  the origin encoded it (a string), ``sig``, the origin's Ed25519 signature of
  ``SIG_DOMAIN + bcast`` (hex; records.py `Signer`: the Edwards form of its CURVE key, so anyone
  holding its key checks it), and ``round``, its hop count.  It goes out on our PUB, to the
  eager peers only: one `Publish(msg, to=peers)` per broadcast, a topic frame per peer (the
  transport), so a broadcast costs a payload per tree edge, not per subscriber.  Relays
  forward the origin's bytes and signature untouched, so a relay can neither forge nor alter
  a broadcast; it can only withhold one (the IHAVEs of the other links then graft around it).
- **IHAVE** ``{ids: [[id, round], ...]}`` (at most ``ihave_batch`` ids), **GRAFT** ``{id}`` and
  **PRUNE** ``{}`` are small and go over the DEALER link to that neighbour (`Outbound.send`).

**A star.** A node linked to every node it holds a record of (the network is no bigger
than the active view: `Routes.star`) publishes its own BROADCASTs as they are, untargeted,
as a full mesh always did: every SUB takes them (they start with "{"), each SUB's CURVE link
proves they are the publisher's, so no signature and no TREE wrapper; a burst goes as
batches.  They do not enter the tree, so nobody relays or announces them: a copy the PUB
dropped is fetched when the next one shows the gap or a heartbeat announces the latest
number (delivery.py).  A newcomer that is not linked to the origin yet learns the number
from its record and fetches too.  Under a flood a tree (relays, IHAVEs, grafts) cost five
to ten times as much per delivery as this.  Relayed broadcasts of other origins skip the
origin's neighbours the same way (plumtree.py, a star).

The Plumtree message id is the BROADCAST's envelope id.  A GOSSIP is checked before Plumtree
sees it: ``bcast`` must decode (protocol.py) as a numbered BROADCAST (``bseq``), ``round``
be an integer 0..`MAX_ROUND`; a copy of an id already seen is a duplicate (Plumtree prunes the
link) and is not verified again; a new one must carry a valid signature from its origin's
verify key (``verify_key_of``, from the roster's verified records).  A Tree built without a
``sign`` (keyless unit tests, the simulator) neither signs nor asks for signatures.  Anything
malformed is counted in `Drops` (``tree_*`` kinds) and dropped; nothing here raises on input.

`originate` takes our own BROADCASTs, `on_tree` a TREE envelope from a neighbour and returns,
besides the effects, the inner BROADCASTs seen for the first time (the node hands them to its
delivery layer, which numbers, stores and drops true duplicates by ``(origin, bseq)``);
`tick` runs Plumtree's repair timers and sends the IHAVEs queued since the last tick.

Counted in ``stats``: ``tree_payloads_out`` (each GOSSIP once per peer it goes to: the issue's
goal is at most 1.3 × N per broadcast), ``tree_payloads_in`` and ``tree_duplicates``.
Memory is Plumtree's: bounded seen window, payload cache, missing set and IHAVE queues.
Pure: no sockets, clock or randomness.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from . import protocol as P
from .actions import Publish
from .drops import Drops
from .outbound import Outbound
from .plumtree import Deliver, Gossip, Graft, IHave, Plumtree, Prune
from .records import BadRecord, _check_sig

SIG_DOMAIN = b"p2pd-tree-broadcast-v1\x00"  # what a GOSSIP's signature covers: this, then bcast's UTF-8
MAX_ROUND = 1024  # hops: far beyond any tree's depth; a bigger round is garbage
GOSSIP, IHAVE, GRAFT, PRUNE = "GOSSIP", "IHAVE", "GRAFT", "PRUNE"


class Tree:
    def __init__(self, node_id: str, name: str, sign: Callable[[bytes], bytes] | None,
                 verify_key_of: Callable[[str], bytes | None], outbound: Outbound, stats: Counter, drops: Drops,
                 rng=None, *, ihave_flush_s: float = 0.05, max_frame_bytes: int = P.DEFAULT_MAX_FRAME_BYTES,
                 links_authenticated: bool = False, **plumtree_params):
        self.id = node_id
        self.name = name
        self.sign = sign
        self.verify_key_of = verify_key_of
        self.out = outbound
        self.stats = stats
        self.drop = drops
        self.rng = rng  # unused: Plumtree's choices are deterministic; kept for the caller's symmetry
        self.ihave_flush_s = ihave_flush_s
        self.max_frame_bytes = max_frame_bytes
        # CURVE links (not --insecure): a GOSSIP's sender is the link's owner (intake.py checks the
        # envelope against the key of the connection), so one pushed by its origin itself is the
        # origin's without a signature check.  In a network no bigger than the active view that is
        # every copy, and the check was a fifth of a receiver's time under a broadcast flood.
        self.links_authenticated = links_authenticated
        self.pt = Plumtree(**plumtree_params)
        self._flush_at: float | None = None  # when queued IHAVEs are due out

    # -- neighbours -------------------------------------------------------------------------

    def neighbor_up(self, peer_id: str) -> None:
        self.pt.neighbor_up(peer_id)

    def neighbor_down(self, peer_id: str) -> None:
        self.pt.neighbor_down(peer_id)

    @property
    def eager(self) -> list[str]:
        return list(self.pt.eager)

    @property
    def lazy(self) -> list[str]:
        return list(self.pt.lazy)

    # -- inputs -----------------------------------------------------------------------------

    def originate(self, now: float, msgs: list[P.Message]) -> list | None:
        """Our own BROADCASTs: signed (unless keyless) and pushed down the tree.  None when we are
        linked to every node (see the module doc): the caller publishes them plain to every SUB,
        as the full mesh did."""
        star = self.pt.star(self.id)
        if star is not None and msgs and all(type(m.data.get("bseq")) is int for m in msgs):
            self.stats["tree_payloads_out"] += len(msgs) * len(star)
            return None
        acts: list = []
        for msg in msgs:
            bcast = P.encode(msg)
            sig = self.sign(SIG_DOMAIN + bcast).hex() if self.sign is not None else None
            bseq = msg.data.get("bseq")
            stream = (self.id, bseq) if type(bseq) is int else (None, 0)
            acts += self._effects(now, self.pt.broadcast(now, msg.id, (bcast.decode(), sig), *stream))
        return acts

    def on_tree(self, now: float, msg: P.Message, peer_id: str) -> tuple[list, list[P.Message]]:
        """A TREE envelope from neighbour ``peer_id``: (effects, BROADCASTs to deliver)."""
        data = msg.data
        kind = data.get("kind")
        try:
            if kind == GOSSIP:
                return self._on_gossip(now, data, peer_id)
            if kind == IHAVE:
                self._on_ihave(now, data, peer_id)
                return self._effects(now, []), []
            if kind == GRAFT:
                msg_id = data.get("id")
                if msg_id is not None and not P.valid_node_id(msg_id):
                    self.drop(now, "tree_bad_graft", "GRAFT id is not an id", peer_id)
                    return [], []
                return self._effects(now, self.pt.on_graft(now, peer_id, msg_id)), []
            if kind == PRUNE:
                self.pt.on_prune(peer_id)
                return [], []
        except (TypeError, ValueError, AttributeError) as e:  # belt and braces: input never raises
            self.drop(now, "tree_bad_data", f"{kind}: {e}", peer_id)
            return [], []
        self.drop(now, "tree_bad_kind", f"unknown TREE kind {str(kind)[:16]!r}", peer_id)
        return [], []

    def tick(self, now: float) -> list:
        """Repair timers that are due (GRAFTs) and the IHAVEs queued since the last tick."""
        effs = []
        deadline = self.pt.next_deadline()
        if deadline is not None and deadline <= now:
            effs += self.pt.timer(now)
        effs += self.pt.flush_ihave(now)
        self._flush_at = None
        return self._effects(now, effs)

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do (None: nothing pending)."""
        times = [t for t in (self.pt.next_deadline(), self._flush_at) if t is not None]
        return min(times, default=None)

    # -- internals --------------------------------------------------------------------------

    def _on_gossip(self, now: float, data: dict, peer_id: str) -> tuple[list, list[P.Message]]:
        bcast, sig, rnd = data.get("bcast"), data.get("sig"), data.get("round")
        if type(bcast) is not str or type(rnd) is not int or not 0 <= rnd <= MAX_ROUND:
            self.drop(now, "tree_bad_gossip", "GOSSIP needs data.bcast (a string) and data.round (0..1024)", peer_id)
            return [], []
        if sig is not None and type(sig) is not str:
            self.drop(now, "tree_bad_gossip", "GOSSIP data.sig must be hex", peer_id)
            return [], []
        raw = bcast.encode("utf-8", "surrogatepass")
        try:
            inner = P.decode(raw, self.max_frame_bytes)
        except P.ProtocolError as e:
            self.drop(now, "tree_bad_bcast", f"GOSSIP bcast: {e.reason}", peer_id)
            return [], []
        if inner.type != P.BROADCAST or type(inner.data.get("bseq")) is not int:
            self.drop(now, "tree_bad_bcast", "GOSSIP bcast is not a numbered BROADCAST", peer_id)
            return [], []
        self.stats["tree_payloads_in"] += 1
        if self.pt.has_seen(inner.id):
            self.stats["tree_duplicates"] += 1
            return self._effects(now, self.pt.on_gossip(now, peer_id, inner.id, None, rnd)), []
        if self.sign is not None and not (self.links_authenticated and peer_id == inner.sender_id) \
                and not self._verified(now, inner.sender_id, raw, sig, peer_id):
            return [], []
        effs = self.pt.on_gossip(now, peer_id, inner.id, (bcast, sig), rnd, inner.sender_id, inner.data["bseq"])
        deliver = [inner for e in effs if isinstance(e, Deliver) and inner.sender_id != self.id]
        return self._effects(now, effs), deliver

    def _verified(self, now: float, origin: str, raw: bytes, sig, peer_id: str) -> bool:
        key = self.verify_key_of(origin)
        if key is None:
            self.drop(now, "tree_unverified", f"no verify key for origin {origin[:12]}", peer_id)
            return False
        try:
            sig_bytes = bytes.fromhex(sig) if type(sig) is str else b""
        except ValueError:
            sig_bytes = b""
        try:
            _check_sig(key, SIG_DOMAIN + raw, sig_bytes)
        except BadRecord:
            self.drop(now, "tree_bad_sig", f"broadcast from {origin[:12]} with a bad signature", peer_id)
            return False
        return True

    def _on_ihave(self, now: float, data: dict, peer_id: str) -> None:
        ids = data.get("ids")
        if type(ids) is not list or not 0 < len(ids) <= self.pt.ihave_batch:
            self.drop(now, "tree_bad_ihave", f"IHAVE needs data.ids, 1 to {self.pt.ihave_batch} entries", peer_id)
            return
        entries = []
        for e in ids:
            if not (type(e) is list and len(e) in (2, 4) and P.valid_node_id(e[0]) and type(e[1]) is int
                    and 0 <= e[1] <= MAX_ROUND and (len(e) == 2 or (P.valid_node_id(e[2]) and type(e[3]) is int
                                                                    and 0 <= e[3] <= P.MAX_SEQ))):
                self.drop(now, "tree_bad_ihave", "IHAVE entries are [id, round] or [id, round, origin, bseq]", peer_id)
                return
            entries.append(tuple(e))
        self.pt.on_ihave_batch(now, peer_id, entries)

    def _effects(self, now: float, effs: list) -> list:
        """Plumtree's records as envelopes: GOSSIPs of one message and round grouped into one
        targeted Publish; IHAVE, GRAFT, PRUNE sent on the neighbour's link."""
        acts: list = []
        pushes: dict[tuple, list[str]] = {}
        payloads: dict[tuple, tuple] = {}
        for e in effs:
            if isinstance(e, Gossip):
                key = (e.msg_id, e.round)
                pushes.setdefault(key, []).append(e.peer)
                payloads[key] = e.payload
            elif isinstance(e, IHave):
                acts.append(self.out.send(e.peer, self.out.msg(now, P.TREE, {"kind": IHAVE, "ids": [list(x) for x in e.entries]})))
            elif isinstance(e, Graft):
                acts.append(self.out.send(e.peer, self.out.msg(now, P.TREE, {"kind": GRAFT, "id": e.msg_id})))
            elif isinstance(e, Prune):
                acts.append(self.out.send(e.peer, self.out.msg(now, P.TREE, {"kind": PRUNE})))
        for key, peers in pushes.items():
            bcast, sig = payloads[key]
            data = {"kind": GOSSIP, "bcast": bcast, "round": key[1]}
            if sig is not None:
                data["sig"] = sig
            self.stats["tree_payloads_out"] += len(peers)
            acts.append(Publish(self.out.msg(now, P.TREE, data), to=tuple(peers)))
        if self._flush_at is None and self.pt.has_queued_ihave:
            self._flush_at = now + self.ihave_flush_s
        return acts
