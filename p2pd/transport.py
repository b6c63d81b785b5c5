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
* one DEALER per link          - routing id = ``<our node id>/<16 random hex>``, to a peer's ROUTER.
* one SUB per linked peer      - connected to that peer's PUB, so every
  broadcast is known to come through the PUB of the peer it names.
* REP ``tcp://host:port+2``    - the key port: plaintext, answers our public key
  (trust on first use for `connect HOST PORT`).
* REP ``inproc://zeromq.zap.01`` - ZAP: libzmq asks it whether a CURVE key may in.
* ROUTER ``ipc://<home>/control.sock`` - the control API for `p2pctl`; where ZeroMQ
  has no ipc (Windows) or with P2PD_CONTROL=tcp, ``tcp://127.0.0.1:*`` instead,
  each request carrying the token written to ``<home>/control.token``.
* with ``discover = "lan"``, a plain UDP socket on ``discover_port``: our beacon
  out to ``discover_to`` (a broadcast address), other nodes' beacons in.

Unless --insecure, every TCP socket uses CURVE (ROUTER and XPUB as servers).

The loop polls, drains each readable socket in bounded batches, hands raw
frames and the monotonic time to the pure `Node`, and performs the effects it
returns.  Nothing here decides anything about the protocol.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import struct
import time
from functools import partial

import orjson
import zmq
import zmq.utils.z85

from . import control, trustfiles
from . import protocol as P
from .actions import (CloseLink, EditAuthorizedKeys, FetchKey, ForgetPin, LanBeacon, OpenLink, PinKey, Publish, PublishBatch, RekeyLink,
                      SavePeers, Send, SendBatch, Shutdown, Subscribe, ToClient, Unsubscribe)
from .fdpoll import FdPoller
from .home import Home, save_peer_book
from .inbound import HEADROOM, InboundGuard
from .intake import SUB_TOPIC_PREFIX
from .keys import known_peers
from .node import Node
from .ratelimit import LogRateLimiter
from .signals import reload_requested, stop_requested
from .sockets import Listeners, curve_client, link_routing_id
from .resources import open_fds, soft_limit, trim_memory

log = logging.getLogger("p2pd.transport")

BATCH = 512  # frames per socket per loop turn: fairness between sockets
# High-water marks bound memory; they never decide what is lost, because the
# store does.  A link carries at most send_window (1,000) unacknowledged
# MESSAGEs plus control frames and up to one FETCH reply (1,000 BROADCASTs),
# so 10,000 is never reached by a well-behaved node; if it is, the send is
# counted as send_queue_full and the message is resent from the outbox.
PEER_BOOK_EVERY_S = 1.0  # the peer book file is rewritten at most this often
LINK_SNDHWM = 10_000
TRIM_DELAY_S = 0.5
REFUSED_WITHIN_S = 1.0  # two connect retries this close together: the connection is refused (see _watch_refused)
FAILURE_LOG_S = 10.0
CLOSE_LINGER_MS = 1_000  # let a LEAVE reach the peer, but never hang a stop on a dead one


KEY_FETCH_TIMEOUT_S = 3.0


