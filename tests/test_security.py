"""Security across the network, end to end: real daemons on 127.0.0.1, raw pyzmq as the attacker.

What is checked (docs/SECURITY.md):

* links are CURVE: a plaintext (NULL mechanism) client gets nothing through,
  and a message text never crosses loopback in clear (when we may capture);
* allowlist mode: an unknown key can neither link, subscribe, nor deliver,
  and `p2pctl trust add` lets it in at once;
* a frame whose CURVE key does not own its claimed sender_id is "spoofed";
* a changed key at a pinned address is refused until `p2pctl known forget`;
* ``--insecure`` nodes work together and fail fast, clearly, against secure ones.

The control socket and keys are test_security_local.py's; floods and fuzzing
test_security_abuse.py's.  Waiting is always "poll until a deadline"
(conftest.wait_for); the few bounded waits that prove something did *not*
happen are commented as such.
"""

from __future__ import annotations

import json
import time
import uuid

import zmq

from conftest import enc, envelope, pid_alive, wait_for
from p2pd import exitcodes
from p2pd.keys import node_id_for
from sechelp import HANDSHAKE_FAILED, HOST, LoopbackCapture, assert_no_tracebacks, dropped, exchange, inbox_texts, key_port, link, new_keypair, node_keypair, peer_ids, pub, raw_socket, router, wait_event


# --------------------------------------------------------------------------- 1. traffic is CURVE


def test_links_are_curve_and_plaintext_clients_get_nothing_through(make_node, zctx):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    ports = {alice.port, alice.port + 1, key_port(alice), bob.port, bob.port + 1, key_port(bob)}
    capture = LoopbackCapture.start_or_none(ports)
    link(alice, bob)

    for node in (alice, bob):
        info = node.ctl_json("info")
        assert info["security"] == "curve", info
        assert info["allowlist"] is False
        assert node_id_for(info["public_key"]) == info["id"] == node.id
        assert info["connect"] == f"p2p://{info['public_key']}@{HOST}:{node.port}"

    secret_direct = f"direct-{uuid.uuid4().hex}"
    secret_bcast = f"broadcast-{uuid.uuid4().hex}"
    bob.ctl("send", "alice", secret_direct)
    wait_for(lambda: secret_direct in inbox_texts(alice), what="bob's direct message")
    wait_for(lambda: alice.peers()["bob"]["subscribed"], what="bob subscribed to alice")
    alice.ctl("broadcast", secret_bcast)
    wait_for(lambda: secret_bcast in inbox_texts(bob), what="alice's broadcast")
    if capture is not None:
        seen = capture.stop()
        alice_key = alice.call("info")["public_key"]
        # the capture works: the plaintext key port's answer (TOFU) is in it, and so is the CURVE greeting
        assert alice_key.encode() in seen, "capture saw no key-port reply: it is not capturing"
        assert b"CURVE" in seen
        assert secret_direct.encode() not in seen, "a direct message crossed loopback in plaintext"
        assert secret_bcast.encode() not in seen, "a broadcast crossed loopback in plaintext"
        assert b"sender_id" not in seen, "an envelope crossed loopback in plaintext"

    # ---- a plaintext client on alice's ROUTER: its handshake fails and nothing reaches the node
    before = alice.call("info")
    peers_before = peer_ids(alice)
    mallory_id = "mallory-plaintext-01"
    dealer, mon = raw_socket(zctx, zmq.DEALER, router(alice), routing_id=mallory_id.encode(), monitor=True)
    join = {"addr": HOST, "port": 1, "pub_port": 2, "reply_to": None}
    dealer.send(enc(envelope("JOIN", mallory_id, join)))
    dealer.send(enc(envelope("MESSAGE", mallory_id, {"text": "plaintext hello"}, target=alice.id)))
    wait_event(mon, HANDSHAKE_FAILED)  # mechanism mismatch: NULL against CURVE (alice hangs up)
    # and a plaintext SUB on alice's PUB
    sub, sub_mon = raw_socket(zctx, zmq.SUB, pub(alice), monitor=True)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    wait_event(sub_mon, HANDSHAKE_FAILED)
    # alice saw the failed handshakes (counted), nothing more
    wait_for(lambda: dropped(alice, "handshake_failed") > before["dropped"].get("handshake_failed", 0), what="handshake_failed counted")

    # the CURVE peer keeps working, and its traffic passes after mallory's
    marker = f"after-plaintext-{uuid.uuid4().hex}"
    bob.ctl("send", "alice", marker)
    wait_for(lambda: marker in inbox_texts(alice), what="bob's message after the plaintext client")
    alice.ctl("broadcast", marker + "-b")
    wait_for(lambda: marker + "-b" in inbox_texts(bob), what="alice's broadcast after the plaintext client")
    assert sub.poll(0) == 0, "a plaintext SUB received a broadcast"

    after = alice.call("info")
    assert "plaintext hello" not in inbox_texts(alice)
    assert peer_ids(alice) == peers_before == {bob.id}
    # nothing from mallory reached the decoder: the only new drops are failed handshakes
    new_drops = {k: v - before["dropped"].get(k, 0) for k, v in after["dropped"].items() if v != before["dropped"].get(k, 0)}
    assert set(new_drops) == {"handshake_failed"}, new_drops
    assert after["messages_in"] == before["messages_in"] + 1

    # control: the same kind of frame from a CURVE client with its own key does reach the node (dropped
    # there as not_linked: it never JOINed) - so "nothing got through" above is the handshake's doing
    public, secret = new_keypair()
    curve_id = node_id_for(public)
    cdealer = raw_socket(zctx, zmq.DEALER, router(alice), alice.call("info")["public_key"], (public, secret), curve_id.encode())
    cdealer.send(enc(envelope("MESSAGE", curve_id, {"text": "curve hello"}, target=alice.id)))
    wait_for(lambda: dropped(alice, "not_linked") == before["dropped"].get("not_linked", 0) + 1, what="the CURVE client's frame counted")
    assert_no_tracebacks(alice, bob)


