"""Client and store (issue 12, items 7-9), with real daemons driven by the real p2pctl.

* what p2pctl, `p2pctl chat` or the client library report as not done is never done
  later: not by a daemon started afterwards, nor by a stopped one that resumes;
* a damaged, missing or emptied store, and a node.key whose halves do not match, are
  refused at start with one line that names the file and the fix;
* a full disk is reported as such, a known_peers file that is not UTF-8 is named, and a
  control message of the wrong frame count gets an error reply.

"Nothing arrives" is checked the way that can fail: a marker sent after the failed
request must arrive, and since direct messages to one peer are delivered in order (and
each node stores what it sends before it answers), the failed one would have come first.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest
import zmq

from conftest import P2PD, pid_alive, wait_for
from p2pctl.client import Client, DaemonNotRunning, DaemonTimeout
from p2pd import exitcodes
from p2pd.home import Home
from test_chat import ChatSession


def linked(a, b) -> None:
    a.ctl("connect", "127.0.0.1", str(b.port))
    wait_for(lambda: "bob" in a.alive_names() and "alice" in b.alive_names(), what="alice and bob linked")


def texts(node, cmd: str = "inbox") -> list[str]:
    return [m["text"] for m in node.ctl_json(cmd)]


def assert_only_marker_arrived(sender, receiver, ghosts: list[str], marker: str, cmd: str = "inbox") -> None:
    """The marker, sent after the failed requests, arrives; the failed ones never do, at the
    receiver or in the sender's own store (where a carried-out send is stored first)."""
    wait_for(lambda: marker in texts(receiver, cmd), 15, what=f"{marker!r} at {receiver.name}")
    got = texts(receiver, cmd)
    mine = texts(sender, "history")
    for ghost in ghosts:
        assert ghost not in got, f"{ghost!r}, reported as failed, was carried out: {got}"
        assert ghost not in mine, f"{ghost!r}, reported as failed, is in {sender.name}'s history: {mine}"


# ============================================================================ item 7


def test_request_failed_while_daemon_stopped_is_not_carried_out_after_restart(make_node):
    """The chat's case: one long-lived client; its request fails while the daemon is down, and
    must not be delivered to the daemon started afterwards on the same control socket."""
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    with Client(alice.home, timeout_s=2.0) as c:
        assert c.call("status")["pid"] == alice.pid  # the client's socket is connected
        assert alice.stop().returncode == 0
        with pytest.raises(DaemonNotRunning) as e:
            c.send("bob", "ghost-library")
        assert e.value.exit_code == exitcodes.NOT_RUNNING
        cli = alice.ctl("send", "bob", "ghost-cli", check=False)
        assert cli.returncode == exitcodes.NOT_RUNNING and "not running" in cli.stderr and len(cli.stderr.splitlines()) == 1
        alice.start()
        wait_for(lambda: "bob" in alice.alive_names(), 15, what="alice to relink bob after her restart")
        # the same client object goes on working with the new daemon
        assert c.send("bob", "marker", wait_s=10.0)["status"] == "delivered"
    assert_only_marker_arrived(alice, bob, ["ghost-library", "ghost-cli"], "marker")


def test_request_to_a_stopped_daemon_is_refused_after_its_deadline(make_node):
    """SIGSTOP: the request reaches the daemon's socket, the client gives up (timeout, exit 4),
    the daemon resumes and reads it late: refused as expired, never carried out."""
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    with Client(alice.home, timeout_s=1.0) as c:
        assert c.call("status")["pid"] == alice.pid
        os.kill(alice.pid, signal.SIGSTOP)
        try:
            with pytest.raises(DaemonTimeout) as e:
                c.send("bob", "ghost-late")
            assert e.value.exit_code == exitcodes.TIMEOUT and "not carried out" in str(e.value)
        finally:
            os.kill(alice.pid, signal.SIGCONT)
    # the daemon did read it, after its deadline, and refused it
    wait_for(lambda: alice.call("info")["dropped"].get("expired_control") == 1, what="the late request counted as expired_control")
    assert "expired_control" in alice.log_text()
    wait_for(lambda: "bob" in alice.alive_names(), 15, what="alice and bob linked again after the stop")
    alice.ctl("send", "--wait", "10", "bob", "marker")
    assert_only_marker_arrived(alice, bob, ["ghost-late"], "marker")


