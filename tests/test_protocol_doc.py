"""docs/PROTOCOL.md against the code, so that the document cannot drift from what p2pd sends.

A peer written from the document alone must get the same envelopes as p2pd emits.  So every
example envelope in it must decode with `p2pd.protocol.decode` and carry exactly the fields
that p2pd itself puts in that type of message in some situation, and every message type's
table must list every `data` field p2pd emits for it (``epoch`` included).  What p2pd emits is
read off a run of real `Node`s on the in-memory network (memnet.py) that makes every type,
and every variant of one (a JOIN that answers, a retry's JOIN, an ACK with ``gap``, a FETCH
by range and by time, a replayed BROADCAST, the PING of `p2pctl ping`, ...).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from dataclasses import replace

import orjson
import testmsg
import pytest
import zmq

from p2pd import protocol as P
from p2pd.identity import Keys
from p2pd.keys import node_id_for
from p2pd.records import z85_encode

from memnet import FAST, HOST, Net

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def fixed_keys(first: int) -> Keys:
    """The keypair whose CURVE secret is the bytes first..first+31 (tests/test_sealed.py's vectors)."""
    secret = z85_encode(bytes(range(first, first + 32)))
    return Keys(secret, zmq.curve_public(secret.encode()).decode())


def json_blocks(text: str) -> list[str]:
    return re.findall(r"^```json\n(.*?)^```", text, re.S | re.M)


def example_envelopes(text: str) -> list[dict]:
    """Every envelope shown in a ```json block: one pretty-printed object, or one per line."""
    found = []
    for block in json_blocks(text):
        try:
            objs = [json.loads(block)]
        except ValueError:
            objs = [json.loads(line) for line in block.splitlines() if line.strip()]
        found += [o for o in objs if isinstance(o, dict) and "v" in o and "sender_id" in o]
    return found


def type_sections(text: str) -> dict[str, str]:
    """Section 4's "### TYPE: ..." subsections, by type."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^### ([A-Z]+): .*?\n(.*?)(?=^##)", text, re.S | re.M)}


def table_fields(section: str) -> set[str]:
    """The `data` fields a section's table has a row for: | `name` | ..."""
    return set(re.findall(r"^\| `([a-z_\[\].]+)` \|", section, re.M))


@pytest.fixture(scope="module")
def emitted() -> dict[str, set[tuple]]:
    """type -> the `data` fields, in order, p2pd sent in messages of that type (``PEERS[]``: its entries)."""
    net = Net()
    alice, bob = net.add("alice"), net.add("bob")
    assert net.call(bob, 0.0, "connect", host=HOST, port=alice.address.port)["ok"]  # first JOIN, answering JOIN, PEERS
    assert net.call(net.add("charlie"), 0.0, "connect", host=HOST, port=bob.address.port)["ok"]  # PEERS that list someone
    net.call(bob, 0.1, "broadcast", text="b1")  # BROADCAST
    net.call(alice, 0.2, "send", peer="bob", text="m1")  # MESSAGE, ACK
    net.call(bob, 0.2, "send", peer="alice", text="m1")
    net.call(alice, 0.3, "ping", peer="bob")  # the PING of `p2pctl ping`, PONG
    net.tick_range(0.5, 2.0, 0.5)  # heartbeat PINGs
    # alice misses bob's broadcast b2 (her SUB is away for it): the next heartbeat tells her,
    # and she FETCHes the range; bob replays it
    # (and charlie's relay of it over the broadcast tree, and his IHAVE: lost too)
    away = set(net.subs[alice.id])
    net.subs[alice.id].clear()
    net.lose = lambda frm, to, msg: to == "alice" and msg.type == P.TREE
    net.call(bob, 2.1, "broadcast", text="b2")
    net.tick_range(2.15, 2.25, 0.05, bob, net.nodes["charlie"])
    net.lose = None
    net.subs[alice.id].update(away)
    # a lost MESSAGE: the next is a gap, and the ACK says so
    net.lose = lambda frm, to, msg: msg.type == P.MESSAGE and msg.data.get("text") == "m2"
    net.call(alice, 2.3, "send", peer="bob", text="m2")
    net.lose = None
    net.call(alice, 2.4, "send", peer="bob", text="m3")
    net.tick_range(2.5, 6.0, 0.5)
    net.call(alice, 6.1, "connect", host=HOST, port=bob.address.port, since=0.0)  # FETCH since, replays marked replay
    # bob falls silent for alice: lost, then her retry's JOIN (again, got, bgot) and his answer
    net.lose = lambda frm, to, msg: frm == "bob"
    net.tick_range(6.5, 13.0, 0.5)
    net.lose = None
    net.tick_range(13.5, 20.0, 0.5)
    net.call(alice, 20.5, "disconnect", peer="bob")  # LEAVE
    # The overlay as a daemon speaks it (nodes with keys: signed records and broadcasts, sealed
    # ROUTED bodies), in a network of its own: erin links to dave and frank, each of whom keeps
    # one link only (active_view 1), so dave and frank are not linked and what goes between them
    # (frank's refusal of dave's NEIGHBOR, dave's MESSAGE, frank's ACK) is routed through erin.
    one = replace(FAST, active_view=1)
    dave = net.add("dave", settings=one, keys=fixed_keys(0x00))
    erin = net.add("erin", settings=replace(FAST, active_view=2), keys=fixed_keys(0x40))
    frank = net.add("frank", settings=one, keys=fixed_keys(0x20))
    assert net.call(dave, 21.0, "connect", host=HOST, port=erin.address.port)["ok"]
    assert net.call(frank, 21.1, "connect", host=HOST, port=erin.address.port)["ok"]
    net.tick_range(21.5, 25.0, 0.5, dave, erin, frank)
    net.call(dave, 25.1, "broadcast", text="b3")  # TREE GOSSIP with the origin's signature
    net.call(dave, 25.2, "send", peer="frank", text="m4")  # ROUTED
    net.tick_range(25.5, 29.0, 0.5, dave, erin, frank)
    # Groups: dave's shout to frank goes as a SHOUT through erin; an invitation to a private group
    # is a MESSAGE with "invite"; frank's join --since FETCHes the group's shouts with a member tag.
    for node in (dave, frank):
        assert net.call(node, 29.1, "join", group="rust-dev")["ok"]
    assert net.call(dave, 29.2, "join", group="ops", private=True)["ok"]
    net.tick_range(29.5, 32.0, 0.5, dave, erin, frank)
    assert net.call(dave, 32.1, "shout", group="rust-dev", text="s1")["result"]["members"] == 1  # SHOUT
    assert net.call(dave, 32.2, "invite", group="ops", peer="frank")["ok"]  # MESSAGE invite
    net.tick_range(32.5, 34.0, 0.5, dave, erin, frank)
    assert net.call(dave, 34.0, "shout", group="ops", text="s2")["ok"]  # before frank is in it
    assert net.call(frank, 34.1, "join", group="ops", private=True, since=0.0)["ok"]  # FETCH group, since, tag, inc
    net.tick_range(34.5, 38.0, 0.5, dave, erin, frank)
    assert [m["text"] for m in net.call(frank, 38.1, "inbox", group="ops")["result"]] == ["s2"]
    assert [m["text"] for m in net.call(frank, 38.1, "inbox", group="rust-dev")["result"]] == ["s1"]
    seen: dict[str, set[tuple]] = defaultdict(set)
    for _, _, _, msg in net.delivered:
        seen[msg.type].add(tuple(msg.data))
        if msg.type == P.TREE and msg.data["kind"] == "GOSSIP":  # the BROADCAST it carries
            seen[P.BROADCAST].add(tuple(P.decode(msg.data["bcast"].encode()).data))
        if msg.type == P.PEERS:
            seen["PEERS[]"].update(tuple(e) for e in msg.data["peers"])
    return seen


def test_the_run_makes_every_type_and_variant(emitted):
    assert set(P.TYPES) <= set(emitted) and emitted["PEERS[]"]
    assert () in emitted[P.PING] and () in emitted[P.LEAVE]
    assert ("upto", "gap") in emitted[P.ACK] and ("since",) in emitted[P.FETCH] and ("from", "to") in emitted[P.FETCH]
    assert any("replay" in s for s in emitted[P.BROADCAST]) and any("again" in s and "got" in s for s in emitted[P.JOIN])


def test_every_example_envelope_decodes_with_the_fields_p2pd_emits(emitted):
    examples = example_envelopes(doc_text())
    assert {e["type"] for e in examples} >= set(P.TYPES), "an example of every message type"
    order = list(orjson.loads(P.encode(testmsg.make(P.LEAVE, "a", "a", 0.0))))
    for env in examples:
        where = f"{env['type']} {env['id']}"
        msg = P.decode(orjson.dumps(env))  # valid, by the codec itself
        assert list(env) == order, f"{where}: envelope fields {list(env)}, p2pd sends {order}"
        fields = tuple(msg.data)  # the order too, so the example reads as the wire does
        assert fields in emitted[msg.type], f"{where}: data fields {fields}; p2pd sends one of {sorted(emitted[msg.type])}"
        for entry in msg.data.get("peers", []) if msg.type == P.PEERS else []:
            assert tuple(entry) in emitted["PEERS[]"], f"{where}: peer entry fields {tuple(entry)}"


def test_every_message_table_lists_every_field_p2pd_emits(emitted):
    sections = type_sections(doc_text())
    assert set(sections) == set(P.TYPES)
    for type_ in set(P.TYPES):
        listed = table_fields(sections[type_])
        sent = set().union(*emitted[type_])
        if type_ == P.PEERS:
            sent |= {f"peers[].{f}" for f in set().union(*emitted["PEERS[]"])}
        missing = sent - listed
        assert not missing, f"{type_}: the table has no row for {sorted(missing)}"
    for type_ in (P.JOIN, P.PING, P.PONG, P.MESSAGE, P.BROADCAST):
        assert "epoch" in table_fields(sections[type_]), type_


def test_example_node_ids_belong_to_their_keys():
    rows = re.findall(r"^\| (\w+) \| `([0-9a-f]{32})` \| `([^`]{40})` \|", doc_text(), re.M)
    assert len(rows) == 3
    for name, node_id, key in rows:
        assert node_id_for(key) == node_id, name
