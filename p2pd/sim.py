"""A deterministic simulator: hundreds of real p2pd `Node`s on a fake clock and a modelled network.

How this works
--------------
Every simulated node is the daemon's own `p2pd.node.Node` with a `p2pd.memstore.MemoryStore`;
nothing of the node logic is mocked.  What the simulator replaces is the event loop and the
sockets (p2pd/transport.py): it keeps one priority queue of timed events, ordered by
(time, sequence number), and runs them one at a time:

* ``arrive``: frames reach a node's ROUTER (from a peer's DEALER link) or one of its SUBs (from a
  peer's PUB).  The node handles them, then, as one turn of the real loop does, the simulator
  calls ``Node.flush``, commits the store, and only then performs the effects the node returned
  (commit-before-act: an ACK never describes what a crash would lose).
* ``tick``: the node's timers (heartbeats, gossip, retries, resends), at the node's own deadline
  (``Node.next_deadline``), at least 50 ms apart as in the real loop.
* workload, faults and control requests: `control.handle` with JSON requests, as p2pctl sends them.

Effects are carried out as the transport would: a ``Send`` is encoded with the real codec and put
on a *connection* (one per ``OpenLink``), a ``Publish`` goes to every node whose SUB is attached
to our PUB endpoint; ``Subscribe``/``Unsubscribe`` tell the publisher's XPUB, as ZeroMQ does.

The network model (`Model`): each pair of nodes has a latency drawn from the seed, each frame a
little jitter on top; a connection keeps its frames in order (ZeroMQ over TCP: a later frame never
overtakes an earlier one on the same connection, ``fifo=True``), frames on different connections
(a re-opened link, PUB vs DEALER) may overtake one another.  ``fifo=False`` lets frames overtake
on one connection as well: not what ZeroMQ does, but what the delivery layer must survive anyway
(it drops out-of-order frames as gaps and has them sent again).  Loss drops whole ZeroMQ messages
(as a connection that breaks drops what was in its buffers: a gap to the receiver).  A partition
drops every frame between two groups of nodes until it heals.  A crash stops a node: frames in
flight to it are lost, its in-memory state is gone, its SUBs leave the publishers' XPUBs; a
restart builds a new `Node` on the same store (`MemoryStore.crash` keeps what was committed: crashes
fall between two turns, and nothing of a turn goes out before its commit, so a crash inside a turn is
the same as one just before it with the input lost in flight) and its peer book, as the daemon
does, and the SUBs of its peers re-attach to its PUB (ZeroMQ reconnects them).  A frozen node
(stopped, SIGSTOP, a long GC) handles nothing until it resumes: its input waits (in TCP buffers),
then comes in order.

Determinism: the simulator's own choices come from ``random.Random(seed)``; every node is given
its random source (message ids, the boot tag: a new one at each restart, as a new process) and
its store its epoch source, both drawn from the run's seed, so nothing is patched.  ``digest`` hashes the ordered trace (every
frame that arrives, with its time and bytes, and every delivery).  String hashing is randomised
per process (PYTHONHASHSEED) and some node state lives in sets, so the command line runs itself
with PYTHONHASHSEED=0; within one process (the tests) the same seed gives the same digest anyway.

Not modelled: CURVE and key fetches (nodes run --insecure), LAN discovery, ZeroMQ high-water
marks and queueing toward a peer that is down (frames sent to a dead endpoint are lost; the
delivery layer resends), TCP connection timing (a link is usable at once), bandwidth and CPU
(a node's turn takes no simulated time).

It lives in the package so that tests import it; ``python -m bench.sim`` is its command line.

Run: ``python -m bench.sim --nodes 50 --seconds 30 --seed 1 --scenario partition --json``.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import json
import random
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

from p2pd import control
from p2pd import protocol as P
from p2pd.actions import (CloseLink, EditAuthorizedKeys, FetchKey, ForgetPin, LanBeacon, OpenLink, PinKey, Publish, PublishBatch,
                          RekeyLink, SavePeers, Send, SendBatch, Shutdown, Subscribe, ToClient, Unsubscribe)
from p2pd.effects import handlers, performer
from p2pd.identity import Keys
from p2pd.intake import SUB_TOPIC_PREFIX, topic_for
from p2pd.memstore import MemoryStore
from p2pd.node import Node
from p2pd.records import Signer, z85_encode
from p2pd.settings import Settings

HOST = "127.0.0.1"
WALL = 1_700_000_000.0  # the wall clock at simulated time 0 (message timestamps, ids)
WATCH = b"sim-watch"  # the control client each node streams its events to (the application)
CTL = b"sim-ctl"  # the control client that sends and broadcasts
BASE_PORT = 20000
MIN_TICK_S = 0.05  # the real loop ticks at most this often (transport.py)
SCENARIOS = ("steady", "loss", "partition", "crash", "mass-crash")
# Effects the simulator does not carry out (p2pd/effects.py; tests/test_effects.py checks that every
# other one has its handler here, so that a new effect cannot go unhandled unnoticed).
NOT_MODELLED = {
    FetchKey: "the simulated nodes run --insecure: no key port, no CURVE keys to fetch",
    PinKey: "the simulated nodes run --insecure: no keys to pin",
    LanBeacon: "the simulated nodes do not run --discover lan",
    EditAuthorizedKeys: "`trust` edits a file in the node's home: simulated nodes have none",
    ForgetPin: "`known forget` edits a file in the node's home: simulated nodes have none",
}


@dataclass
class Model:
    """The network.  Latency per pair of nodes is drawn once (seeded) in [latency_min_s, latency_max_s];
    each frame adds up to ``jitter_s``.  ``loss``: the share of ZeroMQ messages lost on the wire.
    ``fifo``: a connection keeps its order (ZeroMQ does); False lets frames overtake."""
    latency_min_s: float = 0.001
    latency_max_s: float = 0.030
    jitter_s: float = 0.002
    loss: float = 0.0
    fifo: bool = True


class SimNode:
    """One simulated process: its Node (replaced at each restart), its store (kept), its sockets' state."""

    def __init__(self, index: int, settings: Settings, randbytes, signed: bool = False):
        self.index = index
        self.name = f"n{index:03d}"
        self.id = f"{self.name}-id"
        # signed: a CURVE keypair from the seeded source and `Keys`, its id the key's hash, as a
        # daemon's (records signed and checked, routed bodies sealed); else `NoKeys`, for speed.
        self.keys = None
        if signed:
            secret = z85_encode(randbytes(32))
            # sys.intern as the daemon passes it: one string per node id in the process, here
            # shared by every simulated node (the record's ids, its links), as in N daemons' each.
            self.keys = Keys(secret, Signer.from_curve_secret(secret).curve_key, intern=sys.intern)
            self.id = self.keys.node_id
        port = BASE_PORT + 2 * index
        self.address = P.PeerAddress(HOST, port, port + 1)
        self.router = P.tcp_endpoint(HOST, port)
        self.pub = P.tcp_endpoint(HOST, port + 1)
        self.settings = settings
        self.store = MemoryStore(randbytes)  # its epochs: from the seeded source
        self.node: Node | None = None
        self.up = False
        self.incarnation = 0  # a restart is a new process: frames in flight to the old one are lost
        self.frozen_until = 0.0
        self.links: dict[str, tuple[str, int, bytes]] = {}  # link key -> (endpoint, connection id, routing id)
        self.subs: dict[str, str | None] = {}  # PUB endpoints our SUBs are attached to -> the peer id
        self.book: list = []  # the peer book (SavePeers), on disk: it survives a crash
        self.joins: list[str] = []
        self.tick_at = float("inf")


