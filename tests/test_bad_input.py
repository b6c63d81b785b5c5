"""Bad input on every socket, from raw pyzmq, against real daemons.

"Malformed frames on any socket are dropped, counted (shown by `p2pctl info`)
and logged at most once per second per kind; the node keeps serving valid
traffic.  Bad control requests get an error reply, never a crash."

Every test links two real nodes (bob connects to alice), throws garbage at
alice, and after each batch checks through the real CLI that exactly the
right drop counters moved, that alice is still up, and that a direct message
from bob still reaches her inbox.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time

import pytest
import zmq

from conftest import enc, envelope, pid_alive, wait_for
from p2pd.home import Home

HOST = "127.0.0.1"
SEND_TIMEOUT_MS = 10_000  # a blocked raw send fails the test instead of hanging it
REPLY_TIMEOUT_MS = 5_000
MAX_FRAME = 256 * 1024  # the default max_frame_bytes; the link is cut only above 4x


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def insecure_daemon_pair(make_node):
    """Two daemons, alice and bob, started --insecure and linked both ways.

    They run --insecure so that a plaintext raw pyzmq client reaches the
    validation code behind the sockets; tests/test_security.py covers the
    CURVE layer in front of it (a plaintext client never gets that far).
    """
    alice, bob = make_node("alice"), make_node("bob")
    alice.start("--insecure")
    bob.start("--insecure")
    bob.ctl("connect", alice.addr)
    wait_for(lambda: alice.alive_names() == {"bob"}, what="alice to see bob alive")
    wait_for(lambda: bob.alive_names() == {"alice"}, what="bob to see alice alive")
    return alice, bob


def raw_dealer(ctx: zmq.Context, port: int, routing_id: bytes | None = None) -> zmq.Socket:
    """A bare DEALER to a node's ROUTER on loopback (ZeroMQ picks a routing id unless given)."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    if routing_id is not None:
        s.setsockopt(zmq.ROUTING_ID, routing_id)
    s.connect(f"tcp://{HOST}:{port}")
    return s


def dropped(node) -> dict:
    info = node.call("info")
    return {"by_kind": info["dropped"], "total": info["dropped_total"]}


def expect_dropped(node, before: dict, expected: dict, what: str) -> dict:
    """Wait until exactly sum(expected) more frames were dropped, then check the kinds via `p2pctl info --json`."""
    want_total = before["total"] + sum(expected.values())
    wait_for(lambda: dropped(node)["total"] >= want_total, timeout=10, what=f"{what}: {want_total} drops in total")
    info = node.ctl_json("info")
    for kind, n in expected.items():
        assert info["dropped"].get(kind, 0) == before["by_kind"].get(kind, 0) + n, (what, kind, info["dropped"], before)
    # nothing else was counted, and nothing twice
    assert info["dropped_total"] == want_total, (what, info["dropped"], before)
    return {"by_kind": info["dropped"], "total": info["dropped_total"]}


def inbox_texts(node) -> list[str]:
    return [m["text"] for m in node.call("inbox")]


def still_serving(alice, bob, tag: str) -> None:
    """alice is up, answers p2pctl, and a direct message from bob still reaches her."""
    assert pid_alive(alice.pid), f"alice died after {tag}"
    assert alice.alive_names() >= {"bob"}, f"alice lost bob after {tag}"
    text = f"still there after {tag}"
    bob.ctl("send", "alice", text)
    wait_for(lambda: text in inbox_texts(alice), timeout=10, what=f"bob's message after {tag}")


def log_lines(node, kind: str) -> list[str]:
    return [ln for ln in node.log_text().splitlines() if f"dropped bad input [{kind}]" in ln]


# --------------------------------------------------------------------------- the ROUTER (peer link) socket


