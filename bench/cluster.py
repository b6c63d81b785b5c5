"""Real p2pd daemons for the benchmarks: start, drive, measure, and always kill.

Every daemon gets its own home in a temporary directory, binds 127.0.0.1 on
ports the OS picks, and runs with default settings unless a workload passes
its own config.  `Cluster` kills every daemon it started, by pid, on exit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from p2pd.daemon import write_daemon_bytecode
from p2pd.home import pid_alive  # also treats a zombie as gone

P2PD = [sys.executable, "-m", "p2pd"]
P2PCTL = [sys.executable, "-m", "p2pctl"]


def wait_until(predicate, timeout_s: float, interval_s: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until truthy; raise TimeoutError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Daemon:
    def __init__(self, base: Path, name: str, config: str = ""):
        self.name = name
        self.home = base / name
        self.home.mkdir(parents=True)
        (self.home / "p2pd.toml").write_text('host = "127.0.0.1"\nlog_level = "warning"\n' + config)
        self.info: dict = {}
        self._client = None

    def start_cmd(self, *extra: str) -> list[str]:
        return [*P2PD, "start", "--home", str(self.home), "--name", self.name, "--port", "0", "--json", *extra]

    def started(self, stdout: str) -> None:
        self.info = json.loads(stdout)

    @property
    def pid(self) -> int:
        return self.info["pid"]

    @property
    def id(self) -> str:
        return self.info["id"]

    @property
    def port(self) -> int:
        return self.info["address"]["port"]

    def client(self):
        """One cached client connection (lazy import: the client imports zmq)."""
        if self._client is None:
            from p2pctl import Client

            self._client = Client(self.home, timeout_s=30.0)
        return self._client

    def call(self, cmd: str, **args):
        return self.client().call(cmd, **args)

    def peers(self) -> list[dict]:
        return self.call("peers")

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*P2PCTL, "--home", str(self.home), *args], capture_output=True, text=True, timeout=60)

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class Cluster:
    """A set of daemons in one temporary directory; ``with Cluster() as c:`` kills them all at the end."""

    def __init__(self, prefix: str = "p2pd-bench-"):
        write_daemon_bytecode()  # as an install has it: a measurement should not count compiling
        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        self.daemons: list[Daemon] = []

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, n: int, prefix: str = "n", config: str = "", extra: tuple[str, ...] = ()) -> list[Daemon]:
        """Start ``n`` daemons in parallel; return them once every control socket answers."""
        new = [Daemon(self.base, f"{prefix}{len(self.daemons) + i}", config) for i in range(n)]
        self.daemons.extend(new)
        procs = [subprocess.Popen(d.start_cmd(*extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in new]
        failures = []
        for d, p in zip(new, procs):  # collect every one, so that close() can kill all that did start
            out, err = p.communicate(timeout=120)
            if p.returncode == 0:
                d.started(out)
            else:
                failures.append(f"p2pd start {d.name} failed ({p.returncode}): {err.strip()}")
        if failures:
            raise RuntimeError("; ".join(failures))
        return new

    def close(self) -> None:
        for d in self.daemons:
            d.close()
            if d.info and pid_alive(d.pid):
                os.kill(d.pid, signal.SIGKILL)
        for d in self.daemons:
            if d.info:
                try:
                    wait_until(lambda: not pid_alive(d.pid), 10, what=f"{d.name} to exit")
                except TimeoutError:
                    pass
        shutil.rmtree(self.base, ignore_errors=True)


def link(a: Daemon, b: Daemon, timeout_s: float = 30.0) -> None:
    """``a`` connects to ``b``; return once each lists the other alive."""
    a.call("connect", host="127.0.0.1", port=b.port)
    wait_until(lambda: any(p["id"] == b.id and p["state"] == "alive" for p in a.peers())
               and any(p["id"] == a.id and p["state"] == "alive" for p in b.peers()),
               timeout_s, 0.02, what=f"{a.name} and {b.name} to link")