# --------------------------------------------------------------------------- 2. allowlist


def test_allowlist_keeps_unknown_keys_out_until_trusted(make_node, zctx):
    alice, bob, carol = make_node("alice"), make_node("bob"), make_node("carol")
    for n in (alice, bob, carol):
        n.start()
    alice_key = alice.call("info")["public_key"]
    bob_key, carol_key = bob.call("info")["public_key"], carol.call("info")["public_key"]

    out = alice.ctl("trust", "add", bob_key, "bob's laptop").stdout
    assert bob_key in out
    listed = alice.ctl_json("trust", "list")
    assert listed["allowlist"] is True
    assert [(k["key"], k["id"], k["comment"]) for k in listed["keys"]] == [(bob_key, bob.id, "bob's laptop")]
    assert alice.ctl_json("info")["allowlist"] is True
    assert (alice.home / "authorized_keys").read_text().split() == [bob_key, "bob's", "laptop"]

    link(alice, bob)  # bob is allowed
    unauthorized0 = dropped(alice, "unauthorized")

    # carol cannot link: her CURVE handshake is refused by ZAP; the connect fails in bounded time
    t0 = time.monotonic()
    res = carol.ctl("--timeout", "2", "connect", HOST, str(alice.port), check=False)
    assert res.returncode == exitcodes.TIMEOUT, (res.returncode, res.stderr)
    assert time.monotonic() - t0 < 10
    wait_for(lambda: dropped(alice, "unauthorized") > unauthorized0, what="carol's key counted as unauthorized")
    assert carol.id not in peer_ids(alice)
    assert alice.id not in peer_ids(carol) or carol.peers()["alice"]["state"] != "alive"
    # alice will not dial carol either
    res = alice.ctl("connect", HOST, str(carol.port), check=False)
    assert res.returncode == exitcodes.FAILED, (res.returncode, res.stderr)
    assert "authorized_keys" in res.stderr and "p2pctl trust add" in res.stderr

    # carol's key on a raw SUB of alice's PUB: refused (AUTH), so it cannot listen in
    sub, sub_mon = raw_socket(zctx, zmq.SUB, pub(alice), alice_key, node_keypair(carol), monitor=True)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    assert wait_event(sub_mon, HANDSHAKE_FAILED)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    # carol's key on a raw DEALER with her id: a MESSAGE is never delivered
    dealer, dealer_mon = raw_socket(zctx, zmq.DEALER, router(alice), alice_key, node_keypair(carol), carol.id.encode(), monitor=True)
    join = {"addr": HOST, "port": carol.port, "pub_port": carol.info["address"]["pub_port"], "reply_to": None, "key": carol_key}
    dealer.send(enc(envelope("JOIN", carol.id, join, name="carol")))
    dealer.send(enc(envelope("MESSAGE", carol.id, {"text": "carol sneaks in"}, target=alice.id, name="carol")))
    assert wait_event(dealer_mon, HANDSHAKE_FAILED)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    dealer.close(linger=0)  # its queued frames must not be delivered once carol is trusted below

    secret = f"members only {uuid.uuid4().hex}"
    alice.ctl("broadcast", secret)
    wait_for(lambda: secret in inbox_texts(bob), what="alice's broadcast at bob")
    marker = f"bob after carol {uuid.uuid4().hex}"
    bob.ctl("send", "alice", marker)
    wait_for(lambda: marker in inbox_texts(alice), what="bob's message")
    assert "carol sneaks in" not in inbox_texts(alice)
    assert secret not in inbox_texts(carol)
    assert sub.poll(0) == 0, "carol's SUB received a broadcast while not authorized"
    assert carol.id not in peer_ids(alice)
    info = alice.ctl_json("info")
    assert info["dropped"].get("unauthorized", 0) >= 3, info["dropped"]  # carol's node, SUB and DEALER
    assert "spoofed" not in info["dropped"] and "not_linked" not in info["dropped"], info["dropped"]

    # trusted at once, without a restart
    alice.ctl("trust", "add", carol_key, "carol")
    assert {k["key"] for k in alice.ctl_json("trust", "list")["keys"]} == {bob_key, carol_key}
    link(alice, carol)
    exchange(alice, carol, "after trust add")
    # a SUB with carol's key is now let in (ZeroMQ does not retry a handshake that ZAP refused: a new one)
    sub.close(linger=0)
    sub, sub_mon = raw_socket(zctx, zmq.SUB, pub(alice), alice_key, node_keypair(carol), monitor=True)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    wait_event(sub_mon, (zmq.EVENT_HANDSHAKE_SUCCEEDED,))
    got = None
    for i in range(50):  # bounded: a new subscription may miss the first broadcasts (slow joiner)
        alice.ctl("broadcast", f"to carol's sub {i}")
        if sub.poll(200):
            got = json.loads(sub.recv_multipart()[-1])  # [b"@" + carol's id, envelope]: the tree's push to carol
            if got["type"] == "TREE" and got["data"]["kind"] == "GOSSIP":
                got = json.loads(got["data"]["bcast"])  # the broadcast it carries
            break
    assert got is not None and got["sender_id"] == alice.id and got["type"] == "BROADCAST"

    # and removing the key shuts carol out again for new connections
    alice.ctl("trust", "remove", carol.id)
    assert {k["key"] for k in alice.ctl_json("trust", "list")["keys"]} == {bob_key}
    n = dropped(alice, "unauthorized")
    _, mon2 = raw_socket(zctx, zmq.DEALER, router(alice), alice_key, node_keypair(carol), carol.id.encode(), monitor=True)
    assert wait_event(mon2, HANDSHAKE_FAILED)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    wait_for(lambda: dropped(alice, "unauthorized") > n, what="carol refused again")
    assert_no_tracebacks(alice, bob, carol)


