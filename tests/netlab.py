"""A small network of hosts on one Linux machine, for tests that must cross a real network.

How it works: every lab host is a network namespace (``ip netns``) with one interface,
``e0``, addressed 10.231.0.N/24.  Its other end sits in the lab's "switch" namespace,
attached to bridge ``br0``.  A partition moves some hosts' switch ports to a second,
unconnected bridge ``br1`` (both sides keep running, neither hears the other); healing
moves them back.  A lab may have a second subnet, B: hosts added with ``side="b"`` are
10.232.0.N/24 on their own bridge ``br2`` (partitions there use ``br3``), which no
wire joins to ``br0``.  A dual-homed host (`Lab.add_dual_host`) has one interface on each,
``e0`` on A and ``e1`` on B, and does not forward between them (``ip_forward`` 0, and it
answers ARP only for the address of the interface asked on), so A and B hosts can reach
each other only through the daemons.  A host created ``impaired`` is wired through tests/netem_relay.py
instead of straight to the bridge, which drops and delays what that host sends, as
``tc qdisc ... netem`` on its interface would (that qdisc is missing from some
kernels, this one included).  One ``p2pd`` runs in each
host, started and driven with the real programs through ``ip netns exec``.

Nothing here touches the machine's own interfaces or routes: every address, bridge and
link lives inside namespaces the lab created, and ``close()`` deletes them all (and kills
the processes it started, by pid), also when the test failed.  Tests that need the lab
are skipped, with the reason, where the machine cannot make namespaces (not root, no
``ip``, no permission).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from conftest import Daemon, pid_alive, wait_for

SUBNET = "10.231.0"
# side -> (first three octets, the bridge its hosts sit on, the bridge a partition moves them to)
SIDES = {"a": (SUBNET, "br0", "br1"), "b": ("10.232.0", "br2", "br3")}
PREFIX = "p2l"  # namespace names: p2l<pid>-sw, p2l<pid>-h<N>
RELAY = Path(__file__).with_name("netem_relay.py")

LAB_CONFIG = """\
host = "0.0.0.0"
heartbeat_interval_s = {interval}
heartbeat_timeout_s = {timeout}
gossip_interval_s = 2.0
retry_min_s = 0.2
retry_max_s = 1.0
log_level = "debug"
"""

# ethtool ioctls: frames read from a veth with AF_PACKET keep the sender's offloads
# (a checksum still to be filled in, 64 KiB TSO segments); the relay can only pass
# on finished, MTU-sized frames, so every host sends those (any may talk to an impaired one).
_OFFLOADS_OFF = """\
import array, fcntl, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for cmd in (0x2c, 0x24, 0x1f, 0x19, 0x17):  # GRO, GSO, TSO, scatter-gather, tx checksum
    ev = array.array("I", [cmd, 0])
    fcntl.ioctl(s, 0x8946, struct.pack("16sP", sys.argv[1].encode(), ev.buffer_info()[0]))
"""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def unavailable() -> str | None:
    """Why this machine cannot run the lab, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    proc = run("ip", "netns", "add", probe, check=False)
    if proc.returncode != 0:
        return f"cannot create a network namespace: {proc.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


def remove_stale() -> None:
    """Delete namespaces that an earlier lab of ours left behind (its test process is gone)."""
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX):].split("-")[0]
        if owner.isdigit() and int(owner) != os.getpid() and not pid_alive(int(owner)):
            run("ip", "netns", "del", name, check=False)


class LabHost(Daemon):
    """A p2pd node living in its own namespace; every command it runs goes through ``ip netns exec``."""

    def __init__(self, lab: "Lab", index: int, base: Path, name: str, registry: list, side: str = "a"):
        super().__init__(base, name, registry)
        self.lab = lab
        self.index = index
        self.side = side
        self.ns = f"{lab.tag}-h{index}"
        self.ip = f"{SIDES[side][0]}.{index}"
        self.ips = {side: self.ip}  # side -> this host's address there (two for a dual-homed host)
        self.prefix = ["ip", "netns", "exec", self.ns]

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    def configure(self, interval: float = 0.2, timeout: float = 1.5, extra: str = "") -> None:
        (self.home / "p2pd.toml").write_text(LAB_CONFIG.format(interval=interval, timeout=timeout) + extra)

    def sh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(*self.prefix, *args, check=check)


