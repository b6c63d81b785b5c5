"""Durable, exactly-once delivery end to end: real daemons on 127.0.0.1, the real p2pctl,
and the p2pctl.Client library for bulk sends.

Each test breaks something on purpose (kill -9 the sender mid-stream, stop or freeze the
receiver, inject duplicate and reordered frames with raw pyzmq, restart nodes, let messages
expire) and then checks the stored history: every message once, in order, nothing pending.
Waiting is "poll a condition until a deadline" (`wait_for`); the only bare sleeps are short,
bounded ones that prove something did NOT happen, and each says so.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import testmsg
import pytest
import zmq

from conftest import pid_alive, wait_for
from p2pctl.client import Client, ClientError
from p2pd import protocol as P

MiB = 1024 * 1024
RSS_LIMIT = 300 * MiB


# ---------------------------------------------------------------------------- helpers


def linked(a, b) -> None:
    """b connects to a; both see each other alive."""
    b.ctl("connect", a.addr)
    wait_for(lambda: b.name in a.alive_names(), what=f"{a.name} to see {b.name}")
    wait_for(lambda: a.name in b.alive_names(), what=f"{b.name} to see {a.name}")


def history(node, peer: str | None = None, timeout_s: float = 30.0) -> list[dict]:
    """The whole stored conversation (limit=0), through the client library."""
    with Client(node.home, timeout_s=timeout_s) as c:
        return c.call("history", peer=peer, limit=0)


def received_texts(node, peer: str, type_: str = "MESSAGE") -> list[str]:
    return [m["text"] for m in history(node, peer) if m["direction"] == "in" and m["type"] == type_]


def info(node) -> dict:
    return node.call("info")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler(threading.Thread):
    """Records the peak VmRSS of some daemons every 0.2 s until stopped (at most `max_s`)."""

    def __init__(self, nodes, max_s: float = 300.0):
        super().__init__(daemon=True)
        self.pids = {n.name: n.pid for n in nodes}
        self.peak = {name: 0 for name in self.pids}
        self.done = threading.Event()
        self.max_s = max_s

    def sample(self) -> None:
        for name, pid in self.pids.items():
            try:
                self.peak[name] = max(self.peak[name], rss_bytes(pid))
            except (OSError, AssertionError):
                pass

    def run(self) -> None:
        deadline = time.monotonic() + self.max_s
        while not self.done.wait(0.2) and time.monotonic() < deadline:
            self.sample()

    def stop(self) -> dict:
        self.done.set()
        self.join(5)
        self.sample()
        return self.peak


def numbered(prefix: str, n: int, start: int = 0) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(start, start + n)]


def assert_exactly_once_in_order(got: list[str], want: list[str]) -> None:
    dupes = len(got) - len(set(got))
    missing = sorted(set(want) - set(got))
    assert dupes == 0, f"{dupes} duplicates stored"
    assert not missing, f"{len(missing)} missing, first: {missing[:5]}"
    assert got == want, "all there once, but out of order"


# ---------------------------------------------------------------------------- 1. kill -9 the sender mid-stream


def test_sender_killed_mid_stream_every_message_arrives_once_in_order(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    total, batch = 10_000, 500
    texts = numbered("m", total)
    batches = [(texts[i:i + batch], texts[i:i + batch]) for i in range(0, total, batch)]  # ids = texts: valid ids

    confirmed = [0]  # batches send_many returned for
    errors: list[str] = []
    failure: list[BaseException] = []
    reached = threading.Event()  # some thousands confirmed: time to kill
    kill_requested = threading.Event()
    restarted = threading.Event()

    def streamer():
        try:
            client = Client(alice.home, timeout_s=3.0)
            i, spurious = 0, 0
            deadline = time.monotonic() + 120
            while i < len(batches):
                assert time.monotonic() < deadline, "streamer ran out of time"
                chunk, ids = batches[i]
                try:
                    res = client.send_many("bob", chunk, ids=ids)
                except ClientError as e:
                    # The daemon is gone (or, before the kill, merely slow): resend the first
                    # unconfirmed batch with the same ids once it answers again.
                    errors.append(f"batch {i}: {type(e).__name__}: {e}")
                    assert len(errors) < 20, f"too many failed sends: {errors}"
                    client.close()
                    if kill_requested.is_set():
                        assert restarted.wait(60), "sender was not restarted"
                    else:
                        spurious += 1
                        assert spurious < 5, f"sender keeps failing without being killed: {errors}"
                    client = Client(alice.home, timeout_s=3.0)
                    continue
                assert res["ids"] == ids and res["status"] == "queued"
                i += 1
                confirmed[0] = i
                if i * batch >= 3000:
                    reached.set()
            client.close()
        except BaseException as e:  # report in the main thread
            failure.append(e)
            reached.set()

    t = threading.Thread(target=streamer, daemon=True)
    t.start()
    assert reached.wait(60), "stream never reached 3000 confirmed messages"
    assert not failure, failure
    old_pid = alice.pid
    backlog = info(alice)["outbox_pending"]  # queued or in flight, not yet acknowledged
    kill_requested.set()
    at_kill = confirmed[0]
    alice.kill9()
    assert at_kill < len(batches), "the stream finished before the kill: nothing was interrupted"
    bob_at_kill = info(bob)["messages_in"]
    t0 = time.monotonic()
    alice.start()  # same home, new port; bob is re-linked from alice's peer book
    assert alice.pid != old_pid
    restarted.set()
    t.join(120)
    assert not t.is_alive(), "streamer did not finish"
    assert not failure, failure
    assert errors, "the streamer never noticed the kill"
    print(f"\nkilled sender after {at_kill * batch} confirmed, {bob_at_kill} received (unacknowledged just before: {backlog}); streamer errors: {errors}")

    rx = wait_for(lambda: (lambda got: got if len(got) >= total else None)(received_texts(bob, "alice")),
                  timeout=90, interval=0.5, what="bob to have received 10,000")
    print(f"all 10,000 received {time.monotonic() - t0:.1f}s after the restart")
    assert_exactly_once_in_order(rx, texts)
    ids = [m["id"] for m in history(bob, "alice") if m["direction"] == "in"]
    assert ids == texts, "ids given by the client are the stored ids"
    wait_for(lambda: alice.call("outbox") == [], timeout=20, what="alice's outbox to empty")
    out = [m["text"] for m in history(alice, "bob") if m["direction"] == "out"]
    assert_exactly_once_in_order(out, texts)
    assert info(alice)["outbox_pending"] == 0

    # a client that is unsure resends with the same ids: nothing is queued twice
    with Client(alice.home, timeout_s=10) as c:
        for chunk, ids in (batches[0], batches[at_kill]):
            assert c.send_many("bob", chunk, ids=ids)["ids"] == ids
    assert len(alice.call("outbox", all=True, limit=100_000)) == total
    assert "delivered" in alice.ctl("send", "bob", "after", "--wait", "10").stdout  # in order behind any resend
    assert received_texts(bob, "alice") == [*texts, "after"]
    print(f"duplicates bob dropped (resent after the restart): {info(bob)['duplicates_dropped']}")


# ---------------------------------------------------------------------------- 2. receiver stopped while sending


def test_receiver_stopped_gracefully_mid_stream_gets_everything_once(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    assert "delivered to bob" in alice.ctl("send", "bob", "before").stdout

    texts = numbered("s", 5000)
    confirmed = [0]
    failure: list[BaseException] = []
    reached, stop_asked = threading.Event(), threading.Event()

    def streamer():
        try:
            with Client(alice.home, timeout_s=10) as c:
                for k in range(0, len(texts), 200):
                    c.send_many("bob", texts[k:k + 200], ids=texts[k:k + 200])
                    confirmed[0] = k + 200
                    if k + 200 == 1000:
                        # Mid-stream: the rest goes on only once bob has been asked to stop (on a
                        # loaded machine the whole stream could otherwise be queued before that).
                        reached.set()
                        stop_asked.wait(60)
        except BaseException as e:
            failure.append(e)
            reached.set()

    t = threading.Thread(target=streamer, daemon=True)
    t.start()
    assert reached.wait(60) and not failure, failure
    bob.call("stop")  # graceful stop (what `p2pd stop` asks for), while the stream goes on
    at_stop = confirmed[0]
    stop_asked.set()
    wait_for(lambda: not pid_alive(bob.pid), what="bob to exit")
    t.join(60)
    assert not t.is_alive() and not failure, failure
    assert at_stop < len(texts), "the stream ended before bob stopped"
    wait_for(lambda: "bob" not in alice.alive_names(), what="alice to see bob leave")
    queued = ["q1 after stop", "q2 after stop", "q3 after stop"]
    for q in queued:
        out = alice.ctl("send", "bob", q).stdout
        assert "queued for bob" in out, out
    pending = alice.call("outbox", limit=10_000)  # `p2pctl outbox` lists the oldest 1000 only
    assert pending and {m["status"] for m in pending} == {"pending"} and {m["peer"] for m in pending} == {"bob"}
    assert [m["text"] for m in pending[-3:]] == queued
    print(f"\nbob stopped after {at_stop} confirmed; {len(pending)} waiting in alice's outbox")

    bob.start()  # new port; re-links to alice from its peer book
    want = ["before", *texts, *queued]
    got = wait_for(lambda: (lambda g: g if len(g) >= len(want) else None)(received_texts(bob, "alice")),
                   timeout=60, interval=0.3, what="bob to receive everything")
    assert_exactly_once_in_order(got, want)
    wait_for(lambda: alice.ctl_json("outbox") == [], timeout=20, what="alice's outbox to empty")


# ---------------------------------------------------------------------------- 3. receiver frozen with SIGSTOP


def test_receiver_frozen_past_heartbeat_timeout_gets_everything_once(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    texts = numbered("f", 3000)
    frozen = False
    try:
        with Client(alice.home, timeout_s=10) as c:
            c.send_many("bob", texts[:500], ids=texts[:500])
            os.kill(bob.pid, signal.SIGSTOP)  # mid-stream: 500 queued, the rest follow while bob is frozen
            frozen = True
            for k in range(500, len(texts), 500):
                c.send_many("bob", texts[k:k + 500], ids=texts[k:k + 500])
        # past the heartbeat timeout (1.5 s): alice declares bob lost, with messages pending
        wait_for(lambda: {p["name"]: p["state"] for p in alice.call("peers")}.get("bob") == "lost",
                 timeout=10, what="alice to mark the frozen bob lost")
        assert info(alice)["outbox_pending"] > 0
    finally:
        if frozen:
            os.kill(bob.pid, signal.SIGCONT)
    got = wait_for(lambda: (lambda g: g if len(g) >= len(texts) else None)(received_texts(bob, "alice")),
                   timeout=60, interval=0.3, what="bob to receive all 3000")
    assert_exactly_once_in_order(got, texts)
    wait_for(lambda: alice.call("outbox") == [], timeout=20, what="alice's outbox to empty")
    wait_for(lambda: "bob" in alice.alive_names() and "alice" in bob.alive_names(), what="re-linked")


# ---------------------------------------------------------------------------- 4. floods, bounded memory


@pytest.mark.timeout(300)
def test_floods_exactly_once_with_bounded_memory(make_node):
    alice, bob, charlie, dave = (make_node(n) for n in ("alice", "bob", "charlie", "dave"))
    for n in (alice, bob, charlie, dave):
        n.start()
    for n in (bob, charlie, dave):
        linked(alice, n)
    wait_for(lambda: {p["name"] for p in alice.call("peers") if p["subscribed"]} == {"bob", "charlie", "dave"},
             what="bob, charlie and dave subscribed to alice")
    nodes = (alice, bob, charlie, dave)
    rss_start = {n.name: rss_bytes(n.pid) for n in nodes}
    sampler = RssSampler(nodes)
    sampler.start()
    try:
        # 50,000 direct messages alice -> bob
        n_direct, batch = 50_000, 500
        texts = numbered("d", n_direct)
        t0 = time.monotonic()
        with Client(alice.home, timeout_s=30) as c:
            for k in range(0, n_direct, batch):
                c.send_many("bob", texts[k:k + batch], ids=texts[k:k + batch])
        t_queued = time.monotonic() - t0
        wait_for(lambda: info(bob)["messages_in"] >= n_direct, timeout=180, interval=0.25, what="bob to receive 50,000")
        t_direct = time.monotonic() - t0
        wait_for(lambda: info(alice)["outbox_pending"] == 0, timeout=30, what="alice's outbox to drain")
        t_acked = time.monotonic() - t0

        # 20,000 broadcasts alice -> bob, charlie, dave
        n_bcast = 20_000
        btexts = numbered("b", n_bcast)
        t1 = time.monotonic()
        reach = []
        with Client(alice.home, timeout_s=30) as c:
            for text in btexts:
                reach.append(c.call("broadcast", text=text)["subscribers"])
        t_sent = time.monotonic() - t1
        assert reach[0] == 3
        print(f"\nbroadcasts sent with fewer than 3 subscribers attached: {sum(1 for r in reach if r < 3)}")
        for n in (bob, charlie, dave):
            wait_for(lambda: info(n)["broadcasts_in"] >= n_bcast, timeout=120, interval=0.25, what=f"{n.name} to receive 20,000 broadcasts")
        t_bcast = time.monotonic() - t1
    finally:
        peak = sampler.stop()
    rss_end = {n.name: rss_bytes(n.pid) for n in nodes}

    got = received_texts(bob, "alice")
    assert_exactly_once_in_order(got, texts)
    for n in (bob, charlie, dave):
        b = received_texts(n, "alice", "BROADCAST")
        assert len(b) == n_bcast and len(set(b)) == n_bcast and set(b) == set(btexts), f"{n.name}: {len(b)} stored, {len(set(b))} unique"
        assert b == btexts, f"{n.name}: broadcasts stored out of order"
        assert info(n)["broadcasts_in"] == n_bcast
    assert info(bob)["messages_in"] == n_direct

    print(f"\ndirect: {n_direct} queued in {t_queued:.1f}s ({n_direct / t_queued:,.0f}/s), all received in {t_direct:.1f}s "
          f"({n_direct / t_direct:,.0f}/s), all acknowledged in {t_acked:.1f}s")
    print(f"broadcast: {n_bcast} sent in {t_sent:.1f}s ({n_bcast / t_sent:,.0f}/s), received by all 3 in {t_bcast:.1f}s "
          f"({n_bcast / t_bcast:,.0f}/s per receiver)")
    for n in nodes:
        print(f"RSS {n.name}: start {rss_start[n.name] / MiB:.1f} MiB, peak {peak[n.name] / MiB:.1f} MiB, end {rss_end[n.name] / MiB:.1f} MiB")
    for n in nodes:
        assert peak[n.name] < RSS_LIMIT and rss_end[n.name] < RSS_LIMIT, f"{n.name} RSS peak {peak[n.name] / MiB:.0f} MiB"


# ---------------------------------------------------------------------------- 5. raw duplicate / reordered frames


class FakePeer:
    """A hand-made peer speaking the wire protocol with raw pyzmq."""

    def __init__(self, target):
        self.id = "fake-peer-" + testmsg.new_id()[:12]
        self.target = target
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.port = int(self._bind(self.router))
        self.xpub = self.ctx.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.LINGER, 0)
        self.pub_port = int(self._bind(self.xpub))
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.ROUTING_ID, self.id.encode())
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(f"tcp://127.0.0.1:{target.port}")
        self.received: list[P.Message] = []
        self.subscriptions: list[bytes] = []

    def _bind(self, sock) -> str:
        sock.bind("tcp://127.0.0.1:*")
        return sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]

    def envelope(self, type_: str, data: dict, msg_id: str | None = None, target: str | None = None) -> bytes:
        return P.encode(testmsg.make(type_, self.id, "fake", time.time(), data, target, msg_id))

    def send(self, type_: str, data: dict, msg_id: str | None = None, target: str | None = None) -> None:
        self.dealer.send(self.envelope(type_, data, msg_id, target))

    def pump(self) -> None:
        """Read what arrived on our ROUTER and XPUB; answer PINGs so alice keeps us alive
        (every wait below goes through here, so we are never silent for 1.5 s)."""
        while self.router.poll(0):
            frames = self.router.recv_multipart()
            assert len(frames) == 2 and frames[0].split(b"/")[0] == self.target.id.encode(), frames
            msg = P.decode(frames[1])
            self.received.append(msg)
            if msg.type == P.PING:
                self.send(P.PONG, {"ping_id": msg.id}, target=msg.sender_id)
        while self.xpub.poll(0):
            self.subscriptions.append(self.xpub.recv())

    def wait(self, predicate, what: str, timeout: float = 10.0):
        def check():
            self.pump()
            return predicate()
        return wait_for(check, timeout=timeout, interval=0.02, what=what)

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def test_duplicate_and_reordered_frames_are_stored_once(make_node):
    alice = make_node("alice")
    alice.start("--insecure")  # a plaintext raw peer; CURVE is covered by tests/test_security.py
    fake = FakePeer(alice)
    try:
        join = testmsg.make(P.JOIN, fake.id, "fake", time.time(),
                      {"addr": "127.0.0.1", "port": fake.port, "pub_port": fake.pub_port, "reply_to": None, "bseq": 0, "boldest": 1})
        fake.dealer.send(P.encode(join))
        reply = fake.wait(lambda: next((m for m in fake.received if m.type == P.JOIN), None), what="alice's JOIN reply")
        assert reply.data["reply_to"] == join.id and reply.sender_id == alice.id
        fake.wait(lambda: "fake" in alice.alive_names(), what="alice to list the fake peer alive")

        # direct MESSAGEs: seq 1, 2, 2 (dup), 1 (dup), 4 (gap: dropped), 3, 4 (now in order)
        ids = {s: testmsg.new_id() for s in (1, 2, 3, 4)}
        for seq in (1, 2, 2, 1, 4, 3, 4):
            fake.send(P.MESSAGE, {"text": f"seq {seq}", "seq": seq, "base": 1}, msg_id=ids[seq], target=alice.id)

        def acked_upto():
            return max((m.data["upto"] for m in fake.received if m.type == P.ACK), default=0)

        fake.wait(lambda: acked_upto() >= 4, what="an ACK up to 4")
        acks = [m for m in fake.received if m.type == P.ACK]
        assert all(m.target_id == fake.id and m.data["upto"] <= 4 for m in acks)
        ups = [m.data["upto"] for m in acks]
        assert ups == sorted(ups), f"ACKs went backwards: {ups}"
        rows = [m for m in history(alice, "fake") if m["direction"] == "in"]
        assert [m["text"] for m in rows] == ["seq 1", "seq 2", "seq 3", "seq 4"]
        assert [m["id"] for m in rows] == [ids[1], ids[2], ids[3], ids[4]]
        st = info(alice)
        assert st["duplicates_dropped"] == 2 and st["out_of_order_dropped"] == 1, st

        # a BROADCAST with bseq 1 published, published again, and replayed over the link: stored once
        fake.wait(lambda: any(s.startswith(b"\x01") for s in fake.subscriptions), what="alice's SUB to subscribe to our XPUB")
        b1 = fake.envelope(P.BROADCAST, {"text": "bcast 1", "bseq": 1})
        fake.xpub.send(b1)
        fake.wait(lambda: received_texts(alice, "fake", "BROADCAST") == ["bcast 1"], what="the broadcast")
        fake.xpub.send(b1)
        fake.dealer.send(b1)
        # markers behind the duplicates on both paths (ZeroMQ keeps order per connection)
        fake.xpub.send(fake.envelope(P.BROADCAST, {"text": "bcast 2", "bseq": 2}))
        fake.send(P.MESSAGE, {"text": "seq 5", "seq": 5, "base": 1}, target=alice.id)
        fake.wait(lambda: received_texts(alice, "fake", "BROADCAST") == ["bcast 1", "bcast 2"], what="the broadcast marker")
        fake.wait(lambda: acked_upto() >= 5, what="an ACK up to 5")
        assert received_texts(alice, "fake", "BROADCAST") == ["bcast 1", "bcast 2"]
        assert received_texts(alice, "fake") == ["seq 1", "seq 2", "seq 3", "seq 4", "seq 5"]
        assert info(alice)["duplicates_dropped"] == 4
        assert not [m for m in fake.received if m.type == P.FETCH], "no gap, so nothing to fetch"
    finally:
        fake.close()


# ---------------------------------------------------------------------------- 6. history and outbox survive a restart


@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_history_and_outbox_survive_a_restart(make_node, how):
    alice, bob, charlie = make_node("alice"), make_node("bob"), make_node("charlie")
    for n in (alice, bob, charlie):
        n.start()
    linked(alice, bob)
    linked(alice, charlie)
    assert "delivered" in alice.ctl("send", "bob", "hi bob").stdout
    assert "delivered" in bob.ctl("send", "alice", "hi alice").stdout
    assert "delivered" in alice.ctl("send", "charlie", "hi charlie").stdout
    assert charlie.stop().returncode == 0
    wait_for(lambda: "charlie" not in alice.alive_names(), what="alice to see charlie leave")
    assert "queued for charlie" in alice.ctl("send", "charlie", "while you were out").stdout

    port = alice.port
    if how == "stop":
        assert alice.stop().returncode == 0
    else:
        alice.kill9()
    alice.start(port=port)  # same address, so charlie's peer book still finds alice

    rows = alice.ctl_json("history")
    seen = [(m["direction"], m["peer_name"], m["text"]) for m in rows]
    assert seen == [("out", "bob", "hi bob"), ("in", "bob", "hi alice"), ("out", "charlie", "hi charlie"),
                    ("out", "charlie", "while you were out")]
    assert [m["text"] for m in alice.ctl_json("history", "--peer", "charlie")] == ["hi charlie", "while you were out"]
    outbox = alice.ctl_json("outbox")
    assert [(m["peer"], m["text"], m["status"]) for m in outbox] == [("charlie", "while you were out", "pending")]
    assert "while you were out" in alice.ctl("outbox").stdout

    charlie.start()
    wait_for(lambda: received_texts(charlie, "alice") == ["hi charlie", "while you were out"], timeout=20,
             what="charlie to get the queued message")
    wait_for(lambda: alice.ctl_json("outbox") == [], timeout=10, what="alice's outbox to empty")
    delivered = [m for m in alice.ctl_json("outbox", "--all") if m["text"] == "while you were out"]
    assert [m["status"] for m in delivered] == ["delivered"]
    wait_for(lambda: "alice" in bob.alive_names(), what="bob to re-link alice")
    assert received_texts(bob, "alice") == ["hi bob"]


# ---------------------------------------------------------------------------- 7. broadcast gap recovery


def test_broadcast_gap_recovery_and_backlog_only_on_request(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    wait_for(lambda: any(p["name"] == "bob" and p["subscribed"] for p in alice.call("peers")), what="bob subscribed")
    assert json.loads(alice.ctl("--json", "broadcast", "first").stdout)["subscribers"] == 1
    wait_for(lambda: received_texts(bob, "alice", "BROADCAST") == ["first"], what="bob to get the first broadcast")

    assert bob.stop().returncode == 0
    wait_for(lambda: "bob" not in alice.alive_names(), what="alice to see bob leave")
    missed = numbered("gap", 50)
    with alice.client() as c:
        for text in missed:
            assert c.call("broadcast", text=text)["subscribers"] == 0
    bob.start()
    got = wait_for(lambda: (lambda g: g if len(g) >= 51 else None)(received_texts(bob, "alice", "BROADCAST")),
                   timeout=20, what="bob to fetch the 50 it missed")
    assert_exactly_once_in_order(got, ["first", *missed])
    assert info(bob)["broadcast_fetches"] >= 1

    # a late joiner gets no backlog ...
    charlie = make_node("charlie")
    charlie.start()
    charlie.ctl("connect", alice.addr)
    assert info(charlie)["broadcast_fetches"] == 0  # decided when alice's JOIN answered, before connect returned
    wait_for(lambda: "charlie" in alice.alive_names(), what="alice to see charlie")
    assert "delivered" in alice.ctl("send", "charlie", "marker").stdout
    time.sleep(1.0)  # bounded: several heartbeats (0.2 s) in which a backlog must NOT arrive
    assert received_texts(charlie, "alice", "BROADCAST") == []
    assert info(charlie)["broadcast_fetches"] == 0
    wait_for(lambda: any(p["name"] == "charlie" and p["subscribed"] for p in alice.call("peers")), what="charlie subscribed")
    alice.ctl("broadcast", "live")
    wait_for(lambda: received_texts(charlie, "alice", "BROADCAST") == ["live"], what="charlie to get a live broadcast")

    # ... unless `connect --since` asks for it: then exactly once, in order
    everything = ["first", *missed, "live"]
    charlie.ctl("connect", alice.addr, "--since", "1h")
    got = wait_for(lambda: (lambda g: g if len(g) >= len(everything) else None)(received_texts(charlie, "alice", "BROADCAST")),
                   timeout=20, what="charlie's backlog")
    assert sorted(got) == sorted(everything) and len(got) == len(set(got)), got  # "live" came first
    assert got == ["live", "first", *missed]

    # a fresh node that connects with --since gets it all, once, in order
    dave = make_node("dave")
    dave.start()
    dave.ctl("connect", alice.addr, "--since", "1h")
    got = wait_for(lambda: (lambda g: g if len(g) >= len(everything) else None)(received_texts(dave, "alice", "BROADCAST")),
                   timeout=20, what="dave's backlog")
    assert_exactly_once_in_order(got, everything)
    time.sleep(0.5)  # bounded: a duplicate replay must NOT show up
    assert received_texts(dave, "alice", "BROADCAST") == everything
    assert received_texts(charlie, "alice", "BROADCAST") == ["live", "first", *missed]


# ---------------------------------------------------------------------------- 8. send --wait, expiry


def test_send_wait_exit_codes_and_expiry(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    out = alice.ctl("send", "bob", "are you there", "--wait").stdout
    assert out.startswith("delivered to bob"), out
    res = json.loads(alice.ctl("--json", "send", "bob", "json too", "--wait", "5").stdout)
    assert res["status"] == "delivered"
    # a client unsure whether its send went through repeats it with the same id: "delivered", stored once
    with alice.client() as c:
        for _ in range(2):
            res = c.send("bob", "said twice", wait_s=5, require=True, msg_id="said-twice-1")
            assert (res["id"], res["status"]) == ("said-twice-1", "delivered")

    assert bob.stop().returncode == 0
    wait_for(lambda: "bob" not in alice.alive_names(), what="alice to see bob leave")
    t0 = time.monotonic()
    proc = alice.ctl("send", "bob", "hold this", "--wait", "1", check=False)
    assert proc.returncode == 4, (proc.returncode, proc.stdout, proc.stderr)
    assert time.monotonic() - t0 < 10
    assert "outbox" in proc.stderr
    outbox = alice.ctl_json("outbox")
    assert [(m["text"], m["status"], m["peer"]) for m in outbox] == [("hold this", "pending", "bob")]

    # a sender whose messages expire after 2 s
    assert alice.stop().returncode == 0
    with open(alice.home / "p2pd.toml", "a") as f:
        f.write("message_expiry_s = 2\n")
    alice.start(port=alice.port)
    alice.ctl("send", "bob", "too late")
    wait_for(lambda: {m["text"]: m["status"] for m in alice.ctl_json("outbox")}.get("too late") == "expired",
             timeout=10, what="the message to expire")
    assert {m["text"]: m["status"] for m in alice.ctl_json("outbox")}["hold this"] == "pending"  # its expiry was set when sent
    assert info(alice)["messages_expired"] == 1
    assert info(alice)["outbox_pending"] == 1, "an expired message is not pending"

    # bob comes back: the pending one is delivered, the expired one never is
    bob.start()
    wait_for(lambda: "bob" in alice.alive_names(), timeout=10, what="bob back")
    assert "delivered" in alice.ctl("send", "bob", "after expiry", "--wait", "10").stdout
    assert received_texts(bob, "alice") == ["are you there", "json too", "said twice", "hold this", "after expiry"]
    assert [(m["text"], m["status"]) for m in alice.ctl_json("outbox")] == [("too late", "expired")]


def test_a_daemon_stopped_past_the_timeout_accuses_nobody_when_it_runs_again(make_node):
    """SIGSTOP (a suspended laptop, CPU starvation) past the heartbeat timeout: when the daemon
    runs again all its peers look silent, but it was the one not listening.  It gives them a
    full timeout (liveness.py) instead of suspecting them all, and they find it alive again."""
    fast = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "1.5")
    alice, bob, carol = make_node("alice"), make_node("bob"), make_node("carol")
    alice.start(*fast)
    bob.start(*fast, "--join", alice.addr)
    carol.start(*fast, "--join", alice.addr)
    for d in (alice, bob, carol):
        wait_for(lambda d=d: len(d.alive_names()) == 2, 20, what=f"{d.name} to see both others alive")
    raised = alice.call("info")["counters"]["suspicions_raised"]
    os.kill(alice.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(lambda: "alice" not in bob.alive_names(), 20, what="bob to lose the stopped alice")
        time.sleep(max(0.0, stopped + 3.0 - time.monotonic()))  # the stall itself: twice the timeout
    finally:
        os.kill(alice.pid, signal.SIGCONT)
    for d in (alice, bob, carol):
        wait_for(lambda d=d: len(d.alive_names()) == 2, 30, what=f"{d.name} to see both others alive again")
    wait_for(lambda: "stalled" in alice.log_text(), 10, what="alice to log her stall")
    assert alice.call("info")["counters"]["suspicions_raised"] == raised