# --------------------------------------------------------------------------- 3. spoofed sender_id


def test_frames_claiming_another_nodes_id_are_dropped_as_spoofed(make_node, zctx):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    link(alice, bob)
    alice_key = alice.call("info")["public_key"]
    before = alice.call("info")["dropped"]

    # mallory: a valid CURVE key of her own, but bob's routing id and bob's sender_id: refused before
    # decoding, counted with her key (with ROUTER_HANDOVER it would also have cut bob's link)
    forged = f"forged as bob {uuid.uuid4().hex}"
    m_public, m_secret = new_keypair()
    # (under bob's bare id, which his first link by address uses, libzmq keeps her connection apart
    # and nothing of it reaches p2pd: tests/test_hostile.py checks that bob is not disturbed)
    spoofer = raw_socket(zctx, zmq.DEALER, router(alice), alice_key, (m_public, m_secret), routing_id=bob.id.encode() + b"/0123abcd")
    spoofer.send(enc(envelope("MESSAGE", bob.id, {"text": forged}, target=alice.id, name="bob")))
    wait_for(lambda: dropped(alice, "spoofed_routing_id") == before.get("spoofed_routing_id", 0) + 1,
             what="the forged frame counted as spoofed_routing_id")
    spoofer.close(linger=0)
    assert forged not in inbox_texts(alice)
    assert f"belongs to key {m_public}" in alice.log_text()

    # bob himself is not disturbed: his link (its own routing id bob/<random>) carries on at once
    marker = f"real bob {uuid.uuid4().hex}"
    bob.ctl("send", "alice", marker, "--wait", "5")
    assert marker in inbox_texts(alice)
    assert forged not in inbox_texts(alice)
    assert {m["text"]: m["sender_id"] for m in alice.call("inbox")}[marker] == bob.id

    # control: an honest raw CURVE peer, id derived from its key, JOINs and is accepted -
    # so the drop above is the key/id check, not "raw clients never get in"
    public, secret = new_keypair()
    honest_id = node_id_for(public)
    own_router = zctx.socket(zmq.ROUTER)
    own_xpub = zctx.socket(zmq.XPUB)
    for s in (own_router, own_xpub):  # CURVE servers, so that alice's link back handshakes
        s.setsockopt(zmq.LINGER, 0)
        s.curve_server = True
        s.curve_publickey, s.curve_secretkey = public.encode(), secret.encode()
        s.bind(f"tcp://{HOST}:0")
    rport = int(own_router.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
    pport = int(own_xpub.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
    honest = raw_socket(zctx, zmq.DEALER, router(alice), alice_key, (public, secret), honest_id.encode())
    honest.send(enc(envelope("JOIN", honest_id, {"addr": HOST, "port": rport, "pub_port": pport, "reply_to": None, "key": public}, name="honest")))
    text = f"honest raw peer {uuid.uuid4().hex}"
    honest.send(enc(envelope("MESSAGE", honest_id, {"text": text}, target=alice.id, name="honest")))
    wait_for(lambda: text in inbox_texts(alice), what="the honest raw peer's message")
    assert honest_id in peer_ids(alice)
    # alice links back to it with its key: her JOIN reply reaches its ROUTER over CURVE
    assert own_router.poll(10_000), "alice did not link back to the honest raw peer"
    rid, frame = own_router.recv_multipart()
    reply = json.loads(frame)
    assert rid == alice.id.encode() and reply["type"] == "JOIN" and reply["sender_id"] == alice.id  # its JOIN had no rid_suffix

    # the honest peer, once linked, still cannot speak for bob: not under its own routing id
    # (bad_routing_id) nor under bob's (spoofed_routing_id: the routing id is not its key's)
    honest.send(enc(envelope("MESSAGE", bob.id, {"text": forged + " 2"}, target=alice.id, name="bob")))
    wait_for(lambda: dropped(alice, "bad_routing_id") == before.get("bad_routing_id", 0) + 1, what="the second forged frame counted")
    spoof2 = raw_socket(zctx, zmq.DEALER, router(alice), alice_key, (public, secret), bob.id.encode() + b"/guess")
    spoof2.send(enc(envelope("MESSAGE", bob.id, {"text": forged + " 3"}, target=alice.id, name="bob")))
    wait_for(lambda: dropped(alice, "spoofed_routing_id") == before.get("spoofed_routing_id", 0) + 2, what="the third forged frame counted")
    spoof2.close(linger=0)
    assert forged + " 2" not in inbox_texts(alice) and forged + " 3" not in inbox_texts(alice)
    for s in (honest, own_router, own_xpub):
        s.close(linger=0)
    marker = f"real bob again {uuid.uuid4().hex}"
    bob.ctl("send", "alice", marker)
    wait_for(lambda: marker in inbox_texts(alice), timeout=20, what="the real bob's message after the second forgery")
    assert_no_tracebacks(alice, bob)


# --------------------------------------------------------------------------- 4. changed key at a pinned address


def test_a_connect_string_with_a_wrong_key_pins_nothing(make_node):
    """A stale or mistyped p2p:// key fails to link (CURVE), and pins nothing: the address's real
    key is then taken, not refused as a changed one."""
    alice, bob, carol = make_node("alice"), make_node("bob"), make_node("carol")
    for n in (alice, bob, carol):
        n.start()
    wrong = carol.call("info")["public_key"]  # a valid key, not the one listening at bob's address
    res = alice.ctl("connect", "--timeout", "2", f"p2p://{wrong}@{HOST}:{bob.port}", check=False)
    assert res.returncode != 0 and alice.ctl_json("known", "list") == [], (res.returncode, res.stderr)
    alice.ctl("connect", HOST, str(bob.port))
    wait_for(lambda: alice.alive_names() == {"bob"}, what="alice linked to bob")
    assert [k["id"] for k in alice.ctl_json("known", "list")] == [bob.id]


def test_changed_key_for_a_pinned_address_is_refused_until_forgotten(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    old_bob_id, old_bob_key = bob.id, bob.call("info")["public_key"]
    alice.ctl("connect", HOST, str(bob.port))
    wait_for(lambda: alice.alive_names() == {"bob"}, what="alice linked to bob")
    address = f"{HOST}:{bob.port}"
    pinned = alice.ctl_json("known", "list")
    assert pinned == [{"address": address, "key": old_bob_key, "id": old_bob_id}]
    assert address in (alice.home / "known_peers").read_text()

    # bob gets a new identity at the same address
    port = bob.port
    assert bob.stop().returncode == 0
    (bob.home / "node.key").rename(bob.home / "node.key.old")
    bob.start(port=port)
    assert bob.port == port and bob.id != old_bob_id
    new_bob_key = bob.call("info")["public_key"]
    assert new_bob_key != old_bob_key
    # the new bob dials alice from its peer book: refused too, or alice would link back to the pinned address
    wait_for(lambda: dropped(alice, "key_changed") > 0, what="the new bob's JOIN refused at the pinned address")
    assert bob.id not in peer_ids(alice)

    res = alice.ctl("connect", HOST, str(port), check=False)
    assert res.returncode == exitcodes.FAILED, (res.returncode, res.stdout, res.stderr)
    assert "changed" in res.stderr and f"p2pctl known forget {address}" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    js = json.loads(alice.ctl("--json", "connect", HOST, str(port), check=False).stdout)
    assert js["ok"] is False and js["code"] == "key_changed"
    # the p2p:// string with the new key is refused the same way
    res = alice.ctl("connect", f"p2p://{new_bob_key}@{address}", check=False)
    assert res.returncode == exitcodes.FAILED and "changed" in res.stderr, res.stderr
    assert alice.ctl_json("known", "list") == pinned
    assert bob.id not in peer_ids(alice)
    # nor does gossip bring it in: carol links to the new bob, then to alice, and her PEERS (sent at
    # link-up, before her message on the same link) names the new bob at the pinned address
    carol = make_node("carol")
    carol.start()
    link(bob, carol)
    link(alice, carol)
    marker = f"carol after gossip {uuid.uuid4().hex}"
    carol.ctl("send", "alice", marker)
    wait_for(lambda: marker in inbox_texts(alice), what="carol's message")
    assert bob.id not in peer_ids(alice)
    assert peer_ids(carol) == {alice.id, bob.id}

    alice.ctl("known", "forget", address)
    assert alice.ctl_json("known", "list") == []
    alice.ctl("connect", HOST, str(port))
    wait_for(lambda: bob.id in {p["id"] for p in alice.call("peers") if p["state"] == "alive"}, what="alice linked to the new bob")
    assert alice.ctl_json("known", "list") == [{"address": address, "key": new_bob_key, "id": bob.id}]
    text = f"hello new bob {uuid.uuid4().hex}"
    alice.ctl("send", bob.id, text)
    wait_for(lambda: text in inbox_texts(bob), what="message to the new bob")
    assert_no_tracebacks(alice, bob, carol)


def test_a_link_to_an_address_now_held_by_another_key_is_not_retried_ten_times_a_second(make_node):
    """Bob dies (kill -9: no LEAVE) and a new bob, with a new key, starts at his address.  Alice's
    links to the old bob now fail their CURVE handshake there.  libzmq retried such a link every
    100 ms for as long as it stayed open (its backoff is undone by every TCP connect that
    succeeds): 10 handshakes a second at the new bob, from every node that had known the old,
    for up to an hour (until forgotten).  Now a link whose first handshake fails is closed and
    tried again on the node's own backoff."""
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    old_bob_id = bob.id
    link(alice, bob)
    port = bob.port
    bob.kill9()
    (bob.home / "node.key").rename(bob.home / "node.key.old")
    bob.start(port=port)
    assert bob.id != old_bob_id
    wait_for(lambda: old_bob_id not in {p["id"] for p in alice.call("peers") if p["state"] == "alive"}, timeout=30,
             what="alice lost the old bob")
    wait_for(lambda: dropped(bob, "handshake_failed") > 0, timeout=30, what="alice's retry reaching the new bob")
    time.sleep(2.0)  # a bounded wait: past what alice's sockets of the old bob had queued when she lost him
    before = dropped(bob, "handshake_failed")
    time.sleep(6.0)  # a bounded wait that proves something did not happen: a retry storm
    failed = dropped(bob, "handshake_failed") - before
    # alice retries once a second here (retry_max_s = 1 in the tests' config), one handshake each
    assert failed <= 12, f"{failed} failed handshakes in 6 s at the new bob (a link retried every 100 ms makes ~60)"
    assert dropped(alice, "handshake_failed") >= 1  # alice saw her links fail (counted, logged) and closed them
    assert_no_tracebacks(alice, bob)


# --------------------------------------------------------------------------- 7. --insecure


def test_insecure_nodes_work_together_and_refuse_secure_ones_fast(make_node):
    ins1, ins2, sec = make_node("ins1"), make_node("ins2"), make_node("sec")
    ins1.start("--insecure")
    ins2.start("--insecure")
    sec.start()
    capture = LoopbackCapture.start_or_none({ins1.port, ins1.port + 1, ins2.port, ins2.port + 1})

    for node in (ins1, ins2):
        info = node.ctl_json("info")
        assert info["security"] == "insecure", info
        assert info.get("connect") is None
        assert "INSECURE" in node.log_text()
        assert "insecure" in node.ctl("info").stdout.lower()
    assert "INSECURE" not in sec.log_text()

    ins2.ctl("connect", HOST, str(ins1.port))
    wait_for(lambda: ins1.alive_names() == {"ins2"} and ins2.alive_names() == {"ins1"}, what="the insecure pair linked")
    clear = f"in the clear {uuid.uuid4().hex}"
    ins2.ctl("send", "ins1", clear)
    wait_for(lambda: clear in inbox_texts(ins1), what="insecure message")
    exchange(ins1, ins2, "insecure")
    if capture is not None:
        # the control for test 1's capture: without CURVE the text is there to read
        assert clear.encode() in capture.stop()

    # secure -> insecure: no key port there, so the connection to it is refused: fails at once
    # (issue 13), naming the key port and --insecure
    t0 = time.monotonic()
    res = sec.ctl("--timeout", "2", "connect", HOST, str(ins1.port), check=False)
    took = time.monotonic() - t0
    assert res.returncode == exitcodes.FAILED, (res.returncode, res.stderr)
    assert took < 2, took
    assert "key port" in res.stderr and "insecure" in res.stderr, res.stderr
    # even with a (made-up) key, a CURVE client cannot handshake with a plaintext node
    public, _ = new_keypair()
    t0 = time.monotonic()
    res = sec.ctl("--timeout", "2", "connect", f"p2p://{public}@{HOST}:{ins1.port}", check=False)
    assert res.returncode == exitcodes.TIMEOUT, (res.returncode, res.stderr)
    assert time.monotonic() - t0 < 2 + 4

    # insecure -> secure: the plaintext handshake is refused; fails within --timeout with exit 4
    t0 = time.monotonic()
    res = ins1.ctl("--timeout", "2", "connect", HOST, str(sec.port), check=False)
    took = time.monotonic() - t0
    assert res.returncode == exitcodes.TIMEOUT, (res.returncode, res.stderr)
    assert took < 2 + 4, took
    assert "insecure" in res.stderr, res.stderr
    wait_for(lambda: dropped(sec, "handshake_failed") > 0, what="the secure node to count the failed handshake")

    for node in (ins1, ins2, sec):
        assert pid_alive(node.pid)
    assert sec.call("peers") == []
    assert {p["name"] for p in ins1.call("peers")} == {"ins2"}
    exchange(ins1, ins2, "insecure after the refusals")
    assert_no_tracebacks(ins1, ins2, sec)
