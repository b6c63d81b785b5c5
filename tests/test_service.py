"""Running under systemd: readiness (sd_notify) and the unit files in configs/."""

from __future__ import annotations

import configparser
import os
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import P2PD, P2PCTL, FAST_CONFIG, wait_for

from p2pd import sdnotify

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
needs_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="sd_notify uses a unix datagram socket")


def listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)  # bounded: every wait below ends
    return sock


@needs_unix
def test_notify_sends_one_datagram_or_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False  # not under systemd: nothing to do
    sock = listener(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    assert sdnotify.notify("READY=1") is True
    assert sock.recv(4096) == b"READY=1"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False  # an error is not fatal
    sock.close()


@pytest.mark.slow  # runs p2pd/p2pctl processes
@needs_unix
def test_foreground_daemon_says_ready_once_it_answers_and_stopping_on_sigterm(tmp_path):
    home = tmp_path / "svc"
    home.mkdir()
    (home / "p2pd.toml").write_text(FAST_CONFIG)
    sock = listener(tmp_path / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    proc = subprocess.Popen([*P2PD, "start", "--foreground", "--home", str(home), "--port", "0", "--name", "svc"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\n") and f"MAINPID={proc.pid}" in ready and "STATUS=serving" in ready, ready
        # READY means requests are answered from now on
        status = subprocess.run([*P2PCTL, "--home", str(home), "status"], capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        proc.send_signal(signal.SIGTERM)  # what systemctl stop sends
        assert sock.recv(4096) == b"STOPPING=1"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sock.close()


@pytest.mark.parametrize("unit", ["p2pd.service", "p2pd-user.service"])
def test_unit_files(unit):
    cfg = configparser.ConfigParser(strict=False, interpolation=None)
    cfg.optionxform = str
    cfg.read(CONFIGS / unit)
    service = cfg["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert " start --foreground" in service["ExecStart"]
    from p2pd.daemon import MMAP_THRESHOLD

    assert service["Environment"] == f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}"  # as `p2pd start` sets it
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["RestartPreventExitStatus"] == "6"  # exitcodes.CONFLICT: retrying cannot help
    assert cfg["Install"]["WantedBy"]


def test_logrotate_snippet_needs_no_copytruncate():
    """p2pd reopens a renamed log by itself, so rotation by renaming loses no line."""
    lines = [ln.strip() for ln in (CONFIGS / "p2pd.logrotate").read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0].startswith("/var/lib/p2pd/p2pd.log") and "copytruncate" not in lines


@contextmanager
def foreground(home: Path, *extra: str):
    """`p2pd start --foreground` on ``home`` (as systemd runs it); killed by pid unless the test stopped it."""
    proc = subprocess.Popen([*P2PD, "start", "--foreground", "--home", str(home), "--port", "0", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def answers(home: Path) -> bool:
    return subprocess.run([*P2PCTL, "--home", str(home), "status"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow  # runs p2pd/p2pctl processes
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_the_log_level_and_reopens_the_log(tmp_path):
    home = tmp_path / "svc"
    home.mkdir()
    config = home / "p2pd.toml"
    config.write_text(FAST_CONFIG.replace('log_level = "debug"', 'log_level = "info"'))
    log = home / "p2pd.log"
    with foreground(home, "--name", "svc") as proc:
        wait_for(lambda: answers(home), timeout=30, what="the daemon to answer")
        os.rename(log, home / "p2pd.log.1")  # as logrotate would
        config.write_text(FAST_CONFIG.replace('host = "127.0.0.1"', 'host = "127.0.0.1"\nmax_peers = 10'))  # debug again, and a restart-only change
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log.exists() and "reloaded configuration (SIGHUP): log_level=debug" in log.read_text(), timeout=10,
                 what="the reload line in a new log file")
        assert "applied at the next restart: max_peers" in log.read_text()
        config.write_text("log_level = \"shouting\"\n")  # a broken config: reported, the node carries on
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload (SIGHUP) failed" in log.read_text(), timeout=10, what="the failed reload to be logged")
        assert proc.poll() is None and answers(home)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@pytest.mark.slow  # runs p2pd/p2pctl processes
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reads_a_config_file_written_after_the_start(tmp_path):
    home = tmp_path / "late"
    home.mkdir()
    log = home / "p2pd.log"
    with foreground(home, "--host", "127.0.0.1", "--name", "late") as proc:
        wait_for(lambda: answers(home), timeout=30, what="the daemon to answer")
        (home / "p2pd.toml").write_text('log_level = "debug"\n')
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded configuration (SIGHUP): log_level=debug" in log.read_text(), timeout=10, what="the new file to be read")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@needs_unix
def test_a_store_migration_asks_systemd_for_more_time(tmp_path, monkeypatch):
    """Without it a long migration outlasts TimeoutStartSec: systemd kills it, it rolls back, restarts."""
    from p2pd import daemon

    sock = listener(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    daemon._migrating(1, 2)
    got = sock.recv(4096).decode()
    sock.close()
    assert f"EXTEND_TIMEOUT_USEC={daemon.MIGRATION_GRACE_S * 1_000_000}" in got.splitlines()
    assert "STATUS=migrating the message store (format 1 to 2)" in got
