"""Attacks on a node's ports by someone who can reach them (docs/SECURITY.md, "A hostile network"):
each test performs the attack against real daemons on loopback and checks that the node stays up,
keeps its links and counts what it refused."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import threading
import time
import uuid

import pytest
import zmq

from conftest import enc, envelope, pid_alive, wait_for
from sechelp import HOST, RawPeer, assert_no_tracebacks, dropped, inbox_texts, link, new_keypair, raw_socket, router

# --------------------------------------------------------------------------- routing-id takeover


def _claim_routing_ids(zctx, node, rids: list[bytes], claimed_id: str, stop: threading.Event, counter: list, limit_s: float = 15.0) -> None:
    """Mallory, in a loop: a fresh CURVE key of her own, a connection to ``node``'s ROUTER under each
    routing id in ``rids``, one PING in ``claimed_id``'s name on it.  Bounded in time and count."""
    node_key = node.call("info")["public_key"]
    deadline = time.monotonic() + limit_s
    while not stop.is_set() and time.monotonic() < deadline and counter[0] < 300:
        for rid in rids:
            s = raw_socket(zctx, zmq.DEALER, router(node), node_key, new_keypair(), rid)
            s.send(enc(envelope("PING", claimed_id, target=node.id)))
            s.setsockopt(zmq.LINGER, 300)  # let the frame out before the close
            s.close()
            counter[0] += 1
        stop.wait(0.02)


def test_a_stranger_claiming_a_linked_peers_routing_id_cannot_cut_or_disturb_its_link(make_node, zctx):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    link(bob, alice)  # alice dialled bob: alice's DEALER -> bob's ROUTER carries alice's messages
    raw = RawPeer(zctx, bob, "thirdparty")  # a peer whose DEALER uses its bare node id as routing id
    raw.join()
    wait_for(lambda: any(p["id"] == raw.id for p in bob.call("peers")), what="bob to accept the raw peer's JOIN")
    before = dropped(bob, "spoofed_routing_id")

    stop, attempts = threading.Event(), [0]
    attack = threading.Thread(target=_claim_routing_ids, daemon=True, args=(
        zctx, bob, [alice.id.encode(), alice.id.encode() + b"/0123456789abcdef", raw.id.encode()], alice.id, stop, attempts))
    attack.start()
    try:
        wait_for(lambda: attempts[0] >= 30, what="the attack to get going")
        slowest = 0.0
        for i in range(8):  # throughout the attack, alice -> bob is delivered at once
            t0 = time.monotonic()
            alice.ctl("send", "bob", f"during the attack {i}", "--wait", "5")
            slowest = max(slowest, time.monotonic() - t0)
            raw.send("MESSAGE", {"text": f"raw during the attack {i}"}, target=bob.id)
        wait_for(lambda: all(f"raw during the attack {i}" in inbox_texts(bob) for i in range(8)),
                 what="the raw peer's messages: its bare routing id was never displaced")
    finally:
        stop.set()
        attack.join(20)
    assert attempts[0] >= 30
    assert slowest < 3.0, f"a send during the attack took {slowest:.1f}s"
    assert dropped(bob, "spoofed_routing_id") > before
    log = bob.log_text()
    assert "peer lost: alice" not in log and "peer lost: thirdparty" not in log, log[-2000:]
    assert "spoofed_routing_id" in log and "belongs to key" in log
    texts = inbox_texts(bob)
    assert all(f"during the attack {i}" in texts for i in range(8))
    raw.close()
    assert_no_tracebacks(alice, bob)


# --------------------------------------------------------------------------- gossip poisoning


def _fds(node) -> int:
    return len(os.listdir(f"/proc/{node.pid}/fd"))