def test_chat_line_that_failed_is_not_sent_after_restart(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    chat = ChatSession(alice)
    try:
        chat.expect("chatting as alice")
        assert alice.stop().returncode == 0
        chat.type("ghost-chat")
        chat.expect("not running")
        alice.start()
        wait_for(lambda: "bob" in alice.alive_names() and "alice" in bob.alive_names(), 15, what="alice and bob linked again")
        wait_for(lambda: alice.call("peers")[0]["subscribed"], 15, what="bob's SUB attached to alice again")
        chat.type("marker-chat")
        chat.expect("you: marker-chat")
    finally:
        chat.close()
    assert_only_marker_arrived(alice, bob, ["ghost-chat"], "marker-chat")


# ============================================================================ item 9: the control socket


def test_control_message_of_three_frames_gets_an_error_reply(make_node, zctx):
    alice = make_node("alice")
    alice.start()
    ctl = zctx.socket(zmq.DEALER)
    ctl.setsockopt(zmq.LINGER, 0)
    ctl.connect(Home(alice.home).control_endpoint)
    ctl.send_multipart([b'{"req": 41, "cmd": "status"}', b"{}", b"{}"])
    assert ctl.poll(5000), "no reply to a 3-frame control message"
    reply = json.loads(ctl.recv())
    assert reply["ok"] is False and reply["code"] == "bad_request" and reply["req"] == 41 and "had 3" in reply["error"]
    ctl.send(b'{"req": 42, "cmd": "status"}')
    assert ctl.poll(5000) and json.loads(ctl.recv())["result"]["pid"] == alice.pid
    assert pid_alive(alice.pid)


# ============================================================================ item 8: store and key at start


def p2pd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*P2PD, *args], capture_output=True, text=True, timeout=60)


def refused(node, *extra: str) -> str:
    """Start ``node``, which must be refused with exit 1 and one line; returns that line."""
    proc = node.start(*extra, check=False)
    assert proc.returncode == exitcodes.FAILED, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert p2pd("status", "--home", str(node.home)).returncode == exitcodes.NOT_RUNNING
    return lines[0]


def test_damaged_store_is_refused_at_start(make_node):
    """80 KB of random bytes in the middle of store.db: refused, naming the file and the fix
    (it used to start, log a traceback every tick and leave history/inbox unanswered)."""
    alice = make_node("alice")
    alice.start()
    with alice.client() as c:
        c.broadcast_many([f"{i:05d} " + "x" * 300 for i in range(3000)])
    assert alice.stop().returncode == 0
    store = alice.home / "store.db"
    size = store.stat().st_size
    assert size > 1_000_000 and not (alice.home / "store.db-wal").exists()
    with open(store, "r+b") as f:
        f.seek(size // 2)
        f.write(random.Random(7).randbytes(80_000))
    line = refused(alice)
    assert str(store) in line and "damaged" in line and "backup" in line and "--fresh-store" in line
    assert "start failed" in alice.log_text() and "Traceback" not in alice.log_text()


@pytest.mark.parametrize("how", ["empty", "missing"])
def test_lost_store_is_refused_unless_fresh_store(make_node, how):
    alice = make_node("alice")
    alice.start()
    alice.ctl("broadcast", "before the loss")
    assert alice.stop().returncode == 0
    store = alice.home / "store.db"
    if how == "empty":
        store.write_bytes(b"")
    else:
        store.unlink()
    line = refused(alice)
    assert str(store) in line and ("empty" if how == "empty" else "missing") in line and "--fresh-store" in line and "backup" in line
    assert not store.exists() or store.stat().st_size == 0  # refused before SQLite made an empty store of it
    alice.start("--fresh-store")
    assert alice.ctl_json("history") == []
    assert "--fresh-store" in alice.log_text()
    alice.ctl("broadcast", "after")
    assert alice.stop().returncode == 0
    alice.start()  # the new store is the home's store now
    assert texts(alice, "history") == ["after"]


def test_key_file_whose_halves_do_not_match_is_refused(make_node):
    alice = make_node("alice")
    alice.start()
    assert alice.stop().returncode == 0
    key_file = alice.home / "node.key"
    data = json.loads(key_file.read_text())
    data["public"] = zmq.curve_keypair()[0].decode()  # another key's public half
    key_file.write_text(json.dumps(data))
    line = refused(alice)
    assert str(key_file) in line and "does not belong to its secret" in line and "backup" in line


# ============================================================================ item 9: files and the full disk


def test_known_peers_not_utf8_names_the_file(make_node):
    alice = make_node("alice")
    alice.start()
    known = alice.home / "known_peers"
    known.write_bytes(b"# pins\n127.0.0.1:9 \xff\xfe not utf-8\n")
    proc = alice.ctl("known", "forget", "127.0.0.1:9", check=False)  # edited while running
    assert proc.returncode == exitcodes.FAILED and str(known) in proc.stderr and "line 2" in proc.stderr, proc
    assert len(proc.stderr.strip().splitlines()) == 1
    assert alice.stop().returncode == 0
    line = refused(alice)
    assert str(known) in line and "UTF-8" in line


# ============================================================================ unit: open_store, Store.check, check_keypair


def test_open_store_marks_the_home_and_keeps_an_existing_store_with_fresh_store(tmp_path, caplog):
    from p2pd.daemon import STORE_MARKER, open_store

    home = Home(tmp_path)
    assert not (tmp_path / STORE_MARKER).exists()
    s = open_store(home, "normal")  # a first start: no marker yet, nothing lost
    s.add_broadcast(1, "b1", "kept", "2026-01-01T00:00:00.000Z", 1.0)
    s.close()
    assert (tmp_path / STORE_MARKER).exists()
    with caplog.at_level("WARNING", logger="p2pd"):
        s = open_store(home, "normal", fresh=True)  # --fresh-store never throws a store away
    assert s.newest_broadcast() == 1 and s.checked is True and "has no effect" in caplog.text
    s.close()
    (tmp_path / STORE_MARKER).unlink()  # a home from before the marker: it gets one at its next start
    open_store(home, "normal").close()
    assert (tmp_path / STORE_MARKER).exists()


def test_store_check_is_bounded_in_time(tmp_path):
    from p2pd.store import Store

    s = Store(tmp_path / "store.db")
    for i in range(1, 5001):  # enough rows that the NOT NULL scan of quick_check asks the progress handler
        s.add_broadcast(i, f"b{i}", "x", "2026-01-01T00:00:00.000Z", 1.0)
    s.close()
    s = Store(tmp_path / "store.db", check_s=0.0)  # no time at all: stopped, reported as partial, not as damage
    assert s.checked is False
    assert Store(tmp_path / "store.db", check_s=30.0).checked is True


def test_store_that_is_not_a_database_is_damaged(tmp_path):
    from p2pd.store import Store, StoreDamaged

    path = tmp_path / "store.db"
    path.write_bytes(b"this is not SQLite" * 500)
    with pytest.raises(StoreDamaged, match=r"store\.db is damaged \(file is not a database\).*--fresh-store"):
        Store(path, check_s=1.0)


def test_check_keypair():
    from p2pd.sockets import curve_public as _curve_public
    from p2pd.keys import KeyError_, KeyPair, check_keypair

    public, secret = (k.decode() for k in zmq.curve_keypair())
    home = Home(Path("/nonexistent"))
    check_keypair(home, KeyPair(public, secret), _curve_public)
    other = zmq.curve_keypair()[0].decode()
    with pytest.raises(KeyError_, match="node.key is damaged: its public key does not belong to its secret key"):
        check_keypair(home, KeyPair(other, secret), _curve_public)


@pytest.fixture
def small_disk_node(make_node):
    """alice, her home on a 4 MiB tmpfs of its own (root only: mounting needs it)."""
    alice = make_node("alice")
    config = (alice.home / "p2pd.toml").read_text()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system to fill needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=700", "tmpfs", str(alice.home)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        (alice.home / "p2pd.toml").write_text(config)
        yield alice
    finally:
        for pid in alice.pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(alice.home)], capture_output=True)


