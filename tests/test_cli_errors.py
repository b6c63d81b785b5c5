"""Every CLI error path of `p2pd` and `p2pctl`, with real daemons.

Each failure must exit with its documented code (p2pd/exitcodes.py) and say
what went wrong, and what to do about it, in one line on stderr.  Usage
errors are click's: a usage line, a help hint and one "Error: ..." line, all
on stderr, exit 2.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import P2PCTL, P2PD, pid_alive, wait_for
from p2pd import exitcodes
from p2pd.home import Home

# --------------------------------------------------------------------------- helpers


def run(argv: list[str], input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)


def p2pctl(home, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return run([*P2PCTL, "--home", str(home), *args], input=input)


def p2pd(*args: str) -> subprocess.CompletedProcess:
    return run([*P2PD, *args])


def run_many(argvs: list[list[str]], inputs: list[str | None] | None = None, timeout: float = 30) -> list[subprocess.CompletedProcess]:
    """Run independent commands side by side (each bounded by ``timeout``); results in order."""
    inputs = inputs or [None] * len(argvs)
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True) for a in argvs]
    results = []
    try:
        for argv, p, data in zip(argvs, procs, inputs):
            out, err = p.communicate(input=data, timeout=timeout)
            results.append(subprocess.CompletedProcess(argv, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # only our own children, by their Popen handle
                p.wait()
    return results


def one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The exit code is ``code`` and stderr is exactly one line containing every needle."""
    assert proc.returncode == code, f"{proc.args}: exit {proc.returncode}, want {code}; stdout={proc.stdout!r} stderr={proc.stderr!r}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"{proc.args}: stderr is not one line: {proc.stderr!r}"
    for n in needles:
        assert n in lines[0], f"{proc.args}: {n!r} not in {lines[0]!r}"
    return lines[0]