def test_undecodable_frames_on_router_are_dropped_and_counted(insecure_daemon_pair, zctx):
    alice, bob = insecure_daemon_pair
    garbage = raw_dealer(zctx, alice.port)
    before = dropped(alice)
    assert before["total"] == 0, before

    batches = [
        ("not JSON", [b"hello", b"", b"{", b'{"v": 1,', b"\x00\x01\x02"], {"not_json": 5}),
        ("invalid UTF-8", [b'{"v": 1, "type": "\xc3\x28"}', b"\x80\x81", b'{"text": "\xff\xfe\xfd"}'], {"not_json": 3}),
        ("JSON that is not an object", [b"[1, 2, 3]", b'"a string"', b"42", b"null", b"true"], {"not_json": 5}),
        # well inside 4x max_frame_bytes, so ZeroMQ delivers it and the node must refuse it
        ("oversized", [enc(envelope("MESSAGE", "x1", {"text": "x" * (MAX_FRAME + 100)}, "y1")), b"x" * (MAX_FRAME + 1)], {"oversized": 2}),
    ]
    for what, frames, expected in batches:
        for f in frames:
            garbage.send(f)
        before = expect_dropped(alice, before, expected, what)
        still_serving(alice, bob, what)

    # a multi-part message is a batch (docs/PROTOCOL.md): the ROUTER sees [routing id, a, b] and judges each alone
    valid = enc(envelope("PING", "x1", target=alice.id))
    garbage.send_multipart([b"a", b"b"])  # two not_json
    garbage.send_multipart([valid, valid])  # two claiming a sender that is not this connection's routing id
    garbage.send_multipart([b"x"] * 300)  # longer than a batch may be: one bad_frames
    before = expect_dropped(alice, before, {"not_json": 2, "bad_routing_id": 2, "bad_frames": 1}, "multi-part")
    still_serving(alice, bob, "multi-part")

    # dropped at once, logged once per kind (the kinds above were each sent in one burst)
    for kind in ("not_json", "oversized", "bad_frames"):
        lines = log_lines(alice, kind)
        assert 1 <= len(lines) <= 4, (kind, lines)
        assert "WARNING" in lines[0]


def test_invalid_envelopes_on_router_are_dropped_by_kind(insecure_daemon_pair, zctx):
    alice, bob = insecure_daemon_pair
    garbage = raw_dealer(zctx, alice.port)
    before = dropped(alice)

    def msg(**override):
        return enc(envelope("MESSAGE", "x1", {"text": "hi"}, alice.id, **override))

    batches = [
        (
            "wrong field types",
            [
                msg(id=123),
                msg(sender_id=None),
                msg(sender_id="has spaces"),
                msg(sender_name=["m"]),
                msg(timestamp=5),
                msg(target_id=7),
                msg(data="text"),
                msg(data={"text": 5}),
                msg(data={"text": "no target"}, target_id=None),
                enc(envelope("JOIN", "x1", {"addr": HOST, "port": "x", "pub_port": 2})),
                enc(envelope("JOIN", "x1", {"addr": HOST, "port": 0, "pub_port": 2})),
                enc(envelope("PONG", "x1", {"ping_id": 7})),
            ],
            {"bad_field": 12},
        ),
        (
            "unknown type",
            [msg(type="HELLO"), msg(type=None), msg(type=5), msg(type="message"), msg(type=["MESSAGE"]), msg(type={"t": 1})],
            {"unknown_type": 6},
        ),
        ("wrong version", [msg(v=1), msg(v=0), msg(v="1"), msg(v=True), msg(v=None)], {"version": 5}),
        (
            "PEERS with bad entries",
            [
                enc(envelope("PEERS", "x1", {"peers": [1]})),
                enc(envelope("PEERS", "x1", {"peers": [{"id": "bad id", "name": "n", "addr": HOST, "port": 1, "pub_port": 2}]})),
                enc(envelope("PEERS", "x1", {"peers": [{"id": "ok1", "name": "n", "addr": HOST, "port": 0, "pub_port": 2}]})),
                enc(envelope("PEERS", "x1", {"peers": [{"id": "ok1", "name": "", "addr": HOST, "port": 1, "pub_port": 2}]})),
                enc(envelope("PEERS", "x1", {"peers": [{"id": "ok1", "name": "n", "addr": "a/b", "port": 1, "pub_port": 2}]})),
                enc(envelope("PEERS", "x1", {"peers": "everyone"})),
                enc(envelope("PEERS", "x1", {"peers": [{"id": f"p{i}", "name": "n", "addr": HOST, "port": 1, "pub_port": 2} for i in range(1025)]})),
            ],
            {"bad_field": 7},
        ),
    ]
    for what, frames, expected in batches:
        for f in frames:
            garbage.send(f)
        before = expect_dropped(alice, before, expected, what)
        still_serving(alice, bob, what)

    # nothing above introduced a peer or reached the inbox
    assert {p["name"] for p in alice.call("peers")} == {"bob"}
    assert all(t.startswith("still there") for t in inbox_texts(alice))
    for kind in ("bad_field", "unknown_type", "version"):
        assert log_lines(alice, kind), f"no log line for {kind}"


