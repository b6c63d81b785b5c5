"""Issue 13, "CLI consistency" and "nobody to hear": real daemons on loopback driven by the real CLIs.

Global options after the command name, a refused connect answered at once, what `info` says a
node bound to all interfaces is reached at, one uptime format, no stale RTT, per-peer message
counts that agree with `info`, a connect to oneself that pins nothing, a bad --host refused
before a home is made, and a broadcast that says when nobody is linked.
"""

from __future__ import annotations

import pytest

import json
import re
import socket
import subprocess
import time

from conftest import P2PCTL, P2PD, wait_for

from p2pctl.render import duration
from p2pd import exitcodes


def run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert proc.returncode == code, f"{proc.args}: exit {proc.returncode}, want {code}; stdout={proc.stdout!r} stderr={proc.stderr!r}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def linked(a, b) -> None:
    b.ctl("connect", a.addr)
    wait_for(lambda: b.name in a.alive_names(), what=f"{a.name} to see {b.name}")
    wait_for(lambda: a.name in b.alive_names(), what=f"{b.name} to see {a.name}")


def refused_port() -> int:
    """A port P where nothing listens on 127.0.0.1, nor on P+2 (the key port a connect asks)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 2 > 65535:
            continue
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port + 2)) != 0 and port + 2 <= 65535:
                return port
    raise RuntimeError("no free port found")


# --------------------------------------------------------------------------- global options


def test_global_options_after_the_command_name(make_node):
    alice = make_node("alice")
    alice.start()
    home = str(alice.home)
    # --home and --json after the command, as before it
    after = run(*P2PCTL, "peers", "--home", home, "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == []
    info = run(*P2PCTL, "info", "--json", "--home", home, "--no-color", "--timeout", "3")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["id"] == alice.id
    # `send --json bob hi`: an option before the arguments is still the option
    sent = run(*P2PCTL, "send", "--json", "--home", home, "bob", "hi")
    assert sent.returncode == exitcodes.FAILED
    assert json.loads(sent.stdout)["code"] == "unknown_peer"
    # the one after the command wins over the one before it
    elsewhere = run(*P2PCTL, "--home", home + "-nowhere", "status", "--home", home)
    assert elsewhere.returncode == 0 and alice.id[:12] in elsewhere.stdout, elsewhere.stderr
    # and it is checked like the global one
    bad = run(*P2PCTL, "status", "--home", home, "--timeout", "0")
    assert bad.returncode == exitcodes.USAGE and "--timeout" in bad.stderr and "positive" in bad.stderr


# --------------------------------------------------------------------------- connect


def test_connect_where_nothing_listens_is_answered_at_once(make_node):
    """By address (the key port refuses) and by connect string (the peer port refuses): exit 1 in
    well under the 5 s timeout, with what to check; --json says "refused"; nothing is left behind."""
    alice = make_node("alice")
    alice.start()
    bob = make_node("bob")
    bob.start()
    key = bob.call("info")["public_key"]
    port = refused_port()
    for target, where in ((["127.0.0.1", str(port)], f"127.0.0.1:{port + 2}"), ([f"p2p://{key}@127.0.0.1:{port}"], f"127.0.0.1:{port}")):
        t0 = time.monotonic()
        proc = alice.ctl("--timeout", "5", "connect", *target, check=False)
        elapsed = time.monotonic() - t0
        one_line_error(proc, exitcodes.FAILED, "connection refused", where, "nothing listens")
        assert elapsed < 2.5, elapsed  # a p2pctl run, not the 5 s timeout
        as_json = alice.ctl("--json", "connect", *target, check=False)
        assert as_json.returncode == exitcodes.FAILED and json.loads(as_json.stdout)["code"] == "refused"
    assert alice.call("peers") == []
    # the daemon still links normally afterwards
    linked(alice, bob)


def test_connect_to_ones_own_address_pins_nothing(make_node):
    alice = make_node("alice")
    alice.start()
    line = one_line_error(alice.ctl("connect", alice.addr, check=False), exitcodes.FAILED, "this node itself", "no key was pinned")
    assert alice.addr in line
    assert alice.ctl_json("known", "list") == []
    assert "no pinned keys" in alice.ctl("known", "list").stdout
    assert alice.call("peers") == []


# --------------------------------------------------------------------------- info, status, peers


def test_info_on_all_interfaces_shows_the_address_peers_see(make_node):
    alice = make_node("alice")
    alice.start("--host", "0.0.0.0")
    info = alice.ctl_json("info")
    assert info["address"]["addr"] is None  # not announced: each peer uses the address it sees
    seen = info["seen_as"]
    assert seen and seen not in ("0.0.0.0", "::")
    line = next(ln for ln in alice.ctl("info").stdout.splitlines() if "advertised as" in ln)
    after = line.split("advertised as", 1)[1].strip()
    assert after.startswith(seen), line
    assert f"@{seen}:{alice.port}" in info["connect"]  # the connect string names the same address
    # a node bound to one address shows that address
    bob = make_node("bob")
    bob.start()
    line = next(ln for ln in bob.ctl("info").stdout.splitlines() if "advertised as" in ln)
    assert line.rstrip().endswith("advertised as 127.0.0.1") and bob.ctl_json("info")["seen_as"] is None


def test_uptime_is_shown_the_same_way():
    assert [duration(s) for s in (0, 59.9, 60, 150, 3599, 3600, 3725, 86399, 90061, None)] == [
        "0s", "59s", "1m 00s", "2m 30s", "59m 59s", "1h 00m", "1h 02m", "23h 59m", "1d 01h", "?"]


def test_p2pd_status_and_p2pctl_status_agree(make_node):
    alice = make_node("alice")
    alice.start()
    d = run(*P2PD, "status", "--home", str(alice.home))
    c = alice.ctl("status")
    pattern = re.compile(r"^p2pd is running: alice \(" + alice.id[:12] + r"\), pid \d+, up (\d+s|\d+m \d\ds)")
    assert pattern.match(d.stdout) and pattern.match(c.stdout), (d.stdout, c.stdout)  # both through render.duration


def test_a_lost_peer_shows_no_stale_rtt(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    alice.ctl("ping", "bob")
    assert alice.peers()["bob"]["rtt_ms"] is not None
    bob.kill9()
    wait_for(lambda: alice.peers()["bob"]["state"] == "lost", what="alice to lose bob")
    assert alice.peers()["bob"]["rtt_ms"] is None
    row = next(ln for ln in alice.ctl("peers").stdout.splitlines() if ln.startswith("bob"))
    assert row.split()[-1] == "-" and "ms" not in row


def test_peers_msgs_in_and_info_count_the_same(make_node):
    """`peers` msgs_in/msgs_out count direct messages, as info's messages_in/out do; every frame is
    frames_in/frames_out, as in info."""
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    for i in range(3):
        alice.ctl("send", "--wait", "10", "bob", f"hello {i}")
    alice.ctl("broadcast", "not a direct message")
    wait_for(lambda: bob.call("info")["broadcasts_in"] == 1, what="bob to get the broadcast")
    b_info, a_info = bob.ctl_json("info"), alice.ctl_json("info")
    from_alice, to_bob = bob.peers()["alice"], alice.peers()["bob"]
    assert b_info["messages_in"] == from_alice["msgs_in"] == 3
    assert a_info["messages_out"] == to_bob["msgs_out"] == 3
    assert from_alice["frames_in"] > 3 and to_bob["frames_out"] > 3  # JOIN, PEERS, PINGs ... too


# --------------------------------------------------------------------------- p2pd start


@pytest.mark.slow  # runs p2pd/p2pctl processes
def test_a_bad_host_is_a_usage_error_and_makes_no_home(tmp_path):
    for extra in ([], ["--foreground"]):
        home = tmp_path / "new" / "home"
        proc = run(*P2PD, "start", "--home", str(home), "--host", "127.0.0.2x", *extra)
        one_line_error(proc, exitcodes.USAGE, "127.0.0.2x", "not an IP address")
        assert not (tmp_path / "new").exists()


def test_a_failed_start_removes_only_what_it_created(make_node, tmp_path):
    alice = make_node("alice")
    alice.start()
    # a fresh home whose start fails (the port is alice's): nothing of it is left
    home = tmp_path / "fresh" / "home"
    proc = run(*P2PD, "start", "--home", str(home), "--host", "127.0.0.1", "--port", str(alice.port))
    assert proc.returncode == exitcodes.CONFLICT, proc.stderr
    assert not (tmp_path / "fresh").exists()
    # a home that existed before keeps what it had
    bob = make_node("bob")
    proc = bob.start(port=alice.port, check=False)
    assert proc.returncode == exitcodes.CONFLICT
    assert (bob.home / "p2pd.toml").exists()


# --------------------------------------------------------------------------- broadcast


def test_a_broadcast_with_nobody_linked_says_so(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    proc = alice.ctl("broadcast", "hello? anyone?")
    assert proc.returncode == 0  # documented in `broadcast --help`
    assert proc.stdout.startswith("nobody is linked: not delivered to anyone")
    res = alice.ctl_json("broadcast", "still nobody?")
    assert res["subscribers"] == 0 and res["linked"] == 0
    assert "exit 0" in alice.ctl("broadcast", "--help").stdout.replace("\n", " ")
    linked(alice, bob)
    wait_for(lambda: alice.ctl_json("broadcast", "now?")["subscribers"] == 1, what="bob's subscription")
    out = alice.ctl("broadcast", "hello bob").stdout
    assert "to 1 subscribed peer" in out and "nobody" not in out
