"""Test harness: real p2pd daemons on loopback, driven by the real p2pctl.

Every node gets its own home under pytest's tmp dir, binds 127.0.0.1 on a
free block of ports below the OS's ephemeral range (see `free_port_block`),
and uses fast heartbeat settings from a config file in its home.  Every daemon started is killed by pid at teardown.
Waiting is always "poll a condition until a deadline", never a bare sleep.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

FAST_CONFIG = """\
host = "127.0.0.1"
heartbeat_interval_s = 0.2
heartbeat_timeout_s = 1.5
gossip_interval_s = 2.0
retry_min_s = 0.2
retry_max_s = 1.0
log_level = "debug"
"""


def command(name: str) -> list[str]:
    """The installed console script, or ``python -m`` when it is not on this interpreter's bin."""
    path = BIN / name
    return [str(path)] if path.exists() else [sys.executable, "-m", name]


P2PD = command("p2pd")
P2PCTL = command("p2pctl")


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail with the last value at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


AUTO_PORT = -1  # Daemon.start: a free block from free_port_block


def free_port_block(span: int = 3) -> int:
    """A port P with P..P+span-1 free on 127.0.0.1 (peer, broadcast and key port), below the
    ephemeral range (32768+ on Linux).  A port the OS picks for ``--port 0`` comes from that
    range, and a test that restarts a node on its old port could find it taken meanwhile by
    some process's outgoing connection; below the range only a listener can take it."""
    for _ in range(500):
        port = random.randrange(20000, 32700 - span)
        socks = []
        try:
            for q in range(port, port + span):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", q))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of ports found in 20000-32700")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours still "exists": treat it as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class Daemon:
    """One p2pd daemon process in its own home, driven through p2pctl (the pure node is `p2pd.node.Node`)."""

    def __init__(self, base: Path, name: str, registry: list):
        self.name = name
        self.home = base / name
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "p2pd.toml").write_text(FAST_CONFIG)
        self.info: dict = {}
        self.pids: list[int] = []
        self.prefix: list[str] = []  # e.g. ip netns exec NS, for the lab hosts of tests/netlab.py
        self._registry = registry
        registry.append(self)

    # -------------------------------------------------------------- processes
    def start(self, *extra: str, port: int | None = AUTO_PORT, check: bool = True) -> subprocess.CompletedProcess:
        """``port``: AUTO_PORT (a free block, see free_port_block), a number, or None for no --port flag."""
        for _ in range(5):
            args = [*self.prefix, *P2PD, "start", "--home", str(self.home), "--name", self.name, "--json", *extra]
            chosen = free_port_block() if port == AUTO_PORT else port
            if chosen is not None:
                args += ["--port", str(chosen)]
            proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
            if not (port == AUTO_PORT and proc.returncode == 6 and "already in use" in proc.stderr):
                break  # else another test's daemon took the block between our check and the bind
        if proc.returncode == 0:  # registered even when the caller expected a refusal: killed at teardown
            self.info = json.loads(proc.stdout)
            self.pids.append(self.info["pid"])
        if check:
            assert proc.returncode == 0, f"p2pd start {self.name} failed ({proc.returncode}): {proc.stderr}"
        return proc

    @property
    def id(self) -> str:
        return self.info["id"]

    @property
    def pid(self) -> int:
        return self.info["pid"]

    @property
    def port(self) -> int:
        return self.info["address"]["port"]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(self.pid), 10, what=f"{self.name} to die")

    def stop(self) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, *P2PD, "stop", "--home", str(self.home)], capture_output=True, text=True, timeout=60)

    # -------------------------------------------------------------- p2pctl
    def ctl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.prefix, *P2PCTL, "--home", str(self.home), *args], capture_output=True, text=True, input=input, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"p2pctl {' '.join(args)} on {self.name} failed ({proc.returncode}): {proc.stderr}"
        return proc

    def ctl_json(self, *args: str):
        return json.loads(self.ctl("--json", *args).stdout)

    def peers(self) -> dict:
        """name -> peer dict, via the real CLI."""
        return {p["name"]: p for p in self.ctl_json("peers")}

    def client(self):
        from p2pctl import Client

        return Client(self.home, timeout_s=5.0)

    def call(self, cmd: str, **args):
        """A quick control call through the client library (for polling)."""
        with self.client() as c:
            return c.call(cmd, **args)

    def alive_names(self) -> set:
        return {p["name"] for p in self.call("peers") if p["state"] == "alive"}

    def log_text(self) -> str:
        try:
            return (self.home / "p2pd.log").read_text()
        except OSError:
            return ""


# Tests that start processes (a daemon, p2pctl, a network lab): marked `slow` here, by the fixtures
# they use, so that `pytest -m "not slow"` is the fast inner loop (the pure and in-memory layer) and
# a new process test cannot forget its marker.  Tests that run processes without these fixtures
# carry @pytest.mark.slow themselves.
PROCESS_FIXTURES = {"make_node", "lab", "daemon", "foreground"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_sessionstart(session):
    """The daemon runs under ``python -OO``, whose bytecode pip does not write: a daemon writes it
    on its first start, unless PYTHONDONTWRITEBYTECODE is set (as on the CI machine), and then
    every one of the suite's hundreds of daemons compiles every module at its start (0.1 s of
    CPU each).  Written once here, as an installation would (docs/OPERATIONS.md)."""
    from p2pd.daemon import write_daemon_bytecode

    write_daemon_bytecode()


@pytest.fixture
def make_node(tmp_path):
    registry: list[Daemon] = []

    def factory(name: str) -> Daemon:
        return Daemon(tmp_path, name, registry)

    yield factory
    for node in registry:
        for pid in node.pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemon_trio(make_node):
    """Three daemons, alice, bob and charlie, started, nothing linked (memnet's `mem_trio`: in-memory nodes)."""
    nodes = [make_node(n) for n in ("alice", "bob", "charlie")]
    for n in nodes:
        n.start()
    return nodes


# ---------------------------------------------------------------------------- raw pyzmq peers


@pytest.fixture
def zctx():
    """A ZeroMQ context for raw test peers, destroyed after the test."""
    import zmq

    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def envelope(type_: str, sender: str, data: dict | None = None, /, target: str | None = None, name: str = "mallory", **override) -> dict:
    """A well-formed envelope (docs/PROTOCOL.md) that tests then send, or spoil field by field."""
    from p2pd.protocol import PROTOCOL_VERSION

    env = {
        "v": PROTOCOL_VERSION,
        "id": uuid.uuid4().hex,
        "type": type_,
        "sender_id": sender,
        "sender_name": name,
        "timestamp": "2026-01-01T00:00:00.000Z",
        "data": data if data is not None else {},
        "target_id": target,
    }
    env.update(override)
    return env


def enc(obj) -> bytes:
    return json.dumps(obj).encode()