def test_frames_from_the_wrong_sender_are_dropped(insecure_daemon_pair, zctx):
    alice, bob = insecure_daemon_pair
    before = dropped(alice)

    # a valid-looking envelope whose routing id is not its sender_id: an impostor speaking for bob
    impostor = raw_dealer(zctx, alice.port, routing_id=b"impostor-1")
    impostor.send(enc(envelope("MESSAGE", bob.id, {"text": "forged by impostor"}, alice.id, name="bob")))
    impostor.send(enc(envelope("MESSAGE", "impostor-2", {"text": "forged by impostor"}, alice.id)))
    impostor.send(enc(envelope("JOIN", bob.id, {"addr": HOST, "port": 1, "pub_port": 2, "reply_to": None}, name="bob")))
    before = expect_dropped(alice, before, {"bad_routing_id": 3}, "routing id mismatch")
    still_serving(alice, bob, "routing id mismatch")

    # a node that never sent JOIN: its traffic is refused (a LEAVE from it is simply ignored)
    stranger_id = "stranger-0001"
    stranger = raw_dealer(zctx, alice.port, routing_id=stranger_id.encode())
    stranger.send(enc(envelope("LEAVE", stranger_id)))  # first: not counted, so the total below is exact
    stranger.send(enc(envelope("MESSAGE", stranger_id, {"text": "from a stranger"}, alice.id)))
    stranger.send(enc(envelope("BROADCAST", stranger_id, {"text": "from a stranger"})))
    stranger.send(enc(envelope("PING", stranger_id, target=alice.id)))
    stranger.send(enc(envelope("PONG", stranger_id, {"ping_id": "abc123"}, alice.id)))
    stranger.send(enc(envelope("PEERS", stranger_id, {"peers": [{"id": "ghost-1", "name": "ghost", "addr": HOST, "port": 1, "pub_port": 2}]})))
    before = expect_dropped(alice, before, {"not_linked": 5}, "never-JOINed sender")
    still_serving(alice, bob, "never-JOINed sender")

    # someone claiming to be alice herself
    mirror = raw_dealer(zctx, alice.port, routing_id=alice.id.encode())
    mirror.send(enc(envelope("MESSAGE", alice.id, {"text": "from myself"}, alice.id, name="alice")))
    before = expect_dropped(alice, before, {"self": 1}, "sender is the node itself")
    still_serving(alice, bob, "sender is the node itself")

    assert {p["name"] for p in alice.call("peers")} == {"bob"}  # no stranger, no ghost, no impostor
    texts = inbox_texts(alice)
    assert not any("forged" in t or "stranger" in t or "myself" in t for t in texts), texts
    for kind in ("bad_routing_id", "not_linked", "self"):
        assert log_lines(alice, kind), f"no log line for {kind}"


def test_flood_is_counted_but_logged_at_most_once_per_second(insecure_daemon_pair, zctx):
    alice, bob = insecure_daemon_pair
    flood = raw_dealer(zctx, alice.port)
    n = 2000
    before = dropped(alice)
    assert log_lines(alice, "not_json") == []

    t0 = time.monotonic()
    for i in range(n):
        flood.send(b"flood %d" % i)
    wait_for(lambda: dropped(alice)["by_kind"].get("not_json", 0) >= n, timeout=20, what="the flood to be counted")
    duration = time.monotonic() - t0
    before = expect_dropped(alice, before, {"not_json": n}, "flood")
    flood_lines = log_lines(alice, "not_json")
    assert 1 <= len(flood_lines) <= duration + 2, f"{len(flood_lines)} log lines for a {duration:.2f}s flood: {flood_lines[:5]}"

    # the limiter is per kind: another kind in the same second is still logged
    flood.send(enc(envelope("PING", "x1", target=alice.id, v=9)))
    before = expect_dropped(alice, before, {"version": 1}, "a second kind")
    assert len(log_lines(alice, "version")) == 1

    still_serving(alice, bob, "a 2,000-frame flood")

    # The suppressed frames are reported with the next line that gets through.
    # Send one frame at a time, each only after the previous one was counted,
    # until a new line is logged (the 1 s interval has passed): then every
    # not_json drop is accounted for, logged or reported as suppressed.
    sent = [0]

    def next_line_logged():
        if dropped(alice)["by_kind"].get("not_json", 0) < n + sent[0]:
            return False  # the last frame is not processed yet
        if len(log_lines(alice, "not_json")) > len(flood_lines):
            return True
        flood.send(b"one more")
        sent[0] += 1
        return False

    wait_for(next_line_logged, timeout=5, what="a line reporting the suppressed frames")
    lines = log_lines(alice, "not_json")
    assert "more like it suppressed" in lines[-1], lines[-1]
    accounted = sum(1 + int(m.group(1)) if (m := re.search(r"\((\d+) more like it suppressed\)", ln)) else 1 for ln in lines)
    assert accounted == alice.call("info")["dropped"]["not_json"] == n + sent[0]


