"""The event loop: the one thread that owns every ZeroMQ socket of a node.

How this works
--------------
Sockets (ZeroMQ sockets are not thread-safe, so only this loop touches them):

* ROUTER ``tcp://host:port``   - inbound peer traffic; ``ROUTER_HANDOVER`` so a
  peer that reconnects with the same routing id (its node id) replaces its
  old pipe instead of being ignored.
* XPUB ``tcp://host:pub_port`` - broadcasts out.  It is a PUB that also shows
  us subscriptions, so we know which peers' SUBs are attached.
* one DEALER per link          - routing id = our node id, to a peer's ROUTER.
* one SUB                      - connected to every linked peer's PUB.
* ROUTER ``ipc://<home>/control.sock`` - the control API for `p2pctl`.

The loop polls, drains each readable socket in bounded batches, hands raw
frames and the monotonic time to the pure `Node`, and performs the effects it
returns.  Nothing here decides anything about the protocol.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import time

import zmq

from . import control
from . import protocol as P
from .actions import CloseLink, OpenLink, Publish, RekeyLink, SavePeers, Send, Shutdown, Subscribe, ToClient, Unsubscribe
from .home import Home, save_peer_book
from .node import SUB_TOPIC_PREFIX, Node

log = logging.getLogger("p2pd.transport")

BATCH = 512  # frames per socket per loop turn: fairness between sockets
# High-water marks bound memory; they never decide what is lost, because the
# store does.  A link carries at most send_window (1,000) unacknowledged
# MESSAGEs plus control frames and up to one FETCH reply (1,000 BROADCASTs),
# so 10,000 is never reached by a well-behaved node; if it is, the send is
# counted as send_queue_full and the message is resent from the outbox.
LINK_SNDHWM = 10_000
# A PUB drops frames for a subscriber whose queue is full.  10,000 frames
# (about 2.5 MB per subscriber) absorbs bursts; a subscriber that falls
# further behind sees a gap in the broadcast numbers and FETCHes what it
# missed from the origin's store, at its own pace.
PUB_SNDHWM = 10_000
CONTROL_HWM = 10_000
CLOSE_LINGER_MS = 1_000  # let a LEAVE reach the peer, but never hang a stop on a dead one


class StartupError(RuntimeError):
    """The node cannot start; the message says why and what to do."""


def _bind(sock: zmq.Socket, host: str, port: int, what: str, flag: str) -> int:
    endpoint = P.tcp_endpoint(host, port) if port else P.tcp_endpoint(host, 0).rsplit(":", 1)[0] + ":*"
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        if e.errno == errno.EADDRINUSE:
            raise StartupError(f"{what} port {port} on {host} is already in use; choose another with {flag} (or stop what uses it)") from None
        if e.errno == errno.EADDRNOTAVAIL or e.errno == zmq.EINVAL:
            raise StartupError(f"cannot bind {what} to {endpoint}: {e.strerror}; check --host") from None
        raise StartupError(f"cannot bind {what} to {endpoint}: {e.strerror}") from None
    last = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return int(last.rsplit(":", 1)[1])


class Transport:
    def __init__(self, home: Home, settings, node_id: str, name: str):
        self.home = home
        self.settings = settings
        self.ctx = zmq.Context()
        self.dealers: dict[str, zmq.Socket] = {}
        self.subscribed: set[str] = set()
        self.running = True
        self.node: Node | None = None
        self.node_id = node_id
        self.watch_overflow = 0
        self.exit_code = 0
        try:
            self._open_sockets(node_id, name)
        except BaseException:
            self.ctx.destroy(linger=0)
            raise

    def _open_sockets(self, node_id: str, name: str) -> None:
        s = self.settings
        max_msg = s.max_frame_bytes * 4  # moderately oversized frames are counted, absurd ones cut the link
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, max_msg)
        self.router.setsockopt(zmq.LINGER, 0)
        self.port = _bind(self.router, s.host, s.port, "peer", "--port")

        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.XPUB_VERBOSER, 1)
        self.pub.setsockopt(zmq.SNDHWM, PUB_SNDHWM)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub_port = _bind(self.pub, s.host, s.effective_pub_port, "broadcast", "--pub-port")

        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.MAXMSGSIZE, max_msg)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        # A second, never-matching subscription whose topic names us: our
        # peers' XPUBs see it and so know our SUB is attached.
        self.sub.setsockopt(zmq.SUBSCRIBE, SUB_TOPIC_PREFIX + node_id.encode())

        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.ROUTER_MANDATORY, 1)  # tells us when a watcher has gone
        self.control.setsockopt(zmq.SNDHWM, CONTROL_HWM)
        self.control.setsockopt(zmq.LINGER, 500)  # the reply to `stop` must get out
        sock_path = self.home.socket_path
        try:
            sock_path.unlink()  # we hold the home's lock, so any socket file here is stale
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)
        try:
            self.control.bind(self.home.control_endpoint)
        except zmq.ZMQError as e:
            raise StartupError(f"cannot create control socket {sock_path}: {e.strerror}") from None
        finally:
            os.umask(old_umask)
        try:
            os.chmod(sock_path, 0o600)
        except OSError:
            pass

    # ------------------------------------------------------------------ effects
    def apply(self, actions: list) -> None:
        for act in actions:
            kind = type(act)
            if kind is Send:
                sock = self.dealers.get(act.key)
                if sock is None:
                    continue
                try:
                    sock.send(P.encode(act.msg), zmq.NOBLOCK)
                except zmq.Again:
                    self.node.drop(time.monotonic(), "send_queue_full", f"link queue full, {act.msg.type} not sent", act.key[:12])
            elif kind is ToClient:
                self._to_client(act.client, act.payload)
            elif kind is Publish:
                self.pub.send(P.encode(act.msg), zmq.NOBLOCK)
            elif kind is OpenLink:
                self._open_link(act.key, act.endpoint)
            elif kind is CloseLink:
                sock = self.dealers.pop(act.key, None)
                if sock is not None:
                    sock.close(linger=CLOSE_LINGER_MS)
            elif kind is RekeyLink:
                sock = self.dealers.pop(act.old, None)
                if sock is not None:
                    if act.new in self.dealers:
                        sock.close(linger=CLOSE_LINGER_MS)
                    else:
                        self.dealers[act.new] = sock
            elif kind is Subscribe:
                if act.endpoint not in self.subscribed:
                    try:
                        self.sub.connect(act.endpoint)
                        self.subscribed.add(act.endpoint)
                    except zmq.ZMQError as e:
                        log.warning("cannot subscribe to %s: %s", act.endpoint, e.strerror)
            elif kind is Unsubscribe:
                if act.endpoint in self.subscribed:
                    self.subscribed.discard(act.endpoint)
                    try:
                        self.sub.disconnect(act.endpoint)
                    except zmq.ZMQError:
                        pass
            elif kind is SavePeers:
                try:
                    save_peer_book(self.home, act.peers)
                except OSError as e:
                    log.warning("cannot save peer book %s: %s", self.home.peers_file, e)
            elif kind is Shutdown:
                self.running = False

    def _open_link(self, key: str, endpoint: str) -> None:
        old = self.dealers.pop(key, None)
        if old is not None:
            old.close(linger=0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, self.node_id.encode())
        sock.setsockopt(zmq.SNDHWM, LINK_SNDHWM)
        sock.setsockopt(zmq.RCVHWM, 16)  # peers never send on this link; don't buffer junk
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2_000)
        sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as e:
            log.warning("cannot open link to %s: %s", endpoint, e.strerror)
            sock.close(linger=0)
            return
        self.dealers[key] = sock

    def _to_client(self, client: bytes, payload: dict) -> None:
        try:
            self.control.send_multipart([client, json.dumps(payload).encode()], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self.node.watchers.discard(client)  # the client went away
            elif e.errno == zmq.EAGAIN:
                self.watch_overflow += 1
                self.node.drop(time.monotonic(), "control_queue_full", "control client too slow; event dropped", "control socket")
            else:
                raise

    # ------------------------------------------------------------------ loop
    def _drain(self, sock: zmq.Socket, handle) -> None:
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            handle(frames)

    def run(self, node: Node, extra_status: dict) -> None:
        """Poll, hand input to the node, commit the store, then perform the effects.

        Effects of a whole turn are held back until the store is committed:
        an ACK, a reply or an event must never describe data that a crash
        right now would lose (write-ahead).
        """
        self.node = node
        poller = zmq.Poller()
        for sock in (self.router, self.pub, self.sub, self.control):
            poller.register(sock, zmq.POLLIN)
        out: list = []

        def on_router(frames):
            try:
                peer_host = frames[-1].get("Peer-Address")
            except (zmq.ZMQError, AttributeError):
                peer_host = None
            out.extend(node.on_router_frames(time.monotonic(), [f.bytes for f in frames], peer_host))

        def on_sub(frames):
            out.extend(node.on_sub_frames(time.monotonic(), [f.bytes for f in frames]))

        def on_pub(frames):
            out.extend(node.on_subscription(time.monotonic(), frames[0].bytes))

        def on_control(frames):
            if len(frames) != 2:
                node.drop(time.monotonic(), "bad_control", f"control request with {len(frames) - 1} frames", "control socket")
                return
            out.extend(control.handle(node, time.monotonic(), frames[0].bytes, frames[1].bytes, extra_status))

        handlers = {self.router: on_router, self.sub: on_sub, self.pub: on_pub, self.control: on_control}
        next_tick = 0.0
        while self.running:
            now = time.monotonic()
            timeout_ms = max(0, int(min(node.next_deadline(now), max(0.0, next_tick - now)) * 1000))
            for sock, _ in poller.poll(timeout_ms):
                try:
                    self._drain(sock, handlers[sock])
                except Exception:  # a bug must not kill the node: log it and carry on
                    log.exception("error while handling input; continuing")
            now = time.monotonic()
            try:
                if now >= next_tick:
                    next_tick = now + 0.05
                    out.extend(node.tick(now))
                out.extend(node.flush(now))
            except Exception:
                log.exception("error in periodic work; continuing")
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
            if not self.running or stop_requested():
                if not node.stopping:
                    self.apply(node.leave(time.monotonic()))
                break

    def close(self) -> None:
        for sock in (self.router, self.pub, self.sub):
            sock.close(linger=0)
        self.control.close()
        for sock in self.dealers.values():
            sock.close(linger=CLOSE_LINGER_MS)
        self.dealers.clear()
        self.ctx.term()
        try:
            self.home.socket_path.unlink()
        except OSError:
            pass


_stop_flag = False


def stop_requested() -> bool:
    return _stop_flag


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT mean a graceful leave, not a crash (serf #56)."""

    def handler(signum, frame):
        global _stop_flag
        _stop_flag = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