@performer(not_modelled=NOT_MODELLED)
class Sim:
    """N real nodes on a fake clock; see the top of this module."""

    def __init__(self, n: int, seed: int = 0, settings: Settings | None = None, model: Model | None = None,
                 seeds: int = 1, stagger_s: float = 1.0, signed: bool = False):
        """``seeds``: how many of the first nodes the others join (``--join``); each node starts at a
        seeded time within ``stagger_s``.  ``signed``: nodes with keys, as daemons (`SimNode`)."""
        self.seed = seed
        self.rng = random.Random(seed)
        self._node_rng = random.Random(f"nodes:{seed}")
        self.settings = settings or Settings(insecure=True).validate()
        self.model = model or Model()
        self.now = 0.0
        self._events: list = []  # (time, sequence number, handler, args): a heap
        self._handlers = {"start": self._ev_start, "tick": self._ev_tick, "arrive": self._ev_arrive, "refused": self._ev_refused,
                          "call": self._ev_call}
        self._seq = 0
        self._conn = 0
        self._latency: dict[tuple[int, int], float] = {}
        self._pipe_last: dict = {}  # connection -> when its last frame arrives (fifo)
        self.groups: dict[str, int] | None = None  # partition: node name -> side
        # A test's hand on the wire, as memnet's: (from name, to name, [Message]) -> True loses that ZeroMQ message.
        self.lose = None
        # ... and (from name, to name, [frame bytes]) -> the frames that arrive instead (a corrupting
        # network, tests/test_sim_fuzz.py); for a ROUTER the first frame is the routing id.
        self.mangle = None
        self.trace = hashlib.sha256()
        self.frames = 0  # envelopes put on the wire
        self.sent = [0] * n  # envelopes put on the wire, per sending node (its index)
        self.lost = 0  # ZeroMQ messages lost (loss, partition, nobody there)
        self.turns = 0
        self.direct: dict[str, tuple[str, str]] = {}  # message id -> (from, to)
        self.broadcasts: dict[str, str] = {}  # message id -> from
        self.got: Counter = Counter()  # (receiver name, message id) -> deliveries seen by the application
        self.refused = Counter()  # requests the node refused (error code)
        self.members_told: list | None = None  # a test's list: (time, node name, member id, state, hops) of `member` events
        self._effects = handlers(self)  # effect type -> its perform_* method (p2pd/effects.py)
        self.nodes = [SimNode(i, self.settings, self._node_rng.randbytes, signed) for i in range(n)]
        self.by_name = {s.name: s for s in self.nodes}
        self.by_router = {s.router: s for s in self.nodes}
        self.by_pub = {s.pub: s for s in self.nodes}
        joins = [s.router for s in self.nodes[:max(1, seeds)]]
        for s in self.nodes:
            s.joins = [j for j in joins if j != s.router]
            start = 0.0 if s.index == 0 else self.rng.random() * stagger_s
            self._push(start, "start", s)

    # ------------------------------------------------------------------ the event queue
    def _push(self, t: float, kind: str, *args) -> None:
        """Queue event ``kind`` (run by ``_ev_<kind>(t, *args)``) at time ``t``."""
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, self._handlers[kind], args))

    def run_until(self, t_end: float) -> None:
        """Run every event due at or before ``t_end``; the clock then reads ``t_end``."""
        events = self._events
        pop = heapq.heappop
        while events and events[0][0] <= t_end:
            t, _, handler, args = pop(events)
            self.now = t
            handler(t, *args)
        self.now = max(self.now, t_end)

    def at(self, t: float, fn, *args) -> None:
        """Run ``fn(sim, *args)`` at simulated time ``t`` (workload, faults, checks)."""
        self._push(t, "call", fn, args)

    def _ev_call(self, t, fn, args) -> None:
        fn(self, *args)

    # ------------------------------------------------------------------ processes
    def _ev_start(self, t: float, s: SimNode) -> None:
        """Start (or restart) the process: a new Node on the node's store and peer book, as daemon.py does."""
        s.incarnation += 1
        s.up = True
        s.links.clear()
        s.subs.clear()
        # A new process draws a new boot tag and new message ids: from the run's seed.
        s.node = Node(s.id, s.name, s.address, s.settings, t, WALL + t, s.store, rng=random.Random(self._node_rng.getrandbits(64)),
                      keys=s.keys)
        self._turn(t, s, control.handle(s.node, t, WATCH, json.dumps({"req": 0, "cmd": "watch", "args": {}}).encode(), {}), watch=True)
        self._turn(t, s, s.node.start(t, list(s.book), list(s.joins)))
        # ZeroMQ's SUBs attached to our PUB endpoint reconnect and subscribe again.
        for other in self.nodes:
            if other.up and s.pub in other.subs:
                s.node.on_subscription(t, b"\x01" + SUB_TOPIC_PREFIX + other.id.encode())
        self._schedule_tick(s, t)

    def crash(self, name: str) -> None:
        """The process dies now: its memory is gone, the store keeps what was committed."""
        s = self.by_name[name]
        if not s.up:
            return
        s.up = False
        s.node = None
        s.store.crash()  # what the last turn did not commit is gone (nothing, between turns)
        s.links.clear()
        for endpoint in list(s.subs):
            pub = self.by_pub[endpoint]
            if pub.up:
                pub.node.on_subscription(self.now, b"\x00" + SUB_TOPIC_PREFIX + s.id.encode())
        s.subs.clear()
        s.tick_at = float("inf")
        self.trace.update(f"{self.now:.6f} crash {name}\n".encode())

    def restart(self, name: str) -> None:
        s = self.by_name[name]
        if not s.up:
            self.trace.update(f"{self.now:.6f} restart {name}\n".encode())
            self._ev_start(self.now, s)

    def freeze(self, name: str, seconds: float) -> None:
        """The process stops running for ``seconds`` (SIGSTOP): its input waits, in order."""
        s = self.by_name[name]
        s.frozen_until = max(s.frozen_until, self.now + seconds)
        self.trace.update(f"{self.now:.6f} freeze {name} {seconds}\n".encode())

    def partition(self, side_a: list[str]) -> None:
        """Cut ``side_a`` off from everybody else (both ways) until `heal`."""
        a = set(side_a)
        self.groups = {s.name: 0 if s.name in a else 1 for s in self.nodes}
        self.trace.update(f"{self.now:.6f} partition {sorted(a)}\n".encode())

    def heal(self) -> None:
        self.groups = None
        self.model.loss = 0.0
        self.trace.update(f"{self.now:.6f} heal\n".encode())

    # ------------------------------------------------------------------ a turn of a node's loop
    def _busy(self, t: float, s: SimNode, kind: str, args) -> bool:
        """A frozen node's input waits until it resumes (same order: re-queued behind what is there)."""
        if s.frozen_until > t:
            self._push(s.frozen_until, kind, *args)
            return True
        return False

    def _turn(self, t: float, s: SimNode, acts: list, watch: bool = False) -> None:
        """The end of one turn of the real loop: flush, commit, then perform the effects."""
        self.turns += 1
        node = s.node
        acts = acts + node.flush(t)
        s.store.commit()
        self._perform(t, s, acts)

    def _ev_tick(self, t: float, s: SimNode, incarnation: int) -> None:
        if not s.up or s.incarnation != incarnation or t != s.tick_at:
            return  # a stale timer: of a dead process, or rescheduled
        if self._busy(t, s, "tick", (s, incarnation)):
            s.tick_at = s.frozen_until
            return
        self._turn(t, s, s.node.tick(t))
        self._schedule_tick(s, t)

    def _schedule_tick(self, s: SimNode, t: float) -> None:
        s.tick_at = t + max(MIN_TICK_S, s.node.next_deadline(t))
        self._push(s.tick_at, "tick", s, s.incarnation)

    def _ev_arrive(self, t: float, dst: SimNode, incarnation: int, src_name: str, frames: list, sub_from: str | None) -> None:
        if not dst.up or dst.incarnation != incarnation:
            self.lost += 1
            return  # the connection broke with the process: lost
        if dst.frozen_until > t:  # frozen: the input waits (as _busy, without a call per frame)
            self._push(dst.frozen_until, "arrive", dst, incarnation, src_name, frames, sub_from)
            return
        if self.mangle is not None:
            frames = self.mangle(src_name, dst.name, frames)
        self.trace.update(b"".join((f"{t:.6f} {src_name}>{dst.name}\n".encode(), *frames)))  # one call: the same digest
        if sub_from is None:
            acts = dst.node.on_router_frames(t, frames, HOST)
        else:
            if sub_from not in dst.subs:
                return  # our SUB left that PUB meanwhile: the frame went with it
            acts = dst.node.on_sub_frames(t, frames, sub_from, source_peer=dst.subs[sub_from])
        self._turn(t, dst, acts)

    def _ev_refused(self, t: float, s: SimNode, incarnation: int, key: str) -> None:
        if s.up and s.incarnation == incarnation and not self._busy(t, s, "refused", (s, incarnation, key)):
            self._turn(t, s, s.node.on_link_refused(t, key))

    # ------------------------------------------------------------------ the network
    def _cut(self, a: SimNode, b: SimNode, msgs: list) -> bool:
        """Is this ZeroMQ message lost: a partition between the two, the test's `lose` hook, or the loss rate?"""
        if self.groups is not None and self.groups[a.name] != self.groups[b.name]:
            return True
        if self.lose is not None and self.lose(a.name, b.name, msgs):
            return True
        return self.model.loss > 0 and self.rng.random() < self.model.loss

    def _arrival(self, a: SimNode, b: SimNode, pipe) -> float:
        ai, bi = a.index, b.index
        key = (ai, bi) if ai < bi else (bi, ai)
        m = self.model
        base = self._latency.get(key)
        if base is None:
            base = self._latency[key] = random.Random(f"{self.seed}:{key}").uniform(m.latency_min_s, m.latency_max_s)
        t = self.now + base + self.rng.random() * m.jitter_s
        if m.fifo:
            last = self._pipe_last.get(pipe, 0.0)
            if last > t:
                t = last
            self._pipe_last[pipe] = t
        return t

    def _perform(self, t: float, s: SimNode, acts: list) -> None:
        perform = self._effects
        for act in acts:
            perform[type(act)](t, s, act)

    # Effects, as the transport performs them (p2pd/effects.py: one handler per type, or a reason not to model it).
    def perform_send(self, t: float, s: SimNode, act: Send) -> None:
        # A turn takes no simulated time: the envelope leaves at t, when the node decided it, so a PING's
        # round trip needs no report_sent, and a PONG leaves at t whether or not it waits for the commit.
        self._send_on_link(t, s, act.key, [act.msg])

    def perform_send_batch(self, t: float, s: SimNode, act: SendBatch) -> None:
        self._send_on_link(t, s, act.key, act.msgs)

    def _send_on_link(self, t: float, s: SimNode, key: str, msgs: list) -> None:
        link = s.links.get(key)
        target = self.by_router.get(link[0]) if link else None
        if target is None or not target.up:
            self.lost += 1
            return
        self.frames += len(msgs)
        self.sent[s.index] += len(msgs)
        if self._cut(s, target, msgs):
            self.lost += 1
            return
        frames = [link[2], *(P.encode(m) for m in msgs)]
        self._push(self._arrival(s, target, link[1]), "arrive", target, target.incarnation, s.name, frames, None)

    def perform_publish(self, t: float, s: SimNode, act: Publish) -> None:
        self._publish(s, [act.msg], act.to)

    def perform_publish_batch(self, t: float, s: SimNode, act: PublishBatch) -> None:
        self._publish(s, act.msgs)

    def _publish(self, s: SimNode, msgs: list, to: tuple | None = None) -> None:
        """To every node whose SUB is attached to ``s``'s PUB; with ``to``, only to those nodes,
        each behind its topic frame (as the transport sends it)."""
        wire = [P.encode(m) for m in msgs]
        for other in self.nodes:
            if other.up and s.pub in other.subs and (to is None or other.id in to):
                frames = wire if to is None else [topic_for(other.id), *wire]
                self.frames += len(wire)
                self.sent[s.index] += len(wire)
                if self._cut(s, other, msgs):
                    self.lost += 1
                    continue
                pipe = ("sub", s.index, other.index, other.incarnation)
                self._push(self._arrival(s, other, pipe), "arrive", other, other.incarnation, s.name, frames, s.pub)

    def perform_open_link(self, t: float, s: SimNode, act: OpenLink) -> None:
        self._conn += 1
        rid = f"{s.id}/{self._conn}".encode() if act.suffix else s.id.encode()
        s.links[act.key] = (act.endpoint, self._conn, rid)
        target = self.by_router.get(act.endpoint)
        if act.report_refused and (target is None or not target.up):
            self._push(t + 0.001, "refused", s, s.incarnation, act.key)

    def perform_close_link(self, t: float, s: SimNode, act: CloseLink) -> None:
        s.links.pop(act.key, None)

    def perform_rekey_link(self, t: float, s: SimNode, act: RekeyLink) -> None:
        link = s.links.pop(act.old, None)
        if link is not None and act.new not in s.links:
            s.links[act.new] = link

    def perform_subscribe(self, t: float, s: SimNode, act: Subscribe) -> None:
        if act.endpoint in s.subs:
            return  # as the transport: a SUB already attached there stays
        s.subs[act.endpoint] = act.peer_id
        pub = self.by_pub.get(act.endpoint)
        if pub is not None and pub.up:
            pub.node.on_subscription(t, b"\x01" + SUB_TOPIC_PREFIX + s.id.encode())

    def perform_unsubscribe(self, t: float, s: SimNode, act: Unsubscribe) -> None:
        if act.endpoint not in s.subs:
            return
        del s.subs[act.endpoint]
        pub = self.by_pub.get(act.endpoint)
        if pub is not None and pub.up:
            pub.node.on_subscription(t, b"\x00" + SUB_TOPIC_PREFIX + s.id.encode())

    def perform_save_peers(self, t: float, s: SimNode, act: SavePeers) -> None:
        s.book = act.peers

    def perform_shutdown(self, t: float, s: SimNode, act: Shutdown) -> None:
        pass  # the node said LEAVE; a simulated process stops only when the scenario crashes it

    def perform_to_client(self, t: float, s: SimNode, act: ToClient) -> None:
        p = act.payload
        if act.client == WATCH:
            event = p.get("event")
            if event in ("message", "broadcast", "shout"):
                mid = p["message"]["id"]
                self.got[(s.name, mid)] += 1
                self.trace.update(f"{t:.6f} deliver {s.name} {mid}\n".encode())
            elif event == "member" and self.members_told is not None:
                self.members_told.append((t, s.name, p["peer"]["id"], p["state"], p["peer"]["hops"]))
        elif act.client == CTL:
            s.reply = p

    # ------------------------------------------------------------------ the application
    def request(self, name: str, cmd: str, **args) -> dict:
        """A p2pctl request to node ``name`` now; returns its reply."""
        s = self.by_name[name]
        s.reply = None
        raw = json.dumps({"req": 1, "cmd": cmd, "args": args}).encode()
        self._turn(self.now, s, control.handle(s.node, self.now, CTL, raw, {}))
        return s.reply

    def send(self, frm: str, to: str, text: str) -> str | None:
        """A direct message; its id, or None if the node refused it (recorded in ``refused``)."""
        reply = self.request(frm, "send", peer=self.by_name[to].id, text=text)
        if not reply or not reply.get("ok"):
            self.refused[(reply or {}).get("code", "no reply")] += 1
            return None
        mid = reply["result"]["id"]
        self.direct[mid] = (frm, to)
        return mid

    def broadcast(self, frm: str, text: str) -> str | None:
        reply = self.request(frm, "broadcast", text=text)
        if not reply or not reply.get("ok"):
            self.refused[(reply or {}).get("code", "no reply")] += 1
            return None
        mid = reply["result"]["id"]
        self.broadcasts[mid] = frm
        return mid

    def running(self) -> list[SimNode]:
        """Nodes that can take a request now (up, not frozen)."""
        return [s for s in self.nodes if s.up and s.frozen_until <= self.now]

    # ------------------------------------------------------------------ checks
    def meshed(self) -> bool:
        """The overlay has formed: every node knows every other alive (its roster) and has a route
        to it, holds links (all the others, in a network no
        bigger than that: a full mesh; else at least 3), and is subscribed to the PUB of each node it links to."""
        n = len(self.nodes)
        for s in self.nodes:
            if not s.up:
                return False
            node = s.node
            linked = node.table.alive()
            want = n - 1 if n - 1 <= node.settings.active_view else 3  # a full mesh while it fits; else a few
            if len(linked) < want or len(s.subs) < len(linked):
                return False
            if node.roster.size() < n or any(node.routes.hops(o.id) is None for o in self.nodes if o is not s):
                return False
        return True

    def counts(self) -> dict:
        n = len(self.nodes)
        got = self.got
        direct_delivered = sum(1 for mid, (_, to) in self.direct.items() if got[(to, mid)] >= 1)
        direct_dups = sum(max(0, got[(to, mid)] - 1) for mid, (_, to) in self.direct.items())
        names = [s.name for s in self.nodes]
        b_deliv = b_dups = 0
        for mid, frm in self.broadcasts.items():
            for name in names:
                if name != frm:
                    c = got[(name, mid)]
                    b_deliv += c >= 1
                    b_dups += max(0, c - 1)
        return {
            "direct_sent": len(self.direct),
            "direct_delivered": direct_delivered,
            "direct_duplicates": direct_dups,
            "broadcasts_sent": len(self.broadcasts),
            "broadcast_deliveries": b_deliv,
            "broadcast_duplicates": b_dups,
            "broadcast_expected": len(self.broadcasts) * (n - 1),
        }

    def all_delivered(self) -> bool:
        c = self.counts()
        return c["direct_delivered"] == c["direct_sent"] and c["broadcast_deliveries"] == c["broadcast_expected"]

    def exactly_once(self) -> bool:
        c = self.counts()
        return self.all_delivered() and c["direct_duplicates"] == 0 and c["broadcast_duplicates"] == 0

    def run_while(self, cond, limit_s: float, step_s: float = 0.5) -> float:
        """Advance in steps while ``cond(sim)`` holds, at most ``limit_s``; returns the time it took."""
        start = self.now
        while cond(self) and self.now - start < limit_s:
            self.run_until(self.now + step_s)
        return self.now - start

    @property
    def digest(self) -> str:
        return self.trace.hexdigest()


