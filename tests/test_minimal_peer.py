"""The minimal compatible peers of docs/PROTOCOL.md section 11, run as printed, against real daemons.

The document promises that those programs are complete peers; nothing ran them, and the overlay
cut them 10 s after they joined (it waited for a NEIGHBOR they never send: docs/PROTOCOL.md
12.2).  Each test extracts one program from the document, starts it as a third-party process
joining alice, and checks that it is still linked past that sweep, that bob finds it through
alice's gossip and links to it ("Charlie connects to Bob and so finds Alice"), and that direct
messages and broadcasts from both reach it once; and, in a network larger than the active view
(where broadcasts travel as TREE envelopes, which it does not read), that it still gets the
broadcasts of the node it links to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port_block, wait_for
from sechelp import link

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
SWEEP_S = 10.0  # a link in neither view this long after it came up is closed (docs/PROTOCOL.md 12.2)


def program(first_line: str) -> str:
    """The ```python block of the document whose docstring starts with ``first_line``."""
    text = DOC.read_text(encoding="utf-8")
    at = text.index(f'"""{first_line}')
    return text[text.rindex("```python\n", 0, at) + len("```python\n"):text.index("```", at)]


class MiniPeer:
    """One of the document's programs as a process; what it prints is collected in a file."""

    def __init__(self, tmp_path: Path, source: str, target: str):
        script = tmp_path / "minipeer.py"
        script.write_text(source)
        self.out = tmp_path / "minipeer.out"
        self.port = free_port_block(2)
        with open(self.out, "w") as out:
            self.proc = subprocess.Popen([sys.executable, str(script), target, str(self.port)], stdout=out,
                                         stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def printed(self) -> list[str]:
        return self.out.read_text().splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # it says LEAVE to every peer, then exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def mini_entry(node, mini_id: str) -> dict | None:
    return next((p for p in node.call("peers") if p["id"] == mini_id), None)


def run_minimal_peer(tmp_path, make_node, source: str, target_of, *flags: str) -> None:
    alice, bob = make_node("alice"), make_node("bob")
    alice.start(*flags)
    bob.start(*flags)
    link(bob, alice)
    mini = MiniPeer(tmp_path, source, target_of(alice))
    try:
        wait_for(lambda: any(line.startswith("linked: alice") for line in mini.printed()), 20, what="alice to answer the minimal peer's JOIN")
        mini_id = next(p["id"] for p in alice.call("peers") if p["name"] == "mini")
        # bob hears of it in alice's gossip (it keeps no roster) and dials it: it links back
        wait_for(lambda: any(line.startswith("linked: bob") for line in mini.printed()), 20, what="bob to find the minimal peer through alice")

        def held_past_the_sweep() -> bool:
            entries = [mini_entry(node, mini_id) for node in (alice, bob)]
            assert all(e is not None and e["state"] == "alive" for e in entries), entries  # at every poll: never cut
            return min(e["state_for_s"] for e in entries) > SWEEP_S + 1.0

        wait_for(held_past_the_sweep, SWEEP_S + 15, interval=0.5, what="the minimal peer's links to outlive the overlay's sweep")
        rows = {p["name"]: p for p in alice.ctl_json("peers")}
        assert (rows["mini"]["linked"], rows["mini"]["leaf"], rows["bob"]["linked"], rows["bob"]["leaf"]) == (True, True, True, False)
        table = {line.split()[0]: line.split() for line in alice.ctl("peers").stdout.splitlines()[1:]}
        assert "leaf" in table["mini"] and "direct" in table["bob"]  # the LINK column

        alice.ctl("send", "mini", "hello, leaf")
        bob.ctl("broadcast", "from bob to all")
        alice.ctl("broadcast", "from alice to all")
        expected = ["MESSAGE from alice: hello, leaf", "BROADCAST from bob: from bob to all", "BROADCAST from alice: from alice to all"]
        wait_for(lambda: all(line in mini.printed() for line in expected), 20, what=f"the minimal peer to print {expected}")
        wait_for(lambda: alice.ctl_json("outbox") == [] or all(m.get("state") == "delivered" for m in alice.ctl_json("outbox")), 20,
                 what="alice's message to be acknowledged")
        got = [line for line in mini.printed() if line.startswith(("MESSAGE", "BROADCAST"))]
        assert sorted(got) == sorted(expected)  # each once

        mini.stop()
        # LEAVE: gone from both tables (a peer the heartbeat lost would stay, listed lost)
        wait_for(lambda: all(mini_entry(node, mini_id) is None for node in (alice, bob)), 20, what="its LEAVE to reach both")
    finally:
        mini.stop()


def test_the_documented_plain_peer_stays_linked_and_gets_messages_and_broadcasts(tmp_path, make_node):
    source = program("A minimal p2pd-compatible peer with plain pyzmq.")
    run_minimal_peer(tmp_path, make_node, source, lambda node: node.addr, "--insecure")


@pytest.mark.timeout(180)
def test_the_documented_curve_peer_stays_linked_and_gets_messages_and_broadcasts(tmp_path, make_node):
    source = program("A minimal p2pd-compatible peer under CURVE.")
    run_minimal_peer(tmp_path, make_node, source, lambda node: node.addr)


def test_a_leaf_gets_its_nodes_broadcasts_where_they_travel_by_the_tree(tmp_path, make_node):
    """Five nodes with an active view of 3: alice is linked to some of the others only, so her
    broadcasts go down the tree (TREE GOSSIP, 12.6), which a simple peer ignores.  Her leaf
    gets them plain, on their own topic, besides her direct messages."""
    nodes = [make_node(name) for name in ("alice", "bob", "carol", "dave", "erin")]
    for node in nodes:
        with open(node.home / "p2pd.toml", "a") as f:
            f.write("active_view = 3\n")
        node.start("--insecure")
    alice = nodes[0]
    for prev, node in zip(nodes, nodes[1:]):
        link(prev, node)
    wait_for(lambda: all(len(n.alive_names()) >= 2 and len(n.ctl_json("peers")) == 4 for n in nodes), 60,
             what="the five to list one another")
    wait_for(lambda: len(alice.call("info")["overlay"]["active"]) < 4, 30, what="alice to hold fewer links than members (a tree, not a star)")
    mini = MiniPeer(tmp_path, program("A minimal p2pd-compatible peer with plain pyzmq."), alice.addr)
    try:
        wait_for(lambda: any(line.startswith("linked: alice") for line in mini.printed()), 20, what="alice to answer the minimal peer's JOIN")
        alice.ctl("broadcast", "down the tree")
        alice.ctl("send", "mini", "hello, leaf")
        expected = ["BROADCAST from alice: down the tree", "MESSAGE from alice: hello, leaf"]
        wait_for(lambda: all(line in mini.printed() for line in expected), 20, what=f"the minimal peer to print {expected}")
        wait_for(lambda: all("down the tree" in [m["text"] for m in n.call("inbox")] for n in nodes[1:]), 20,
                 what="the broadcast to reach the other four")
        assert [line for line in mini.printed() if "down the tree" in line] == expected[:1]  # once
    finally:
        mini.stop()


def test_max_leaves_refuses_one_simple_peer_too_many_and_keeps_the_ones_linked(tmp_path, make_node):
    """Simple peers are anyone's to make: a node holds ``max_leaves`` of them at most, so they
    never fill the table its overlay links need.  With ``max_leaves = 1`` the second documented
    peer's JOIN is dropped (``leaf_limit``), the first stays linked, and a p2pd node still links."""
    alice, bob = make_node("alice"), make_node("bob")
    with open(alice.home / "p2pd.toml", "a") as f:
        f.write("max_leaves = 1\n")
    alice.start("--insecure")
    bob.start("--insecure")
    source = program("A minimal p2pd-compatible peer with plain pyzmq.")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = MiniPeer(tmp_path / "one", source, alice.addr)
    second = None
    try:
        wait_for(lambda: any(line.startswith("linked: alice") for line in first.printed()), 20, what="alice to answer the first peer's JOIN")
        second = MiniPeer(tmp_path / "two", source, alice.addr)
        wait_for(lambda: alice.call("info")["dropped"].get("leaf_limit", 0) >= 1, 20, what="alice to refuse the second simple peer")
        link(bob, alice)  # a p2pd node is not a leaf: the limit leaves it alone
        rows = alice.call("peers")
        assert sorted((p["name"], p["leaf"]) for p in rows if p["state"] == "alive") == [("bob", False), ("mini", True)], rows
        assert not any(line.startswith("linked: alice") for line in second.printed())
        assert "max_leaves=1" in alice.log_text()
    finally:
        first.stop()
        if second is not None:
            second.stop()