def usage_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A click usage error: exit 2, no traceback, and exactly one "Error:" line naming the problem."""
    assert proc.returncode == exitcodes.USAGE, f"{proc.args}: exit {proc.returncode}; stdout={proc.stdout!r} stderr={proc.stderr!r}"
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], f"{proc.args}: {n!r} not in {errors[0]!r}"
    return errors[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen(["true"])
    p.wait(timeout=10)
    assert not pid_alive(p.pid)
    return p.pid


def start_hint(home) -> str:
    return f"p2pd start --home {home}"


def linked(a, b) -> None:
    b.ctl("connect", a.addr)
    wait_for(lambda: b.name in a.alive_names(), what=f"{a.name} to see {b.name}")
    wait_for(lambda: a.name in b.alive_names(), what=f"{b.name} to see {a.name}")


@pytest.fixture
def daemon_pair(make_node):
    """Two daemons, alice and bob (CURVE), started and linked both ways."""
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    return alice, bob


# --------------------------------------------------------------------------- no daemon


@pytest.mark.slow  # runs p2pd/p2pctl processes
def test_every_p2pctl_command_without_a_daemon_exits_3(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    never = tmp_path / "never-created"
    commands = [
        ["peers"], ["send", "bob", "hi"], ["info"], ["watch"], ["status"], ["inbox"],
        ["ping", "bob"], ["broadcast", "hi"], ["disconnect", "bob"], ["connect", "127.0.0.1", "5000"],
        ["join", "rust-dev"], ["leave", "rust-dev"], ["groups"], ["shout", "rust-dev", "hi"], ["invite", "ops", "bob"],
        ["watch", "--group", "rust-dev"],
    ]
    argvs = [[*P2PCTL, "--home", str(empty), *c] for c in commands]
    argvs += [[*P2PCTL, "--home", str(never), *c] for c in (["peers"], ["watch"])]
    homes = [empty] * len(commands) + [never] * 2
    # stopping what is not running is not an error
    stops = [[*P2PCTL, "--home", str(h), "stop"] for h in (empty, never)]
    results = run_many(argvs + stops)
    for home, proc in zip(homes, results):
        line = one_line_error(proc, exitcodes.NOT_RUNNING, "not running", str(Home(home).socket_path), start_hint(home))
        assert line.startswith("p2pctl: ")
        assert proc.stdout == ""
    for proc in results[len(argvs):]:
        assert proc.returncode == 0, proc.stderr
        assert "not running" in proc.stdout
    assert not never.exists(), "p2pctl must not create a home"


def test_p2pd_status_and_stop(make_node):
    alice = make_node("alice")
    proc = p2pd("status", "--home", str(alice.home))
    assert proc.returncode == exitcodes.NOT_RUNNING, proc
    assert "not running" in proc.stdout and str(alice.home) in proc.stdout
    proc = p2pd("status", "--json", "--home", str(alice.home))
    assert proc.returncode == exitcodes.NOT_RUNNING
    assert json.loads(proc.stdout) == {"running": False, "home": str(alice.home)}
    proc = p2pd("stop", "--home", str(alice.home))
    assert proc.returncode == 0, proc.stderr
    assert "not running" in proc.stdout

    alice.start()
    proc = p2pd("status", "--home", str(alice.home))
    assert proc.returncode == 0, proc.stderr
    assert "is running" in proc.stdout and f"pid {alice.pid}" in proc.stdout and "alice" in proc.stdout
    st = json.loads(p2pd("status", "--json", "--home", str(alice.home)).stdout)
    assert st["running"] is True and st["pid"] == alice.pid and st["id"] == alice.id
    assert alice.ctl("status").returncode == 0

    proc = p2pd("stop", "--home", str(alice.home))
    assert proc.returncode == 0, proc.stderr
    assert f"stopped (pid {alice.pid})" in proc.stdout
    assert not pid_alive(alice.pid)
    assert p2pd("status", "--home", str(alice.home)).returncode == exitcodes.NOT_RUNNING


# --------------------------------------------------------------------------- send


def test_send_errors_and_stdin(daemon_pair):
    alice, bob = daemon_pair
    cases = [  # (arguments, stdin, check of the result)
        (["send", "nobody", "hi"], None, lambda p: one_line_error(p, exitcodes.FAILED, "nobody", "p2pctl peers")),
        (["ping", "nobody"], None, lambda p: one_line_error(p, exitcodes.FAILED, "p2pctl peers")),
        (["send", "alice", ""], None, lambda p: usage_error(p, "empty", "stdin")),
        (["send", "alice", "-"], "", lambda p: usage_error(p, "empty")),
        (["send", "alice", "-"], "\n", lambda p: usage_error(p, "empty")),
        (["broadcast", ""], None, lambda p: usage_error(p, "empty")),
        (["send", "alice"], None, lambda p: usage_error(p, "TEXT")),
        (["--timeout", "0", "info"], None, lambda p: usage_error(p, "--timeout", "positive")),
        # too long for one message: the daemon refuses it, the CLI says why
        (["send", "alice", "-"], "x" * 70_000, lambda p: one_line_error(p, exitcodes.FAILED, "longer than")),
    ]
    results = run_many([[*P2PCTL, "--home", str(bob.home), *args] for args, _, _ in cases], [stdin for _, stdin, _ in cases])
    for (_, _, check), proc in zip(cases, results):
        check(proc)
    assert alice.call("inbox") == []

    # "-" reads the message from stdin, trailing newline dropped
    out = bob.ctl("send", "alice", "-", input="first line\nsecond line\n").stdout
    assert "delivered to alice" in out
    wait_for(lambda: [m["text"] for m in alice.call("inbox")] == ["first line\nsecond line"], what="the stdin message")


def test_ambiguous_name_lists_candidates_and_id_prefix_works(make_node):
    alice, bob1, bob2 = make_node("alice"), make_node("bob"), make_node("bob2")
    bob2.name = "bob"  # same name, different home and id
    for n in (alice, bob1, bob2):
        n.start()
    linked(alice, bob1)
    bob2.ctl("connect", alice.addr)
    wait_for(lambda: [p["name"] for p in alice.call("peers") if p["state"] == "alive"] == ["bob", "bob"], what="alice to see both bobs")

    for args in (("send", "bob", "which one?"), ("ping", "bob")):
        line = one_line_error(alice.ctl(*args, check=False), exitcodes.FAILED, "'bob'", bob1.id[:12], bob2.id[:12], "id prefix")
        assert "2 peers" in line

    alice.ctl("send", bob1.id[:8], "to the first bob")
    alice.ctl("send", bob2.id, "to the second bob")
    wait_for(lambda: [m["text"] for m in bob1.call("inbox")] == ["to the first bob"], what="bob1's message")
    wait_for(lambda: [m["text"] for m in bob2.call("inbox")] == ["to the second bob"], what="bob2's message")


# --------------------------------------------------------------------------- connect


def test_connect_errors(make_node):
    alice = make_node("alice")
    alice.start()
    bad = [
        (["connect", "127.0.0.1", "x"], ("port must be a number",)),
        (["connect", "127.0.0.1", "abc"], ("port must be a number", "'abc'")),
        (["connect", "127.0.0.1", "0"], ("out of range", "1 to 65535")),
        (["connect", "127.0.0.1"], ("no port", "HOST PORT")),
        (["connect", "127.0.0.1:x"], ("port must be a number", "'x'")),
        (["connect", "127.0.0.1:99999"], ("out of range",)),
        (["connect"], ("HOST",)),
    ]
    results = run_many([[*P2PCTL, "--home", str(alice.home), *args] for args, _ in bad])
    for (_, needles), proc in zip(bad, results):
        usage_error(proc, *needles)

    one_line_error(alice.ctl("connect", alice.addr, check=False), exitcodes.FAILED, "itself")

    # something accepts the connection but never answers: the daemon gives up after --timeout and
    # says so (plain and --json, side by side).  A port where nothing listens: test_cli_consistency.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        key_port = silent.getsockname()[1]
        t0 = time.monotonic()
        plain, as_json = run_many([[*P2PCTL, "--home", str(alice.home), *flags, "--timeout", "1", "connect", "127.0.0.1", str(key_port - 2)]
                                   for flags in ([], ["--json"])])
        elapsed = time.monotonic() - t0
    one_line_error(plain, exitcodes.TIMEOUT, "no answer", f"127.0.0.1:{key_port - 2}", "is p2pd running there")
    assert plain.stdout == ""
    assert 1.0 <= elapsed < 5.0, elapsed
    line = one_line_error(as_json, exitcodes.TIMEOUT, "no answer")
    assert json.loads(as_json.stdout) == {"ok": False, "code": "unreachable", "error": line.removeprefix("p2pctl: ")}
    assert alice.call("peers") == []


# --------------------------------------------------------------------------- start


def test_second_daemon_on_the_same_home_is_refused(make_node):
    alice = make_node("alice")
    alice.start()
    proc = alice.start(check=False)
    if proc.returncode == 0:  # a bug: make sure the fixture kills it
        alice.pids.append(json.loads(proc.stdout)["pid"])
    one_line_error(proc, exitcodes.CONFLICT, "already running", f"pid {alice.pid}", f"p2pd stop --home {alice.home}")

    # the same in the foreground (as under systemd); a daemon that did start would hit the timeout and be killed
    proc = run([*P2PD, "start", "--foreground", "--home", str(alice.home), "--port", "0"], timeout=20)
    one_line_error(proc, exitcodes.CONFLICT, "already running", f"p2pd stop --home {alice.home}")

    # the running daemon was not disturbed (its control socket is still there)
    st = alice.call("status")
    assert st["pid"] == alice.pid and pid_alive(alice.pid)


def test_start_on_a_port_in_use_fails_and_leaves_nothing_running(make_node):
    bob = make_node("bob")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        for kwargs, extra, flag in (({"port": port}, (), "--port"), ({"port": 0}, ("--pub-port", str(port)), "--pub-port")):
            proc = bob.start(*extra, check=False, **kwargs)
            if proc.returncode == 0:
                bob.pids.append(json.loads(proc.stdout)["pid"])
            one_line_error(proc, exitcodes.CONFLICT, f"port {port}", "already in use", flag)
            assert p2pd("status", "--home", str(bob.home)).returncode == exitcodes.NOT_RUNNING
            assert not Home(bob.home).socket_path.exists()
            assert not (bob.home / "p2pd.pid").exists()
        # in the foreground the daemon also logs to stderr; its last line is the same one-line error
        proc = run([*P2PD, "start", "--foreground", "--home", str(bob.home), "--port", str(port)], timeout=20)
        assert proc.returncode == exitcodes.CONFLICT, proc
        last = proc.stderr.splitlines()[-1]
        assert last.startswith("p2pd: ") and f"port {port}" in last and "already in use" in last and "--port" in last, proc.stderr
    # the failed starts left nothing behind that blocks a good one
    bob.start()
    assert bob.ctl("status").returncode == 0


def test_a_dead_daemons_pid_given_to_another_process_is_not_taken_for_it(make_node):
    bob = make_node("bob")
    bob.start()
    bob.kill9()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # ours, killed below
    try:
        (bob.home / "p2pd.pid").write_text(f"{other.pid}\n")  # as if the OS had reused the pid
        assert Home(bob.home).socket_path.exists()  # kill -9 left the socket behind
        line = one_line_error(bob.ctl("--timeout", "1", "info", check=False), exitcodes.NOT_RUNNING, "not running",
                              f"pid {other.pid} now belongs to another process", start_hint(bob.home))
        assert "did not answer" not in line
        assert p2pd("status", "--home", str(bob.home)).returncode == exitcodes.NOT_RUNNING
        assert other.poll() is None  # nobody signalled it
        bob.start()  # and the stale files do not block a start
        assert bob.ctl("status").returncode == 0
    finally:
        other.kill()
        other.wait(10)


def test_start_wait_is_checked_and_used(make_node, tmp_path):
    """`--wait`: how long `p2pd start` waits for the detached daemon (a busy machine needs longer)."""
    usage_error(p2pd("start", "--home", str(tmp_path / "w"), "--wait", "0.2"), "--wait")
    assert not (tmp_path / "w").exists()
    bob = make_node("bob")
    bob.start("--wait", "60")
    assert bob.ctl("status").returncode == 0


def test_stale_pidfile_does_not_block_a_start(daemon_pair):
    alice, bob = daemon_pair
    old_pid = bob.pid
    bob.kill9()
    wait_for(lambda: {p["name"]: p["state"] for p in alice.call("peers")}.get("bob") == "lost", timeout=6, what="alice to report bob lost")
    # a lost peer is not an error to send to: the message waits in the outbox
    assert "queued for bob" in alice.ctl("send", "bob", "are you there?").stdout

    # kill -9 left the pidfile and the control socket behind; make the pid surely dead (and reaped)
    (bob.home / "p2pd.pid").write_text(f"{dead_pid()}\n")
    assert Home(bob.home).socket_path.exists()
    assert p2pd("status", "--home", str(bob.home)).returncode == exitcodes.NOT_RUNNING
    one_line_error(bob.ctl("--timeout", "1", "info", check=False), exitcodes.NOT_RUNNING, "stale control socket", start_hint(bob.home))
    proc = bob.stop()
    assert proc.returncode == 0 and "not running" in proc.stdout, proc

    bob.start()
    assert bob.pid != old_pid and pid_alive(bob.pid)
    assert int((bob.home / "p2pd.pid").read_text()) == bob.pid
    wait_for(lambda: alice.alive_names() == {"bob"}, timeout=10, what="alice to re-link the restarted bob")
    alice.ctl("send", "bob", "welcome back")
    wait_for(lambda: [m["text"] for m in bob.call("inbox")] == ["are you there?", "welcome back"], what="bob's messages, in order")


def test_bad_config_is_a_usage_error_naming_the_file(make_node, tmp_path):
    carol = make_node("carol")
    cfg = carol.home / "p2pd.toml"
    good = cfg.read_text()
    other = tmp_path / "other.toml"
    other.write_text('port = "not closed\n')
    missing = tmp_path / "missing.toml"
    cases = [  # (the home's p2pd.toml, extra flags, what the error line must name)
        (good + "port = \n", [], (str(cfg), "not valid TOML")),
        (good, ["--config", str(other)], (str(other), "not valid TOML")),
        (good, ["--config", str(missing)], (str(missing), "does not exist")),
        (good + 'colour = "blue"\n', [], (str(cfg), "unknown setting", "colour")),
        (good.replace("heartbeat_timeout_s = 1.5", "heartbeat_timeout_s = -1"), [], ("heartbeat_timeout_s", "positive")),
        (good, ["--port", "70000"], ("port", "0-65535")),
        (good, ["--join", "nowhere"], ("nowhere", "HOST:PORT")),
    ]
    for text, extra, needles in cases:
        cfg.write_text(text)
        proc = run([*P2PD, "start", "--home", str(carol.home), *extra])
        if proc.returncode == 0:  # a bug: make sure the fixture kills it
            carol.pids.append(Home(carol.home).read_pid())
        line = one_line_error(proc, exitcodes.USAGE, *needles)
        assert line.startswith("p2pd: ")
    assert p2pd("status", "--home", str(carol.home)).returncode == exitcodes.NOT_RUNNING
    assert not Home(carol.home).socket_path.exists()


# --------------------------------------------------------------------------- --json, timeouts


def test_json_error_output(make_node, tmp_path):
    empty = tmp_path / "empty"
    for argv in ([*P2PCTL, "--home", str(empty), "--json", "info"], [*P2PCTL, "--home", str(empty), "info", "--json"]):
        proc = run(argv)
        line = one_line_error(proc, exitcodes.NOT_RUNNING)
        out = proc.stdout.splitlines()
        assert len(out) == 1, proc.stdout
        obj = json.loads(out[0])
        assert obj == {"ok": False, "code": "not_running", "error": line.removeprefix("p2pctl: ")}

    alice = make_node("alice")
    alice.start()
    proc = alice.ctl("--json", "send", "nobody", "hi", check=False)
    line = one_line_error(proc, exitcodes.FAILED, "p2pctl peers")
    obj = json.loads(proc.stdout)
    assert obj["ok"] is False and obj["code"] == "unknown_peer" and obj["error"] == line.removeprefix("p2pctl: ")
    # (--json for a timeout is checked in test_connect_errors)


def test_frozen_daemon_times_out_naming_its_pid(make_node):
    alice = make_node("alice")
    alice.start()
    os.kill(alice.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        proc = alice.ctl("--timeout", "1", "info", check=False)
        elapsed = time.monotonic() - t0
        one_line_error(proc, exitcodes.TIMEOUT, "did not answer", f"pid {alice.pid}", "within 1s", "--timeout", str(alice.home / "p2pd.log"))
        assert 1.0 <= elapsed < 5.0, elapsed
    finally:
        os.kill(alice.pid, signal.SIGCONT)
    assert alice.call("info")["pid"] == alice.pid  # thawed, it answers again


# --------------------------------------------------------------------------- ping, disconnect, stop


def test_ping_prints_rtt_and_disconnect_removes_the_peer_on_both_sides(daemon_pair):
    alice, bob = daemon_pair
    out = alice.ctl("ping", "bob").stdout
    m = re.fullmatch(r"pong from bob \(([0-9a-f]{12})\): (\d+\.\d{3}) ms\n", out)
    assert m, out
    assert m.group(1) == bob.id[:12] and float(m.group(2)) > 0
    res = bob.ctl_json("ping", alice.id[:10])
    assert res["peer"] == "alice" and res["id"] == alice.id and res["rtt_ms"] > 0

    out = alice.ctl("disconnect", "bob").stdout
    assert out.strip() == f"disconnected from bob ({bob.id[:12]})"
    assert alice.call("peers") == []
    # bob got alice's LEAVE: alice is gone from its table at once, not merely "lost"
    wait_for(lambda: bob.call("peers") == [], timeout=5, what="bob to drop alice on LEAVE")
    one_line_error(alice.ctl("disconnect", "bob", check=False), exitcodes.FAILED, "p2pctl peers")
    # bob is still in alice's address book: a message to it waits for it to come back
    assert "queued for bob" in alice.ctl("send", "bob", "hi").stdout
    one_line_error(alice.ctl("send", "nobody-here", "hi", check=False), exitcodes.FAILED, "p2pctl peers")
    assert pid_alive(alice.pid) and pid_alive(bob.pid)


def test_stop_via_p2pctl(daemon_pair):
    alice, bob = daemon_pair
    out = alice.ctl("stop").stdout
    assert out.strip() == f"p2pd stopped (pid {alice.pid})"
    assert not pid_alive(alice.pid)
    # alice sent her signed "left" and LEAVE: bob unlinks her at once instead of waiting for the
    # heartbeat timeout, and lists her as left (the network's member list, docs/SCALE.md)
    wait_for(lambda: [(p["id"], p["state"], p["linked"]) for p in bob.call("peers")] == [(alice.id, "left", False)],
             timeout=5, what="bob to list alice as left on LEAVE")
    one_line_error(alice.ctl("info", check=False), exitcodes.NOT_RUNNING, start_hint(alice.home))
    proc = alice.ctl("stop", check=False)
    assert proc.returncode == 0 and "not running" in proc.stdout, proc
    assert p2pd("status", "--home", str(alice.home)).returncode == exitcodes.NOT_RUNNING


def test_a_key_that_begins_with_a_dash_is_read_as_a_key_not_as_options():
    """Z85 keys may begin with "-" (1 in 85): `trust add KEY` once failed with "No such option"."""
    from p2pctl.cli import protect_keys

    key = "-OG&:FhX=3G}/Aw=CiaV6Htz:rtMN+38($7r#BHn"
    assert protect_keys(["--json", "trust", "add", key, "laptop"]) == ["--json", "trust", "add", "--", key, "laptop"]
    assert protect_keys(["known", "forget", key]) == ["known", "forget", "--", key]
    assert protect_keys(["trust", "add", "--help"]) == ["trust", "add", "--help"]  # not a key: left alone
    assert protect_keys(["send", "bob", key]) == ["send", "bob", key]  # other commands: untouched
