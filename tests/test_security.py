"""Security, end to end: real daemons on 127.0.0.1, raw pyzmq as the attacker.

What is checked (docs/PROTOCOL.md, "Security"):

* links are CURVE: a plaintext (NULL mechanism) client gets nothing through,
  and a message text never crosses loopback in clear (when we may capture);
* allowlist mode: an unknown key can neither link, subscribe, nor deliver,
  and `p2pctl trust add` lets it in at once;
* a frame whose CURVE key does not own its claimed sender_id is "spoofed";
* a changed key at a pinned address is refused until `p2pctl known forget`;
* another local user cannot use the control socket (exit 5, no traceback);
* a bounded live fuzz of the peer and key ports leaves the node serving;
* ``--insecure`` nodes work together and fail fast, clearly, against secure ones;
* the per-peer rate limit drops frames yet every message arrives exactly once;
* `p2pd keygen`.

Waiting is always "poll until a deadline" (conftest.wait_for); the few
bounded waits that prove something did *not* happen are commented as such.
"""

from __future__ import annotations

import io
import json
import os
import random
import select
import shutil
import socket
import stat
import struct
import subprocess
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
from conftest import P2PD, Node, enc, envelope, pid_alive, wait_for
from p2pd import exitcodes
from p2pd.keys import node_id_for

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


# --------------------------------------------------------------------------- 1. traffic is CURVE


def test_links_are_curve_and_plaintext_clients_get_nothing_through(make_node, zctx):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    ports = {alice.port, alice.port + 1, key_port(alice), bob.port, bob.port + 1, key_port(bob)}
    capture = LoopbackCapture.start_or_none(ports)
    link(alice, bob)

    for node in (alice, bob):
        info = node.ctl_json("info")
        assert info["security"] == "curve", info
        assert info["allowlist"] is False
        assert node_id_for(info["public_key"]) == info["id"] == node.id
        assert info["connect"] == f"p2p://{info['public_key']}@{HOST}:{node.port}"

    secret_direct = f"direct-{uuid.uuid4().hex}"
    secret_bcast = f"broadcast-{uuid.uuid4().hex}"
    bob.ctl("send", "alice", secret_direct)
    wait_for(lambda: secret_direct in inbox_texts(alice), what="bob's direct message")
    wait_for(lambda: alice.peers()["bob"]["subscribed"], what="bob subscribed to alice")
    alice.ctl("broadcast", secret_bcast)
    wait_for(lambda: secret_bcast in inbox_texts(bob), what="alice's broadcast")
    if capture is not None:
        seen = capture.stop()
        alice_key = alice.call("info")["public_key"]
        # the capture works: the plaintext key port's answer (TOFU) is in it, and so is the CURVE greeting
        assert alice_key.encode() in seen, "capture saw no key-port reply: it is not capturing"
        assert b"CURVE" in seen
        assert secret_direct.encode() not in seen, "a direct message crossed loopback in plaintext"
        assert secret_bcast.encode() not in seen, "a broadcast crossed loopback in plaintext"
        assert b"sender_id" not in seen, "an envelope crossed loopback in plaintext"

    # ---- a plaintext client on alice's ROUTER: its handshake fails and nothing reaches the node
    before = alice.call("info")
    peers_before = peer_ids(alice)
    mallory_id = "mallory-plaintext-01"
    dealer, mon = raw_socket(zctx, zmq.DEALER, router(alice), routing_id=mallory_id.encode(), monitor=True)
    join = {"addr": HOST, "port": 1, "pub_port": 2, "reply_to": None}
    dealer.send(enc(envelope("JOIN", mallory_id, join)))
    dealer.send(enc(envelope("MESSAGE", mallory_id, {"text": "plaintext hello"}, target=alice.id)))
    wait_event(mon, HANDSHAKE_FAILED)  # mechanism mismatch: NULL against CURVE (alice hangs up)
    # and a plaintext SUB on alice's PUB
    sub, sub_mon = raw_socket(zctx, zmq.SUB, pub(alice), monitor=True)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    wait_event(sub_mon, HANDSHAKE_FAILED)
    # alice saw the failed handshakes (counted), nothing more
    wait_for(lambda: dropped(alice, "handshake_failed") > before["dropped"].get("handshake_failed", 0), what="handshake_failed counted")

    # the CURVE peer keeps working, and its traffic passes after mallory's
    marker = f"after-plaintext-{uuid.uuid4().hex}"
    bob.ctl("send", "alice", marker)
    wait_for(lambda: marker in inbox_texts(alice), what="bob's message after the plaintext client")
    alice.ctl("broadcast", marker + "-b")
    wait_for(lambda: marker + "-b" in inbox_texts(bob), what="alice's broadcast after the plaintext client")
    assert sub.poll(0) == 0, "a plaintext SUB received a broadcast"

    after = alice.call("info")
    assert "plaintext hello" not in inbox_texts(alice)
    assert peer_ids(alice) == peers_before == {bob.id}
    # nothing from mallory reached the decoder: the only new drops are failed handshakes
    new_drops = {k: v - before["dropped"].get(k, 0) for k, v in after["dropped"].items() if v != before["dropped"].get(k, 0)}
    assert set(new_drops) == {"handshake_failed"}, new_drops
    assert after["messages_in"] == before["messages_in"] + 1

    # control: the same kind of frame from a CURVE client with its own key does reach the node (dropped
    # there as not_linked: it never JOINed) - so "nothing got through" above is the handshake's doing
    public, secret = new_keypair()
    curve_id = node_id_for(public)
    cdealer = raw_socket(zctx, zmq.DEALER, router(alice), alice.call("info")["public_key"], (public, secret), curve_id.encode())
    cdealer.send(enc(envelope("MESSAGE", curve_id, {"text": "curve hello"}, target=alice.id)))
    wait_for(lambda: dropped(alice, "not_linked") == before["dropped"].get("not_linked", 0) + 1, what="the CURVE client's frame counted")
    assert_no_tracebacks(alice, bob)


