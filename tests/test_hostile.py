"""Attacks on a node's ports by someone who can reach them (docs/SECURITY.md, "A hostile network"):
each test performs the attack against real daemons on loopback and checks that the node stays up,
keeps its links and counts what it refused."""

from __future__ import annotations

import threading
import time
import uuid

import zmq

from conftest import enc, envelope, wait_for
from sechelp import HOST, RawPeer, assert_no_tracebacks, dropped, inbox_texts, link, new_keypair, raw_socket, router

# --------------------------------------------------------------------------- routing-id takeover


def _claim_routing_ids(zctx, node, rids: list[bytes], claimed_id: str, stop: threading.Event, counter: list, limit_s: float = 15.0) -> None:
    """Mallory, in a loop: a fresh CURVE key of her own, a connection to ``node``'s ROUTER under each
    routing id in ``rids``, one PING in ``claimed_id``'s name on it.  Bounded in time and count."""
    node_key = node.call("info")["public_key"]
    deadline = time.monotonic() + limit_s
    while not stop.is_set() and time.monotonic() < deadline and counter[0] < 300:
        for rid in rids:
            s = raw_socket(zctx, zmq.DEALER, router(node), node_key, new_keypair(), rid)
            s.send(enc(envelope("PING", claimed_id, target=node.id)))
            s.setsockopt(zmq.LINGER, 300)  # let the frame out before the close
            s.close()
            counter[0] += 1
        stop.wait(0.02)


def test_a_stranger_claiming_a_linked_peers_routing_id_cannot_cut_or_disturb_its_link(make_node, zctx):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    link(bob, alice)  # alice dialled bob: alice's DEALER -> bob's ROUTER carries alice's messages
    raw = RawPeer(zctx, bob, "thirdparty")  # a peer whose DEALER uses its bare node id as routing id
    raw.join()
    wait_for(lambda: any(p["id"] == raw.id for p in bob.call("peers")), what="bob to accept the raw peer's JOIN")
    before = dropped(bob, "spoofed_routing_id")

    stop, attempts = threading.Event(), [0]
    attack = threading.Thread(target=_claim_routing_ids, daemon=True, args=(
        zctx, bob, [alice.id.encode(), alice.id.encode() + b"/0123456789abcdef", raw.id.encode()], alice.id, stop, attempts))
    attack.start()
    try:
        wait_for(lambda: attempts[0] >= 30, what="the attack to get going")
        slowest = 0.0
        for i in range(8):  # throughout the attack, alice -> bob is delivered at once
            t0 = time.monotonic()
            alice.ctl("send", "bob", f"during the attack {i}", "--wait", "5")
            slowest = max(slowest, time.monotonic() - t0)
            raw.send("MESSAGE", {"text": f"raw during the attack {i}"}, target=bob.id)
        wait_for(lambda: all(f"raw during the attack {i}" in inbox_texts(bob) for i in range(8)),
                 what="the raw peer's messages: its bare routing id was never displaced")
    finally:
        stop.set()
        attack.join(20)
    assert attempts[0] >= 30
    assert slowest < 3.0, f"a send during the attack took {slowest:.1f}s"
    assert dropped(bob, "spoofed_routing_id") > before
    log = bob.log_text()
    assert "peer lost: alice" not in log and "peer lost: thirdparty" not in log, log[-2000:]
    assert "spoofed_routing_id" in log and "belongs to key" in log
    texts = inbox_texts(bob)
    assert all(f"during the attack {i}" in texts for i in range(8))
    raw.close()
    assert_no_tracebacks(alice, bob)
