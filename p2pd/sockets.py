"""The node's listening sockets, opened and configured before the loop starts.

How this works
--------------
`Listeners.open` binds, in this order: the ZAP handler (secure mode; libzmq asks it
whether a CURVE key may in, and the loop answers), the peer ROUTER, the key port
(plaintext REP at peer port + 2: it tells our public key, for trust on first use),
the broadcast XPUB, the LAN beacon socket (with ``discover = "lan"``) and the
control ROUTER (``ipc://<home>/control.sock``, or loopback TCP with a token).
Every TCP listener is a CURVE server unless --insecure, and lets libzmq close
connections that never finish their handshake or stop answering ZMTP PINGs.
A failure is a `StartupError` whose message says what to do.  The sockets are
then the loop's (transport.py): nothing here runs after the start.
"""

from __future__ import annotations

import errno
import os
import socket

import zmq

from . import control
from . import protocol as P
from .home import ControlChoiceError, Home, control_transport

# A PUB drops frames for a subscriber whose queue is full.  10,000 frames
# (about 2.5 MB per subscriber) absorbs bursts; a subscriber that falls
# further behind sees a gap in the broadcast numbers and FETCHes what it
# missed from the origin's store, at its own pace.
PUB_SNDHWM = 10_000
CONTROL_HWM = 10_000


# Inbound connections that are no use are closed by libzmq itself: one that has not finished its
# ZMTP/CURVE handshake after HANDSHAKE_MS (someone holding plain TCP connections open), and one
# whose peer stopped answering ZMTP PINGs for HEARTBEAT_TIMEOUT_MS (a half-open connection after a
# crash or a cut cable).  Each holds a file descriptor and libzmq's buffers until then.  The PINGs
# are not how a peer is found dead (the node's own heartbeats are, on every link): they only reap,
# so they are sparse.  Every 5 s they were about 13 packets a second per node in the ZMQ I/O thread
# (a ROUTER and a PUB with 8 peers each); every 15 s that thread's CPU went 1.10 -> 0.65 ms a second.
HANDSHAKE_MS = 10_000
HEARTBEAT_IVL_MS = 15_000
HEARTBEAT_TIMEOUT_MS = 45_000


def _reap_idle(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)


class StartupError(RuntimeError):
    """The node cannot start; the message says why and what to do."""


def _bind(sock: zmq.Socket, host: str, port: int, what: str, flag: str) -> int:
    endpoint = P.tcp_endpoint(host, port) if port else P.tcp_endpoint(host, 0).rsplit(":", 1)[0] + ":*"
    # IPv6 only for an IPv6 host (``::`` is both families): an IPv4 one binds a plain IPv4 socket,
    # as before the context took IPv6 for the sockets that dial (transport.py).
    sock.setsockopt(zmq.IPV6, 1 if ":" in host else 0)
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


def curve_keypair() -> tuple[str, str]:
    """A new CURVE keypair as Z85 text (public, secret)."""
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def curve_public(secret: str) -> str:
    """The public half of a Z85 CURVE secret key (to check a key file's two halves agree)."""
    return zmq.curve_public(secret.encode("ascii")).decode("ascii")


ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"p2pd"


def curve_server(sock: zmq.Socket, keypair) -> None:
    """A CURVE server with our keypair, asking ZAP (domain "p2pd") about every client (none: plaintext)."""
    if keypair is not None:
        sock.curve_secretkey = keypair.secret.encode("ascii")
        sock.curve_publickey = keypair.public.encode("ascii")
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN


def curve_client(sock: zmq.Socket, keypair, server_key: str | None) -> None:
    """A CURVE client of ``server_key`` with our keypair (no keypair or no key: plaintext)."""
    if keypair is not None and server_key is not None:
        sock.curve_secretkey = keypair.secret.encode("ascii")
        sock.curve_publickey = keypair.public.encode("ascii")
        sock.curve_serverkey = server_key.encode("ascii")