# ---------------------------------------------------------------------- workload and scenarios
def workload(sim: Sim, start: float, seconds: float, direct_per_s: int, broadcasts_per_s: int) -> None:
    """Schedule, for each simulated second, ``direct_per_s`` messages between random running nodes
    and ``broadcasts_per_s`` broadcasts from random running nodes, at seeded times within the second."""
    rng = sim.rng
    for sec in range(int(seconds)):
        for i in range(direct_per_s):
            sim.at(start + sec + rng.random(), _send_random, f"m{sec}.{i}")
        for i in range(broadcasts_per_s):
            sim.at(start + sec + rng.random(), _broadcast_random, f"b{sec}.{i}")


def _send_random(sim: Sim, text: str) -> None:
    live = sim.running()
    if len(live) < 1:
        return
    frm = sim.rng.choice(live)
    to = sim.rng.choice([s for s in sim.nodes if s is not frm])  # a down node too: its messages wait for it
    sim.send(frm.name, to.name, text)


def _broadcast_random(sim: Sim, text: str) -> None:
    live = sim.running()
    if live:
        sim.broadcast(sim.rng.choice(live).name, text)


@contextmanager
def few_collections():
    """Python's cyclic garbage collector, less often, while a run lasts.  Hundreds of nodes keep
    millions of long-lived objects (peers, links, stored rows); each full collection walks them
    all, about a tenth of a 200-node run for garbage that is almost never cyclic.  Put back after."""
    saved = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def run_scenario(nodes: int, seconds: float, seed: int, scenario: str, direct_per_s: int = 10, broadcasts_per_s: int = 1,
                 warmup_limit_s: float = 120.0, settle_limit_s: float = 300.0, settings: Settings | None = None) -> dict:
    """Form the mesh, run the workload for ``seconds`` with the scenario's faults, heal, settle until
    everything is delivered (or ``settle_limit_s``); returns the report (see `main`)."""
    if scenario == "mass-crash":
        raise ValueError("mass-crash has its own runner and report: run_mass_crash")
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    with few_collections():
        return _run_scenario(nodes, seconds, seed, scenario, direct_per_s, broadcasts_per_s, warmup_limit_s, settle_limit_s, settings)


