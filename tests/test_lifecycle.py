"""Running p2pd as a service: signals, foreground mode, identity, addresses, the log file."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from conftest import P2PD, pid_alive, wait_for


def test_sigterm_and_sigint_are_a_graceful_leave(make_node):
    alice, bob, carol = make_node("alice"), make_node("bob"), make_node("carol")
    for n in (alice, bob, carol):
        n.start()
    bob.ctl("connect", alice.addr)
    carol.ctl("connect", alice.addr)
    wait_for(lambda: alice.alive_names() == {"bob", "carol"}, what="links")
    os.kill(bob.pid, signal.SIGTERM)
    os.kill(carol.pid, signal.SIGINT)
    # LEAVE removes them at once: well before the 1.5 s heartbeat timeout could call them lost
    wait_for(lambda: {(p["name"], p["state"], p["linked"]) for p in alice.call("peers")} == {("bob", "left", False), ("carol", "left", False)},
             timeout=1.4, interval=0.02, what="bob and carol to leave")
    assert "peer left: bob" in alice.log_text() and "peer left: carol" in alice.log_text()
    assert "peer lost" not in alice.log_text()
    wait_for(lambda: not pid_alive(bob.pid) and not pid_alive(carol.pid), what="daemons to exit")
    assert not (bob.home / "p2pd.pid").exists()


def test_foreground_logs_to_stderr_and_stops_on_sigterm(make_node):
    node = make_node("fg")
    proc = subprocess.Popen([*P2PD, "start", "--foreground", "--home", str(node.home), "--port", "0", "--name", "fg"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    node.pids.append(proc.pid)
    try:
        wait_for(lambda: (node.home / "p2pd.pid").exists() and node.ctl("status", check=False).returncode == 0, what="foreground node up")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        err = proc.stderr.read()
        assert "started p2pd" in err and "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_identity_and_name_survive_restart(make_node):
    node = make_node("dora")
    node.start()
    first = node.id
    assert node.stop().returncode == 0
    proc = subprocess.run([*P2PD, "start", "--home", str(node.home), "--port", "0", "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    node.pids.append(info["pid"])
    assert info["id"] == first
    assert info["name"] == "dora"  # remembered without --name


def test_wildcard_bind_uses_the_address_peers_see(make_node):
    """A node bound to 0.0.0.0 must not gossip 0.0.0.0: receivers use the connection's source
    address, and its signed record (the overlay) lists the address peers most likely see it at
    (``seen_as``: this host's address on its default route)."""
    nodes = [make_node(n) for n in ("alice", "bob", "charlie")]
    for n in nodes:
        n.start("--host", "0.0.0.0")
        assert n.info["address"]["addr"] is None  # nothing advertised
    alice, bob, charlie = nodes
    seen_as = {n.info["seen_as"] for n in nodes}
    bob.ctl("connect", "127.0.0.1", str(alice.port))
    charlie.ctl("connect", "127.0.0.1", str(bob.port))
    wait_for(lambda: charlie.alive_names() == {"alice", "bob"}, what="discovery through bob")
    for n in nodes:
        for p in n.call("peers"):
            assert p["address"].rpartition(":")[0] in {"127.0.0.1", *seen_as}, p
            assert "0.0.0.0" not in p["router"]


def test_advertise_sets_the_address_others_dial(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start("--host", "0.0.0.0", "--advertise", "127.0.0.2")
    bob.start()
    bob.ctl("connect", alice.addr)
    wait_for(lambda: bob.alive_names() == {"alice"}, what="link")
    (peer,) = bob.call("peers")
    assert peer["address"] == f"127.0.0.2:{alice.port}"


def test_log_records_events_and_survives_rotation(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    log = alice.home / "p2pd.log"
    assert "started p2pd" in log.read_text()
    bob.ctl("connect", alice.addr)
    wait_for(lambda: "peer joined: bob" in alice.log_text(), what="join logged")
    rotated = alice.home / "p2pd.log.1"
    log.rename(rotated)  # what logrotate does
    bob.stop()
    wait_for(lambda: log.exists() and "peer left: bob" in log.read_text(), what="new log file after rotation")
    assert "peer left: bob" not in rotated.read_text()
    alice.stop()
    assert "stopped" in log.read_text()


def test_the_detached_daemon_runs_with_glibcs_mmap_threshold_set_unless_the_user_set_one(make_node):
    """Large frames come from mmap, not the heaps they would fragment (daemon.py, MMAP_THRESHOLD)."""
    from p2pd.daemon import MMAP_THRESHOLD, daemon_environment

    node = make_node("mapped")
    node.start()
    with open(f"/proc/{node.pid}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    assert env[b"MALLOC_MMAP_THRESHOLD_"] == MMAP_THRESHOLD.encode()
    assert daemon_environment({"MALLOC_MMAP_THRESHOLD_": "131072", "A": "1"}) == {"MALLOC_MMAP_THRESHOLD_": "131072", "A": "1"}


def test_a_running_daemon_has_not_loaded_openssl(make_node):
    """hashlib, secrets and hmac map OpenSSL's libcrypto (3.5-4 MiB of RSS for nothing the daemon
    needs: keys use the builtin sha256, tokens os.urandom).  A stray import put it back once."""
    node = make_node("lean")
    node.start()
    with open(f"/proc/{node.pid}/maps") as f:
        mapped = f.read()
    assert "libcrypto" not in mapped and "libssl" not in mapped
