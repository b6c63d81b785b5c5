"""The p2pd workloads: real daemons on loopback, driven through the client library.

Each function starts its own daemons (default settings unless it says
otherwise), measures one thing, checks that nothing was lost or duplicated
where that applies, and returns a dict of figures.  Every wait is bounded.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import threading
import time

from bench.cluster import P2PCTL, Cluster, Daemon, link, rss_bytes, wait_until

MiB = 1024 * 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stored_texts(d: Daemon, type_: str) -> list[str]:
    """What a daemon has stored as received, in the order it stored it (read-only, beside the running daemon)."""
    db = sqlite3.connect(f"file:{d.home / 'store.db'}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT text FROM messages WHERE direction='in' AND type=? ORDER BY n", (type_,))]
    finally:
        db.close()


def check_exactly_once(got: list[str], sent: list[str], who: str) -> dict:
    dupes = len(got) - len(set(got))
    missing = len(set(sent) - set(got))
    if dupes or missing or got != sent:
        raise AssertionError(f"{who}: {missing} missing, {dupes} duplicated, in order: {got == sent}")
    return {"lost": missing, "duplicated": dupes}


# ---------------------------------------------------------------------------- direct messages


def direct(n: int, batch: int = 1000) -> dict:
    """``n`` direct messages alice -> bob through Client.send_many; timed until alice has every ACK
    (an ACK means bob committed the message to its store)."""
    with Cluster() as c:
        alice, bob = c.add(2)
        link(alice, bob)
        client = alice.client()
        texts = [f"m{i:07d}" for i in range(n)]
        t0 = time.perf_counter()
        for k in range(0, n, batch):
            client.send_many(bob.id, texts[k:k + batch])
        queued_s = time.perf_counter() - t0
        wait_until(lambda: alice.call("info")["outbox_pending"] == 0, 600, 0.005, what=f"{n} messages acknowledged")
        acked_s = time.perf_counter() - t0
        checks = check_exactly_once(stored_texts(bob, "MESSAGE"), texts, "bob")
        return {"msgs": n, "seconds": acked_s, "rate": n / acked_s, "queued_rate": n / queued_s, **checks}


# ---------------------------------------------------------------------------- ping round trip


def ping(n: int) -> dict:
    """``p2pctl ping``'s round trip between two linked daemons, as the daemon measures it (PING out, PONG in)."""
    with Cluster() as c:
        alice, bob = c.add(2)
        link(alice, bob)
        client = alice.client()
        for _ in range(min(50, n)):  # warm up
            client.call("ping", peer=bob.id)
        rtts, walls = [], []
        for _ in range(n):
            t = time.perf_counter()
            rtts.append(client.call("ping", peer=bob.id)["rtt_ms"] * 1000.0)
            walls.append((time.perf_counter() - t) * 1e6)
        return {"n": n, "p50_us": percentile(rtts, 0.5), "p99_us": percentile(rtts, 0.99), "p999_us": percentile(rtts, 0.999),
                "client_p50_us": percentile(walls, 0.5)}


# ---------------------------------------------------------------------------- broadcast fan-out


def broadcast(n: int, receivers: int = 10, batch: int = 1000) -> dict:
    """``n`` broadcasts from one daemon to ``receivers`` daemons; delivered = n x receivers, each stored once."""
    with Cluster() as c:
        # Every receiver linked to the origin, as every SUB is to the baseline's PUB: an active view
        # that holds them all (the default, 8, would make the origin keep 8 and reach the rest via them).
        origin, *rs = c.add(receivers + 1, config=f"active_view = {min(16, receivers + 1)}\n")
        for r in rs:
            r.call("connect", host="127.0.0.1", port=origin.port)
        wait_until(lambda: sum(1 for p in origin.peers() if p["subscribed"] and p["state"] == "alive") == receivers, 60, 0.02,
                   what="every receiver subscribed")
        client = origin.client()
        texts = [f"b{i:07d}" for i in range(n)]
        t0 = time.perf_counter()
        for k in range(0, n, batch):
            client.broadcast_many(texts[k:k + batch])
        published_s = time.perf_counter() - t0
        for r in rs:
            wait_until(lambda: r.call("info")["broadcasts_in"] >= n, 600, 0.01, what=f"{r.name} to store {n} broadcasts")
        seconds = time.perf_counter() - t0
        fetched = sum(r.call("info").get("broadcast_fetches", 0) for r in rs)
        for r in rs:
            checks = check_exactly_once(stored_texts(r, "BROADCAST"), texts, r.name)
        return {"broadcasts": n, "receivers": receivers, "seconds": seconds, "delivered_rate": n * receivers / seconds,
                "published_rate": n / published_s, "gap_fetches": fetched, **checks}


# ---------------------------------------------------------------------------- discovery