def test_gossip_of_made_up_peers_cannot_fill_the_table_shadow_a_name_or_spread(make_node, zctx):
    from p2pd.keys import node_id_for
    from p2pd.membership import RUMOURS_PER_INTRODUCER

    alice, bob, charlie = make_node("alice"), make_node("bob"), make_node("charlie")
    for n in (alice, bob):
        (n.home / "p2pd.toml").write_text((n.home / "p2pd.toml").read_text() + "max_peers = 8\n")
        n.start()
    link(bob, alice)
    mallory = RawPeer(zctx, bob, "mallory")
    mallory.join()
    wait_for(lambda: any(p["id"] == mallory.id for p in bob.call("peers")), what="bob to take mallory's JOIN")
    fds_before = _fds(bob)

    fakes = []
    for _ in range(300):  # fresh keys (ids that match them), all named "bob", at ports nobody listens on
        public, _secret = new_keypair()
        fakes.append({"id": node_id_for(public), "name": "bob", "addr": HOST, "port": 9, "pub_port": 9, "key": public})
    mallory.send("PEERS", {"peers": fakes})
    # bob dials a few of them: gossip dials only while its links fit its active view (8, overlay.py),
    # far below the cap on rumours per introducer
    wait_for(lambda: bob.call("info")["rumours"] >= 1, what="bob to dial some of mallory's peers")
    info = bob.call("info")
    assert info["rumours"] <= 8 < RUMOURS_PER_INTRODUCER
    assert info["peers"] == 2  # alice and mallory: rumours are not peers and do not count against max_peers
    assert {p["name"] for p in bob.call("peers")} == {"alice", "mallory"}

    # names still resolve to the real node, on bob and on alice (the rumours never travelled)
    alice.ctl("send", "bob", "still you?", "--wait", "5")
    # alice hears of mallory herself from bob (a real member there) and dials her, but of no fake
    assert alice.call("info")["rumours"] <= 1 and {p["name"] for p in alice.call("peers")} == {"bob"}

    # a legitimate newcomer can still connect, though max_peers is 8 and 64 rumours are being dialled
    charlie.start()
    charlie.ctl("connect", bob.addr)
    wait_for(lambda: "charlie" in bob.alive_names(), what="bob to take charlie")

    # the rumours never answer: forgotten within the heartbeat timeout (1.5 s here), their sockets closed
    wait_for(lambda: bob.call("info")["rumours"] == 0, timeout=10, what="the rumours to be forgotten")
    wait_for(lambda: _fds(bob) <= fds_before + 12, timeout=10, what=f"bob's file descriptors back near {fds_before}")
    # the same lies again: the ones that never answered are ignored for a while, the next ones are
    # dialled within the same cap
    mallory.send("PEERS", {"peers": fakes})
    alice.ctl("send", "bob", f"after the second lie {uuid.uuid4().hex}", "--wait", "5")
    assert bob.call("info")["rumours"] <= RUMOURS_PER_INTRODUCER and bob.call("info")["peers"] == 3
    mallory.close()
    assert_no_tracebacks(alice, bob, charlie)


# --------------------------------------------------------------------------- file-descriptor exhaustion


def _limits(pid: int) -> tuple[int, int]:
    line = next(ln for ln in open(f"/proc/{pid}/limits") if ln.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def _rss_kib(pid: int) -> int:
    return int(next(ln for ln in open(f"/proc/{pid}/status") if ln.startswith("VmRSS")).split()[1])


def _start_limited(node, soft: int, hard: int | str = "") -> None:
    """Start ``node`` with RLIMIT_NOFILE soft:hard (the usual 1024 soft limit of a login shell)."""
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux)")
    node.prefix = ["prlimit", f"--nofile={soft}:{hard}"]
    try:
        node.start()
    finally:
        node.prefix = []