def _run_scenario(nodes: int, seconds: float, seed: int, scenario: str, direct_per_s: int, broadcasts_per_s: int,
                  warmup_limit_s: float, settle_limit_s: float, settings: Settings | None) -> dict:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    sim = Sim(nodes, seed, settings=settings)
    sim.run_until(1.0)
    warmup = 1.0 + sim.run_while(lambda s: not s.meshed(), warmup_limit_s)
    t0 = sim.now
    workload(sim, t0, seconds, direct_per_s, broadcasts_per_s)
    names = [s.name for s in sim.nodes]
    rng = random.Random(f"faults:{seed}")
    if scenario == "loss":
        sim.model.loss = 0.05
    elif scenario == "partition":
        side = rng.sample(names, max(1, nodes // 2))
        sim.at(t0 + seconds * 0.25, lambda s: s.partition(side))
        sim.at(t0 + seconds * 0.6, lambda s: s.heal())
    elif scenario == "crash":
        victims = rng.sample(names, max(1, nodes // 10))
        for i, v in enumerate(victims):
            sim.at(t0 + seconds * 0.3 + i * 0.01, lambda s, v=v: s.crash(v))
            sim.at(t0 + seconds * 0.6 + i * 0.01, lambda s, v=v: s.restart(v))
    sim.run_until(t0 + seconds)
    sim.heal()
    settle = sim.run_while(lambda s: not s.all_delivered(), settle_limit_s)
    report = {
        "nodes": nodes,
        "seconds": seconds,
        "seed": seed,
        "scenario": scenario,
        **sim.counts(),
        "exactly_once": sim.exactly_once(),
        "refused": sum(sim.refused.values()),
        "frames": sim.frames,
        "lost_messages": sim.lost,
        "turns": sim.turns,
        "warmup_s": round(warmup, 3),
        "settle_s": round(settle, 3),
        "sim_end_s": round(sim.now, 3),
        "wall_s": round(time.perf_counter() - wall0, 3),
        "cpu_s": round(time.process_time() - cpu0, 3),  # wall_s on a loaded machine overstates the cost: this is our share
        "digest": sim.digest,
    }
    return report


def form(sim: Sim, limit_s: float, cpu0: float) -> tuple[float, bool, float]:
    """Run until the overlay has formed (`Sim.meshed`), at most ``limit_s`` more than the first
    second: (simulated seconds it took, whether it formed, CPU seconds since ``cpu0``)."""
    sim.run_until(1.0)
    warmup = 1.0 + sim.run_while(lambda s: not s.meshed(), limit_s)
    return warmup, sim.meshed(), time.process_time() - cpu0
