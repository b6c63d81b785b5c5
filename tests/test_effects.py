"""The effect registry (p2pd/effects.py): every effect type is carried out by every performer.

The node's effects are performed by three classes: the real event loop (p2pd/transport.py), the
simulator (p2pd/sim.py) and the tests' in-memory network (tests/memnet.py).  Each must handle every
type of actions.py or say, with a reason, that it does not model it; a new effect type without its
handlers fails here (and at import, by the decorator).  Also: memnet's handlers for the effects it
learnt last (PublishBatch, FetchKey, PinKey, LanBeacon), and the transport's own declaration read
off a real Transport with real sockets.
"""

from __future__ import annotations

import dataclasses

import pytest

import testmsg
import zmq

from memnet import FAST, HOST, Net, ep, state
from p2pd import actions, lan
from p2pd import protocol as P
from p2pd.actions import EditAuthorizedKeys, FetchKey, ForgetPin, LanBeacon, OpenLink, PinKey, PublishBatch, Send, Shutdown, ToClient
from p2pd.effects import ALL_EFFECTS, NotModelled, coverage, handler_name, handlers, performer
from p2pd.membership import ALIVE
from p2pd.settings import Settings
from p2pd.sim import Sim
from p2pd.transport import Transport
from p2pd.trust import Trust, node_id_for

PERFORMERS = [Transport, Sim, Net]


def test_all_effects_lists_every_effect_dataclass_of_actions_once():
    defined = {c for c in vars(actions).values()
               if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__ == actions.__name__}
    assert len(ALL_EFFECTS) == len(set(ALL_EFFECTS))
    assert set(ALL_EFFECTS) == defined


@pytest.mark.parametrize("cls", PERFORMERS, ids=lambda c: c.__name__)
def test_each_performer_covers_every_effect_type(cls):
    covered = coverage(cls)
    assert set(covered) == set(ALL_EFFECTS)
    for effect, how in covered.items():
        if how == "performed":
            assert callable(getattr(cls, handler_name(effect)))
        else:
            assert effect in cls.NOT_MODELLED and len(how) > 10  # a reason, not a placeholder


def test_only_the_simulator_leaves_effects_out_and_says_why():
    assert dict(Transport.NOT_MODELLED) == {} and dict(Net.NOT_MODELLED) == {}
    assert set(Sim.NOT_MODELLED) == {FetchKey, PinKey, LanBeacon, EditAuthorizedKeys, ForgetPin}
    assert all("insecure" in why or "discover" in why or "home" in why for why in Sim.NOT_MODELLED.values())


def test_handler_names_follow_the_effect_names():
    assert handler_name(Send) == "perform_send"
    assert handler_name(OpenLink) == "perform_open_link"
    assert handler_name(PublishBatch) == "perform_publish_batch"
    assert handler_name(LanBeacon) == "perform_lan_beacon"


# ---------------------------------------------------------------------------- the decorator refuses gaps


def _all_but(*left_out):
    """A class with a handler for every effect type except ``left_out``."""
    return {handler_name(e): (lambda self, act: None) for e in ALL_EFFECTS if e not in left_out}


def test_a_performer_missing_a_handler_fails_at_class_creation():
    with pytest.raises(TypeError, match=r"FetchKey has no perform_fetch_key"):
        performer()(type("Partial", (), _all_but(FetchKey)))


def test_not_modelled_needs_a_reason_and_excludes_a_handler():
    with pytest.raises(TypeError, match="without a reason"):
        performer(not_modelled={FetchKey: " "})(type("Lazy", (), _all_but(FetchKey)))
    with pytest.raises(TypeError, match="has a handler and is named not modelled"):
        performer(not_modelled={Send: "because"})(type("Both", (), _all_but()))
    with pytest.raises(TypeError, match="no effect type"):
        performer(not_modelled={int: "because"})(type("Odd", (), _all_but()))


def test_an_effect_not_modelled_raises_rather_than_vanishing():
    cls = performer(not_modelled={Shutdown: "this one never stops"})(type("NoStop", (), _all_but(Shutdown)))
    table = handlers(cls())
    assert set(table) == set(ALL_EFFECTS)
    with pytest.raises(NotModelled, match="this one never stops"):
        table[Shutdown](Shutdown())
    sim = Sim(2, seed=1)
    with pytest.raises(NotModelled, match="Sim does not model FetchKey"):
        sim._perform(0.0, sim.nodes[0], [FetchKey("tcp://127.0.0.1:5003", "key1")])


# ---------------------------------------------------------------------------- the real transport


@pytest.fixture
def transport(tmp_path, monkeypatch):
    """A real Transport (insecure, its listeners bound on loopback) with a real Node; its loop does not run."""
    from p2pd.home import ENV_CONTROL, Home
    from p2pd.node import Node

    monkeypatch.setenv(ENV_CONTROL, "tcp")  # a pytest tmp path can be too long for an ipc endpoint
    home = Home(tmp_path / "home")
    home.ensure()
    settings = Settings(host="127.0.0.1", port=0, insecure=True).validate()
    t = Transport(home, settings, "a" * 32, "alice")
    t.node = Node("a" * 32, "alice", P.PeerAddress(HOST, t.port, t.pub_port), settings, 0.0, 1.7e9)
    yield t
    t.close()


