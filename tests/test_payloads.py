"""The typed payloads (p2pd/payloads.py) agree with the codec and with what p2pd sends."""

from __future__ import annotations

import types
import typing
from dataclasses import replace

import pytest

import testmsg
from memnet import CLI, FAST, HOST, WALL, net  # noqa: F401 (net is a fixture)
from p2pd import protocol as P
from p2pd.actions import Publish, PublishBatch, Send, SendBatch
from p2pd.payloads import PAYLOADS, PeerEntry
from test_protocol import VALID


def test_every_message_type_has_a_payload():
    assert set(PAYLOADS) == P.TYPES


@pytest.mark.parametrize("type_", sorted(P.TYPES))
def test_the_codec_requires_what_the_payload_calls_required(type_):
    data, target = VALID[type_]
    assert set(data) <= set(typing.get_type_hints(PAYLOADS[type_])), "the valid example uses undeclared fields"
    P.decode(P.encode(testmsg.make(type_, "alice-id", "alice", 1.7e9, dict(data), target)))
    for key in PAYLOADS[type_].__required_keys__:
        broken = {k: v for k, v in data.items() if k != key}
        with pytest.raises(P.ProtocolError):
            P.decode(P.encode(testmsg.make(type_, "alice-id", "alice", 1.7e9, broken, target)))


def _fits(value, hint) -> bool:
    """Does a JSON value fit a payload's annotation (the simple types payloads.py uses)?"""
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type) and typing.is_typeddict(hint):
        return isinstance(value, dict) and _conforms(value, hint) == []
    if isinstance(hint, type):
        return isinstance(value, hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if hint is type(None):
        return value is None
    raise AssertionError(f"payload annotation {hint!r} not understood by this test")


def _conforms(data: dict, payload: type) -> list[str]:
    hints = typing.get_type_hints(payload)
    problems = [f"undeclared field {k!r}" for k in data if k not in hints]
    problems += [f"{k!r} missing" for k in payload.__required_keys__ if k not in data]
    problems += [f"{k!r}={v!r} is not {hints[k]}" for k, v in data.items() if k in hints and not _fits(v, hints[k])]
    return problems


def test_what_p2pd_sends_carries_only_declared_fields_of_the_declared_types(net):
    """Every envelope of a run that exercises each type: link-up, gossip, messages and their ACKs,
    broadcasts and a FETCH of the backlog, pings, a reconnect, a leave."""
    alice, bob, charlie = net.add("alice"), net.add("bob"), net.add("charlie")
    assert net.connect(bob, alice, 0.0)["ok"] and net.connect(charlie, bob, 0.2)["ok"]
    net.tick_range(0.3, 3.0, 0.25, alice, bob, charlie)
    assert net.call(alice, 3.0, "send", peer="bob", text="hi")["ok"]
    assert net.call(alice, 3.05, "broadcast", text="to all")["ok"]
    since = WALL  # the backlog since then: a FETCH
    assert net.call(charlie, 3.1, "connect", host=HOST, port=alice.address.port, since=since)["result"]["already"]
    assert net.call(alice, 3.2, "ping", peer="bob")["ok"]
    for node in (alice, charlie):  # groups: SHOUT, a MESSAGE with "invite", a FETCH of a group
        assert net.call(node, 3.25, "join", group="room")["ok"]
    assert net.call(alice, 3.25, "join", group="ops", private=True)["ok"]
    net.tick_range(3.3, 5.0, 0.25, alice, bob, charlie)
    assert net.call(alice, 5.0, "shout", group="room", text="to the room")["result"]["members"] == 1
    assert net.call(alice, 5.0, "invite", group="ops", peer="charlie")["ok"]
    net.tick_range(5.25, 6.0, 0.25, alice, bob, charlie)
    assert net.call(charlie, 6.0, "join", group="ops", private=True, since=since)["ok"]
    net.tick_range(6.25, 12.0, 0.25, alice, bob, charlie)
    net.apply(bob, bob.leave(12.0), 12.0)
    seen = {m.type for _, _, m in _envelopes(net)}
    # ROUTED needs two nodes without a link: tests/test_relay.py and tests/test_overlay.py check its fields;
    # TREE a network bigger than the active view (three linked nodes publish plain BROADCASTs): below
    assert seen == P.TYPES - {P.ROUTED, P.TREE}, f"the run made no {sorted(P.TYPES - seen - {P.ROUTED, P.TREE})}"
    problems = [f"{frm}->{to} {m.type}: {p}" for frm, to, m in _envelopes(net) for p in _conforms(m.data, PAYLOADS[m.type])]
    assert not problems, "\n".join(problems[:20])


def test_tree_envelopes_carry_only_declared_fields(net):
    """Five nodes with an active view of three: nobody is linked to everyone, and five links or
    more among five nodes make a cycle, so broadcasts go down the tree as TREE GOSSIPs, with
    IHAVEs (and their origin and number) along the redundant links.  (A ring of four with a view
    of two could settle as a line, with no redundant link at all.)"""
    small = replace(FAST, active_view=3, passive_view=4)
    nodes = [net.add(name, settings=small) for name in ("alice", "bob", "charlie", "dave", "erin")]
    for a, b in zip(nodes, nodes[1:] + nodes[:1]):
        assert net.connect(a, b, 0.0)["ok"]
    net.tick_range(0.25, 6.0, 0.25, *nodes)
    degrees = [len(n.overlay.views.active) for n in nodes]
    assert max(degrees) < len(nodes) - 1 and sum(degrees) // 2 >= len(nodes), degrees
    for k in range(3):
        for n in (nodes[0], nodes[-1]):
            assert net.call(n, 6.0 + k, "broadcast", text=f"b{k}")["ok"]
        net.tick_range(6.25 + k, 7.0 + k, 0.25, *nodes)
    tree = [m for _, _, m in _envelopes(net) if m.type == P.TREE]
    assert {m.data["kind"] for m in tree} >= {"GOSSIP", "IHAVE"}
    assert any(len(e) == 4 for m in tree if m.data["kind"] == "IHAVE" for e in m.data["ids"])
    problems = [f"{frm}->{to} {m.type}: {p}" for frm, to, m in _envelopes(net) for p in _conforms(m.data, PAYLOADS[m.type])]
    assert not problems, "\n".join(problems[:20])


def _envelopes(net):
    """Every envelope a node put in a Send, SendBatch or Publish effect, delivered or not."""
    for _, frm, act in net.actions:
        if isinstance(act, (Send, Publish)):
            yield frm, getattr(act, "key", "pub"), act.msg
            if act.msg.type == P.TREE and act.msg.data["kind"] == "GOSSIP":  # the BROADCAST it carries
                yield frm, "tree", P.decode(act.msg.data["bcast"].encode())
        elif isinstance(act, (SendBatch, PublishBatch)):
            yield from ((frm, getattr(act, "key", "pub"), m) for m in act.msgs)


def test_the_conformance_check_can_fail():
    assert _conforms({"peers": [{"id": "x", "name": "y", "port": "1", "pub_port": 2}]}, PAYLOADS[P.PEERS])
    assert _conforms({"upto": 1, "extra": True}, PAYLOADS[P.ACK]) == ["undeclared field 'extra'"]
    assert _conforms({"text": "a", "seq": True}, PAYLOADS[P.MESSAGE])
    assert _conforms({"id": "x", "name": "y", "addr": None, "port": 1, "pub_port": 2}, PeerEntry) == []
    assert CLI and HOST and WALL  # memnet imported for its fixture
