"""Links that come back, and links asked for again (issue 12, "Also fix"), with real daemons.

* A peer that alice took for lost (frozen with SIGSTOP past her heartbeat timeout) keeps its
  SUB attached to her PUB: once it relinks it is still `subscribed`, and her broadcasts reach it.
* `connect` by another spelling of an address alice is already linked to (`localhost` for
  127.0.0.1) is recognised: the link is left alone, no second pin is written, and the next
  `send --wait` goes through at once: sent once, not resent.
"""

from __future__ import annotations

import json
import os
import signal
import time

from conftest import wait_for
from p2pctl.client import host_addresses


def peer(node, name: str) -> dict | None:
    return {p["name"]: p for p in node.ctl_json("peers")}.get(name)


def state(node, name: str) -> str | None:
    return {p["name"]: p["state"] for p in node.call("peers")}.get(name)


def test_a_peer_lost_and_relinked_with_its_sub_attached_stays_subscribed(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    # bob never takes alice for lost while he is frozen (30 s timeout), so his SUB stays attached
    # to her PUB: no new subscribe message comes when he relinks.
    bob.start("--heartbeat-timeout", "30")
    bob.ctl("connect", alice.addr)
    wait_for(lambda: (peer(alice, "bob") or {}).get("subscribed"), what="bob subscribed to alice")

    os.kill(bob.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: state(alice, "bob") == "lost", timeout=15, what="alice to mark the frozen bob lost")
    finally:
        os.kill(bob.pid, signal.SIGCONT)
    wait_for(lambda: state(alice, "bob") == "alive", timeout=15, what="bob to relink")

    seen = peer(alice, "bob")  # `p2pctl --json peers`, the real CLI
    assert seen["state"] == "alive" and seen["subscribed"] is True, seen
    assert "peer lost: bob" in alice.log_text()  # it was a real loss and relink
    assert "alice" in bob.alive_names()

    reply = json.loads(alice.ctl("--json", "broadcast", "still there, bob?").stdout)
    assert reply["subscribers"] == 1, reply
    wait_for(lambda: any(m["text"] == "still there, bob?" for m in bob.call("inbox")), what="bob to receive the broadcast")


def test_connect_by_another_spelling_of_a_linked_address_leaves_the_link_alone(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    alice.ctl("connect", f"127.0.0.1:{bob.port}")
    wait_for(lambda: "bob" in alice.alive_names() and "alice" in bob.alive_names(), what="alice and bob linked")
    known_before = alice.ctl_json("known", "list")
    assert [k["address"] for k in known_before] == [f"127.0.0.1:{bob.port}"]

    for spelling in (f"localhost:{bob.port}", f"127.0.0.1:{bob.port}"):
        out = alice.ctl("connect", spelling).stdout
        assert out.startswith("already linked to bob"), (spelling, out)
        reply = json.loads(alice.ctl("--json", "connect", spelling).stdout)
        assert reply["already"] is True and reply["peer"]["address"] == f"127.0.0.1:{bob.port}", reply

    assert alice.ctl_json("known", "list") == known_before  # no second pin for "localhost"
    assert [p["name"] for p in alice.ctl_json("peers")] == ["bob"]

    before = alice.call("info")
    t0 = time.monotonic()
    reply = json.loads(alice.ctl("--json", "send", "--wait", "10", "bob", "right after").stdout)
    elapsed = time.monotonic() - t0
    assert reply["status"] == "delivered", reply
    # Sent once: a link cut by a second dial loses it and resends after the ack timeout (2 s).
    [row] = [r for r in alice.ctl_json("outbox", "--all") if r["id"] == reply["id"]]
    assert row["status"] == "delivered" and row["attempts"] == 0, (row, f"send --wait took {elapsed:.2f}s")
    after = alice.call("info")
    assert after["messages_delivered"] - before["messages_delivered"] == 1
    assert bob.call("info")["duplicates_dropped"] == 0
    assert "peer lost" not in alice.log_text() and "peer lost" not in bob.log_text()


def test_the_client_resolves_names_and_passes_literals_through():
    """What `p2pctl connect` tells the daemon a host is (name resolution stays out of the daemon)."""
    assert host_addresses("127.0.0.1", 5000) == ["127.0.0.1"]
    assert host_addresses("[::1]", 5000) == ["::1"]
    assert "127.0.0.1" in host_addresses("localhost", 5000)
    assert host_addresses("no-such-host.invalid", 5000, timeout_s=2.0) == []  # RFC 6761: never resolves
