"""The event loop: the one thread that owns every ZeroMQ socket of a node.

How this works
--------------
Sockets (ZeroMQ sockets are not thread-safe, so only this loop touches them):

* ROUTER ``tcp://host:port``   - inbound peer traffic.  No ``ROUTER_HANDOVER``:
  a second connection claiming a routing id already in use is never let
  displace the first (that let any key holder cut any link).  Peers give each
  DEALER a fresh routing id ``<node id>/<random>``, so their own reconnects
  never collide; ZMTP heartbeats reap connections that died silently.
* XPUB ``tcp://host:pub_port`` - broadcasts out.  It is a PUB that also shows
  us subscriptions, so we know which peers' SUBs are attached.
* one DEALER per link and one SUB per linked peer (links.py).
* REP ``tcp://host:port+2``    - the key port: plaintext, answers our public key
  (trust on first use for `connect HOST PORT`); REQs to peers' key ports (keyport.py).
* REP ``inproc://zeromq.zap.01`` - ZAP: libzmq asks it whether a CURVE key may in (admission.py).
* ROUTER ``ipc://<home>/control.sock`` - the control API for `p2pctl`; where ZeroMQ
  has no ipc (Windows) or with P2PD_CONTROL=tcp, ``tcp://127.0.0.1:*`` instead,
  each request carrying the token written to ``<home>/control.token``.
* with ``discover = "lan"``, a plain UDP socket on ``discover_port``: our beacon
  out to ``discover_to`` (a broadcast address), other nodes' beacons in.

Unless --insecure, every TCP socket uses CURVE (ROUTER and XPUB as servers).  The
listening sockets are opened by sockets.py before the loop starts.

The loop (`Transport.run`) polls (pollset.py), drains each readable socket in
bounded batches, hands raw frames and the monotonic time to the pure `Node`
through its entry points (``on_router_frames``, ``on_sub_frames``, ``tick``, ...),
commits the store, and then performs the effects the node returned.  `Transport`
is an effect performer (effects.py): one ``perform_*`` method per effect type,
found with one dict lookup.  Nothing here decides anything about the protocol:
what the node wants to know (a PING leaving, a link refused, a control client
gone) it is told through its entry points, and an effect's own fields say how
to perform it (a `Send` with ``before_commit`` goes out ahead of the commit).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import time
from functools import partial

import orjson
import zmq

from . import control, trustfiles
from . import protocol as P
from .actions import Send
from .admission import Admission
from .effects import handlers, performer
from .home import Home, save_peer_book
from .inbound import InboundGuard
from .intake import topic_for
from .keyport import KeyFetches, answer_key_request
from .keys import known_peers
from .dealers import LinkSockets
from .node import Node
from .pollset import BATCH, NOBLOCK, PollSet, messages
from .ratelimit import LogRateLimiter
from .refusals import RefusalWatch
from .resources import Trimmer, soft_limit
from .signals import reload_requested, stop_requested
from .sockets import Listeners

log = logging.getLogger("p2pd.transport")

PEER_BOOK_EVERY_S = 1.0  # the peer book file is rewritten at most this often
FAILURE_LOG_S = 10.0
# Plain ints (NOBLOCK too, from pollset.py): pyzmq's flag enums cost an enum operation per frame
# (a tenth of a broadcast flood's origin time went to Flag.__or__ inside send_multipart).
MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
TICK_S = 0.05  # the node's timers run at most this often (and as often while it is busy: node.next_deadline)


@performer()
class Transport:
    def __init__(self, home: Home, settings, node_id: str, name: str, keypair=None):
        self.home = home
        self.settings = settings
        self.ctx = zmq.Context()
        # Sockets take IPv6 as well as IPv4 (ZeroMQ's default is IPv4 only: `--host ::1` or a peer
        # at [2001:db8::7]:5000 would fail with "No such device").  The bound ones set it by their
        # host (sockets.py `_bind`), so an IPv4 --host binds plain IPv4 sockets as before.
        self.ctx.setsockopt(zmq.IPV6, 1)
        # CURVE on every TCP socket unless --insecure (keypair: p2pd.keys.KeyPair)
        self.keypair = None if settings.insecure else keypair
        self.on_reload = None  # called in the loop after a SIGHUP (set by the daemon)
        self._peer_book: list | None = None  # the newest peer book not yet written
        self._peer_book_due = 0.0
        self.node_name = name
        self.running = True
        self.node: Node | None = None  # set by the daemon before the first effect
        self.node_id = node_id
        self.exit_code = 0
        self._out: list = []  # the effects of this turn, performed after the commit
        self._failures = LogRateLimiter(FAILURE_LOG_S)
        try:
            self.listeners = Listeners(self.ctx, home, settings, self.keypair)
        except BaseException:
            self.ctx.destroy(linger=0)
            raise
        ls = self.listeners  # the loop's from now on
        self.router, self.pub, self.control, self.zap, self.keyport = ls.router, ls.pub, ls.control, ls.zap, ls.keyport
        self.beacon_sock = ls.beacon_sock
        self.port, self.pub_port, self.key_port = ls.port, ls.pub_port, ls.key_port
        self.control_endpoint, self.control_token, self.max_msg = ls.control_endpoint, ls.control_token, ls.max_msg
        self._beacon_warned = 0.0
        self.polls = PollSet()
        self.refusals = RefusalWatch(self.polls)
        self.links = LinkSockets(self.ctx, self.polls, self.refusals, self.keypair, node_id, self.max_msg,
                                 on_refused=self._link_refused, on_sub_frames=self._sub_frames,
                                 on_handshake_failed=self._link_handshake_failed)
        self._dealers = self.links.dealers  # the hot path sends on them directly
        self.key_fetches = KeyFetches(self.ctx, self.polls, self.refusals, on_key=self._key_answered)
        self.inbound = InboundGuard(settings.max_inbound, settings.max_inbound_per_host, soft_limit())
        self.admission = Admission(self.polls, self.inbound, secure=self.keypair is not None, drop=self._drop)
        self.trimmer = Trimmer(time.monotonic())
        self._perform = handlers(self)

    # ------------------------------------------------------------------ events for the node
    # What the transport's parts see goes to the node's entry points; what it answers joins the turn's effects.
    def _link_refused(self, key: str) -> None:
        self._out.extend(self.node.on_link_refused(time.monotonic(), key))

    def _link_handshake_failed(self, key: str) -> None:
        self._out.extend(self.node.on_link_handshake_failed(time.monotonic(), key))

    def _sub_frames(self, frames: list, endpoint: str, source: str) -> None:
        self._out.extend(self.node.on_sub_frames(time.monotonic(), frames, endpoint, source_peer=source))

    def _key_answered(self, now: float, tag: str, key: str | None, error: str | None, refused: bool = False) -> None:
        self._out.extend(self.node.on_key(now, tag, key, error, refused))

    def _drop(self, now: float, kind: str, reason: str, source) -> None:
        self.node.drop(now, kind, reason, source)

    # ------------------------------------------------------------------ effects
    def apply(self, actions: list) -> None:
        """Perform the node's effects in order.  One that fails (a file that cannot be written, a
        bug) is logged and skipped: it must neither stop the node nor cost the effects after it."""
        perform = self._perform
        for act in actions:
            try:
                perform[type(act)](act)
            except Exception:
                self._log_failure("effect", f"cannot perform {type(act).__name__}; carrying on")

    def _log_failure(self, what: str, message: str) -> None:
        """A traceback for what failed, at most one per `what` every FAILURE_LOG_S (a broken store
        would otherwise log one on every 50 ms tick), with the count of those not logged."""
        ok, suppressed = self._failures.allow(what, time.monotonic())
        if ok:
            log.exception("%s%s", message, f" ({suppressed} more like it since the last)" if suppressed else "")

    def perform_send(self, act) -> None:
        sock = self._dealers.get(act.key)
        if sock is None:
            return
        if act.report_sent:
            self.node.on_sent(time.monotonic(), act.key, act.msg)
        try:
            sock.send(P.encode(act.msg), NOBLOCK)
        except zmq.Again:
            self.node.drop(time.monotonic(), "send_queue_full", f"link queue full, {act.msg.type} not sent", act.key[:12])

    def perform_send_batch(self, act) -> None:
        sock = self._dealers.get(act.key)
        if sock is None:
            return
        try:
            send_parts(sock, [P.encode(m) for m in act.msgs])
        except zmq.Again:  # all or nothing: the outbox resends what this batch held
            self.node.drop(time.monotonic(), "send_queue_full", f"link queue full, batch of {len(act.msgs)} not sent", act.key[:12])

    def perform_to_client(self, act) -> None:
        try:
            send_parts(self.control, [act.client, orjson.dumps(act.payload, option=orjson.OPT_NON_STR_KEYS)])
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self.node.on_client_gone(act.client)
            elif e.errno == zmq.EAGAIN:
                self.node.drop(time.monotonic(), "control_queue_full", "control client too slow; event dropped", "control socket")
            else:
                raise

    def perform_publish(self, act) -> None:
        raw = P.encode(act.msg)
        if act.to is None:
            self.pub.send(raw, NOBLOCK)
            return
        send = self.pub.send
        for peer_id in act.to:  # a topic only that peer's SUB takes (intake.topic_for)
            send(topic_for(peer_id), MORE)
            send(raw, NOBLOCK)

    def perform_publish_batch(self, act) -> None:
        send_parts(self.pub, [P.encode(m) for m in act.msgs])

    def perform_open_link(self, act) -> None:
        self.links.open(act.key, act.endpoint, act.server_key, act.suffix, act.report_refused)

    def perform_close_link(self, act) -> None:
        self.links.close(act.key)

    def perform_rekey_link(self, act) -> None:
        self.links.rekey(act.old, act.new)

    def perform_subscribe(self, act) -> None:
        self.links.subscribe(act.peer_id or act.endpoint, act.endpoint, act.server_key)

    def perform_unsubscribe(self, act) -> None:
        self.links.unsubscribe(act.peer_id or act.endpoint)

    def perform_pin_key(self, act) -> None:
        pins = known_peers(self.home)
        try:
            pins.add(act.key, address=act.address)
        except (OSError, ValueError) as e:  # ValueError: the file was edited into something unreadable
            log.warning("cannot save pinned key to %s: %s", pins.path, e)

    def perform_fetch_key(self, act) -> None:
        self.key_fetches.fetch(act.endpoint, act.tag, act.timeout_s)

    def perform_lan_beacon(self, act) -> None:
        try:
            self.beacon_sock.sendto(act.payload, (self.settings.discover_to, self.settings.discover_port))
        except OSError as e:  # no route for broadcasts (no default route?), interface down
            now = time.monotonic()
            if now - self._beacon_warned >= 60.0:
                self._beacon_warned = now
                log.warning("cannot send the LAN beacon to %s:%d: %s (set discover_to to this network's broadcast address)",
                            self.settings.discover_to, self.settings.discover_port, e.strerror)

    def perform_save_peers(self, act) -> None:
        self._peer_book = act.peers  # written by _save_peer_book, at most once a second

    def perform_shutdown(self, act) -> None:
        self.running = False

    def perform_edit_authorized_keys(self, act) -> None:
        """`trust`: the node does no file I/O, so the edit of authorized_keys it asks for is done
        here, in the home (trustfiles.py), which also gives the reply."""
        self.perform_to_client(trustfiles.perform(self.home, self.node.trust, act))

    def perform_forget_pin(self, act) -> None:
        """`known forget`: known_peers, the same way."""
        self.perform_edit_authorized_keys(act)

    def _save_peer_book(self, now: float, force: bool = False) -> None:
        """Write the newest peer book if one is waiting.  A cluster forming changes it once per
        peer, and each write is a file replace: coalesce them to one a second."""
        if self._peer_book is None or (now < self._peer_book_due and not force):
            return
        try:
            save_peer_book(self.home, self._peer_book)
        except OSError as e:
            log.warning("cannot save peer book %s: %s", self.home.peers_file, e)
        self._peer_book = None
        self._peer_book_due = now + PEER_BOOK_EVERY_S

    # ------------------------------------------------------------------ input
    def _read_beacons(self, sock: socket.socket) -> None:
        node = self.node
        for _ in range(BATCH):
            try:
                data, source = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. an ICMP error queued on the socket
                continue
            self._out.extend(node.on_lan_beacon(time.monotonic(), data, source[0]))

    def _register_listeners(self, node: Node, extra_status: dict) -> None:
        """Read the listening sockets from now on, each with its handler."""
        out = self._out
        secure = self.keypair is not None
        apply = self.apply

        def drain_router(sock):
            # The hot path: frame metadata costs a call into libzmq per lookup;
            # look the peer address up only if the node asks for it.
            monotonic = time.monotonic
            for frames in messages(sock):
                last = frames[-1]
                user_id = None
                if secure:
                    try:
                        user_id = last.get("User-Id")
                    except zmq.ZMQError:
                        pass
                acts = node.on_router_frames(monotonic(), [f.bytes for f in frames], partial(_peer_address, last), user_id)
                if len(acts) == 1 and type(acts[0]) is Send and acts[0].before_commit:
                    apply(acts)  # the node says it describes nothing stored (a PONG): no need to wait for the commit
                else:
                    out.extend(acts)

        def on_pub(frames):
            out.extend(node.on_subscription(time.monotonic(), frames[0].bytes))

        def on_control(frames):
            # Every control message gets a reply, a malformed one too (an error); the wall
            # clock is read here, when the request is read, to check its deadline (control.py).
            if len(frames) != 2:
                out.extend(control.wrong_frame_count(node, time.monotonic(), [f.bytes for f in frames]))
                return
            extra_status["inbound"] = self.inbound.describe()
            out.extend(control.handle(node, time.monotonic(), frames[0].bytes, frames[1].bytes, extra_status, self.control_token,
                                      wall=time.time()))

        polls, admission = self.polls, self.admission
        admission.watch(self.router, self.port, "peer")
        admission.watch(self.pub, self.pub_port, "broadcast")
        if self.keyport is not None:
            admission.watch(self.keyport, self.key_port, "key")
        polls.register(self.router, drain_router, drains=True)
        polls.register(self.pub, on_pub)
        polls.register(self.control, on_control)
        if self.zap is not None:
            polls.register(self.zap, lambda frames: admission.answer_zap(self.zap, frames, node.trust.authorize))
        if self.keyport is not None:
            public = self.keypair.public
            polls.register(self.keyport, lambda frames: answer_key_request(self.keyport, public, node.id, node.name))
        if self.beacon_sock is not None:
            polls.register(self.beacon_sock, self._read_beacons, drains=True)

    # ------------------------------------------------------------------ loop
    def run(self, node: Node, extra_status: dict) -> None:
        """Poll, hand input to the node, commit the store, then perform the effects.

        Effects of a whole turn are held back until the store is committed:
        an ACK, a reply or an event must never describe data that a crash
        right now would lose (write-ahead).
        """
        self.node = node
        out = self._out
        polls = self.polls
        self._register_listeners(node, extra_status)
        next_tick = 0.0
        while self.running:
            now = time.monotonic()
            # Sleep until the node's next timer, but tick at most every TICK_S (a busy node asks
            # for "now" on every turn).  Round up: rounding 0.9 ms down to 0 would spin the loop.
            wait = 0.0 if self.key_fetches.busy() else node.next_deadline(now)
            timeout_ms = max(0, math.ceil(max(wait, next_tick - now) * 1000))
            # One batch of input per turn, then commit and act: reading on for bigger
            # transactions was measured slower (ACKs and replies wait, the peer idles).
            for sock in polls.poll(timeout_ms / 1000):
                polls.handle(sock)
            now = time.monotonic()
            try:
                if now >= next_tick and (self.key_fetches.busy() or node.next_deadline(now) <= 0):
                    next_tick = now + TICK_S
                    out.extend(node.tick(now))
                    self.key_fetches.expire(now)
                    self.admission.tick(now)
                    self.trimmer.tick(now)
                out.extend(node.flush(now))
            except Exception:
                self._log_failure("tick", "error in periodic work; continuing")
            try:
                node.store.commit()
            except Exception as e:  # disk full, store locked for too long, I/O error
                # Nothing of this turn may go out: it would acknowledge what is
                # not on disk.  Stop (peers get LEAVE and queue for us); the
                # store on disk is consistent, and a restart resumes from it.
                log.critical("cannot write the message store %s (%s): stopping so that nothing unstored is acknowledged",
                             self.home.store_file, e)
                out.clear()
                self.exit_code = 1
                self.running = False
            if out:
                self.apply(out)
                out.clear()
                for sock in (self.control, self.pub):  # we sent on these: see fdpoll.py
                    polls.recheck(sock)
            self._save_peer_book(now)
            if reload_requested() and self.on_reload is not None:
                try:
                    self.on_reload()
                except Exception:
                    log.exception("reload failed; carrying on with the running configuration")
            if not self.running or stop_requested():
                if not node.stopping:
                    self.apply(node.leave(time.monotonic()))
                break

    def close(self) -> None:
        self._save_peer_book(time.monotonic(), force=True)
        self.polls.close()
        self.admission.close()
        self.refusals.close()
        self.key_fetches.close()
        for sock in (self.router, self.pub, self.zap, self.keyport):
            if sock is not None:
                sock.close(linger=0)
        if self.beacon_sock is not None:
            self.beacon_sock.close()
        self.control.close()
        self.links.close_all()
        self.ctx.term()
        try:
            self.home.socket_path.unlink()
        except OSError:
            pass
        self.home.remove_control_files()


def _peer_address(frame: zmq.Frame) -> str | None:
    """The address a peer's connection comes from.  On a dual-stack socket (``--host ::``) an IPv4
    peer shows as ``::ffff:a.b.c.d``: given as the plain IPv4 address, the one to dial back."""
    try:
        seen = frame.get("Peer-Address")
    except zmq.ZMQError:
        return None
    if seen and seen.startswith("::ffff:"):
        try:
            return str(ipaddress.IPv6Address(seen).ipv4_mapped or seen)
        except ValueError:
            return seen
    return seen


def send_parts(sock, parts: list) -> None:
    """``sock.send_multipart(parts, NOBLOCK)`` with int flags.  ZeroMQ takes or refuses a multipart
    message whole at its first frame (zmq.Again is raised there), so the rest never block."""
    last = len(parts) - 1
    for i, part in enumerate(parts):
        sock.send(part, NOBLOCK if i == last else MORE)