def discovery(n: int, *extra: str) -> dict:
    """``n`` daemons, each told only of the previous one (all told at once, as a cluster booting
    from a list would be): seconds until every one lists all the others (``seconds``), and until
    every one is linked both ways with all the others (``alive_s``)."""
    with Cluster() as c:
        ds = c.add(n, extra=extra)
        for d in ds:
            d.client()  # connect the control clients before the clock starts
        t0 = time.perf_counter()
        threads = [threading.Thread(target=d.client().request, args=("connect",), kwargs={"host": "127.0.0.1", "port": prev.port})
                   for prev, d in zip(ds, ds[1:])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        connected_s = time.perf_counter() - t0
        # When each node learned of each peer, and when the link came up, from the daemons' own
        # clocks (peers' known_for_s / state_for_s): polling 40 busy daemons would be late by
        # however long the poll takes.  perf_counter is the same monotonic clock in every process.
        listed: dict[str, float] = {}
        alive: dict[str, float] = {}

        def everyone_knows_everyone() -> bool:
            for d in ds:
                if d.name in alive:
                    continue
                peers = d.peers()
                asked = time.perf_counter()
                if len(peers) >= n - 1 and all(p["state"] == "alive" for p in peers):
                    # A node we are not linked to (the overlay links 8) is known from its record: its row
                    # has no known_for_s, and state_for_s counts from when the record said it is alive.
                    listed[d.name] = max(asked - (p["known_for_s"] if p["known_for_s"] is not None else p["state_for_s"])
                                         for p in peers) - t0
                    alive[d.name] = max(asked - p["state_for_s"] for p in peers) - t0
            return len(alive) == n

        # Every 0.25 s, not 0.05: the figures are the daemons' own, and 40 daemons answering
        # `peers` twenty times a second competed for the 2 cores they were forming on.
        wait_until(everyone_knows_everyone, 120, 0.25, what=f"a full mesh of {n}")
        return {"nodes": n, "seconds": max(listed.values()), "alive_s": max(alive.values()), "chain_connected_s": connected_s}


# ---------------------------------------------------------------------------- failure detection


def failure_detection(n: int = 5) -> dict:
    """Kill -9 one of ``n`` linked daemons: seconds until every other one lists it as lost (default timeout)."""
    with Cluster() as c:
        ds = c.add(n)
        for d in ds[1:]:
            link(d, ds[0])
        wait_until(lambda: all(sum(1 for p in d.peers() if p["state"] == "alive") == n - 1 for d in ds), 60, 0.02,
                   what="a full mesh")
        victim, rest = ds[-1], ds[:-1]
        timeout_s = victim.call("info").get("heartbeat_timeout_s")
        t0 = time.perf_counter()
        victim.kill9()
        seen: dict[str, float] = {}

        def all_report_lost() -> bool:
            for d in rest:
                if d.name not in seen and any(p["id"] == victim.id and p["state"] == "lost" for p in d.peers()):
                    seen[d.name] = time.perf_counter() - t0
            return len(seen) == len(rest)

        wait_until(all_report_lost, 60, 0.01, what="every node to report the killed one lost")
        return {"nodes": n, "first_s": min(seen.values()), "last_s": max(seen.values()), "timeout_s": timeout_s}


# ---------------------------------------------------------------------------- footprint


def footprint(peers: int = 16, sends: int = 20) -> dict:
    """Idle RSS of a daemon, extra RSS per linked peer, and the wall time of one `p2pctl send`.
    The daemons keep an active view of 16, the most a node links to (the default is 8)."""
    config = "active_view = 16\n"
    with Cluster() as c:
        hub, bob = c.add(2, config=config)
        time.sleep(1.0)  # let it settle before reading its size; not a synchronisation
        idle = rss_bytes(hub.pid)
        link(hub, bob)
        walls = []  # timed with one peer: a crowd of idle daemons would be timed too
        env = dict(os.environ, NO_COLOR="1")
        for i in range(sends):
            t = time.perf_counter()
            proc = subprocess.run([*P2PCTL, "--home", str(hub.home), "send", bob.id, f"hello {i}"],
                                  capture_output=True, text=True, timeout=30, env=env)
            walls.append((time.perf_counter() - t) * 1000.0)
            if proc.returncode != 0:
                raise RuntimeError(f"p2pctl send failed: {proc.stderr.strip()}")
        one = rss_bytes(hub.pid)
        others = c.add(peers - 1, config=config)
        for d in others:
            d.call("connect", host="127.0.0.1", port=hub.port)
        wait_until(lambda: sum(1 for p in hub.peers() if p["state"] == "alive" and p["subscribed"]) == peers, 60, 0.02,
                   what=f"{peers} peers linked to the hub")
        linked = rss_bytes(hub.pid)
        return {"idle_rss_mib": idle / MiB, "linked_rss_mib": linked / MiB, "peers": peers,
                "per_peer_kib": (linked - one) / (peers - 1) / 1024, "send_wall_ms_p50": statistics.median(walls),
                "send_wall_ms_min": min(walls)}
