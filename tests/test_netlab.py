"""Scenarios across a real (namespaced) network: discovery, a 3+2 partition, loss and delay, a new address.

Each test builds its own lab (tests/netlab.py): hosts 10.231.0.N in their own network
namespaces, one p2pd each on port 7000 bound to 0.0.0.0, driven with p2pctl through
``ip netns exec``.  Skipped, with the reason, where the machine cannot make namespaces.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from conftest import wait_for
from netlab import Lab, alive_view, unavailable

_why = unavailable()
pytestmark = [pytest.mark.skipif(_why is not None, reason=f"lab unavailable: {_why}"), pytest.mark.timeout(240)]

PORT = "7000"


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def start(*hosts) -> None:
    for h in hosts:
        h.start(port=int(PORT))


def link_chain(hosts, timeout: float = 30) -> None:
    """Introduce each host to the one before it only, then wait until everyone lists everyone alive.

    Under loss one connect can take many seconds: a lost SYN costs 1 s, then 3 s, and after a
    retransmitted SYN Linux starts the connection with a 3 s retransmission timeout."""
    for prev, h in zip(hosts, hosts[1:]):
        h.ctl("--timeout", str(timeout), "connect", prev.ip, PORT, timeout=timeout + 15)
    names = {h.name for h in hosts}
    for h in hosts:
        wait_for(lambda h=h: alive_view(h) == names - {h.name}, timeout, interval=0.2, what=f"{h.name} to list everyone alive")


def states(host) -> dict:
    return {p["name"]: p["state"] for p in host.ctl_json("peers")}


def texts_from(host, sender: str) -> Counter:
    return Counter(m["text"] for m in host.call("inbox", limit=0) if m["sender_name"] == sender)


def outbox_empty(host) -> bool:
    return host.call("outbox") == []


def test_five_hosts_discover_each_other_from_one_introduction(lab):
    hosts = [lab.add_host(f"h{i}") for i in range(1, 6)]
    start(*hosts)
    t0 = time.monotonic()
    link_chain(hosts)
    took = time.monotonic() - t0
    # addresses are the namespaces' own, learned from the connections (every node binds 0.0.0.0)
    seen = {p["name"]: p["address"].rsplit(":", 1)[0] for p in hosts[0].ctl_json("peers")}
    assert seen == {h.name: h.ip for h in hosts[1:]}
    out = hosts[4].ctl("send", "--wait", "10", "h1", "hello across the lab").stdout
    assert "delivered" in out
    assert texts_from(hosts[0], "h5") == {"hello across the lab": 1}
    print(f"five hosts linked in {took:.2f} s")


def test_partition_3_2_reports_lost_then_heals_and_delivers_exactly_once(lab):
    hosts = [lab.add_host(f"h{i}") for i in range(1, 6)]
    start(*hosts)
    link_chain(hosts)
    h1, h2, h3, h4, h5 = hosts
    big, small = {"h1", "h2", "h3"}, {"h4", "h5"}

    lab.partition(h4, h5)
    t0 = time.monotonic()
    detected = []  # seconds from the split until each host marked each peer across it lost (its own clock)
    for h in hosts:
        mine, theirs = (big, small) if h.name in big else (small, big)
        wait_for(lambda h=h, theirs=theirs: all(states(h)[n] == "lost" for n in theirs), 20, interval=0.2,
                 what=f"{h.name} to report the other side lost")
        asked = time.monotonic()
        detected += [asked - p["state_for_s"] - t0 for p in h.ctl_json("peers") if p["name"] in theirs]
        assert alive_view(h) == mine - {h.name}
    split_s = time.monotonic() - t0
    assert max(detected) < 1.5 + 3.0, detected  # heartbeat_timeout_s 1.5, plus ticks and a loaded machine

    # messages across the split: queued, not lost
    across = [f"h1->h4 {i}" for i in range(40)]
    with h1.client() as c:
        c.send_many("h4", across)
    back = [f"h5->h2 {i}" for i in range(40)]
    with h5.client() as c:
        c.send_many("h2", back)
    assert "queued" in h3.ctl("send", "h5", "one from h3").stdout
    h2.ctl("broadcast", "news during the split")
    # keep the split longer than the heartbeat timeout (1.5 s) beyond the detection itself
    wait_for(lambda: time.monotonic() - t0 > split_s + 2.0, 10, what="the split to last")
    assert texts_from(h4, "h1") == Counter()

    lab.heal()
    t1 = time.monotonic()
    names = {h.name for h in hosts}
    for h in hosts:
        wait_for(lambda h=h: alive_view(h) == names - {h.name}, 30, interval=0.2, what=f"{h.name} to see everyone again")
    for h in (h1, h5, h3):
        wait_for(lambda h=h: outbox_empty(h), 30, interval=0.2, what=f"{h.name}'s outbox to drain")
    wait_for(lambda: texts_from(h4, "h2").get("news during the split") == 1, 30, what="h4 to fetch the missed broadcast")
    wait_for(lambda: texts_from(h5, "h2").get("news during the split") == 1, 30, what="h5 to fetch the missed broadcast")
    heal_s = time.monotonic() - t1
    assert texts_from(h4, "h1") == Counter(across)
    assert texts_from(h2, "h5") == Counter(back)
    assert texts_from(h5, "h3") == {"one from h3": 1}
    for h in (h1, h2, h3):  # the majority had the broadcast all along, once
        if h is not h2:
            assert texts_from(h, "h2") == {"news during the split": 1}
    print(f"split: peers across it marked lost {min(detected):.2f}-{max(detected):.2f} s after it (timeout 1.5 s), "
          f"all five checked after {split_s:.2f} s; healed and drained in {heal_s:.2f} s")


def test_a_long_partition_of_full_views_merges_again_without_bootstraps(lab):
    """Eight hosts with an active view of 3 (so every view is full and a plain NEIGHBOR request
    across the mended cut would be refused), met through ``connect`` only: cut 4+4 until each
    side lists the other lost (dead, past the suspicion timer), then mended.  The retries of the
    links the cut lost are the only bridge; each side must list every node alive again, and
    stay so (PROTOCOL.md 12.2, merging)."""
    hosts = [lab.add_host(f"h{i}") for i in range(1, 9)]
    for h in hosts:
        h.configure(extra="active_view = 3\n")
    start(*hosts)
    link_chain(hosts, timeout=60)
    names = {h.name for h in hosts}
    left, right = hosts[:4], hosts[4:]
    lab.partition(*right)
    for h in hosts:
        theirs = {o.name for o in (right if h in left else left)}
        wait_for(lambda h=h, theirs=theirs: all(states(h).get(n) == "lost" for n in theirs), 60, interval=0.5,
                 what=f"{h.name} to list the other side lost")
    lab.heal()
    t0 = time.monotonic()
    for h in hosts:
        wait_for(lambda h=h: alive_view(h) == names - {h.name}, 60, interval=0.5, what=f"{h.name} to list everyone alive again")
    merged_s = time.monotonic() - t0
    wait_for(lambda: time.monotonic() - t0 > merged_s + 15, 30, what="15 s more: past the sweep of links and the route checks")
    for h in hosts:
        assert alive_view(h) == names - {h.name}, h.name
    print(f"4+4 cut with full views mended: every host lists all seven alive {merged_s:.1f} s after the heal")


@pytest.mark.timeout(420)  # every wait below is bounded; together they could pass 240 s on a very unlucky run
def test_loss_and_delay_slow_things_down_but_lose_nothing(lab):
    h1 = lab.add_host("h1")
    h2 = lab.add_host("h2", impaired=(0.20, 0.050))  # netem loss 20% delay 50ms on h2's interface (what h2 sends)
    h3 = lab.add_host("h3")
    for h in (h1, h2, h3):
        h.configure(interval=0.5, timeout=10.0)  # TCP retransmits under 20% loss can stall a link for seconds
    start(h1, h2, h3)
    t0 = time.monotonic()
    link_chain([h1, h2, h3], timeout=90)
    link_s = time.monotonic() - t0

    to_h1 = [f"h2->h1 {i}" for i in range(300)]
    to_h2 = [f"h3->h2 {i}" for i in range(300)]
    news = [f"h2 news {i}" for i in range(50)]
    t1 = time.monotonic()
    with h2.client() as c:
        c.send_many("h1", to_h1)
        c.broadcast_many(news)
    with h3.client() as c:
        c.send_many("h2", to_h2)
    for h in (h2, h3):
        wait_for(lambda h=h: outbox_empty(h), 120, interval=0.25, what=f"{h.name}'s outbox to drain over the lossy link")
    for h in (h1, h3):
        wait_for(lambda h=h: sum(texts_from(h, "h2")[t] for t in news) == len(news), 60, what=f"{h.name} to get h2's broadcasts")
    deliver_s = time.monotonic() - t1
    assert texts_from(h1, "h2") == Counter(to_h1 + news)
    assert texts_from(h3, "h2") == Counter(news)
    assert texts_from(h2, "h3") == Counter(to_h2)
    passed, dropped = lab.stop_relays()[0]
    assert dropped > 0.1 * (passed + dropped), f"the relay dropped only {dropped} of {passed + dropped} frames"
    print(f"lossy lab: linked in {link_s:.2f} s, 650 messages exactly once in {deliver_s:.2f} s; "
          f"relay passed {passed}, dropped {dropped} frames")


@pytest.mark.timeout(300)
def test_connect_over_loss_both_ways_completes(lab):
    """Loss on what the host sends *and* receives: a connect used to fail now and then (1 in 8 runs), when
    the answer to its JOIN was lost and the other side's retries, one a second, each started the TCP and
    CURVE handshakes over on a new socket.  Now a retry leaves a young try alone, and the peer's own JOIN
    answers a connect whose reply was lost."""
    h1 = lab.add_host("h1")
    h2 = lab.add_host("h2", impaired=(0.20, 0.050), both_ways=True)
    for h in (h1, h2):
        h.configure(interval=0.5, timeout=10.0)
    start(h1, h2)
    t0 = time.monotonic()
    proc = h2.ctl("--timeout", "90", "connect", h1.ip, PORT, timeout=110, check=False)
    connect_s = time.monotonic() - t0
    assert proc.returncode == 0, (proc.stdout, proc.stderr, h1.log_text()[-3000:], h2.log_text()[-3000:])
    for a, b in ((h1, h2), (h2, h1)):
        wait_for(lambda a=a, b=b: alive_view(a) == {b.name}, 90, interval=0.25, what=f"{a.name} to list {b.name} alive")
    there = [f"h2->h1 {i}" for i in range(100)]
    back = [f"h1->h2 {i}" for i in range(100)]
    with h2.client() as c:
        c.send_many("h1", there)
    with h1.client() as c:
        c.send_many("h2", back)
    for h in (h1, h2):
        wait_for(lambda h=h: outbox_empty(h), 120, interval=0.25, what=f"{h.name}'s outbox to drain")
    assert texts_from(h1, "h2") == Counter(there) and texts_from(h2, "h1") == Counter(back)
    passed, dropped = lab.stop_relays()[0]
    assert dropped > 0.1 * (passed + dropped)
    print(f"connect over 20% loss both ways in {connect_s:.1f} s; relay dropped {dropped} of {passed + dropped}")


def test_host_that_changes_address_is_relinked(lab):
    hosts = [lab.add_host(f"h{i}") for i in range(1, 4)]
    start(*hosts)
    link_chain(hosts)
    h1, h2, h3 = hosts
    lab.readdress(h3, 13)
    t0 = time.monotonic()
    for h in (h1, h2):
        wait_for(lambda h=h: any(p["name"] == "h3" and p["state"] == "alive" and p["address"] == f"{h3.ip}:{PORT}"
                                 for p in h.ctl_json("peers")), 60, interval=0.2, what=f"{h.name} to relink h3 at its new address")
    wait_for(lambda: alive_view(h3) == {"h1", "h2"}, 30, interval=0.2, what="h3 to see both again")
    relink_s = time.monotonic() - t0
    assert "delivered" in h1.ctl("send", "--wait", "10", "h3", "found you").stdout
    assert "delivered" in h3.ctl("send", "--wait", "10", "h2", "I moved").stdout
    assert texts_from(h3, "h1") == {"found you": 1}
    print(f"re-linked at {h3.ip} in {relink_s:.2f} s")
    assert json.loads(h3.ctl("--json", "info").stdout)["id"] == h3.id


def test_lan_discovery_links_hosts_nobody_introduced(lab):
    hosts = [lab.add_host(f"h{i}") for i in range(1, 5)]
    hosts[0].configure(extra="discover_interval_s = 0.3\n")
    hosts[0].start("--discover", "lan", "--discover-port", "5670", port=int(PORT))  # by flags
    hosts[1].configure(extra='discover = "lan"\ndiscover_interval_s = 0.3\n')  # by the config file
    hosts[2].configure(extra='discover = "lan"\ndiscover_interval_s = 0.3\ndiscover_to = "10.231.0.255"\n')  # a subnet's broadcast
    hosts[3].configure()  # no discovery: it beacons nothing, and nobody finds it
    start(*hosts[1:])
    t0 = time.monotonic()
    finders = hosts[:3]
    names = {h.name for h in finders}
    for h in finders:
        wait_for(lambda h=h: alive_view(h) == names - {h.name}, 20, interval=0.2, what=f"{h.name} to find the others on the LAN")
    took = time.monotonic() - t0
    assert alive_view(hosts[3]) == set()
    info = hosts[0].ctl_json("info")
    assert info["discover"]["mode"] == "lan" and info["discover"]["beacons_sent"] > 0 and info["discover"]["beacons_heard"] > 0
    assert info["dropped_total"] == 0
    assert "delivered" in hosts[0].ctl("send", "--wait", "10", "h3", "found you on the LAN").stdout
    # a later newcomer is found too, and the one without discovery can still be introduced by hand
    hosts[3].ctl("--timeout", "20", "connect", hosts[0].ip, PORT)
    for h in hosts:
        wait_for(lambda h=h: alive_view(h) == {"h1", "h2", "h3", "h4"} - {h.name}, 20, interval=0.2, what=f"{h.name} to see all four")
    print(f"three hosts found each other by LAN beacons in {took:.2f} s")


_PROBE = """\
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("open")
except ConnectionRefusedError:
    print("refused")  # the host answered: reachable, nothing listening