# --------------------------------------------------------------------------- the SUB socket, via a hand-made peer


class FakePeer(threading.Thread):
    """A peer built from raw pyzmq: a DEALER to alice's ROUTER (routing id = its node id),
    its own ROUTER (alice links back to it) and an XPUB (alice's SUB attaches to it).

    ZeroMQ sockets are not thread-safe, so this thread owns all three: it sends
    JOIN, then a PING every 0.2 s so alice keeps it alive, drains what alice
    sends it, records the subscriptions its XPUB sees, and sends whatever the
    test queues.  It stops when told to, or after a hard deadline.
    """

    def __init__(self, ctx: zmq.Context, node_id: str, name: str, target_port: int, target_id: str):
        super().__init__(daemon=True)
        self.ctx, self.id, self.name = ctx, node_id, name
        self.target_port, self.target_id = target_port, target_id
        self.outbox: queue.Queue = queue.Queue()
        self.subscriptions: list[bytes] = []
        self.received: list[bytes] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def send(self, *frames: bytes) -> None:
        self.outbox.put(("dealer", list(frames)))

    def publish(self, *frames: bytes) -> None:
        self.outbox.put(("pub", list(frames)))

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # surfaced by the test through .error
            self.error = e
            self.ready.set()

    def _run(self) -> None:
        router = self.ctx.socket(zmq.ROUTER)
        xpub = self.ctx.socket(zmq.XPUB)
        dealer = self.ctx.socket(zmq.DEALER)
        try:
            for s in (router, xpub, dealer):
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
            router.bind(f"tcp://{HOST}:0")
            xpub.bind(f"tcp://{HOST}:0")
            self.port = int(router.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
            self.pub_port = int(xpub.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
            dealer.setsockopt(zmq.ROUTING_ID, self.id.encode())
            dealer.connect(f"tcp://{HOST}:{self.target_port}")
            join = {"addr": HOST, "port": self.port, "pub_port": self.pub_port, "reply_to": None}
            dealer.send(enc(envelope("JOIN", self.id, join, name=self.name)))
            self.ready.set()
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            poller.register(xpub, zmq.POLLIN)
            next_ping = 0.0
            hard_deadline = time.monotonic() + 120
            while not self.done.is_set() and time.monotonic() < hard_deadline:
                for _ in range(1000):
                    try:
                        where, frames = self.outbox.get_nowait()
                    except queue.Empty:
                        break
                    (dealer if where == "dealer" else xpub).send_multipart(frames)
                now = time.monotonic()
                if now >= next_ping:
                    next_ping = now + 0.2
                    dealer.send(enc(envelope("PING", self.id, target=self.target_id, name=self.name)))
                ready = dict(poller.poll(20))
                for _ in range(1000):
                    if router not in ready:
                        break
                    try:
                        self.received.append(router.recv_multipart(zmq.NOBLOCK)[-1])
                    except zmq.Again:
                        break
                for _ in range(1000):
                    if xpub not in ready:
                        break
                    try:
                        self.subscriptions.append(xpub.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
        finally:
            for s in (router, xpub, dealer):
                s.close(linger=0)


@pytest.fixture
def fake_peer(insecure_daemon_pair, zctx):
    alice, _ = insecure_daemon_pair
    fake = FakePeer(zctx, "fake-peer-0001", "mallory", alice.port, alice.id)
    fake.start()
    assert fake.ready.wait(10) and fake.error is None, fake.error
    yield fake
    fake.done.set()
    fake.join(10)
    assert not fake.is_alive()
    assert fake.error is None, fake.error


def test_garbage_on_sub_is_dropped_and_a_real_broadcast_gets_through(insecure_daemon_pair, fake_peer):
    alice, bob = insecure_daemon_pair
    fake = fake_peer
    wait_for(lambda: alice.alive_names() == {"bob", "mallory"}, what="alice to list the fake peer alive")
    # alice's SUB is attached once the fake's XPUB sees her node-id topic: deterministic, no sleep
    wait_for(lambda: b"\x01\x00sub:" + alice.id.encode() in fake.subscriptions, what="alice's SUB to subscribe to the fake peer")
    # alice answered the JOIN over her own link to the fake's ROUTER
    wait_for(lambda: any(json.loads(f).get("type") == "JOIN" for f in fake.received), what="alice's JOIN reply")
    before = dropped(alice)

    # alice's SUB takes envelopes ("{...") and what is published for her alone ("@<her id>"):
    # anything else, and what is addressed to another node, ZeroMQ filters out before she reads it
    fake.publish(b"not json at all")
    fake.publish(b"[1, 2]")
    fake.publish(b"@" + bob.id.encode(), enc(envelope("BROADCAST", fake.id, {"text": "for bob only"})))
    fake.publish(b"{not json at all")
    fake.publish(b"{[1, 2]")
    before = expect_dropped(alice, before, {"not_json": 2}, "garbage on PUB")
    # a topic that starts like hers but names someone else; hers with garbage, or with nothing after it
    fake.publish(b"@" + alice.id.encode() + b"x", enc(envelope("BROADCAST", fake.id, {"text": "not for alice"})))
    fake.publish(b"@" + alice.id.encode(), b"not json")
    fake.publish(b"@" + alice.id.encode())
    before = expect_dropped(alice, before, {"bad_topic": 1, "not_json": 1, "bad_frames": 1}, "bad targeted frames on PUB")
    still_serving(alice, bob, "garbage on PUB")

    # valid envelopes of a type that never travels on PUB
    fake.publish(enc(envelope("PING", fake.id, target=alice.id)))
    fake.publish(enc(envelope("MESSAGE", fake.id, {"text": "direct, but on PUB"}, alice.id)))
    fake.publish(enc(envelope("JOIN", fake.id, {"addr": HOST, "port": fake.port, "pub_port": fake.pub_port})))
    before = expect_dropped(alice, before, {"bad_type": 3}, "non-BROADCAST on PUB")
    still_serving(alice, bob, "non-BROADCAST on PUB")

    fake.publish(*[b"{part"] * 300)  # longer than a batch may be
    fake.publish(enc(envelope("BROADCAST", fake.id, {"text": "x" * (MAX_FRAME + 1)})))
    # well-formed broadcasts the fake peer relays for a node alice does not know, and for alice herself:
    # each SUB belongs to one peer, so anything on it claiming another sender is spoofed
    fake.publish(enc(envelope("BROADCAST", "ghost-0002", {"text": "from a ghost"})))
    fake.publish(enc(envelope("BROADCAST", alice.id, {"text": "from alice?"}, name="alice")))
    before = expect_dropped(alice, before, {"bad_frames": 1, "oversized": 1, "spoofed": 2}, "bad frames and senders on PUB")

    # over the DEALER link: a MESSAGE for another node is not delivered here
    fake.send(enc(envelope("MESSAGE", fake.id, {"text": "meant for bob"}, bob.id)))
    fake.send(enc(envelope("MESSAGE", fake.id, {"text": "meant for nobody"}, "someone-else")))
    before = expect_dropped(alice, before, {"misrouted": 2}, "misrouted MESSAGE")
    still_serving(alice, bob, "misrouted MESSAGE")

    # the fake peer is still a peer in good standing: its real BROADCAST and MESSAGE arrive
    fake.publish(enc(envelope("BROADCAST", fake.id, {"text": "hello from the fake peer"})))
    fake.send(enc(envelope("MESSAGE", fake.id, {"text": "direct from the fake peer"}, alice.id)))
    # and what it publishes for alice alone, behind her topic (actions.Publish ``to``)
    fake.publish(b"@" + alice.id.encode(), enc(envelope("BROADCAST", fake.id, {"text": "for alice alone"})))
    wait_for(lambda: {"hello from the fake peer", "direct from the fake peer", "for alice alone"} <= set(inbox_texts(alice)),
             what="the fake peer's valid traffic")
    inbox = {m["text"]: m for m in alice.call("inbox")}
    assert inbox["hello from the fake peer"]["type"] == "BROADCAST"
    assert inbox["hello from the fake peer"]["sender_id"] == fake.id
    assert inbox["direct from the fake peer"]["type"] == "MESSAGE"
    assert not any(t in inbox for t in ("direct, but on PUB", "meant for bob", "meant for nobody", "from a ghost", "from alice?",
                                         "for bob only", "not for alice"))
    assert dropped(alice)["total"] == before["total"]  # the valid frames were not counted as bad
    for kind in ("not_json", "bad_type", "bad_frames", "misrouted", "bad_topic"):
        assert log_lines(alice, kind), f"no log line for {kind}"


# --------------------------------------------------------------------------- the control socket


def test_bad_control_requests_get_an_error_reply(insecure_daemon_pair, zctx):
    alice, bob = insecure_daemon_pair
    ctl = zctx.socket(zmq.DEALER)
    ctl.setsockopt(zmq.LINGER, 0)
    ctl.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    ctl.connect(Home(alice.home).control_endpoint)
    before = dropped(alice)

    def ask(raw: bytes) -> dict:
        ctl.send(raw)
        assert ctl.poll(REPLY_TIMEOUT_MS), f"no reply to {raw[:60]!r}"
        return json.loads(ctl.recv())

    def req(n, cmd=None, args=None, **extra) -> bytes:
        obj = {"req": n, **extra}
        if cmd is not None:
            obj["cmd"] = cmd
        if args is not None:
            obj["args"] = args
        return enc(obj)

    cases = [
        (b"not json", None, "bad_request"),
        (b'{"cmd": "\xc3\x28"}', None, "bad_request"),  # invalid UTF-8
        (b"[1, 2]", None, "bad_request"),
        (b"[" * 100_000, None, "bad_request"),  # too deep for the JSON parser
        (b'"x' + b"y" * (1024 * 1024) + b'"', None, "bad_request"),  # over the 1 MiB request limit
        (req(1, "frobnicate"), 1, "unknown_command"),
        (req(2), 2, "unknown_command"),
        (req("three", "send", {"text": "hi"}), "three", "bad_request"),  # no peer
        (req(4, "send", {"peer": "bob"}), 4, "bad_request"),  # no text
        (req(5, "send", {"peer": 5, "text": "x"}), 5, "bad_request"),
        (req(6, "send", {"peer": "bob", "text": ""}), 6, "bad_request"),
        (req(7, "connect", {"host": HOST, "port": "x"}), 7, "bad_request"),
        (req(8, "connect", {"host": HOST}), 8, "bad_request"),
        (req(9, "connect", {"host": HOST, "port": 99999}), 9, "bad_request"),
        (req(10, "inbox", {"limit": -1}), 10, "bad_request"),
        (req(11, "ping", {"peer": "bob", "wait_s": "soon"}), 11, "bad_request"),
        (req(12, "info", [1]), 12, "bad_request"),
        (req(13, "send", {"peer": "nobody", "text": "x"}), 13, "unknown_peer"),  # understood, but failed
    ]
    for raw, req_id, code in cases:
        reply = ask(raw)
        assert reply["ok"] is False, (raw[:60], reply)
        assert reply["code"] == code, (raw[:60], reply)
        assert reply["req"] == req_id, (raw[:60], reply)
        assert isinstance(reply["error"], str) and reply["error"] and "\n" not in reply["error"], reply
        assert pid_alive(alice.pid)
    n_bad = sum(1 for _, _, code in cases if code in ("bad_request", "unknown_command"))

    # two frames instead of one: not a request, but it still gets an error reply (the
    # first frame's req echoed), and is counted; the status it held was not carried out.
    ctl.send_multipart([req(14, "status"), req(15, "status")])
    assert ctl.poll(REPLY_TIMEOUT_MS), "no reply to a multi-frame control message"
    reply = json.loads(ctl.recv())
    assert reply["ok"] is False and reply["code"] == "bad_request" and reply["req"] == 14 and "had 2" in reply["error"], reply
    expect_dropped(alice, before, {"bad_control": n_bad + 1}, "bad control requests")

    # the same socket still works for a good request, and the daemon serves on
    ok = ask(req(16, "status"))
    assert ok["ok"] is True and ok["req"] == 16 and ok["result"]["pid"] == alice.pid
    assert "error while handling input" not in alice.log_text()  # no request reached an unexpected exception
    assert log_lines(alice, "bad_control")
    still_serving(alice, bob, "bad control requests")