def test_a_real_transport_dispatches_every_effect_type_to_its_own_handler(transport):
    table = handlers(transport)
    assert set(table) == set(ALL_EFFECTS)
    assert all(h.__self__ is transport and h.__name__ == handler_name(e) for e, h in table.items())
    transport.apply([Shutdown()])
    assert transport.running is False


def test_the_transport_reports_a_ping_leaving_to_the_node(transport, zctx):
    import time

    peer = zctx.socket(zmq.ROUTER)
    port = peer.bind_to_random_port("tcp://127.0.0.1")
    node = transport.node
    bob = node.table.learn("b" * 32, "bob", P.PeerAddress(HOST, port, port + 1), 0.0)[0]
    (ping,) = node.ping(0.0, bob, 5.0, b"cli", 1)  # decided at t=0 ...
    assert ping.report_sent and not ping.before_commit
    transport.apply([OpenLink(bob.id, ep(port))])
    before = time.monotonic()
    transport.apply([ping])  # ... and timed from when it leaves
    assert node.pings[ping.msg.id].sent_at >= before
    assert peer.poll(5000) and P.decode(peer.recv_multipart()[-1]).type == P.PING


def test_the_transport_tells_the_node_when_a_watcher_has_gone(transport):
    node = transport.node
    node.watch(b"gone")
    transport.apply([ToClient(b"gone", {"event": "x"})])  # no such client on the control socket: EHOSTUNREACH
    assert b"gone" not in node.watchers and node.dropped == {}


def test_the_node_marks_a_pong_as_free_of_the_commit_and_nothing_else():
    net = Net()
    alice, bob = net.add("alice"), net.add("bob")
    assert net.connect(bob, alice, 0.0)["ok"] is True
    ping = testmsg.make(P.PING, bob.id, "bob", 0.0, {}, alice.id)
    acts = alice.on_router_frames(1.0, [bob.id.encode(), P.encode(ping)], HOST)
    sends = [a for a in acts if isinstance(a, Send)]
    assert [(a.msg.type, a.before_commit) for a in sends][0] == (P.PONG, True)
    net.tick(5.0)
    others = [a for _, a in net.acts("alice", Send) if a.msg.type != P.PONG]
    assert others and not any(a.before_commit for a in others)
    assert all(a.report_sent == (a.msg.type == P.PING) for a in others)


# ---------------------------------------------------------------------------- memnet's newer handlers


def test_memnet_publish_batch_reaches_each_subscriber_as_one_message():
    net = Net()
    alice, bob, charlie = net.add("alice"), net.add("bob"), net.add("charlie")
    for other in (bob, charlie):
        assert net.connect(other, alice, 0.0)["ok"] is True
    got = []
    for other in (bob, charlie):
        other.on_sub_frames = lambda now, frames, *a, who=other.name, **k: got.append((who, len(frames))) or []
    msgs = [testmsg.make(P.BROADCAST, alice.id, "alice", 0.0, {"text": str(i), "bseq": i + 1}) for i in range(3)]
    net.apply(alice, [PublishBatch(msgs)], 1.0)
    assert sorted(got) == [("bob", 3), ("charlie", 3)]
    assert [m.data["text"] for _, frm, to, m in net.delivered[-6:] if to == "bob"] == ["0", "1", "2"]


def _secure(net: Net, name: str) -> tuple:
    key = zmq.curve_keypair()[0].decode()
    return net.add(name, node_id=node_id_for(key), trust=Trust(key, secure=True)), key


def test_memnet_answers_a_key_fetch_with_the_other_nodes_key_and_records_the_pin():
    net = Net()
    alice, _ = _secure(net, "alice")
    bob, bob_key = _secure(net, "bob")
    net.request(alice, 0.0, "connect", host=HOST, port=bob.address.port, timeout=5)
    (fetch,) = [a for _, a in net.acts("alice", FetchKey)]
    assert fetch.endpoint == ep(bob.address.port + 2)
    (link,) = [a for _, a in net.acts("alice", OpenLink)]
    assert link.endpoint == ep(bob.address.port) and link.server_key == bob_key
    # pinned only when bob answers over the CURVE link, which memnet does not model (it has no
    # ZAP user ids): tests/test_trust_keys.py checks the pin made on the answer
    assert net.pins["alice"] == {}


def test_memnet_key_fetch_where_no_key_port_listens_is_refused():
    net = Net()
    alice, _ = _secure(net, "alice")
    net.add("bob")  # --insecure: no key port
    replies = net.request(alice, 0.0, "connect", host=HOST, port=net.nodes["bob"].address.port, timeout=5)
    assert replies and replies[-1]["ok"] is False and "connection refused" in replies[-1]["error"]
    assert not net.acts("alice", OpenLink) and net.pins["alice"] == {}


def test_memnet_lan_beacons_reach_every_node_and_a_discovering_one_dials_the_sender():
    net = Net()
    lan_settings = dataclasses.replace(FAST, discover="lan", discover_interval_s=1.0).validate()
    # LAN beacons carry the node id as 16 bytes: hex ids; alice's is the lower, so she dials at once
    alice, bob = net.add("alice", "a" * 32, settings=lan_settings), net.add("bob", "b" * 32, settings=lan_settings)
    net.tick(0.0, bob)
    assert [(name, payload) for _, name, payload in net.beacons] == [("bob", lan.encode(bob.id, bob.address.port, None))]
    assert [a.endpoint for _, a in net.acts("alice", OpenLink)] == [ep(bob.address.port)]
    assert state(alice, bob) == ALIVE and state(bob, alice) == ALIVE
