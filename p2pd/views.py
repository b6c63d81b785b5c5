"""HyParView membership views: which few peers a node keeps live links to (issue 15).

How this works
--------------
A full mesh costs every node a link, heartbeats and gossip to every other node; this
module bounds that.  Each node keeps two partial views of the network (HyParView,
Leitão, Pereira and Rodrigues, DSN 2007):

- the **active view**, at most ``active_size`` peers (default 8) that we hold live links
  to and send all traffic over.  It is *symmetric*: B is in A's active view exactly when A
  is in B's, so a link is one link, watched from both ends;
- the **passive view**, at most ``passive_size`` peers (default 30, HyParView's
  6 x (log10(n) + 1) for about 10,000 nodes) that we know of but are not linked to: the
  candidates that replace an active peer that fails.

Joining.  ``join(contact)`` puts the contact in our active view and sends it JOIN.  The
contact puts us in its active view (evicting a random peer if full) and sends
FORWARD_JOIN to each of its other active peers, each starting a random walk of ``arwl``
hops.  A node on the walk that has room in its active view, or that is its end (TTL 0,
or nobody else to forward to), offers itself to the joiner as a neighbour; the node
at ``prwl`` hops left also puts the joiner in its passive view, so the joiner becomes
known beyond its neighbours.  (Deviation from the paper, so that networks no bigger than
the active view stay a full mesh, as p2pd is today: a walk stops at the first node with
room; in a full view every node is full and walks run their whole length, as in the paper.)

Neighbour requests.  NEIGHBOR asks a peer to link with us.  A *high* priority request
(we have no active peer left) is always accepted, evicting a random active peer if need
be; a *low* one only if the receiver has room.  The receiver that accepts adds us at
once and answers NEIGHBOR_REPLY accepted; we add it when the answer comes.  A request is
pending until answered, failed, or ``neighbor_timeout_s`` passes (then the candidate is
forgotten as probably dead).

Eviction and failure.  A peer evicted to make room is told DISCONNECT, and both ends move
each other to the passive view (it was alive a moment ago).  A link that fails
(``link_failed``: the transport's or the heartbeat's verdict, or a dial to a passive
candidate that failed) drops the peer from both views, and we ask passive candidates,
one per free slot, until the active view is full again: the overlay repairs itself.

Shuffles.  Every ``shuffle_interval_s`` (``tick``) a node sends SHUFFLE, with itself,
``shuffle_ka`` of its active peers and ``shuffle_kp`` of its passive ones, on a random walk
of ``shuffle_ttl`` hops; the node at its end answers SHUFFLE_REPLY with as many of its
own passive entries, and both merge what they got into their passive views (evicting
first the entries they sent, which the other side now holds).  This keeps passive views
fresh and random, so that after a massive failure they still hold live candidates.

If every peer in both views is gone the node is ``isolated`` and cannot repair by itself:
the caller must join again through a bootstrap contact.

Pure, sans-I/O: no sockets, no clock, no randomness of its own.  Time comes in as
``now`` (seconds, any origin), randomness from the ``rng`` given (``getrandbits``, see
`protocol.RandomBits`).  Each input returns a list of effects: `ToPeer` messages for the
caller to wrap in envelopes and send (to a peer not linked yet, too: NEIGHBOR goes to a
candidate, SHUFFLE_REPLY to a shuffle's origin), and `LinkUp`/`LinkDown` when a peer
enters or leaves the active view, for the caller to open or close its link.

The node's use (overlay.py): `handle` fed with VIEW envelopes, `tick` from the node's
tick, `ask` when a link we dialled comes up, `join` for a link the user asked for; `LinkUp`
opens a link to the address in the peer's signed record, `LinkDown` closes ours; a NEIGHBOR
or JOIN travels on a link of its own, the other kinds routed to a node we hold no link to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import protocol as P
from .gossip import sample as _gossip_sample

# Message kinds (``ToPeer.kind``); the data of each is a small JSON-able dict.
JOIN = "JOIN"                    # {}
FORWARD_JOIN = "FORWARD_JOIN"    # {"new": id, "ttl": int}
NEIGHBOR = "NEIGHBOR"            # {"high": bool}
NEIGHBOR_REPLY = "NEIGHBOR_REPLY"  # {"accepted": bool}
DISCONNECT = "DISCONNECT"        # {}
SHUFFLE = "SHUFFLE"              # {"origin": id, "nodes": [id, ...], "ttl": int}
SHUFFLE_REPLY = "SHUFFLE_REPLY"  # {"nodes": [id, ...]}
REFUSED_MAX_S = 60.0  # the longest wait before asking again a candidate that keeps refusing
KINDS = (JOIN, FORWARD_JOIN, NEIGHBOR, NEIGHBOR_REPLY, DISCONNECT, SHUFFLE, SHUFFLE_REPLY)


@dataclass(frozen=True, slots=True)
class ToPeer:
    """Send ``kind`` with ``data`` to ``peer`` (linked or not)."""
    peer: str
    kind: str
    data: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LinkUp:
    """``peer`` entered the active view: open (or keep) a live link to it, watch it."""
    peer: str


@dataclass(frozen=True, slots=True)
class LinkDown:
    """``peer`` left the active view: close the link, stop watching it."""
    peer: str


Effect = ToPeer | LinkUp | LinkDown


def sample(rng: P.RandomBits, items: list, k: int) -> list:
    """Up to ``k`` of ``items`` uniformly without replacement: all of them if fewer
    (gossip's `sample` wants ``k <= len(items)``; a small view often has fewer)."""
    return _gossip_sample(rng, items, min(k, len(items)))


def _pick(rng: P.RandomBits, items) -> str | None:
    """One of ``items`` at random, None if there is none."""
    items = list(items)
    return sample(rng, items, 1)[0] if items else None


class Views:
    """One node's active and passive views; see the module's docstring for the rules.

    Views are dicts used as ordered sets (never Python sets): their order, hence every
    random pick, does not depend on string hashing, so a seeded run replays exactly."""

    def __init__(self, self_id: str, rng: P.RandomBits, *, active_size: int = 8, passive_size: int = 30,
                 arwl: int = 6, prwl: int = 3, shuffle_ka: int = 3, shuffle_kp: int = 4, shuffle_ttl: int = 6,
                 shuffle_interval_s: float = 10.0, neighbor_timeout_s: float = 5.0):
        if active_size < 1 or passive_size < 0 or not 0 <= prwl <= arwl:
            raise ValueError("views: need active_size >= 1, passive_size >= 0, 0 <= prwl <= arwl")
        self.self_id = self_id
        self.rng = rng
        self.active_size, self.passive_size = active_size, passive_size
        self.arwl, self.prwl = arwl, prwl
        self.shuffle_ka, self.shuffle_kp, self.shuffle_ttl = shuffle_ka, shuffle_kp, shuffle_ttl
        self.shuffle_interval_s, self.neighbor_timeout_s = shuffle_interval_s, neighbor_timeout_s
        self.active: dict[str, None] = {}
        self.passive: dict[str, None] = {}
        self.pending: dict[str, float] = {}  # candidate asked with NEIGHBOR -> when we give up on it
        self._sent: dict[str, None] = {}     # what our last SHUFFLE carried: evicted first on the reply
        self._refused: dict[str, float] = {}  # candidate that said no -> when we may ask it again
        self._refusals: dict[str, int] = {}  # ... and how many times in a row (the wait doubles each time)
        self._next_shuffle: float | None = None

    # -- queries -------------------------------------------------------------------------

    @property
    def isolated(self) -> bool:
        """Nobody left to link to or ask: only a fresh join through a contact helps."""
        return not self.active and not self.passive and not self.pending

    def __repr__(self) -> str:
        return f"Views({self.self_id!r}, active={list(self.active)}, passive={len(self.passive)})"

    # -- inputs --------------------------------------------------------------------------

    def handle(self, sender: str, kind: str, data: dict, now: float) -> list[Effect]:
        """Dispatch one message from ``sender``; unknown kinds and malformed data are ignored
        (a peer's bad message must not break our views).  What one peer can make us do is
        bounded: a walk's TTL is capped at ours (a huge one would circle forever), and a
        shuffle's list at the size we send ourselves (a long one would flush our whole
        passive view with entries of its choosing)."""
        try:
            if kind == JOIN:
                return self.on_join(sender, now)
            if kind == FORWARD_JOIN:
                return self.on_forward_join(sender, str(data["new"]), min(int(data["ttl"]), self.arwl), now)
            if kind == NEIGHBOR:
                return self.on_neighbor(sender, bool(data.get("high")), now)
            if kind == NEIGHBOR_REPLY:
                return self.on_neighbor_reply(sender, bool(data.get("accepted")), now)
            if kind == DISCONNECT:
                return self.on_disconnect(sender, now)
            if kind == SHUFFLE:
                return self.on_shuffle(sender, str(data["origin"]), self._nodes(data["nodes"]),
                                       min(int(data["ttl"]), self.shuffle_ttl), now)
            if kind == SHUFFLE_REPLY:
                return self.on_shuffle_reply(sender, self._nodes(data["nodes"]), now)
        except (AttributeError, KeyError, TypeError, ValueError):
            pass
        return []

    def _nodes(self, nodes) -> list[str]:
        if not isinstance(nodes, list):
            raise TypeError("nodes: not a list")
        return [str(n) for n in nodes[: 1 + self.shuffle_ka + self.shuffle_kp]]

    def room(self) -> int:
        """Active slots neither taken nor being filled by a request of ours."""
        return self.active_size - len(self.active) - len(self.pending)

    def ask(self, peer: str, now: float) -> list[Effect]:
        """Ask ``peer`` (a link just came up to it, or we dialled it) to be our neighbour:
        NEIGHBOR, high priority if we have few links (`_short`).  Nothing if it is one already or
        asked; the answer comes to `on_neighbor_reply`."""
        if peer == self.self_id or peer in self.active or peer in self.pending:
            return []
        self.pending[peer] = now + self.neighbor_timeout_s
        return [ToPeer(peer, NEIGHBOR, {"high": self._short()})]

    def remember(self, peer: str) -> None:
        """``peer`` exists (we heard of it): a candidate for the passive view."""
        self._add_passive(peer)

    def join(self, contact: str, now: float) -> list[Effect]:
        """Enter the network through ``contact``: link to it at once (it will link back on
        JOIN, so the link is symmetric) and let it spread the word."""
        if contact == self.self_id:
            return []
        out = self._add_active(contact)
        out.append(ToPeer(contact, JOIN, {}))
        return out

    def on_join(self, joiner: str, now: float) -> list[Effect]:
        """A new node chose us as contact: link to it, and start a walk from each of our
        other active peers so that it finds more neighbours and becomes known."""
        if joiner == self.self_id:
            return []
        others = [p for p in self.active if p != joiner]
        out = self._add_active(joiner)
        out += [ToPeer(p, FORWARD_JOIN, {"new": joiner, "ttl": self.arwl}) for p in others if p in self.active]
        return out

    def on_forward_join(self, sender: str, new: str, ttl: int, now: float) -> list[Effect]:
        """One step of a joiner's random walk: offer ourselves as its neighbour if we have
        room or the walk ends here, else pass it on (remembering the joiner in the passive
        view at ``prwl`` hops left)."""
        if new == self.self_id or new in self.active:
            return []
        onward = [p for p in self.active if p not in (sender, new)]
        if ttl <= 0 or not onward or len(self.active) < self.active_size:
            if new in self.pending:
                return []
            self.pending[new] = now + self.neighbor_timeout_s
            return [ToPeer(new, NEIGHBOR, {"high": False})]
        if ttl == self.prwl:
            self._add_passive(new)
        return [ToPeer(_pick(self.rng, onward), FORWARD_JOIN, {"new": new, "ttl": ttl - 1})]

    def on_neighbor(self, sender: str, high: bool, now: float) -> list[Effect]:
        """``sender`` asks to link with us: yes if it is high priority (it has no other
        link) or we have room; a low request does not evict anyone."""
        if sender == self.self_id:
            return []
        if sender in self.active:
            return [ToPeer(sender, NEIGHBOR_REPLY, {"accepted": True})]
        if not high and len(self.active) >= self.active_size:
            self._add_passive(sender)  # alive and looking: a good candidate later
            return [ToPeer(sender, NEIGHBOR_REPLY, {"accepted": False})]
        self.pending.pop(sender, None)  # asked each other at once: this settles it
        out = self._add_active(sender)
        out.append(ToPeer(sender, NEIGHBOR_REPLY, {"accepted": True}))
        return out

    def on_neighbor_reply(self, sender: str, accepted: bool, now: float) -> list[Effect]:
        """The answer to our NEIGHBOR.  Accepted: it has linked us, so we link it, even if
        that evicts someone (we asked).  Accepted but no longer wanted (given up on):
        tell it DISCONNECT, so no link is one-sided.  Refused: ask the next candidate."""
        asked = self.pending.pop(sender, None) is not None
        if accepted:
            if sender in self.active:
                return []
            if not asked:
                return [ToPeer(sender, DISCONNECT, {})]
            return self._add_active(sender)
        if asked:
            # Not asked again for a while: a full peer re-asked at once would refuse again,
            # the two of us looping for as long as it stays full.  The wait doubles with each
            # refusal in a row (up to REFUSED_MAX_S): in a network whose views cannot all be
            # full, a node short of links would otherwise ask every candidate every few seconds.
            self._add_passive(sender)
            n = self._refusals.get(sender, 0) + 1
            if n == 1 and len(self._refusals) >= 2 * self.passive_size + self.active_size:
                self._refusals.clear()  # bounded
            self._refusals[sender] = n
            self._refused[sender] = now + min(REFUSED_MAX_S, self.neighbor_timeout_s * 2 ** (n - 1))
        return self._repair(now)

    def on_disconnect(self, sender: str, now: float) -> list[Effect]:
        """``sender`` dropped us (to make room, or it leaves): unlink, keep it as a
        candidate, and fill the slot from the passive view, from someone else (asked back
        at once it would be full, or gone)."""
        self.pending.pop(sender, None)
        if sender not in self.active:
            return []
        del self.active[sender]
        self._add_passive(sender)
        self._refused[sender] = now + self.neighbor_timeout_s
        self._refusals.pop(sender, None)  # it left us: not asked back even when we are short
        return [LinkDown(sender), *self._repair(now)]

    def link_failed(self, peer: str, now: float) -> list[Effect]:
        """The link to ``peer`` died, or a message or dial to it failed: it is probably
        dead, so forget it in both views, and replace it from the passive view."""
        out: list[Effect] = []
        if peer in self.active:
            del self.active[peer]
            out.append(LinkDown(peer))
        self.passive.pop(peer, None)
        self.pending.pop(peer, None)
        self._sent.pop(peer, None)
        self._refused.pop(peer, None)
        return out + self._repair(now)

    def leave(self, now: float) -> list[Effect]:
        """We are shutting down: tell every neighbour (DISCONNECT), so each moves us to its
        passive view and fills the slot at once instead of waiting for its heartbeat to
        notice; our views are emptied."""
        out: list[Effect] = []
        for peer in list(self.active):
            out += [ToPeer(peer, DISCONNECT, {}), LinkDown(peer)]
        self.active.clear()
        self.passive.clear()
        self.pending.clear()
        self._sent.clear()
        self._refused.clear()
        self._refusals.clear()
        return out

    def tick(self, now: float) -> list[Effect]:
        """Periodic work: give up on unanswered requests, refill the active view, and
        shuffle when one is due (`shuffle_due`)."""
        for peer, deadline in list(self.pending.items()):
            if now >= deadline:
                del self.pending[peer]
                self.passive.pop(peer, None)
        for peer, until in list(self._refused.items()):
            if now >= until or peer not in self.passive:
                del self._refused[peer]
        return self._repair(now) + self.shuffle_due(now)

    def shuffle_due(self, now: float) -> list[Effect]:
        """Start a shuffle if one is due (the first one ``shuffle_interval_s`` after the
        first call, so nodes started together spread out by when they are called)."""
        if self._next_shuffle is None:
            self._next_shuffle = now + self.shuffle_interval_s
        if now < self._next_shuffle or not self.active:
            return []
        self._next_shuffle = now + self.shuffle_interval_s
        target = _pick(self.rng, self.active)
        nodes = (sample(self.rng, [p for p in self.active if p != target], self.shuffle_ka)
                 + sample(self.rng, list(self.passive), self.shuffle_kp))
        self._sent = dict.fromkeys(nodes)
        return [ToPeer(target, SHUFFLE, {"origin": self.self_id, "nodes": [self.self_id, *nodes], "ttl": self.shuffle_ttl})]

    def on_shuffle(self, sender: str, origin: str, nodes: list[str], ttl: int, now: float) -> list[Effect]:
        """A shuffle walking by: pass it on while it has hops left, else answer its origin
        with as many of our passive entries and keep what it brought."""
        if origin == self.self_id:
            return []
        ttl -= 1
        onward = [p for p in self.active if p not in (sender, origin)]
        if ttl > 0 and onward:
            return [ToPeer(_pick(self.rng, onward), SHUFFLE, {"origin": origin, "nodes": nodes, "ttl": ttl})]
        reply = sample(self.rng, [p for p in self.passive if p not in nodes and p != origin], len(nodes))
        self._merge(nodes, prefer_evicting=reply)
        return [ToPeer(origin, SHUFFLE_REPLY, {"nodes": reply})]

    def on_shuffle_reply(self, sender: str, nodes: list[str], now: float) -> list[Effect]:
        """The end of our shuffle's walk sent back some of its passive view: keep them,
        evicting first what we sent (the other side holds those now)."""
        self._merge(nodes, prefer_evicting=list(self._sent))
        self._sent = {}
        return []

    # -- rules ---------------------------------------------------------------------------

    def _add_active(self, peer: str) -> list[Effect]:
        """Put ``peer`` in the active view, evicting a random peer (told DISCONNECT, kept as
        a candidate) if it is full.  The only way into the active view."""
        if peer == self.self_id or peer in self.active:
            return []
        out: list[Effect] = []
        if len(self.active) >= self.active_size:
            victim = _pick(self.rng, self.active)
            del self.active[victim]
            self._add_passive(victim)
            out += [ToPeer(victim, DISCONNECT, {}), LinkDown(victim)]
        self.passive.pop(peer, None)
        self.pending.pop(peer, None)
        self._refusals.pop(peer, None)
        self.active[peer] = None
        out.append(LinkUp(peer))
        return out

    def _short(self) -> bool:
        """Ask with high priority (always accepted, evicting if need be)?  With no link at all, as
        in the paper, and also with fewer than half the active view plus one: in a network whose
        views are all full a node left with one or two links would otherwise never get more (every
        low request is refused), and a node with so few links is one failure from isolation."""
        return len(self.active) < self.active_size // 2 + 1

    def _add_passive(self, peer: str, prefer_evicting: list[str] | tuple = ()) -> None:
        """Remember ``peer`` as a candidate, evicting a ``prefer_evicting`` entry if we hold
        one, else a random one, when the passive view is full."""
        if peer == self.self_id or peer in self.active or peer in self.passive or self.passive_size == 0:
            return
        if len(self.passive) >= self.passive_size:
            victims = [p for p in prefer_evicting if p in self.passive and p not in self.pending]
            victim = victims[0] if victims else _pick(self.rng, [p for p in self.passive if p not in self.pending] or self.passive)
            del self.passive[victim]
        self.passive[peer] = None

    def _merge(self, nodes: list[str], prefer_evicting: list[str]) -> None:
        for peer in nodes:
            self._add_passive(peer, prefer_evicting)

    def _repair(self, now: float) -> list[Effect]:
        """Ask passive candidates to link, one per free active slot not already being
        filled, skipping those that refused us lately (unless we are short of links); high
        priority when we have few links (`_short`: it must not be refused)."""
        out: list[Effect] = []
        free = self.active_size - len(self.active) - len(self.pending)
        if free <= 0:
            return out
        # Short of links, we ask with high priority, which is never refused: a candidate's past
        # refusals (of low requests, when it was full) do not hold us back then.
        short = self._short()
        refusals = self._refusals  # those that only declined a low request (not those that left us)
        candidates = [p for p in self.passive if p not in self.pending
                      and (self._refused.get(p, now) <= now or short and p in refusals)]
        for peer in sample(self.rng, candidates, free):
            self.pending[peer] = now + self.neighbor_timeout_s
            out.append(ToPeer(peer, NEIGHBOR, {"high": self._short()}))
        return out
