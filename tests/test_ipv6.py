"""Nodes on IPv6: ``--host ::1`` binds, a p2p:// string and ``--join [::1]:PORT`` link, messages and
broadcasts flow, and every address is shown and pinned as ``[::1]:PORT`` (the port never read as
part of the address).  Loopback only; skipped where the kernel has no IPv6."""

from __future__ import annotations

import socket

import pytest

from conftest import wait_for


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")


def test_nodes_bound_to_ipv6_loopback_link_message_broadcast_and_pin(make_node):
    alice, bob, carol = make_node("alice"), make_node("bob"), make_node("carol")
    for n in (alice, bob):
        n.start("--host", "::1", port=0)
    assert alice.info["address"]["addr"] == "::1"
    at = f"[::1]:{alice.port}"
    connect = alice.ctl_json("info")["connect"]
    assert connect.endswith("@" + at), connect

    out = bob.ctl("connect", connect).stdout
    assert at in out, out
    wait_for(lambda: alice.alive_names() == {"bob"} and bob.alive_names() == {"alice"}, what="alice and bob linked")
    assert bob.peers()["alice"]["address"] == at
    assert [k["address"] for k in bob.ctl_json("known", "list")] == [at]

    # a third node joins by a bracketed address and finds bob through alice
    carol.start("--host", "::1", "--join", at, port=0)
    wait_for(lambda: carol.alive_names() == {"alice", "bob"}, what="carol to find bob through alice")

    bob.ctl("send", "carol", "over ipv6")
    wait_for(lambda: any(m["text"] == "over ipv6" for m in carol.call("history")), what="bob's message at carol")
    alice.ctl("broadcast", "to all over ipv6")
    for n in (bob, carol):
        wait_for(lambda n=n: any(m["text"] == "to all over ipv6" for m in n.call("history")), what=f"the broadcast at {n.name}")

    bob.ctl("known", "forget", at)
    assert bob.ctl_json("known", "list") == []


def test_a_dual_stack_node_takes_ipv4_and_ipv6_peers_and_shows_ipv4_plainly(make_node):
    hub, v4, v6 = make_node("hub"), make_node("v4"), make_node("v6")
    hub.start("--host", "::", port=0)  # every interface, both families
    v4.start(port=0)
    v6.start("--host", "::1", port=0)
    v4.ctl("connect", f"127.0.0.1:{hub.port}")
    v6.ctl("connect", f"[::1]:{hub.port}")
    wait_for(lambda: hub.alive_names() == {"v4", "v6"}, what="both linked to the hub")
    # an IPv4 peer on a dual-stack socket is seen as ::ffff:127.0.0.1: shown (and dialled back) as 127.0.0.1
    assert hub.peers()["v4"]["address"] == f"127.0.0.1:{v4.port}"
    assert hub.peers()["v6"]["address"] == f"[::1]:{v6.port}"
