"""`p2pctl logs`: the last lines of the daemon's log, and following it across a rotation."""

from __future__ import annotations

import pytest

import os
import subprocess
import threading
import time

from conftest import P2PCTL, wait_for

from p2pctl.logtail import follow_lines, last_lines


def test_last_lines(tmp_path):
    log = tmp_path / "p2pd.log"
    assert last_lines(log, 5) == []
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert last_lines(log, 3) == ["line 97", "line 98", "line 99"]
    assert last_lines(log, 0) == [] and len(last_lines(log, 1000)) == 100


def test_follow_reads_appends_and_survives_a_rotation(tmp_path):
    log = tmp_path / "p2pd.log"
    log.write_text("old line\n")
    got: list[str] = []
    done = threading.Event()

    def reader():
        for line in follow_lines(log, poll_s=0.01, stop=done.is_set):
            got.append(line)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.1)  # let the follower open the file and go to its end (not a synchronisation of the result)
    with open(log, "a") as f:
        f.write("one\ntw")
    wait_for(lambda: got == ["one"], timeout=5, what="the appended line")
    with open(log, "a") as f:
        f.write("o\n")
    wait_for(lambda: got == ["one", "two"], timeout=5, what="a line finished in two writes")
    os.rename(log, tmp_path / "p2pd.log.1")  # logrotate: rename, then the daemon opens a new file
    log.write_text("three\n")
    wait_for(lambda: got == ["one", "two", "three"], timeout=5, what="the first line of the new file")
    done.set()
    t.join(5)
    assert "old line" not in got


def test_p2pctl_logs_prints_and_follows_a_running_node(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    out = alice.ctl("logs", "-n", "5").stdout.splitlines()
    assert 0 < len(out) <= 5 and any("p2pd" in line or "listening" in line.lower() for line in out), out
    proc = subprocess.Popen([*P2PCTL, "--home", str(alice.home), "logs", "-f", "-n", "0"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # the follower is at the end of the file; a line written now must show (bounded wait below)
        alice.ctl("connect", bob.addr)  # logs "peer joined: bob"
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        wait_for(lambda: any("peer joined: bob" in line for line in lines), timeout=20, what="the new log line to be followed")
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.slow  # runs p2pd/p2pctl processes
def test_p2pctl_logs_without_a_log_names_the_fix(tmp_path):
    proc = subprocess.run([*P2PCTL, "--home", str(tmp_path / "nobody"), "logs"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "no log at" in proc.stderr and "p2pd start --home" in proc.stderr