class Transport:
    def __init__(self, home: Home, settings, node_id: str, name: str, keypair=None):
        self.home = home
        self.settings = settings
        self.ctx = zmq.Context()
        # CURVE on every TCP socket unless --insecure (keypair: p2pd.keys.KeyPair)
        self.keypair = None if settings.insecure else keypair
        self.dealers: dict[str, zmq.Socket] = {}
        self.subs: dict[str, tuple[zmq.Socket, str]] = {}  # peer id -> (SUB socket, endpoint)
        self.key_fetches: dict[zmq.Socket, tuple[str, float]] = {}  # REQ socket -> (tag, deadline)
        self.refusal_watch: dict[zmq.Socket, zmq.Socket] = {}  # socket -> its monitor, until its first connect succeeds or fails
        self.poller = FdPoller()
        self.handlers: dict = {}
        self.drainers: set = set()
        self.on_reload = None  # called in the loop after a SIGHUP (set by the daemon)
        self._peer_book: list | None = None  # the newest peer book not yet written
        self._peer_book_due = 0.0  # sockets whose handler reads them itself (see _register)
        self.monitors: list = []
        self.node_name = name
        self.running = True
        self.node: Node | None = None
        self.node_id = node_id
        self.watch_overflow = 0
        self.exit_code = 0
        self._out: list = []
        self._failures = LogRateLimiter(FAILURE_LOG_S)
        self.inbound = InboundGuard(settings.max_inbound, settings.max_inbound_per_host, soft_limit())
        self._fds_open: int | None = None
        self._fds_counted_at = float("-inf")
        self._trim_at: float | None = None  # when to hand freed memory back, after a flood (see _watch_inbound)
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

    # ------------------------------------------------------------------ effects
    def apply(self, actions: list) -> None:
        """Perform the node's effects in order.  One that fails (a file that cannot be written, a
        bug) is logged and skipped: it must neither stop the node nor cost the effects after it."""
        for act in actions:
            try:
                self._apply_one(act)
            except Exception:
                self._log_failure("effect", f"cannot perform {type(act).__name__}; carrying on")

    def _log_failure(self, what: str, message: str) -> None:
        """A traceback for what failed, at most one per `what` every FAILURE_LOG_S (a broken store
        would otherwise log one on every 50 ms tick), with the count of those not logged."""
        ok, suppressed = self._failures.allow(what, time.monotonic())
        if ok:
            log.exception("%s%s", message, f" ({suppressed} more like it since the last)" if suppressed else "")

    def _apply_one(self, act) -> None:
        kind = type(act)
        if kind is Send:
            sock = self.dealers.get(act.key)
            if sock is None:
                return
            if act.msg.type == P.PING:
                self.node.ping_leaving(act.msg.id, time.monotonic())
            try:
                sock.send(P.encode(act.msg), zmq.NOBLOCK)
            except zmq.Again:
                self.node.drop(time.monotonic(), "send_queue_full", f"link queue full, {act.msg.type} not sent", act.key[:12])
        elif kind is ToClient:
            self._to_client(act.client, act.payload)
        elif kind is SendBatch:
            sock = self.dealers.get(act.key)
            if sock is None:
                return
            try:
                sock.send_multipart([P.encode(m) for m in act.msgs], zmq.NOBLOCK)
            except zmq.Again:  # all or nothing: the outbox resends what this batch held
                self.node.drop(time.monotonic(), "send_queue_full", f"link queue full, batch of {len(act.msgs)} not sent", act.key[:12])
        elif kind is Publish:
            self.pub.send(P.encode(act.msg), zmq.NOBLOCK)
        elif kind is PublishBatch:
            self.pub.send_multipart([P.encode(m) for m in act.msgs], zmq.NOBLOCK)
        elif kind is OpenLink:
            self._open_link(act.key, act.endpoint, act.server_key, act.suffix, act.report_refused)
        elif kind is CloseLink:
            sock = self.dealers.pop(act.key, None)
            if sock is not None:
                self._unwatch_refused(sock)
                sock.close(linger=CLOSE_LINGER_MS)
        elif kind is RekeyLink:
            sock = self.dealers.pop(act.old, None)
            if sock is not None:
                if act.new in self.dealers:
                    self._unwatch_refused(sock)
                    sock.close(linger=CLOSE_LINGER_MS)
                else:
                    self.dealers[act.new] = sock
        elif kind is Subscribe:
            self._subscribe(act.peer_id or act.endpoint, act.endpoint, act.server_key)
        elif kind is Unsubscribe:
            self._close_sub(act.peer_id or act.endpoint)
        elif kind is PinKey:
            try:
                known_peers(self.home).add(act.key, address=act.address)
            except (OSError, ValueError) as e:  # ValueError: the file was edited into something unreadable
                log.warning("cannot save pinned key to %s: %s", known_peers(self.home).path, e)
        elif kind is FetchKey:
            self._fetch_key(act.endpoint, act.tag, act.timeout_s)
        elif kind is LanBeacon:
            self._send_beacon(act.payload)
        elif kind is SavePeers:
            self._peer_book = act.peers  # written by _save_peer_book, at most once a second
        elif kind is Shutdown:
            self.running = False
        elif kind is EditAuthorizedKeys or kind is ForgetPin:
            self._edit_trust_file(act)

    def _edit_trust_file(self, act: EditAuthorizedKeys | ForgetPin) -> None:
        """`trust` and `known forget`: the node does no file I/O, so the edit of authorized_keys or
        known_peers it asks for is done here, in the home (trustfiles.py), which also gives the reply."""
        answer = trustfiles.perform(self.home, self.node.trust, act)
        self._to_client(answer.client, answer.payload)

    # ------------------------------------------------------------------ LAN discovery
    def _send_beacon(self, payload: bytes) -> None:
        try:
            self.beacon_sock.sendto(payload, (self.settings.discover_to, self.settings.discover_port))
        except OSError as e:  # no route for broadcasts (no default route?), interface down
            now = time.monotonic()
            if now - self._beacon_warned >= 60.0:
                self._beacon_warned = now
                log.warning("cannot send the LAN beacon to %s:%d: %s (set discover_to to this network's broadcast address)",
                            self.settings.discover_to, self.settings.discover_port, e.strerror)

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

    def _subscribe(self, key: str, endpoint: str, server_key: str | None) -> None:
        """One SUB per peer: whatever arrives on it came through that peer's PUB."""
        current = self.subs.get(key)
        if current is not None and current[1] == endpoint:
            return
        self._close_sub(key)
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_msg)
        sock.setsockopt(zmq.LINGER, 0)
        curve_client(sock, self.keypair, server_key)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        # A second, never-matching subscription whose topic names us: the
        # peer's XPUB sees it and so knows our SUB is attached.
        sock.setsockopt(zmq.SUBSCRIBE, SUB_TOPIC_PREFIX + self.node_id.encode())
        if not self._connect_or_close(sock, endpoint, "subscribe to"):
            return
        self.subs[key] = (sock, endpoint)
        node = self.node

        def drain_sub(sock, source=key):
            out, monotonic = self._out, time.monotonic
            for frames in _messages(sock):
                out.extend(node.on_sub_frames(monotonic(), [f.bytes for f in frames], endpoint, source_peer=source))

        self._register(sock, drain_sub, drains=True)

    def _close_sub(self, key: str) -> None:
        current = self.subs.pop(key, None)
        if current is not None:
            self._unregister(current[0])
            current[0].close(linger=0)

    def _register(self, sock: zmq.Socket, handler, drains: bool = False) -> None:
        """Poll ``sock``; ``handler`` gets each message's frames, or the socket itself with ``drains``."""
        self.handlers[sock] = handler
        if drains:
            self.drainers.add(sock)
        self.poller.register(sock)

    def _unregister(self, sock: zmq.Socket) -> None:
        self.handlers.pop(sock, None)
        self.drainers.discard(sock)
        self.poller.unregister(sock)

    def _watch_refused(self, sock: zmq.Socket, on_refused) -> None:
        """Call ``on_refused()`` if the first TCP connection of ``sock`` (not connected yet) is
        refused: ZeroMQ would retry it silently, and a user would wait out the timeout for an
        address where nothing listens.  A refusal shows in the socket's monitor as CONNECT_RETRIED
        before any CONNECTED, again after each reconnect interval (100 ms at first); a SYN that goes
        unanswered shows nothing (the kernel keeps trying), and a host whose address does not
        resolve on a lossy link (ARP) fails once every few seconds.  So two retries within
        REFUSED_WITHIN_S are a refusal; a single one, or slower ones, are a slow path.
        Watched until the first CONNECTED or the refusal."""
        mon = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED)
        self.refusal_watch[sock] = mon
        last_retry = [float("-inf")]

        def on_event(frames):
            try:
                event = struct.unpack("=h", frames[0].bytes[:2])[0]
            except struct.error:
                return
            if event != zmq.EVENT_CONNECT_RETRIED:
                self._unwatch_refused(sock)  # connected: no refusal to report
                return
            now = time.monotonic()
            if now - last_retry[0] <= REFUSED_WITHIN_S:
                self._unwatch_refused(sock)
                on_refused()
            last_retry[0] = now

        self._register(mon, on_event)

    def _unwatch_refused(self, sock: zmq.Socket) -> None:
        """Stop watching ``sock`` (before it is closed, or once its first connection is decided)."""
        mon = self.refusal_watch.pop(sock, None)
        if mon is None:
            return
        self._unregister(mon)
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        mon.close(linger=0)

    def _fetch_key(self, endpoint: str, tag: str, timeout_s: float = KEY_FETCH_TIMEOUT_S) -> None:
        sock = self.ctx.socket(zmq.REQ)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, 4096)

        def refused(sock=sock):
            if sock in self.key_fetches:
                tag, _ = self.key_fetches.pop(sock)
                self._unregister(sock)
                sock.close(linger=0)
                self._out.extend(self.node.on_key(time.monotonic(), tag, None, "connection refused", refused=True))

        self._watch_refused(sock, refused)  # before connect: no event may be missed
        try:
            sock.connect(endpoint)
            sock.send(b"KEY")
        except zmq.ZMQError as e:
            self._unwatch_refused(sock)
            sock.close(linger=0)
            self._out.extend(self.node.on_key(time.monotonic(), tag, None, e.strerror))
            return
        self.key_fetches[sock] = (tag, time.monotonic() + timeout_s)

        def on_reply(frames, sock=sock):
            tag, _ = self.key_fetches.pop(sock, ("", 0))
            self._unregister(sock)
            self._unwatch_refused(sock)
            sock.close(linger=0)
            key = error = None
            try:
                reply = json.loads(frames[-1].bytes)
                key = reply.get("key") if isinstance(reply, dict) else None
            except ValueError:
                error = "the key port answered something else"
            self._out.extend(self.node.on_key(time.monotonic(), tag, key, error))

        self._register(sock, on_reply)

    def _expire_key_fetches(self, now: float) -> None:
        for sock, (tag, deadline) in list(self.key_fetches.items()):
            if now >= deadline:
                del self.key_fetches[sock]
                self._unregister(sock)
                self._unwatch_refused(sock)
                sock.close(linger=0)
                self._out.extend(self.node.on_key(now, tag, None, "no answer in time"))

    def _watch_inbound(self, sock: zmq.Socket, what: str) -> None:
        """Follow the connections to one of our listening sockets: count them (and refuse the
        excess, see inbound.py), and log those whose ZMTP handshake fails (the usual sign of a
        secure/insecure mismatch)."""
        failed = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        mon = sock.get_monitor_socket(failed | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.monitors.append(mon)

        def on_event(frames):
            try:
                event, value = struct.unpack("=hi", frames[0].bytes[:6])
            except struct.error:
                return
            if event == zmq.EVENT_ACCEPTED:
                self._on_accepted(value, what)
            elif event == zmq.EVENT_DISCONNECTED:
                self.inbound.closed(value)
                if self._trim_at is None and self.inbound.flood_over():
                    # libzmq frees a connection's buffers only after it reported it gone: trim a moment later
                    self._trim_at = time.monotonic() + TRIM_DELAY_S
            elif event & failed:  # (a ZAP refusal, HANDSHAKE_FAILED_AUTH, is already counted as unauthorized)
                mine = "CURVE" if self.keypair is not None else "plaintext (--insecure)"
                self.node.drop(time.monotonic(), "handshake_failed",
                               f"a connection to our {what} port failed its handshake (event {event}, code {value:#x}): the other side "
                               f"does not speak {mine} (one side in --insecure mode?), or is not p2pd", what)

        self._register(mon, on_event)

    def _on_accepted(self, fd: int, what: str) -> None:
        """libzmq accepted a connection on one of our ports: keep it, or shut it down at once."""
        try:
            conn = socket.socket(fileno=fd)  # borrowed: detached below, libzmq owns the descriptor
        except OSError:
            return  # closed already
        try:
            if conn.family not in (socket.AF_INET, socket.AF_INET6):
                return  # the descriptor was closed and reused already (by a control client, say): not this one
            try:
                host, local_port = conn.getpeername()[0], conn.getsockname()[1]
            except OSError:
                return  # gone already
            if local_port not in self.listening_ports:
                return  # the descriptor was closed and reused by one of our own connections: not this one
            now = time.monotonic()
            # Counting descriptors lists a directory: once a second, or at each connection when the
            # estimate (last count + connections since) comes near the limit.
            limit = self.inbound.fd_limit
            near = limit is not None and self._fds_open is not None and self._fds_open > limit - 4 * HEADROOM
            if now >= self._fds_counted_at + 1.0 or near:
                self._fds_open = open_fds()
                self._fds_counted_at = now
            elif self._fds_open is not None:
                self._fds_open += 1
            reason = self.inbound.accepted(fd, host, self._fds_open)
            if reason is not None:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # libzmq sees the end of the stream and closes it
                except OSError:
                    pass
                self.node.drop(now, "inbound_limit", f"refused a connection to our {what} port: {reason}", host)
        finally:
            conn.detach()

    def _answer_zap(self, frames) -> None:
        """One ZAP request: [version, request id, domain, address, identity, mechanism, credentials...]."""
        parts = [f.bytes for f in frames]
        request_id = parts[1] if len(parts) > 1 else b""
        ok, user_id, reason = False, "", "malformed ZAP request"
        if len(parts) >= 7 and parts[5] == b"CURVE" and len(parts[6]) == 32:
            key = zmq.utils.z85.encode(parts[6]).decode("ascii")
            ok, user_id, reason = self.node.trust.authorize(key)
            if not ok:
                address = parts[3].decode("utf-8", "replace")
                self.node.drop(time.monotonic(), "unauthorized", f"refused key {key[:8]}... from {address}: {reason}", address)
        self.zap.send_multipart([b"1.0", request_id, b"200" if ok else b"400", reason.encode(), user_id.encode(), b""])

    def _answer_keyport(self, frames) -> None:
        node = self.node
        self.keyport.send(json.dumps({"key": self.keypair.public, "id": node.id, "name": node.name}).encode())

    def _open_link(self, key: str, endpoint: str, server_key: str | None = None, suffix: bool = False,
                   report_refused: bool = False) -> None:
        old = self.dealers.pop(key, None)
        if old is not None:
            self._unwatch_refused(old)
            old.close(linger=0)
        sock = self.ctx.socket(zmq.DEALER)
        curve_client(sock, self.keypair, server_key)
        # With a suffix, fresh per socket: only we and the peer's ROUTER (inside CURVE) ever see it,
        # so nobody can claim it first; the node id before the "/" is what the ROUTER checks.
        # Without (a peer that has not said it takes one, e.g. an older p2pd): our bare node id.
        sock.setsockopt(zmq.ROUTING_ID, link_routing_id(self.node_id) if suffix else self.node_id.encode())
        sock.setsockopt(zmq.SNDHWM, LINK_SNDHWM)
        sock.setsockopt(zmq.RCVHWM, 16)  # peers never send on this link; don't buffer junk
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2_000)
        sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        if report_refused:
            self._watch_refused(sock, lambda: self._out.extend(self.node.on_link_refused(time.monotonic(), key)))
        if self._connect_or_close(sock, endpoint, "open link to"):
            self.dealers[key] = sock
        else:
            self._unwatch_refused(sock)

    @staticmethod
    def _connect_or_close(sock: zmq.Socket, endpoint: str, what: str) -> bool:
        try:
            sock.connect(endpoint)
            return True
        except zmq.ZMQError as e:
            log.warning("cannot %s %s: %s", what, endpoint, e.strerror)
            sock.close(linger=0)
            return False

    def _to_client(self, client: bytes, payload: dict) -> None:
        try:
            self.control.send_multipart([client, orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self.node.watchers.discard(client)  # the client went away
            elif e.errno == zmq.EAGAIN:
                self.watch_overflow += 1
                self.node.drop(time.monotonic(), "control_queue_full", "control client too slow; event dropped", "control socket")
            else:
                raise

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

    # ------------------------------------------------------------------ loop
    def _handle(self, sock: zmq.Socket) -> None:
        handler = self.handlers.get(sock)
        if handler is None:
            return  # closed earlier in this turn
        try:
            if sock in self.drainers:
                handler(sock)
            else:
                self._drain(sock, handler)
        except Exception:  # a bug must not kill the node: log it and carry on
            log.exception("error while handling input; continuing")
        self.poller.done(sock)

    def _drain(self, sock: zmq.Socket, handle) -> None:
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            handle(frames)
            if sock.closed:  # the handler closed it (a key fetch's REQ after its one reply)
                return

    def run(self, node: Node, extra_status: dict) -> None:
        """Poll, hand input to the node, commit the store, then perform the effects.

        Effects of a whole turn are held back until the store is committed:
        an ACK, a reply or an event must never describe data that a crash
        right now would lose (write-ahead).
        """
        self.node = node
        out = self._out

        secure = self.keypair is not None

        def drain_router(sock):
            # The hot path: frame metadata costs a call into libzmq per lookup;
            # look the peer address up only if the node asks for it.
            monotonic = time.monotonic
            for frames in _messages(sock):
                last = frames[-1]
                user_id = None
                if secure:
                    try:
                        user_id = last.get("User-Id")
                    except zmq.ZMQError:
                        pass
                acts = node.on_router_frames(monotonic(), [f.bytes for f in frames], partial(_peer_address, last), user_id)
                if len(acts) == 1 and type(acts[0]) is Send and acts[0].msg.type == P.PONG:
                    self.apply(acts)  # a PONG tells nothing stored: it need not wait for the turn's commit
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

        self.listening_ports = {p for p in (self.port, self.pub_port, self.key_port) if p}
        self._watch_inbound(self.router, "peer")
        self._watch_inbound(self.pub, "broadcast")
        if self.keyport is not None:
            self._watch_inbound(self.keyport, "key")
        self._register(self.router, drain_router, drains=True)
        self._register(self.pub, on_pub)
        self._register(self.control, on_control)
        if self.zap is not None:
            self._register(self.zap, self._answer_zap)
        if self.keyport is not None:
            self._register(self.keyport, self._answer_keyport)
        if self.beacon_sock is not None:
            self._register(self.beacon_sock, self._read_beacons, drains=True)
        next_tick = 0.0
        while self.running:
            now = time.monotonic()
            # Round up: rounding 0.9 ms down to 0 would spin the loop until the deadline.
            timeout_ms = max(0, math.ceil(min(node.next_deadline(now), max(0.0, next_tick - now)) * 1000))
            # One batch of input per turn, then commit and act: reading on for bigger
            # transactions was measured slower (ACKs and replies wait, the peer idles).
            for sock in self.poller.poll(timeout_ms / 1000):
                self._handle(sock)
            now = time.monotonic()
            try:
                # The node's own deadline (a heartbeat) also runs tick: else poll(0) would spin until next_tick.
                if now >= next_tick or node.next_deadline(now) <= 0:
                    next_tick = now + 0.05
                    out.extend(node.tick(now))
                    self._expire_key_fetches(now)
                    if self._trim_at is not None and now >= self._trim_at:
                        self._trim_at = None
                        trimmed = trim_memory()
                        log.info("inbound connections down to %d: freed memory %s", len(self.inbound.conns),
                                 "returned to the system" if trimmed else "kept (no malloc_trim here)")
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
                    self.poller.recheck(sock)
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
        self.poller.close()
        for mon in self.monitors:
            mon.close(linger=0)
        for mon in self.refusal_watch.values():
            mon.close(linger=0)
        for sock in (self.router, self.pub, self.zap, self.keyport, *[s for s, _ in self.subs.values()], *self.key_fetches):
            if sock is not None:
                sock.close(linger=0)
        if self.beacon_sock is not None:
            self.beacon_sock.close()
        self.control.close()
        for sock in self.dealers.values():
            sock.close(linger=CLOSE_LINGER_MS)
        self.dealers.clear()
        self.ctx.term()
        try:
            self.home.socket_path.unlink()
        except OSError:
            pass
        self.home.remove_control_files()


def _messages(sock: zmq.Socket):
    """Up to BATCH waiting messages, each as its list of frames.  Read part by part:
    recv_multipart costs a getsockopt per part, a frame knows whether more follow."""
    for _ in range(BATCH):
        try:
            frames = [sock.recv(zmq.NOBLOCK, copy=False)]
        except zmq.Again:
            return
        while frames[-1].more:
            frames.append(sock.recv(copy=False))
        yield frames


def _peer_address(frame: zmq.Frame) -> str | None:
    try:
        return frame.get("Peer-Address")
    except zmq.ZMQError:
        return None