except OSError as e:
    print("unreachable", errno.errorcode.get(e.errno, e.errno) if e.errno else type(e).__name__)
"""


def _probe(host, ip: str, port: str = "9") -> str:
    """A TCP connect from ``host`` to ip:port (no ping in the lab): "open", "refused" (the address
    answers), or "unreachable ..." (no route, no ARP answer, timeout)."""
    import sys
    return host.sh(sys.executable, "-c", _PROBE, ip, port).stdout.strip()


def _reaches(host, ip: str) -> bool:
    return _probe(host, ip) in ("open", "refused")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_subnets_joined_by_one_dual_homed_host(lab):
    """Subnet A (a1-a3, 10.231.0.0/24) and subnet B (b1-b3, 10.232.0.0/24) share no route; host x
    has an interface on each and does not forward, and its p2pd advertises both addresses.  Every
    node still knows every other alive, A and B nodes are not linked but routed (hops known),
    direct messages and broadcasts cross exactly once through x, and what is sent while x's B side
    is cut off arrives exactly once when it is back."""
    A = [lab.add_host(f"a{i}") for i in range(1, 4)]
    x = lab.add_dual_host("x")
    B = [lab.add_host(f"b{i}", side="b") for i in range(1, 4)]
    everyone = [*A, x, *B]
    names = {h.name for h in everyone}
    a1, a2, a3 = A
    b1, b2, b3 = B

    # the IP level: A and B cannot reach each other, x reaches both, x's B address is not on A
    assert x.sh("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    assert _reaches(a1, x.ips["a"]) and _reaches(b1, x.ips["b"]) and _reaches(a1, a2.ip) and _reaches(b1, b2.ip)
    assert not _reaches(a1, b1.ip) and not _reaches(b1, a1.ip)
    assert not _reaches(a1, x.ips["b"]) and not _reaches(b1, x.ips["a"])

    start(*A, *B)
    x.start("--advertise", f"{x.ips['a']},{x.ips['b']}", port=int(PORT))
    assert _probe(a1, b1.ip, PORT).startswith("unreachable") and _probe(b2, a2.ip, PORT).startswith("unreachable")
    assert _probe(a1, x.ips["a"], PORT) == "open" and _probe(b1, x.ips["b"], PORT) == "open"

    failed = True
    try:
        t0 = time.monotonic()
        for h in A:
            h.ctl("--timeout", "30", "connect", x.ips["a"], PORT, timeout=45)
        for h in B:
            h.ctl("--timeout", "30", "connect", x.ips["b"], PORT, timeout=45)
        def routed_view(h) -> set:  # alive, and a route known (records carry the links, signed again within a second)
            return {name for name, row in h.peers().items() if row["state"] == "alive" and row["hops"] is not None}

        for h in everyone:
            wait_for(lambda h=h: routed_view(h) == names - {h.name}, 90, interval=0.5, what=f"{h.name} to list all six others alive, routed")
        converge_s = time.monotonic() - t0

        side = {h.name: h.side for h in A + B}
        for h in A + B:
            rows = h.peers()
            for other in A + B:
                if side[other.name] != h.side:
                    row = rows[other.name]
                    assert row["linked"] is False, (h.name, row)
                    assert row["hops"] is not None and row["hops"] >= 2, (h.name, row)
            # x as each side sees it: at its address on that side
            assert rows["x"]["address"].rsplit(":", 1)[0] == x.ips[h.side], (h.name, rows["x"])

        # direct messages across, both ways, exactly once
        assert "delivered" in a1.ctl("send", "--wait", "30", "b1", "a1 to b1", timeout=45).stdout
        assert "delivered" in b1.ctl("send", "--wait", "30", "a1", "b1 to a1", timeout=45).stdout
        assert texts_from(b1, "a1") == {"a1 to b1": 1}
        assert texts_from(a1, "b1") == {"b1 to a1": 1}

        # broadcasts across, both ways, exactly once on every node
        a2.ctl("broadcast", "news from a2")
        b3.ctl("broadcast", "news from b3")
        for h in everyone:
            if h is not a2:
                wait_for(lambda h=h: texts_from(h, "a2").get("news from a2", 0) >= 1, 30, interval=0.25, what=f"{h.name} to get a2's broadcast")
            if h is not b3:
                wait_for(lambda h=h: texts_from(h, "b3").get("news from b3", 0) >= 1, 30, interval=0.25, what=f"{h.name} to get b3's broadcast")
        for h in everyone:
            if h is not a2:
                assert texts_from(h, "a2")["news from a2"] == 1, h.name
            if h is not b3:
                assert texts_from(h, "b3")["news from b3"] == 1, h.name

        # cut x's B side off: the subnets are apart, each side still whole
        lab.cut(x, "b")
        t1 = time.monotonic()
        wait_for(lambda: not ({p["name"] for p in x.ctl_json("peers") if p["linked"]} & {b.name for b in B}), 30,
                 interval=0.25, what="x to lose its links to the B hosts")
        detect_s = time.monotonic() - t1
        across = [f"a1->b2 {i}" for i in range(20)]
        with a1.client() as c:
            c.send_many("b2", across)
        back = [f"b3->a3 {i}" for i in range(20)]
        with b3.client() as c:
            c.send_many("a3", back)
        a3.ctl("send", "b1", "one from a3 during the cut")
        a1.ctl("broadcast", "a1 news during the cut")
        b2.ctl("broadcast", "b2 news during the cut")
        # keep the cut longer than the heartbeat timeout (1.5 s) beyond its detection
        wait_for(lambda: time.monotonic() - t1 > detect_s + 3.0, 10, what="the cut to last")
        assert texts_from(b2, "a1") == Counter() and texts_from(a3, "b3") == {"news from b3": 1}
        assert "a1 news during the cut" not in texts_from(b1, "a1")
        assert "b2 news during the cut" not in texts_from(a1, "b2")
        cut_s = time.monotonic() - t1

        lab.heal()
        t2 = time.monotonic()
        for h in everyone:
            wait_for(lambda h=h: alive_view(h) == names - {h.name}, 90, interval=0.5, what=f"{h.name} to list everyone alive after the heal")
        for h in (a1, b3, a3):
            wait_for(lambda h=h: outbox_empty(h), 90, interval=0.5, what=f"{h.name}'s outbox to drain after the heal")
        for h in everyone:
            if h is not a1:
                wait_for(lambda h=h: texts_from(h, "a1").get("a1 news during the cut", 0) >= 1, 60, interval=0.5,
                         what=f"{h.name} to get a1's broadcast from the cut")
            if h is not b2:
                wait_for(lambda h=h: texts_from(h, "b2").get("b2 news during the cut", 0) >= 1, 60, interval=0.5,
                         what=f"{h.name} to get b2's broadcast from the cut")
        heal_s = time.monotonic() - t2
        assert texts_from(b2, "a1") == Counter(across + ["a1 news during the cut"])
        assert texts_from(a3, "b3") == Counter(back + ["news from b3"])
        assert texts_from(b1, "a3") == {"one from a3 during the cut": 1}
        for h in everyone:
            if h is not a1 and h is not b2:
                assert texts_from(h, "a1").get("a1 news during the cut") == 1, h.name
            if h is not b2:
                assert texts_from(h, "b2").get("b2 news during the cut") == 1, h.name
        dropped = {h.name: h.ctl_json("info").get("dropped_total") for h in everyone}
        failed = False
        print(f"two subnets through x: all alive in {converge_s:.2f} s; cut detected by x in {detect_s:.2f} s, "
              f"lasted {cut_s:.2f} s; healed and delivered in {heal_s:.2f} s; dropped counters {dropped}")
    finally:
        if failed:
            for h in everyone:
                try:
                    info = h.ctl_json("info")
                    print(f"--- {h.name} info: " + json.dumps({k: v for k, v in info.items() if k not in ("peers",)}))
                    cut = {k: v for who in ("a1", "b2") for k, v in texts_from(h, who).items() if "during the cut" in k}
                    print(f"--- {h.name} broadcasts from the cut: {cut}")
                    print(f"--- {h.name} peers: " + json.dumps([(p['name'], p['state'], p['linked'], p['hops'], p['address'])
                                                                for p in h.ctl_json("peers")]))
                except Exception as e:  # noqa: BLE001 - diagnostics only
                    print(f"--- {h.name}: {e!r}")
                print(f"--- {h.name} log tail:\n{h.log_text()[-4000:]}")