# --------------------------------------------------------------------------- 2. allowlist


def test_allowlist_keeps_unknown_keys_out_until_trusted(make_node, zctx):
    alice, bob, carol = make_node("alice"), make_node("bob"), make_node("carol")
    for n in (alice, bob, carol):
        n.start()
    alice_key = alice.call("info")["public_key"]
    bob_key, carol_key = bob.call("info")["public_key"], carol.call("info")["public_key"]

    out = alice.ctl("trust", "add", bob_key, "bob's laptop").stdout
    assert bob_key in out
    listed = alice.ctl_json("trust", "list")
    assert listed["allowlist"] is True
    assert [(k["key"], k["id"], k["comment"]) for k in listed["keys"]] == [(bob_key, bob.id, "bob's laptop")]
    assert alice.ctl_json("info")["allowlist"] is True
    assert (alice.home / "authorized_keys").read_text().split() == [bob_key, "bob's", "laptop"]

    link(alice, bob)  # bob is allowed
    unauthorized0 = dropped(alice, "unauthorized")

    # carol cannot link: her CURVE handshake is refused by ZAP; the connect fails in bounded time
    t0 = time.monotonic()
    res = carol.ctl("--timeout", "2", "connect", HOST, str(alice.port), check=False)
    assert res.returncode == exitcodes.TIMEOUT, (res.returncode, res.stderr)
    assert time.monotonic() - t0 < 10
    wait_for(lambda: dropped(alice, "unauthorized") > unauthorized0, what="carol's key counted as unauthorized")
    assert carol.id not in peer_ids(alice)
    assert alice.id not in peer_ids(carol) or carol.peers()["alice"]["state"] != "alive"
    # alice will not dial carol either
    res = alice.ctl("connect", HOST, str(carol.port), check=False)
    assert res.returncode == exitcodes.FAILED, (res.returncode, res.stderr)
    assert "authorized_keys" in res.stderr and "p2pctl trust add" in res.stderr

    # carol's key on a raw SUB of alice's PUB: refused (AUTH), so it cannot listen in
    sub, sub_mon = raw_socket(zctx, zmq.SUB, pub(alice), alice_key, node_keypair(carol), monitor=True)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    assert wait_event(sub_mon, HANDSHAKE_FAILED)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    # carol's key on a raw DEALER with her id: a MESSAGE is never delivered
    dealer, dealer_mon = raw_socket(zctx, zmq.DEALER, router(alice), alice_key, node_keypair(carol), carol.id.encode(), monitor=True)
    join = {"addr": HOST, "port": carol.port, "pub_port": carol.info["address"]["pub_port"], "reply_to": None, "key": carol_key}
    dealer.send(enc(envelope("JOIN", carol.id, join, name="carol")))
    dealer.send(enc(envelope("MESSAGE", carol.id, {"text": "carol sneaks in"}, target=alice.id, name="carol")))
    assert wait_event(dealer_mon, HANDSHAKE_FAILED)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    dealer.close(linger=0)  # its queued frames must not be delivered once carol is trusted below

    secret = f"members only {uuid.uuid4().hex}"
    alice.ctl("broadcast", secret)
    wait_for(lambda: secret in inbox_texts(bob), what="alice's broadcast at bob")
    marker = f"bob after carol {uuid.uuid4().hex}"
    bob.ctl("send", "alice", marker)
    wait_for(lambda: marker in inbox_texts(alice), what="bob's message")
    assert "carol sneaks in" not in inbox_texts(alice)
    assert secret not in inbox_texts(carol)
    assert sub.poll(0) == 0, "carol's SUB received a broadcast while not authorized"
    assert carol.id not in peer_ids(alice)
    info = alice.ctl_json("info")
    assert info["dropped"].get("unauthorized", 0) >= 3, info["dropped"]  # carol's node, SUB and DEALER
    assert "spoofed" not in info["dropped"] and "not_linked" not in info["dropped"], info["dropped"]

    # trusted at once, without a restart
    alice.ctl("trust", "add", carol_key, "carol")
    assert {k["key"] for k in alice.ctl_json("trust", "list")["keys"]} == {bob_key, carol_key}
    link(alice, carol)
    exchange(alice, carol, "after trust add")
    # a SUB with carol's key is now let in (ZeroMQ does not retry a handshake that ZAP refused: a new one)
    sub.close(linger=0)
    sub, sub_mon = raw_socket(zctx, zmq.SUB, pub(alice), alice_key, node_keypair(carol), monitor=True)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    wait_event(sub_mon, (zmq.EVENT_HANDSHAKE_SUCCEEDED,))
    got = None
    for i in range(50):  # bounded: a new subscription may miss the first broadcasts (slow joiner)
        alice.ctl("broadcast", f"to carol's sub {i}")
        if sub.poll(200):
            got = json.loads(sub.recv())
            break
    assert got is not None and got["sender_id"] == alice.id and got["type"] == "BROADCAST"

    # and removing the key shuts carol out again for new connections
    alice.ctl("trust", "remove", carol.id)
    assert {k["key"] for k in alice.ctl_json("trust", "list")["keys"]} == {bob_key}
    n = dropped(alice, "unauthorized")
    _, mon2 = raw_socket(zctx, zmq.DEALER, router(alice), alice_key, node_keypair(carol), carol.id.encode(), monitor=True)
    assert wait_event(mon2, HANDSHAKE_FAILED)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    wait_for(lambda: dropped(alice, "unauthorized") > n, what="carol refused again")
    assert_no_tracebacks(alice, bob, carol)