class Listeners:
    """The sockets other processes connect to: peer ROUTER, broadcast XPUB, key port, ZAP, control, beacon."""

    def __init__(self, ctx: zmq.Context, home: Home, settings, keypair):
        self.ctx = ctx
        self.home = home
        self.settings = settings
        self.keypair = keypair  # None: --insecure
        self.zap = None
        self.keyport = None
        self.key_port = 0
        self.beacon_sock: socket.socket | None = None
        self._open()

    def _open(self) -> None:
        s = self.settings
        self.max_msg = max_msg = s.max_frame_bytes * 4  # moderately oversized frames are counted, absurd ones cut the link
        if self.keypair is not None:
            # ZAP: libzmq asks this socket whether each CURVE client may in; we answer from the loop.
            self.zap = self.ctx.socket(zmq.REP)
            self.zap.linger = 0
            self.zap.bind(ZAP_ENDPOINT)
        self.router = self.ctx.socket(zmq.ROUTER)
        curve_server(self.router, self.keypair)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 0)  # never let a newcomer displace a live pipe (see the top)
        self.router.setsockopt(zmq.MAXMSGSIZE, max_msg)
        _reap_idle(self.router)
        self.router.setsockopt(zmq.LINGER, 0)
        self.port = _bind(self.router, s.host, s.port, "peer", "--port")
        if self.keypair is not None:
            # Plaintext, answers only "what is your key?": lets `connect HOST PORT` work by trust on first use.
            self.keyport = self.ctx.socket(zmq.REP)
            self.keyport.linger = 0
            self.keyport.setsockopt(zmq.MAXMSGSIZE, 1024)
            _reap_idle(self.keyport)
            if s.key_port is not None:
                self.key_port = _bind(self.keyport, s.host, s.key_port, "key", "--key-port")
            else:  # by convention at peer port + 2, so `connect HOST PORT` can find it
                for attempt in range(1, 21):
                    try:
                        self.key_port = _bind(self.keyport, s.host, self.port + 2, "key", "--key-port (default: port+2)")
                        break
                    except StartupError:
                        if s.port or attempt == 20:
                            raise
                        # --port 0: the OS gave us a port whose +2 is taken; ask for another
                        self.router.unbind(self.router.getsockopt_string(zmq.LAST_ENDPOINT))
                        self.port = _bind(self.router, s.host, 0, "peer", "--port")

        self.pub = self.ctx.socket(zmq.XPUB)
        curve_server(self.pub, self.keypair)
        self.pub.setsockopt(zmq.XPUB_VERBOSER, 1)
        self.pub.setsockopt(zmq.SNDHWM, PUB_SNDHWM)
        self.pub.setsockopt(zmq.LINGER, 0)
        _reap_idle(self.pub)
        self.pub_port = _bind(self.pub, s.host, s.effective_pub_port, "broadcast", "--pub-port")
        if s.discover == "lan":
            self._open_beacon_socket()

        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.ROUTER_MANDATORY, 1)  # tells us when a watcher has gone
        self.control.setsockopt(zmq.SNDHWM, CONTROL_HWM)
        self.control.setsockopt(zmq.LINGER, 500)  # the reply to `stop` must get out
        self.control_token: str | None = None
        self.control_endpoint = self.home.control_endpoint
        try:
            kind = control_transport(zmq.has("ipc"))
        except ControlChoiceError as e:
            raise StartupError(str(e)) from None
        sock_path = self.home.socket_path
        try:
            sock_path.unlink()  # we hold the home's lock, so any socket file here is stale
        except FileNotFoundError:
            pass
        self.home.remove_control_files()  # stale too
        if kind == "tcp":
            self._bind_control_tcp()
        else:
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

    def _bind_control_tcp(self) -> None:
        """Loopback only, on a port the OS picks; every request must carry a fresh random token."""
        self.control.setsockopt(zmq.MAXMSGSIZE, 2 * control.MAX_REQUEST_BYTES)  # anyone local may connect: bound what they send
        self.control.setsockopt(zmq.IPV6, 0)  # 127.0.0.1 as such, not ::ffff:127.0.0.1 (the client reads the endpoint)
        try:
            self.control.bind("tcp://127.0.0.1:*")
        except zmq.ZMQError as e:
            raise StartupError(f"cannot bind the control socket to tcp://127.0.0.1: {e.strerror}") from None
        self.control_endpoint = self.control.getsockopt_string(zmq.LAST_ENDPOINT)
        self.control_token = os.urandom(32).hex()
        try:
            self.home.write_control_files(self.control_endpoint, self.control_token)
        except OSError as e:
            raise StartupError(f"cannot write the control token to {self.home.path}: {e}") from None

    def _open_beacon_socket(self) -> None:
        """UDP on discover_port, all interfaces (broadcasts reach only a socket bound to any address);
        shared with other nodes on this host (SO_REUSEADDR/SO_REUSEPORT), so each hears every beacon."""
        s = self.settings
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind(("", s.discover_port))
        except OSError as e:
            sock.close()
            raise StartupError(f"cannot listen for LAN beacons on UDP port {s.discover_port}: {e.strerror}; "
                               f"choose another with --discover-port (every node of the LAN must use the same)") from None
        sock.setblocking(False)
        self.beacon_sock = sock


def link_routing_id(node_id: str) -> bytes:
    """The routing id of one DEALER: our node id, "/", 16 random hex digits (docs/PROTOCOL.md 2)."""
    return f"{node_id}/{os.urandom(8).hex()}".encode()
