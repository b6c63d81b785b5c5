"""Helpers for the security tests (test_security*.py, test_control_tcp.py): raw pyzmq sockets as the
attacker, a loopback packet capture, and running a client as another local user (nobody)."""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import socket
import struct
import tempfile
import threading
import time
import traceback
import uuid
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

import p2pctl.cli  # loaded before a test forks a child as nobody, who cannot read site-packages under /root
import p2pctl.client
from conftest import pid_alive, wait_for

HOST = "127.0.0.1"
SEND_TIMEOUT_MS = 10_000  # a blocked raw send fails the test instead of hanging it
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_AUTH)
NOBODY = 65534


# --------------------------------------------------------------------------- helpers


def new_keypair() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def node_keypair(node) -> tuple[str, str]:
    """A node's own keypair, read from its node.key (the test plays that node's thief)."""
    data = json.loads((node.home / "node.key").read_text())
    return data["public"], data["secret"]


def raw_socket(ctx: zmq.Context, kind: int, endpoint: str, server_key: str | None = None, keypair: tuple[str, str] | None = None,
               routing_id: bytes | None = None, monitor: bool = False):
    """A bare pyzmq socket connected to ``endpoint``; a CURVE client when ``server_key`` is given, else plaintext (NULL)."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    if server_key is not None:
        public, secret = keypair or new_keypair()
        s.curve_publickey = public.encode()
        s.curve_secretkey = secret.encode()
        s.curve_serverkey = server_key.encode()
    if routing_id is not None:
        s.setsockopt(zmq.ROUTING_ID, routing_id)
    mon = None
    if monitor:  # a unique address: pyzmq's default one is per fd, and fds of closed sockets are reused
        addr = f"inproc://monitor-{uuid.uuid4().hex}"
        s.monitor(addr, zmq.EVENT_ALL)
        mon = ctx.socket(zmq.PAIR)
        mon.setsockopt(zmq.LINGER, 0)
        mon.connect(addr)
    s.connect(endpoint)
    return (s, mon) if monitor else s


def wait_event(mon: zmq.Socket, wanted: tuple[int, ...], timeout: float = 10.0) -> dict:
    """The first monitor event among ``wanted`` (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        if mon.poll(100):
            ev = recv_monitor_message(mon)
            seen.append(ev["event"])
            if ev["event"] in wanted:
                return ev
    raise AssertionError(f"no monitor event in {wanted} within {timeout}s; saw {seen}")


def router(node) -> str:
    return f"tcp://{HOST}:{node.port}"


def pub(node) -> str:
    return f"tcp://{HOST}:{node.info['address']['pub_port']}"


def key_port(node) -> int:
    return node.info["key_port"]


def link(a, b) -> None:
    """b connects to a by HOST PORT (fetching and pinning a's key); both see each other alive."""
    b.ctl("connect", HOST, str(a.port))
    wait_for(lambda: a.name in b.alive_names(), what=f"{b.name} to see {a.name} alive")
    wait_for(lambda: b.name in a.alive_names(), what=f"{a.name} to see {b.name} alive")


def inbox_texts(node) -> list[str]:
    return [m["text"] for m in node.call("inbox")]


def dropped(node, kind: str) -> int:
    return node.call("info")["dropped"].get(kind, 0)


def exchange(a, b, tag: str) -> None:
    """A direct message each way and a broadcast each way get through."""
    for src, dst in ((a, b), (b, a)):
        text = f"{tag}: direct {src.name} -> {dst.name}"
        src.ctl("send", dst.name, text)
        wait_for(lambda: text in inbox_texts(dst), what=f"{text!r} in {dst.name}'s inbox")
    for src, dst in ((a, b), (b, a)):
        text = f"{tag}: broadcast from {src.name}"
        # once src's XPUB has seen dst's SUB attach, the broadcast goes straight to it
        wait_for(lambda: any(p["name"] == dst.name and p["subscribed"] for p in src.call("peers")), what=f"{dst.name} subscribed to {src.name}")
        src.ctl("broadcast", text)
        wait_for(lambda: text in inbox_texts(dst), what=f"broadcast {text!r} at {dst.name}")


def peer_ids(node) -> set[str]:
    return {p["id"] for p in node.call("peers")}


def assert_no_tracebacks(*nodes) -> None:
    """Bad input is dropped and counted; it never reaches the loop's catch-all error handler."""
    for node in nodes:
        log = node.log_text()
        assert "Traceback" not in log and "error while handling input" not in log, f"{node.name}'s log:\n{log[-3000:]}"


# --------------------------------------------------------------------------- loopback capture


def _tcp_payload(pkt: bytes, ports: set[int]) -> bytes | None:
    """The TCP payload of a loopback frame (14-byte Ethernet header, IPv4) if either port is ours."""
    if len(pkt) < 34 or pkt[12:14] != b"\x08\x00":
        return None
    ip = pkt[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 6 or len(ip) < ihl + 20:
        return None
    total = struct.unpack("!H", ip[2:4])[0]
    tcp = ip[ihl:total]
    sport, dport = struct.unpack("!HH", tcp[:4])
    if sport not in ports and dport not in ports:
        return None
    return tcp[(tcp[12] >> 4) * 4:]


class LoopbackCapture(threading.Thread):
    """Everything crossing ``lo`` to or from ``ports`` (AF_PACKET: root / CAP_NET_RAW); tcpdump is not needed.

    Bounded: stops when told, after 120 s, or at 64 MB.
    """

    MAX_BYTES = 64 * 1024 * 1024

    def __init__(self, ports: set[int]):
        super().__init__(daemon=True)
        self.ports = set(ports)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.05)
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = threading.Event()

    @classmethod
    def start_or_none(cls, ports: set[int]):
        try:
            cap = cls(ports)
        except (AttributeError, PermissionError, OSError):
            return None  # no AF_PACKET or no CAP_NET_RAW: that part of the test is skipped
        cap.start()
        return cap

    def run(self) -> None:
        deadline = time.monotonic() + 120
        try:
            while not self.done.is_set() and time.monotonic() < deadline and self.size < self.MAX_BYTES:
                try:
                    pkt = self.sock.recv(262144)
                except socket.timeout:
                    continue
                payload = _tcp_payload(pkt, self.ports)
                if payload:
                    self.chunks.append(payload)
                    self.size += len(payload)
        finally:
            self.sock.close()

    def stop(self) -> bytes:
        self.done.set()
        self.join(10)
        return b"".join(self.chunks)


# --------------------------------------------------------------------------- another local user


def _as_nobody(fn, timeout: float = 30.0) -> dict:
    """Run ``fn()`` in a forked child that dropped to uid/gid nobody; return its JSON-able result.

    A crash in the child comes back as {"crash": traceback}.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        status = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = fn()
        except BaseException:
            result = {"crash": traceback.format_exc()}
            status = 1
        try:
            os.write(w, json.dumps(result).encode())
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], 0.1)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, 9)
            raise AssertionError("the child running as nobody did not finish")
    finally:
        os.close(r)
        wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, 10, what="child to exit")
    return json.loads(b"".join(chunks))


def _cli_result(args: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            p2pctl.cli.main(args, standalone_mode=False)
        except SystemExit as e:
            code = e.code
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


def _client_result(home: str) -> dict:
    from p2pctl.client import Client, ClientError

    try:
        with Client(home, timeout_s=3.0) as c:
            return {"ok": True, "result": c.call("info")}
    except ClientError as e:
        return {"ok": False, "type": type(e).__name__, "exit_code": e.exit_code, "message": str(e)}


def _unix_connect(path: str) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return {"connected": True}
    except OSError as e:
        return {"connected": False, "errno": e.errno}
    finally:
        s.close()


@pytest.fixture
def open_base():
    """A base directory any user may traverse (pytest's own tmp dir is 0700), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="p2pd-sec-", dir="/tmp"))
    os.chmod(base, 0o755)
    registry: list = []
    yield base, registry
    for node in registry:
        for pid in node.pids:
            if pid_alive(pid):
                os.kill(pid, 9)
    shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- a raw peer written from PROTOCOL.md


class RawPeer:
    """A minimal third-party peer: its own CURVE key, a ROUTER and an XPUB as CURVE servers, and one
    DEALER to the node whose routing id is its bare node id (as a simple implementation would set it)."""

    def __init__(self, ctx: zmq.Context, node, name: str = "raw"):
        from p2pd.keys import node_id_for

        self.public, self.secret = new_keypair()
        self.id = node_id_for(self.public)
        self.name = name
        self.router = ctx.socket(zmq.ROUTER)
        self.xpub = ctx.socket(zmq.XPUB)
        for s in (self.router, self.xpub):
            s.setsockopt(zmq.LINGER, 0)
            s.curve_server = True
            s.curve_publickey, s.curve_secretkey = self.public.encode(), self.secret.encode()
            s.bind(f"tcp://{HOST}:0")
        self.port = int(self.router.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        self.pub_port = int(self.xpub.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        node_key = node.call("info")["public_key"]
        self.dealer = raw_socket(ctx, zmq.DEALER, router(node), node_key, (self.public, self.secret), self.id.encode())
        self.node = node

    def send(self, type_: str, data: dict | None = None, target: str | None = None) -> None:
        from conftest import enc, envelope

        self.dealer.send(enc(envelope(type_, self.id, data or {}, target=target, name=self.name)))

    def join(self) -> None:
        self.send("JOIN", {"addr": HOST, "port": self.port, "pub_port": self.pub_port, "reply_to": None, "key": self.public})

    def close(self) -> None:
        for s in (self.dealer, self.router, self.xpub):
            s.close(linger=0)
