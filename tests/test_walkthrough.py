"""The README's three-node walkthrough, end to end, with real daemons and the real p2pctl."""

from __future__ import annotations

import json
import socket
import subprocess
import time

from conftest import P2PCTL, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_watch(node) -> subprocess.Popen:
    """`p2pctl watch --json` in the background; returns once the daemon has registered it."""
    before = node.call("info")["watchers"]
    proc = subprocess.Popen([*P2PCTL, "--home", str(node.home), "--json", "watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: node.call("info")["watchers"] > before, what="watch to be registered")
    return proc


def collect(proc: subprocess.Popen) -> list[dict]:
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def link_trio(alice, bob, charlie):
    bob.ctl("connect", "127.0.0.1", str(alice.port))
    charlie.ctl("connect", bob.addr)  # HOST:PORT form
    # charlie only knows bob, yet finds alice through bob's peer list, and alice learns of charlie
    wait_for(lambda: charlie.alive_names() == {"alice", "bob"}, what="charlie to discover alice")
    wait_for(lambda: alice.alive_names() == {"bob", "charlie"}, what="alice to learn of charlie")
    wait_for(lambda: bob.alive_names() == {"alice", "charlie"}, what="bob to see both")


def test_three_node_walkthrough(daemon_trio):
    alice, bob, charlie = daemon_trio
    watcher = start_watch(alice)
    link_trio(alice, bob, charlie)

    # peers --json has the documented fields, and nobody appears twice
    peers = charlie.ctl_json("peers")
    assert sorted(p["name"] for p in peers) == ["alice", "bob"]
    for p in peers:
        assert {"id", "name", "address", "state"} <= set(p)
        assert p["state"] == "alive"
    assert {p["id"] for p in peers} == {alice.id, bob.id}

    # direct messages by name, both ways
    out = charlie.ctl("send", "alice", "hello", "alice").stdout
    assert "delivered to alice" in out
    alice.ctl("send", "charlie", "hi charlie")
    wait_for(lambda: [m["text"] for m in alice.call("inbox")] == ["hello alice"], what="alice's inbox")
    wait_for(lambda: [m["text"] for m in charlie.call("inbox")] == ["hi charlie"], what="charlie's inbox")
    inbox = alice.ctl_json("inbox")
    assert {"id", "type", "sender_id", "sender_name", "timestamp", "text"} <= set(inbox[0])
    assert inbox[0]["sender_name"] == "charlie" and inbox[0]["type"] == "MESSAGE"
    assert inbox[0]["sender_id"] == charlie.id

    # a broadcast reaches everyone else exactly once (after their SUBs are attached)
    wait_for(lambda: all(p["subscribed"] for p in bob.call("peers")), what="alice and charlie subscribed to bob")
    res = json.loads(bob.ctl("--json", "broadcast", "lunch?").stdout)
    assert res["subscribers"] == 2
    for n in (alice, charlie):
        wait_for(lambda: any(m["text"] == "lunch?" for m in n.call("inbox")), what=f"{n.name} to get the broadcast")
    # give any duplicate the time to arrive, then check for it: a bounded, deliberate wait
    time.sleep(0.3)
    for n in (alice, charlie):
        assert [m["text"] for m in n.call("inbox")].count("lunch?") == 1
    assert [m["text"] for m in bob.call("inbox")].count("lunch?") == 0

    # charlie leaves gracefully: alice sees it at once
    assert charlie.stop().returncode == 0
    wait_for(lambda: alice.alive_names() == {"bob"}, timeout=5, what="charlie removed on LEAVE")
    assert {p["name"]: p["state"] for p in alice.call("peers")}["charlie"] == "left"  # listed as left, unlinked

    events = collect(watcher)
    kinds = [(e["event"], (e.get("peer") or {}).get("name") or e.get("message", {}).get("text")) for e in events]
    assert ("joined", "bob") in kinds
    assert ("joined", "charlie") in kinds
    assert ("message", "hello alice") in kinds
    assert ("broadcast", "lunch?") in kinds
    assert ("left", "charlie") in kinds
    assert kinds.count(("joined", "charlie")) == 1


def test_killed_node_is_lost_then_relinked(daemon_trio):
    alice, bob, charlie = daemon_trio
    link_trio(alice, bob, charlie)
    old_id = bob.id
    t0 = time.monotonic()
    bob.kill9()
    # heartbeat timeout is 1.5 s in the test config: lost well within a few seconds
    for n in (alice, charlie):
        wait_for(lambda: {p["name"]: p["state"] for p in n.call("peers")}.get("bob") == "lost", timeout=6, what=f"{n.name} to report bob lost")
    assert time.monotonic() - t0 < 6
    assert "peer lost: bob" in alice.log_text()

    # same home, same id; a different port: the restarted bob rejoins from its peer book
    bob.start()
    assert bob.id == old_id
    for n in (alice, charlie):
        wait_for(lambda: n.alive_names() == {"bob", "alice", "charlie"} - {n.name}, timeout=10, what=f"{n.name} to re-link bob")
        names = [p["name"] for p in n.call("peers")]
        assert names.count("bob") == 1, names
    wait_for(lambda: bob.alive_names() == {"alice", "charlie"}, what="bob to see both again")
    charlie.ctl("send", "bob", "welcome back")
    wait_for(lambda: [m["text"] for m in bob.call("inbox")] == ["welcome back"], what="bob to get a message")


def test_restart_on_same_port_is_relinked_by_survivors(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    bob.ctl("connect", alice.addr)
    wait_for(lambda: alice.alive_names() == {"bob"}, what="link")
    port = bob.port
    bob.kill9()
    (bob.home / "peers.json").unlink()  # bob forgets; alice must find it again on her own
    wait_for(lambda: alice.call("peers")[0]["state"] == "lost", timeout=6, what="bob lost")
    bob.start(port=port)
    wait_for(lambda: alice.alive_names() == {"bob"}, timeout=10, what="alice's retries to re-link bob")
    wait_for(lambda: bob.alive_names() == {"alice"}, timeout=10, what="bob to know alice again")


def test_bootstrap_join_retries_until_peer_appears(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    port = free_port()
    # alice's bootstrap peer is not there yet: start still succeeds and keeps retrying
    alice.start("--join", f"127.0.0.1:{port}")
    assert alice.alive_names() == set()
    bob.start("--pub-port", "0", port=port)
    wait_for(lambda: alice.alive_names() == {"bob"}, timeout=10, what="bootstrap link")