@pytest.fixture
def many_fds():
    """Room in this process for the attacker's connections; restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 6000:
        pytest.skip(f"the hard open-file limit ({hard}) leaves no room for the attack")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000) if hard != resource.RLIM_INFINITY else 20000, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _plain_flood(n: int, port: int, sources: list[str]) -> list[socket.socket]:
    """``n`` plain TCP connections to 127.0.0.1:port, spread over ``sources``, one after another (as a
    script would; opened all at once, most would only overflow the listen backlog), then held."""
    socks = []
    deadline = time.monotonic() + 60
    for i in range(n):
        if time.monotonic() > deadline:
            break
        s = socket.socket()
        s.settimeout(3)
        s.bind((sources[i % len(sources)], 0))
        try:
            s.connect((HOST, port))
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def _inbound(node) -> dict:
    return node.call("info")["inbound"]


def test_a_flood_of_plain_connections_is_refused_and_the_node_serves_on(make_node, many_fds):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    _start_limited(bob, 1024, "")  # soft 1024, hard as it is
    soft, hard = _limits(bob.pid)
    assert soft == min(hard, 1_048_576) and soft > 1024, f"bob did not raise his soft limit: {soft}/{hard}"
    assert "raised the open-file limit from 1024" in bob.log_text()
    link(bob, alice)
    fds_before = _fds(bob)
    t0 = time.monotonic()
    flood = _plain_flood(1000, bob.port, ["127.0.0.2"])  # no key needed, held open
    try:
        wait_for(lambda: _inbound(bob)["refused"] >= 1000 - 128, timeout=20, what="bob to refuse the excess")
        inbound = _inbound(bob)
        assert inbound["busiest_host"]["host"] == "127.0.0.2" and inbound["busiest_host"]["connections"] <= 128
        # the control socket and the existing link work throughout
        for i in range(3):
            alice.ctl("send", "bob", f"during the flood {i}", "--wait", "5")
            bob.ctl("send", "alice", f"back during the flood {i}", "--wait", "5")
        assert bob.call("info")["dropped"]["inbound_limit"] >= 1000 - 128
        lines = bob.log_text().count("[inbound_limit]")
        assert 1 <= lines <= time.monotonic() - t0 + 2, f"{lines} log lines: not at most one a second"
    finally:
        for s in flood:
            s.close()
    wait_for(lambda: _inbound(bob)["connections"] <= 4, timeout=15, what="the flood's connections to be gone")
    wait_for(lambda: _fds(bob) <= fds_before + 4, timeout=15, what=f"bob's descriptors back to {fds_before}")
    assert "peer lost" not in bob.log_text() and "peer lost" not in alice.log_text()
    assert_no_tracebacks(alice, bob)


def test_at_a_hard_limit_of_1024_a_flood_from_many_addresses_cannot_exhaust_descriptors(make_node, many_fds):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    _start_limited(bob, 1024, 1024)  # cannot be raised: the guard must keep headroom itself
    assert _limits(bob.pid) == (1024, 1024)
    link(bob, alice)
    flood = _plain_flood(1500, bob.port, [f"127.0.0.{i}" for i in range(2, 22)])  # 75 from each of 20 addresses
    try:
        wait_for(lambda: _inbound(bob)["refused"] >= 1, timeout=20, what="bob to refuse connections near his limit")
        assert _fds(bob) <= 1024 - 64
        alice.ctl("send", "bob", "near the limit", "--wait", "5")
        assert bob.ctl("info").returncode == 0
    finally:
        for s in flood:
            s.close()
    wait_for(lambda: _inbound(bob)["connections"] <= 4, timeout=15, what="the flood's connections to be gone")
    bob.ctl("send", "alice", "after the flood", "--wait", "5")
    assert pid_alive(bob.pid)
    assert_no_tracebacks(alice, bob)


def test_a_flood_of_curve_connections_is_capped_and_its_memory_returned(make_node, zctx, many_fds):
    bob = make_node("bob")
    bob.start()
    bob_key = bob.call("info")["public_key"]
    wait_for(lambda: bob.call("info"), what="bob to settle")
    idle = _rss_kib(bob.pid)
    zctx.max_sockets = 4000
    socks = []
    for i in range(1500):  # 1,500 completed CURVE handshakes, 125 from each of 12 addresses
        s = zctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
        s.curve_serverkey = bob_key.encode()
        s.connect(f"tcp://127.0.0.{2 + i % 12}:0;{HOST}:{bob.port}")
        socks.append(s)
    try:
        # the 1,500 connect in the background: wait until bob holds his maximum and has refused some
        wait_for(lambda: (lambda i: i["connections"] >= 1000 and i["refused"] >= 1)(_inbound(bob)), timeout=30,
                 what="bob to hold his maximum and refuse the rest")
        inbound = _inbound(bob)
        assert inbound["connections"] <= inbound["max_inbound"] == 1024
        peak = _rss_kib(bob.pid)
    finally:
        for s in socks:
            s.close(linger=0)
    wait_for(lambda: _inbound(bob)["connections"] == 0, timeout=30, what="the connections to be gone")
    wait_for(lambda: _rss_kib(bob.pid) <= idle + 6 * 1024, timeout=10,
             what=f"bob's RSS back near idle ({idle} KiB; peak {peak} KiB; now {_rss_kib(bob.pid)} KiB)")
    assert bob.ctl("info").returncode == 0
    assert_no_tracebacks(bob)