class Lab:
    def __init__(self, base: Path):
        self.tag = f"{PREFIX}{os.getpid()}"
        self.base = base
        self.sw = f"{self.tag}-sw"
        self.hosts: list[LabHost] = []
        self.registry: list[Daemon] = []
        self.ports: dict[int, str] = {}  # host index -> its port on the switch
        self.side_ports: dict[tuple[int, str], str] = {}  # (host index, side) -> its port on that side's bridge
        self.home_bridge: dict[str, str] = {}  # switch port -> the bridge it belongs on (heal puts it back)
        self.relays: list[subprocess.Popen] = []
        self.namespaces: list[str] = []
        remove_stale()
        try:
            self._netns(self.sw)
            for br in ("br0", "br1", "br2", "br3"):
                run("ip", "-n", self.sw, "link", "add", br, "type", "bridge")
                run("ip", "-n", self.sw, "link", "set", br, "up")
        except BaseException:
            self.close()  # the caller never gets the lab to close
            raise

    def _netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str, impaired: tuple[float, float] | None = None, both_ways: bool = False,
                 side: str = "a") -> LabHost:
        """A new host on br0 (``side="b"``: on subnet B's bridge, br2); ``impaired=(loss, delay_s)``
        puts the relay between it and the bridge, dropping and delaying what the host sends
        (``tc qdisc add dev e0 root netem loss L delay D``), and with ``both_ways`` also what it receives."""
        index = len(self.hosts) + 1
        host = LabHost(self, index, self.base, name, self.registry, side)
        self._netns(host.ns)
        port = self._wire(host, side, "e0", f"h{index}")
        # the lab is the host's whole world: even 255.255.255.255 (LAN beacons) has a route, into the lab
        run("ip", "-n", host.ns, "route", "add", "default", "dev", "e0")
        if impaired is None:
            self._attach(host, side, port)
            self.ports[index] = port
        else:
            if side != "a":
                raise ValueError("impaired hosts sit on subnet A")
            self._impair(host, port, *impaired, both_ways=both_ways)
        host.configure()
        self.hosts.append(host)
        return host

    def add_dual_host(self, name: str) -> LabHost:
        """A host with one interface on each subnet: ``e0`` on A (``host.ip``, ``host.ips["a"]``) and
        ``e1`` on B (``host.ips["b"]``).  It forwards nothing between them, and answers ARP only for
        the address of the interface asked on: A hosts cannot even reach its B address."""
        index = len(self.hosts) + 1
        host = LabHost(self, index, self.base, name, self.registry, "a")
        self._netns(host.ns)
        host.ips["b"] = f"{SIDES['b'][0]}.{index}"
        for key, value in (("net.ipv4.ip_forward", "0"), ("net.ipv4.conf.all.forwarding", "0"),
                           ("net.ipv4.conf.all.arp_ignore", "1"), ("net.ipv4.conf.all.arp_announce", "2")):
            host.sh("sysctl", "-q", "-w", f"{key}={value}")
        for side, dev in (("a", "e0"), ("b", "e1")):
            port = self._wire(host, side, dev, f"h{index}{side}")
            self._attach(host, side, port)
        self.ports[index] = self.side_ports[(index, "a")]
        host.configure()
        self.hosts.append(host)
        return host

    def _wire(self, host: LabHost, side: str, dev: str, port: str) -> str:
        """A veth from the switch (``port``) to ``dev`` in the host, addressed on ``side``'s subnet."""
        run("ip", "-n", self.sw, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", host.ns)
        run("ip", "-n", host.ns, "addr", "add", f"{host.ips[side]}/24", "dev", dev)
        run("ip", "-n", host.ns, "link", "set", dev, "up")
        host.sh(sys.executable, "-c", _OFFLOADS_OFF, dev)
        run("ip", "-n", self.sw, "link", "set", port, "up")
        return port

    def _attach(self, host: LabHost, side: str, port: str) -> None:
        bridge = SIDES[side][1]
        run("ip", "-n", self.sw, "link", "set", port, "master", bridge)
        self.side_ports[(host.index, side)] = port
        self.home_bridge[port] = bridge

    def _impair(self, host: LabHost, port: str, loss: float, delay_s: float, both_ways: bool = False) -> None:
        a, b = f"r{host.index}a", f"r{host.index}b"
        run("ip", "-n", self.sw, "link", "add", a, "type", "veth", "peer", "name", b)
        for dev in (port, a):
            run("ip", "-n", self.sw, "link", "set", dev, "promisc", "on")
        for dev in (a, b):
            run("ip", "-n", self.sw, "link", "set", dev, "up")
        run("ip", "-n", self.sw, "link", "set", b, "master", "br0")
        self.ports[host.index] = b
        self.side_ports[(host.index, "a")] = b
        self.home_bridge[b] = "br0"
        relay = subprocess.Popen(
            ["ip", "netns", "exec", self.sw, sys.executable, str(RELAY), port, a,
             "--loss", str(loss), "--delay", str(delay_s), "--seed", str(host.index), *(["--both"] if both_ways else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.relays.append(relay)
        line = relay.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"netem relay did not start: {line!r} {relay.stderr.read()}")

    # -------------------------------------------------------------- faults
    def partition(self, *cut_off: LabHost) -> None:
        """Move these hosts to the other bridge: two halves that cannot hear each other."""
        for h in cut_off:
            run("ip", "-n", self.sw, "link", "set", self.ports[h.index], "master", SIDES[h.side][2])

    def cut(self, host: LabHost, side: str) -> None:
        """Move ``host``'s port on ``side`` to that side's partition bridge: for a dual-homed host,
        the two subnets are no longer joined (each daemon keeps running)."""
        run("ip", "-n", self.sw, "link", "set", self.side_ports[(host.index, side)], "master", SIDES[side][2])

    def heal(self) -> None:
        for port, bridge in self.home_bridge.items():
            run("ip", "-n", self.sw, "link", "set", port, "master", bridge)

    def readdress(self, host: LabHost, new_index: int) -> None:
        """Give ``host`` a new address on the same subnet (the old one disappears)."""
        run("ip", "-n", host.ns, "addr", "flush", "dev", "e0")
        host.ip = host.ips[host.side] = f"{SIDES[host.side][0]}.{new_index}"
        run("ip", "-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "e0")

    def stop_relays(self) -> list[tuple[int, int]]:
        """Stop the netem relays; (frames passed, frames dropped) for each."""
        figures = []
        for relay in self.relays:
            if relay.poll() is None:
                relay.terminate()
            out, _ = relay.communicate(timeout=10)
            words = out.split()
            figures.append((int(words[words.index("passed") + 1]), int(words[words.index("dropped") + 1])))
        self.relays = []
        return figures

    # -------------------------------------------------------------- teardown
    def close(self) -> None:
        for node in self.registry:
            for pid in node.pids:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        for node in self.registry:
            for pid in node.pids:
                wait_for(lambda: not pid_alive(pid), 10, what=f"pid {pid} to exit")
        for relay in self.relays:
            if relay.poll() is None:
                relay.kill()
            relay.wait(10)
        for name in reversed(self.namespaces):
            run("ip", "netns", "del", name, check=False)


def alive_view(host: LabHost) -> set:
    """Names ``host`` reports alive, through the real p2pctl in its namespace."""
    proc = host.ctl("--json", "peers", check=False)
    if proc.returncode != 0:
        return set()
    return {p["name"] for p in json.loads(proc.stdout) if p["state"] == "alive"}