# --------------------------------------------------------------------------- 3. spoofed sender_id


def test_frames_claiming_another_nodes_id_are_dropped_as_spoofed(make_node, zctx):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    link(alice, bob)
    alice_key = alice.call("info")["public_key"]
    before = alice.call("info")["dropped"]

    # mallory: a valid CURVE key of her own, but bob's routing id and bob's sender_id
    forged = f"forged as bob {uuid.uuid4().hex}"
    spoofer = raw_socket(zctx, zmq.DEALER, router(alice), alice_key, routing_id=bob.id.encode())
    spoofer.send(enc(envelope("MESSAGE", bob.id, {"text": forged}, target=alice.id, name="bob")))
    wait_for(lambda: dropped(alice, "spoofed") == before.get("spoofed", 0) + 1, what="the forged frame counted as spoofed")
    spoofer.close(linger=0)
    assert forged not in inbox_texts(alice)
    assert "spoofed" in alice.log_text() and "claims sender" in alice.log_text()

    # bob himself still gets through (his frames carry his own key).  Mallory's connection took over
    # bob's routing id at alice's ROUTER (ROUTER_HANDOVER), leaving bob's connection open but unread:
    # alice loses bob, re-JOINs him, and bob then opens a fresh link - the outbox resends the message.
    marker = f"real bob {uuid.uuid4().hex}"
    bob.ctl("send", "alice", marker)
    wait_for(lambda: marker in inbox_texts(alice), timeout=20, what="the real bob's message")
    assert forged not in inbox_texts(alice)
    assert {m["text"]: m["sender_id"] for m in alice.call("inbox")}[marker] == bob.id

    # control: an honest raw CURVE peer, id derived from its key, JOINs and is accepted -
    # so the drop above is the key/id check, not "raw clients never get in"
    public, secret = new_keypair()
    honest_id = node_id_for(public)
    own_router = zctx.socket(zmq.ROUTER)
    own_xpub = zctx.socket(zmq.XPUB)
    for s in (own_router, own_xpub):  # CURVE servers, so that alice's link back handshakes
        s.setsockopt(zmq.LINGER, 0)
        s.curve_server = True
        s.curve_publickey, s.curve_secretkey = public.encode(), secret.encode()
        s.bind(f"tcp://{HOST}:0")
    rport = int(own_router.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
    pport = int(own_xpub.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
    honest = raw_socket(zctx, zmq.DEALER, router(alice), alice_key, (public, secret), honest_id.encode())
    honest.send(enc(envelope("JOIN", honest_id, {"addr": HOST, "port": rport, "pub_port": pport, "reply_to": None, "key": public}, name="honest")))
    text = f"honest raw peer {uuid.uuid4().hex}"
    honest.send(enc(envelope("MESSAGE", honest_id, {"text": text}, target=alice.id, name="honest")))
    wait_for(lambda: text in inbox_texts(alice), what="the honest raw peer's message")
    assert honest_id in peer_ids(alice)
    # alice links back to it with its key: her JOIN reply reaches its ROUTER over CURVE
    assert own_router.poll(10_000), "alice did not link back to the honest raw peer"
    rid, frame = own_router.recv_multipart()
    reply = json.loads(frame)
    assert rid == alice.id.encode() and reply["type"] == "JOIN" and reply["sender_id"] == alice.id

    # the honest peer, once linked, still cannot speak for bob (its routing id is its own: bad_routing_id,
    # which is checked before the key; so use bob's routing id on a second connection with its key)
    spoof2 = raw_socket(zctx, zmq.DEALER, router(alice), alice_key, (public, secret), bob.id.encode())
    spoof2.send(enc(envelope("MESSAGE", bob.id, {"text": forged + " 2"}, target=alice.id, name="bob")))
    wait_for(lambda: dropped(alice, "spoofed") == before.get("spoofed", 0) + 2, what="the second forged frame counted")
    spoof2.close(linger=0)
    assert forged + " 2" not in inbox_texts(alice)
    for s in (honest, own_router, own_xpub):
        s.close(linger=0)
    marker = f"real bob again {uuid.uuid4().hex}"
    bob.ctl("send", "alice", marker)
    wait_for(lambda: marker in inbox_texts(alice), timeout=20, what="the real bob's message after the second forgery")
    assert_no_tracebacks(alice, bob)


# --------------------------------------------------------------------------- 4. changed key at a pinned address


def test_changed_key_for_a_pinned_address_is_refused_until_forgotten(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    old_bob_id, old_bob_key = bob.id, bob.call("info")["public_key"]
    alice.ctl("connect", HOST, str(bob.port))
    wait_for(lambda: alice.alive_names() == {"bob"}, what="alice linked to bob")
    address = f"{HOST}:{bob.port}"
    pinned = alice.ctl_json("known", "list")
    assert pinned == [{"address": address, "key": old_bob_key, "id": old_bob_id}]
    assert address in (alice.home / "known_peers").read_text()

    # bob gets a new identity at the same address
    port = bob.port
    assert bob.stop().returncode == 0
    (bob.home / "node.key").rename(bob.home / "node.key.old")
    bob.start(port=port)
    assert bob.port == port and bob.id != old_bob_id
    new_bob_key = bob.call("info")["public_key"]
    assert new_bob_key != old_bob_key
    # the new bob dials alice from its peer book: refused too, or alice would link back to the pinned address
    wait_for(lambda: dropped(alice, "key_changed") > 0, what="the new bob's JOIN refused at the pinned address")
    assert bob.id not in peer_ids(alice)

    res = alice.ctl("connect", HOST, str(port), check=False)
    assert res.returncode == exitcodes.FAILED, (res.returncode, res.stdout, res.stderr)
    assert "changed" in res.stderr and f"p2pctl known forget {address}" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    js = json.loads(alice.ctl("--json", "connect", HOST, str(port), check=False).stdout)
    assert js["ok"] is False and js["code"] == "key_changed"
    # the p2p:// string with the new key is refused the same way
    res = alice.ctl("connect", f"p2p://{new_bob_key}@{address}", check=False)
    assert res.returncode == exitcodes.FAILED and "changed" in res.stderr, res.stderr
    assert alice.ctl_json("known", "list") == pinned
    assert bob.id not in peer_ids(alice)
    # nor does gossip bring it in: carol links to the new bob, then to alice, and her PEERS (sent at
    # link-up, before her message on the same link) names the new bob at the pinned address
    carol = make_node("carol")
    carol.start()
    link(bob, carol)
    link(alice, carol)
    marker = f"carol after gossip {uuid.uuid4().hex}"
    carol.ctl("send", "alice", marker)
    wait_for(lambda: marker in inbox_texts(alice), what="carol's message")
    assert bob.id not in peer_ids(alice)
    assert peer_ids(carol) == {alice.id, bob.id}

    alice.ctl("known", "forget", address)
    assert alice.ctl_json("known", "list") == []
    alice.ctl("connect", HOST, str(port))
    wait_for(lambda: bob.id in {p["id"] for p in alice.call("peers") if p["state"] == "alive"}, what="alice linked to the new bob")
    assert alice.ctl_json("known", "list") == [{"address": address, "key": new_bob_key, "id": bob.id}]
    text = f"hello new bob {uuid.uuid4().hex}"
    alice.ctl("send", bob.id, text)
    wait_for(lambda: text in inbox_texts(bob), what="message to the new bob")
    assert_no_tracebacks(alice, bob, carol)


# --------------------------------------------------------------------------- 5. the control socket is the owner's


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


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to drop to another user")
def test_another_local_user_cannot_use_the_control_socket(open_base):
    base, registry = open_base
    alice = Node(base, "alice", registry)
    alice.start()
    home = alice.home
    sock_path = Path(alice.info["control"].removeprefix("ipc://"))

    # the files that matter are the owner's only
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(home / "node.key").st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)

    # another user: a clean "permission denied" naming the path, exit 5, no traceback
    res = _as_nobody(lambda: _cli_result(["--home", str(home), "info"]))
    assert "crash" not in res, res.get("crash")
    assert res["code"] == exitcodes.PERMISSION, res
    assert "permission denied" in res["err"].lower() and str(home) in res["err"], res
    assert "Traceback" not in res["err"] and res["out"] == ""
    res = _as_nobody(lambda: _client_result(str(home)))
    assert "crash" not in res, res.get("crash")
    assert res["ok"] is False and res["type"] == "PermissionDenied" and res["exit_code"] == exitcodes.PERMISSION, res

    # even with the home opened up, the socket itself (0600) keeps them out
    os.chmod(home, 0o711)
    try:
        res = _as_nobody(lambda: _unix_connect(str(sock_path)))
        assert res == {"connected": False, "errno": 13}, res  # EACCES from the kernel
        res = _as_nobody(lambda: _cli_result(["--home", str(home), "--json", "info"]))
        assert "crash" not in res, res.get("crash")
        assert res["code"] == exitcodes.PERMISSION, res
        assert json.loads(res["out"])["code"] == "permission_denied"
        assert "permission denied" in res["err"].lower() and str(sock_path) in res["err"], res
    finally:
        os.chmod(home, 0o700)

    # the owner still can, and the daemon did not notice anything
    assert alice.ctl_json("info")["id"] == alice.id
    assert pid_alive(alice.pid)


# --------------------------------------------------------------------------- 6. bounded live fuzz


def _random_value(rng: random.Random, depth: int = 0):
    kinds = ["none", "bool", "int", "float", "str", "bigint"] + (["list", "dict"] if depth < 3 else [])
    k = rng.choice(kinds)
    if k == "none":
        return None
    if k == "bool":
        return rng.random() < 0.5
    if k == "int":
        return rng.randint(-5, 70000)
    if k == "bigint":
        return rng.choice([2**53 + 1, -(2**63), 10**30])
    if k == "float":
        return rng.choice([0.5, -1e300, 1e-9, 3.14])
    if k == "str":
        alphabet = "abcXYZ019 _-.:/{}\"'\\\x00\x07é€🙂"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
    if k == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_random_value(rng, 3) if rng.random() < 0.2 else rng.choice(["text", "seq", "base", "addr", "port", "peers", "upto", "from", "x"]):
            _random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


FUZZ_TYPES = ["JOIN", "MESSAGE", "BROADCAST", "PEERS", "PING", "PONG", "ACK", "FETCH", "join", "", "LEAVEX", 7]
FIELDS = ["v", "id", "type", "sender_id", "sender_name", "timestamp", "data", "target_id"]


def _fuzz_frame(rng: random.Random, own_id: str, other_ids: list[str]) -> bytes:
    roll = rng.random()
    if roll < 0.2:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
    if roll < 0.35:
        return json.dumps(_random_value(rng), ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    if roll < 0.38:  # deep nesting, big numbers, almost-JSON
        return rng.choice([b"[" * 50_000, b'{"v":1' * 1000, b'{"v": 1e999999}', b"\xef\xbb\xbf{}", b'{"v":1,"v":2}'])
    if roll < 0.40:  # above max_frame_bytes (256 KB) but under the link-cutting 4x
        return b'{"v": 1, "pad": "' + b"x" * rng.randint(262_200, 400_000) + b'"}'
    # an envelope, mostly well-formed, one to three fields spoiled; never LEAVE (silently ignored when
    # unknown), and a JOIN never carries a key, so it is refused as bad_key (no link is ever made)
    sender = own_id if rng.random() < 0.7 else rng.choice(other_ids)
    type_ = rng.choice(FUZZ_TYPES[:8])
    valid_data = {"JOIN": {"addr": HOST, "port": rng.randint(1, 65535), "pub_port": rng.randint(1, 65535), "reply_to": None},
                  "PONG": {"ping_id": "p1"}, "ACK": {"upto": 3}, "FETCH": {"from": 1, "to": 2}, "PEERS": {"peers": []}}.get(type_, {"text": "hi"})
    env = envelope(type_, sender, _random_value(rng, 1) if rng.random() < 0.4 else valid_data,
                   target=rng.choice([None, own_id, *other_ids]), name="m" if rng.random() < 0.8 else rng.choice(["x" * 65, "\n"]))
    for _ in range(rng.randint(0, 3)):
        f = rng.choice(FIELDS)
        if rng.random() < 0.3:
            env.pop(f, None)
        else:
            env[f] = rng.choice(FUZZ_TYPES) if f == "type" else _random_value(rng)
    if env.get("type") == "JOIN" and isinstance(env.get("data"), dict):
        env["data"].pop("key", None)
    if env.get("type") == "LEAVE":
        env["type"] = "LEAVEX"
    return json.dumps(env).encode()


def test_bounded_live_fuzz_of_peer_and_key_ports(make_node, zctx):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    link(alice, bob)
    alice_key = alice.call("info")["public_key"]
    rng = random.Random(20261125)
    public, secret = new_keypair()
    own_id = node_id_for(public)
    before = alice.call("info")

    # N frames (1-3 parts each) over CURVE, routing id = the client's own key-derived id, so
    # well-formed envelopes from it get past the key check to the node's decisions
    n = 0  # envelopes: a message of several parts is a batch, each part judged on its own
    dealer = raw_socket(zctx, zmq.DEALER, router(alice), alice_key, (public, secret), own_id.encode())
    for _ in range(2000):
        parts = [_fuzz_frame(rng, own_id, [bob.id, alice.id, "x"]) for _ in range(rng.choices([1, 2, 3], [8, 1, 1])[0])]
        dealer.send_multipart(parts)
        n += len(parts)
    # every envelope is refused and counted exactly once (none is LEAVE, none JOINs with a key)
    wait_for(lambda: alice.call("info")["dropped_total"] >= before["dropped_total"] + n, timeout=60, what=f"{n} fuzz frames counted")
    after = alice.call("info")
    assert after["dropped_total"] == before["dropped_total"] + n, after["dropped"]
    assert own_id not in peer_ids(alice)
    assert peer_ids(alice) == {bob.id}
    dealer.close(linger=0)

    # a few hundred requests on the plaintext key port (a REP): random frames under its 1 KB limit,
    # with and without a REQ delimiter.  Every message with an empty frame before its last one is a
    # request (the frames before the empty one are its envelope) and gets exactly one answer: the key.
    kp = f"tcp://{HOST}:{key_port(alice)}"
    raw = raw_socket(zctx, zmq.DEALER, kp)
    expected = 0
    for _ in range(250):
        body = [_fuzz_frame(rng, own_id, [bob.id])[:900] if rng.random() < 0.5 else bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
                for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.6:
            body = [b"", *body]
        expected += any(f == b"" for f in body[:-1])
        raw.send_multipart(body)
    replies = []
    while len(replies) < expected and raw.poll(5000):  # bounded: stops at 5 s of silence
        replies.append(raw.recv_multipart())
    assert len(replies) == expected, (len(replies), expected)
    for r in replies:
        assert r[-2] == b"" and json.loads(r[-1]) == {"key": alice_key, "id": alice.id, "name": "alice"}
    raw.close(linger=0)
    # over the limit: the key port hangs up on that connection, and carries on
    for size in (1025, 8192, 300_000):
        big, mon = raw_socket(zctx, zmq.DEALER, kp, monitor=True)
        big.send_multipart([b"", b"K" * size])
        wait_event(mon, (zmq.EVENT_DISCONNECTED,))
        big.close(linger=0)
        mon.close(linger=0)
    req = raw_socket(zctx, zmq.REQ, kp)
    req.send(b"KEY")
    assert req.poll(5000), "the key port stopped answering"
    assert json.loads(req.recv())["key"] == alice_key
    req.close(linger=0)

    # alice is up and still talks to a real peer
    assert pid_alive(alice.pid)
    assert alice.alive_names() == {"bob"}
    exchange(alice, bob, "after fuzz")
    assert_no_tracebacks(alice, bob)


# --------------------------------------------------------------------------- 7. --insecure


def test_insecure_nodes_work_together_and_refuse_secure_ones_fast(make_node):
    ins1, ins2, sec = make_node("ins1"), make_node("ins2"), make_node("sec")
    ins1.start("--insecure")
    ins2.start("--insecure")
    sec.start()
    capture = LoopbackCapture.start_or_none({ins1.port, ins1.port + 1, ins2.port, ins2.port + 1})

    for node in (ins1, ins2):
        info = node.ctl_json("info")
        assert info["security"] == "insecure", info
        assert info.get("connect") is None
        assert "INSECURE" in node.log_text()
        assert "insecure" in node.ctl("info").stdout.lower()
    assert "INSECURE" not in sec.log_text()

    ins2.ctl("connect", HOST, str(ins1.port))
    wait_for(lambda: ins1.alive_names() == {"ins2"} and ins2.alive_names() == {"ins1"}, what="the insecure pair linked")
    clear = f"in the clear {uuid.uuid4().hex}"
    ins2.ctl("send", "ins1", clear)
    wait_for(lambda: clear in inbox_texts(ins1), what="insecure message")
    exchange(ins1, ins2, "insecure")
    if capture is not None:
        # the control for test 1's capture: without CURVE the text is there to read
        assert clear.encode() in capture.stop()

    # secure -> insecure: no key port there; fails within --timeout, naming the key port and --insecure
    t0 = time.monotonic()
    res = sec.ctl("--timeout", "2", "connect", HOST, str(ins1.port), check=False)
    took = time.monotonic() - t0
    assert res.returncode == exitcodes.TIMEOUT, (res.returncode, res.stderr)
    assert took < 2 + 4, took
    assert "key port" in res.stderr and "insecure" in res.stderr, res.stderr
    # even with a (made-up) key, a CURVE client cannot handshake with a plaintext node
    public, _ = new_keypair()
    t0 = time.monotonic()
    res = sec.ctl("--timeout", "2", "connect", f"p2p://{public}@{HOST}:{ins1.port}", check=False)
    assert res.returncode == exitcodes.TIMEOUT, (res.returncode, res.stderr)
    assert time.monotonic() - t0 < 2 + 4

    # insecure -> secure: the plaintext handshake is refused; fails within --timeout with exit 4
    t0 = time.monotonic()
    res = ins1.ctl("--timeout", "2", "connect", HOST, str(sec.port), check=False)
    took = time.monotonic() - t0
    assert res.returncode == exitcodes.TIMEOUT, (res.returncode, res.stderr)
    assert took < 2 + 4, took
    assert "insecure" in res.stderr, res.stderr
    wait_for(lambda: dropped(sec, "handshake_failed") > 0, what="the secure node to count the failed handshake")

    for node in (ins1, ins2, sec):
        assert pid_alive(node.pid)
    assert sec.call("peers") == []
    assert {p["name"] for p in ins1.call("peers")} == {"ins2"}
    exchange(ins1, ins2, "insecure after the refusals")
    assert_no_tracebacks(ins1, ins2, sec)


# --------------------------------------------------------------------------- 8. rate limit


def test_a_sender_over_the_rate_limit_is_paced_and_loses_nothing(make_node):
    n, rate, window = 1000, 200, 100
    alice, bob = make_node("alice"), make_node("bob")
    for node in (alice, bob):
        with open(node.home / "p2pd.toml", "a") as f:
            f.write(f"send_window = {window}\n")
    with open(bob.home / "p2pd.toml", "a") as f:
        f.write(f"max_msgs_per_s = {rate}\n")  # frames bob accepts per peer per second
    alice.start()
    bob.start()
    link(alice, bob)

    texts = [f"flood {i:05d}" for i in range(n)]
    t0 = time.monotonic()
    with alice.client() as c:
        c.send_many("bob", texts)
    wait_for(lambda: bob.call("info")["messages_in"] >= n, timeout=60, interval=0.2, what=f"all {n} messages at bob")
    # the limit held: past the one-second burst and one window taken on credit, bob took at
    # most `rate` frames a second from alice (it held its ACKs until the bucket refilled)
    assert time.monotonic() - t0 >= (n - rate - window) / rate * 0.9
    wait_for(lambda: alice.call("info")["outbox_pending"] == 0, timeout=30, what="alice's outbox to drain")

    got = [m["text"] for m in bob.call("history", peer="alice", limit=0) if m["direction"] == "in"]
    assert got == texts, (len(got), len(set(got)))  # every one, exactly once, in order
    info = bob.ctl_json("info")
    assert info["messages_in"] == n
    # paced, not dropped: nothing was thrown away and sent again
    assert info.get("out_of_order_dropped", 0) == 0 and info.get("duplicates_dropped", 0) == 0
    # (a PEERS gossip that came while alice was in debt may have been dropped: it is repeated)
    assert info["dropped"].get("rate_limited", 0) <= 3, info["dropped"]
    # the limit did not cost the link
    assert bob.alive_names() == {"alice"} and alice.alive_names() == {"bob"}
    assert "rate_limited" not in alice.call("info")["dropped"]
    assert_no_tracebacks(alice, bob)


# --------------------------------------------------------------------------- 9. p2pd keygen


def test_keygen_creates_a_private_key_and_refuses_to_overwrite_it(make_node, tmp_path):
    home = tmp_path / "fresh"

    def keygen(*args):
        return subprocess.run([*P2PD, "keygen", "--home", str(home), *args], capture_output=True, text=True, timeout=60)

    res = keygen()
    assert res.returncode == 0, res.stderr
    key_file = home / "node.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    data = json.loads(key_file.read_text())
    first_id = node_id_for(data["public"])
    assert first_id in res.stdout and data["public"] in res.stdout

    res = keygen()
    assert res.returncode == exitcodes.FAILED, (res.returncode, res.stderr)
    assert "--force" in res.stderr and str(key_file) in res.stderr
    assert json.loads(key_file.read_text()) == data  # untouched

    res = keygen("--force", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["id"] != first_id and out["id"] == node_id_for(out["public_key"])
    assert json.loads(key_file.read_text())["public"] == out["public_key"]
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600

    # the daemon uses that key, and keygen refuses to change it under a running daemon
    node = make_node("keyed")
    node.home = home
    (home / "p2pd.toml").write_text((tmp_path / "keyed" / "p2pd.toml").read_text())
    node.start()
    assert node.id == out["id"]
    assert node.call("info")["public_key"] == out["public_key"]
    res = keygen("--force")
    assert res.returncode == exitcodes.CONFLICT, (res.returncode, res.stderr)
    assert "running" in res.stderr
    assert json.loads(key_file.read_text())["public"] == out["public_key"]
    assert pid_alive(node.pid)