def fill(path: Path) -> None:
    """Write ``path`` until the file system says it is full."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]


def test_full_disk_is_reported_as_disk_full(small_disk_node):
    """p2pd stops when it cannot write its store; p2pctl says the disk is full (not just "not
    running"), for the request that hit it and for the next ones, until space is freed."""
    alice = small_disk_node
    alice.start()
    filler = alice.home / "filler"
    fill(filler)
    proc = alice.ctl("broadcast", "y" * 60_000, check=False)  # its commit cannot be written: the daemon stops
    assert proc.returncode == exitcodes.NOT_RUNNING, proc
    assert "disk" in proc.stderr and "is full" in proc.stderr and "free some space" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    wait_for(lambda: not pid_alive(alice.pid), what="alice to stop on the full disk")
    proc = alice.ctl("info", check=False)
    assert proc.returncode == exitcodes.NOT_RUNNING and "is full" in proc.stderr, proc
    proc = alice.start(check=False)
    assert proc.returncode == exitcodes.FAILED and "is full" in proc.stderr and "free some space" in proc.stderr, proc.stderr
    filler.unlink()
    proc = alice.ctl("info", check=False)
    assert proc.returncode == exitcodes.NOT_RUNNING and "is full" not in proc.stderr and "not running" in proc.stderr, proc
    alice.start()  # nothing was lost or damaged: it starts again on the same store
    assert "y" * 60_000 not in texts(alice, "history")


def test_a_pin_that_cannot_be_saved_does_not_stop_the_node(make_node):
    """known_peers edited into something unreadable while the node runs: the next key it pins
    cannot be saved, which is logged, and the node links and serves on."""
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    (alice.home / "known_peers").write_bytes(b"127.0.0.1:9 \xff\xfe not utf-8\n")
    alice.ctl("connect", "127.0.0.1", str(bob.port))  # fetches bob's key and pins it: PinKey fails
    alice.ctl("send", "bob", "pinned or not", "--wait", "5")
    assert "cannot save pinned key" in alice.log_text() and "not valid UTF-8" in alice.log_text()
    assert alice.ctl("info").returncode == 0
