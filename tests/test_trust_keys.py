"""Unit tests of key files, pins, the allowlist and the trust decisions (no sockets)."""

from __future__ import annotations

import json

import testmsg
import pytest
import zmq

from p2pd import protocol as P
from p2pd.actions import PinKey
from p2pd.home import Home
from p2pd.keys import (KeyError_, authorized_keys, connect_string, create_keypair, known_peers, load_keypair,
                       load_or_create_keypair, node_id_for, parse_connect_string)
from p2pd.node import Node
from p2pd.settings import Settings
from p2pd.trust import Trust


def gen():
    pub, sec = zmq.curve_keypair()
    return pub.decode(), sec.decode()


KEY_A, _ = gen()
KEY_B, _ = gen()
KEY_C, _ = gen()


@pytest.fixture
def home(tmp_path):
    h = Home(tmp_path / "h")
    h.ensure()
    return h


def test_keypair_is_created_once_private_and_names_the_id(home):
    pair = load_or_create_keypair(home, gen)
    path = home.path / "node.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_keypair(home, gen) == pair
    assert pair.node_id == node_id_for(pair.public) and P.valid_node_id(pair.node_id) and len(pair.node_id) == 32
    with pytest.raises(KeyError_, match="--force"):
        create_keypair(home, gen)
    assert create_keypair(home, gen, force=True) != pair


def test_a_damaged_key_file_is_refused_with_the_fix(home):
    (home.path / "node.key").write_text("{not json")
    with pytest.raises(KeyError_, match="move it away"):
        load_keypair(home)
    (home.path / "node.key").write_text(json.dumps({"public": "short", "secret": "x"}))
    with pytest.raises(KeyError_, match="not a p2pd key file"):
        load_keypair(home)


def test_connect_strings_round_trip():
    s = connect_string(KEY_A, "10.0.0.7", 5000)
    assert parse_connect_string(s) == (KEY_A, "10.0.0.7", 5000)
    assert parse_connect_string(connect_string(KEY_A, "::1", 6000)) == (KEY_A, "::1", 6000)
    assert parse_connect_string("host:5000") == (None, "host", 5000)
    for bad in ("p2p://shortkey@h:1", "p2p://h:1", "p2p://" + KEY_A + "@h:99999", "nohostport"):
        with pytest.raises(KeyError_):
            parse_connect_string(bad)


def test_key_lists_add_remove_and_skip_junk(home):
    kp = known_peers(home)
    assert kp.add(KEY_A, address="h:1") and not kp.add(KEY_A, address="h:1")
    kp.add(KEY_B, address="h:1")  # re-pinning an address replaces it
    assert kp.entries() == [("h:1", KEY_B, "")]
    ak = authorized_keys(home)
    ak.add(KEY_A, comment="laptop")
    ak.path.write_text(ak.path.read_text() + "# a comment\nnot-a-key\n\n")
    ak.add(KEY_B)
    assert [(k, c) for _, k, c in ak.entries()] == [(KEY_A, "laptop"), (KEY_B, "")]
    assert ak.remove(node_id_for(KEY_A)) == 1 and ak.remove(KEY_B) == 1 and ak.entries() == []
    assert ak.path.stat().st_mode & 0o777 == 0o600


def test_authorize_and_allowlist():
    t = Trust(KEY_A, secure=True)
    assert t.authorize(KEY_B) == (True, node_id_for(KEY_B), "OK")
    assert t.authorize(None)[0] is False and t.authorize("junk")[0] is False
    t.set_allowed({KEY_A})
    assert t.allowlist_mode and t.authorize(KEY_B)[:1] == (False,) and "authorized_keys" in t.authorize(KEY_B)[2]
    t.set_allowed(set())
    assert not t.allowlist_mode and t.authorize(KEY_B)[0]


def test_may_link_binds_ids_to_keys():
    t = Trust(KEY_A, secure=True)
    assert t.may_link(node_id_for(KEY_B), KEY_B) is None
    assert "does not match" in t.may_link("someone-else", KEY_B)
    assert "no public key" in t.may_link(node_id_for(KEY_B), None)
    t.set_allowed({KEY_A})
    assert "authorized_keys" in t.may_link(node_id_for(KEY_B), KEY_B)
    assert Trust(KEY_A, secure=False).may_link("anything", None) is None  # insecure: ids are not checked


def test_pins_are_first_use_and_a_change_is_refused_with_the_fix():
    t = Trust(KEY_A, secure=True)
    assert t.check_pin("h:1", KEY_B) is None and t.pin("h:1", KEY_B) and not t.pin("h:1", KEY_A)
    problem = t.check_pin("h:1", KEY_A)
    assert "changed" in problem and "p2pctl known forget h:1" in problem


# ---------------------------------------------------------------------------- the node under CURVE


def secure_node(key=KEY_A) -> Node:
    s = Settings(host="127.0.0.1", max_msgs_per_s=5)
    return Node(node_id_for(key), "alice", P.PeerAddress("127.0.0.1", 5000, 5001), s, 0.0, 1.7e9, trust=Trust(key, secure=True))


def join_from(key: str, now: float = 1.0, claim: str | None = None, reply_to: str | None = None) -> list[bytes]:
    sender = claim or node_id_for(key)
    msg = testmsg.make(P.JOIN, sender, "bob", 1.7e9, {"addr": "127.0.0.1", "port": 6000, "pub_port": 6001, "reply_to": reply_to, "key": key})
    return [sender.encode(), P.encode(msg)]


def test_frames_must_come_from_the_key_that_owns_the_sender_id():
    alice = secure_node()
    bob_id = node_id_for(KEY_B)
    alice.on_router_frames(1.0, join_from(KEY_B), "127.0.0.1", user_id="someone-else")
    assert alice.dropped["spoofed_routing_id"] == 1 and bob_id not in alice.table
    acts = alice.on_router_frames(1.0, join_from(KEY_B), "127.0.0.1", user_id=bob_id)
    assert bob_id in alice.table and alice.table.get(bob_id).key == KEY_B
    opens = [a for a in acts if type(a).__name__ == "OpenLink"]
    assert opens and opens[0].server_key == KEY_B  # the link back is a CURVE client of bob's key


def test_join_whose_key_does_not_own_its_id_is_refused():
    alice = secure_node()
    fake_id = node_id_for(KEY_B)
    frames = join_from(KEY_A.replace(KEY_A[0], "x" if KEY_A[0] != "x" else "y", 1), claim=fake_id)
    alice.on_router_frames(1.0, frames, "127.0.0.1", user_id=fake_id)
    assert alice.dropped["bad_key"] == 1 and fake_id not in alice.table


def test_rate_limit_drops_beyond_the_budget_and_refills():
    alice = secure_node()
    bob_id = node_id_for(KEY_B)
    alice.on_router_frames(1.0, join_from(KEY_B), "127.0.0.1", user_id=bob_id)
    ping = lambda: [bob_id.encode(), P.encode(testmsg.make(P.PING, bob_id, "bob", 1.7e9, {}, alice.id))]  # noqa: E731
    for _ in range(10):
        alice.on_router_frames(1.0, ping(), "127.0.0.1", user_id=bob_id)
    assert alice.dropped["rate_limited"] == 5  # a budget of 5 per second (the JOIN came before bob was known)
    alice.on_router_frames(2.0, ping(), "127.0.0.1", user_id=bob_id)
    assert alice.dropped["rate_limited"] == 5  # refilled after a second


def test_broadcast_on_a_peers_sub_must_be_that_peers():
    alice = secure_node()
    bob_id = node_id_for(KEY_B)
    alice.on_router_frames(1.0, join_from(KEY_B), "127.0.0.1", user_id=bob_id)
    forged = P.encode(testmsg.make(P.BROADCAST, "carol-id", "carol", 1.7e9, {"text": "hi"}))
    alice.on_sub_frames(1.5, [forged], "sub", source_peer=bob_id)
    assert alice.dropped["spoofed"] == 1


def _join_id(acts) -> str:
    (send,) = [a for a in acts if type(a).__name__ == "Send"]
    return send.msg.id


def test_connect_by_address_fetches_the_key_then_pins_it_when_that_node_answers():
    alice = secure_node()
    acts = alice.connect(1.0, "127.0.0.1", 6000, 5.0, b"cli", 1)
    (fetch,) = acts
    assert type(fetch).__name__ == "FetchKey" and fetch.endpoint == "tcp://127.0.0.1:6002"
    assert fetch.timeout_s == 5.0  # the whole of the user's --timeout (lossy links lose SYNs)
    acts = alice.on_key(1.1, fetch.tag, KEY_B, None)
    kinds = [type(a).__name__ for a in acts]
    assert kinds[0] == "OpenLink" and acts[0].server_key == KEY_B and "PinKey" not in kinds
    assert alice.trust.pins == {}  # nobody has answered with that key yet
    bob_id = node_id_for(KEY_B)
    acts = alice.on_router_frames(1.2, join_from(KEY_B, reply_to=_join_id(acts)), "127.0.0.1", user_id=bob_id)
    assert [a for a in acts if type(a).__name__ == "PinKey"] == [PinKey("127.0.0.1:6000", KEY_B)]
    assert alice.trust.pins == {"127.0.0.1:6000": KEY_B}
    # later (another run, the pin saved) the address shows another key: refused, with the command that accepts it
    later = secure_node()
    later.trust.pin("127.0.0.1:6000", KEY_B)
    (fetch,) = later.connect(2.0, "127.0.0.1", 6000, 5.0, b"cli", 2)
    (reply,) = later.on_key(2.1, fetch.tag, KEY_C, None)
    assert reply.payload["ok"] is False and reply.payload["code"] == "key_changed"
    assert "p2pctl known forget 127.0.0.1:6000" in reply.payload["error"]


def test_a_key_nobody_answers_with_is_not_pinned():
    """A stale or mistyped p2p:// string: the dial with its key goes unanswered (CURVE fails), and
    nothing is pinned, so the right key is not refused later as a changed one."""
    alice = secure_node()
    acts = alice.connect(1.0, "127.0.0.1", 6000, 5.0, b"cli", 1, key=KEY_C)
    assert [type(a).__name__ for a in acts][0] == "OpenLink" and alice.trust.pins == {}
    acts = alice.tick(7.0)  # past the connect's timeout
    assert any(type(a).__name__ == "ToClient" and a.payload.get("ok") is False for a in acts)
    assert alice.trust.pins == {}
    (fetch,) = alice.connect(8.0, "127.0.0.1", 6000, 5.0, b"cli", 2)
    acts = alice.on_key(8.1, fetch.tag, KEY_B, None)
    assert [type(a).__name__ for a in acts][0] == "OpenLink"  # the real key is not refused


def test_connect_to_our_own_address_pins_nothing():
    """Issue 13: our own key port answers with our own key: refused as "self" before anything is
    pinned or dialled (it used to pin our key under our address, then find the JOIN came back)."""
    alice = secure_node()
    (fetch,) = alice.connect(1.0, "127.0.0.1", 5000, 5.0, b"cli", 1)
    (reply,) = alice.on_key(1.1, fetch.tag, KEY_A, None)
    assert reply.payload["ok"] is False and reply.payload["code"] == "self"
    assert "this node itself" in reply.payload["error"] and "no key was pinned" in reply.payload["error"]
    assert alice.trust.pins == {} and alice.links == {} and alice.pending == {}
    # our own connect string too
    (reply,) = alice.connect(2.0, "127.0.0.1", 5000, 5.0, b"cli", 2, key=KEY_A)
    assert reply.payload["code"] == "self" and alice.trust.pins == {}


def test_a_refused_key_port_is_answered_at_once():
    """Issue 13: the transport reports that the key port refused the connection: the client is
    answered now ("refused", not "unreachable" at the deadline), with what to check."""
    alice = secure_node()
    (fetch,) = alice.connect(1.0, "127.0.0.1", 6000, 5.0, b"cli", 1)
    (reply,) = alice.on_key(1.01, fetch.tag, None, "connection refused", refused=True)
    assert reply.client == b"cli" and reply.payload["code"] == "refused"
    assert "127.0.0.1:6002" in reply.payload["error"] and "nothing listens" in reply.payload["error"]
    assert alice.key_fetches == {} and alice.tick(10.0) == []  # nothing left to answer later
    # pinned: the key port may be down while the node is up, so the pinned key is dialled
    alice.trust.pin("127.0.0.1:6000", KEY_B)
    (fetch,) = alice.connect(2.0, "127.0.0.1", 6000, 5.0, b"cli", 2)
    acts = alice.on_key(2.01, fetch.tag, None, "connection refused", refused=True)
    (link,) = [a for a in acts if type(a).__name__ == "OpenLink"]
    assert link.server_key == KEY_B and link.report_refused is True
    # ... and if its peer port refuses too, that is answered at once as well
    (reply,) = [a for a in alice.on_link_refused(2.02, link.key) if type(a).__name__ == "ToClient"]
    assert reply.payload["req"] == 2 and reply.payload["code"] == "refused" and "127.0.0.1:6000" in reply.payload["error"]
    assert alice.pending == {} and link.key not in alice.links
    assert alice.on_link_refused(2.03, link.key) == []  # reported twice: answered once


def test_only_a_dial_someone_waits_on_reports_refusal():
    """A background dial (a --join bootstrap) is retried with backoff anyway: its link does not ask
    the transport to report a refusal."""
    alice = secure_node()
    acts = alice.dial.dial_address(1.0, "127.0.0.1", 6000, deadline=None, key=KEY_B)
    (link,) = [a for a in acts if type(a).__name__ == "OpenLink"]
    assert link.report_refused is False


def test_connect_by_another_spelling_pins_nothing_new():
    """Linked to bob at 127.0.0.1:6000: `connect localhost:6000` answers `already` and keeps the one
    pin (known_peers gained a "localhost:6000" duplicate before, issue 12)."""
    alice = secure_node()
    bob_id = node_id_for(KEY_B)
    alice.on_router_frames(1.0, join_from(KEY_B), "127.0.0.1", user_id=bob_id)
    assert alice.table.get(bob_id).state == "alive"
    acts = alice.connect(2.0, "localhost", 6000, 5.0, b"cli", 1, addrs=("127.0.0.1", "::1"))
    assert [type(a).__name__ for a in acts] == ["PinKey", "ToClient"]  # the first connect pins what it finds ...
    assert acts[0].address == "127.0.0.1:6000" and acts[1].payload["result"]["already"] is True
    assert alice.trust.pins == {"127.0.0.1:6000": KEY_B}  # ... under the address it is linked at
    (reply,) = alice.connect(3.0, "localhost", 6000, 5.0, b"cli", 2, addrs=("127.0.0.1",))
    assert reply.payload["result"]["already"] is True and alice.trust.pins == {"127.0.0.1:6000": KEY_B}


def test_a_dial_with_a_key_says_how_far_that_peers_numbering_was_received():
    alice = secure_node()
    bob_id = node_id_for(KEY_B)
    ls = alice.msgs.delivery.link(bob_id)
    ls.in_seq, ls.in_epoch = 7, "e1"  # alice stored bob's messages up to 7 (e.g. before a restart)
    acts = alice.connect(1.0, "127.0.0.1", 6000, 5.0, b"cli", 1, key=KEY_B)
    (join,) = [a.msg for a in acts if type(a).__name__ == "Send"]
    assert join.type == P.JOIN and (join.data["got"], join.data["got_epoch"]) == (7, "e1")
    # a key fetched from the key port names the node as well
    (fetch,) = alice.connect(2.0, "127.0.0.1", 6100, 5.0, b"cli", 2)
    (join,) = [a.msg for a in alice.on_key(2.1, fetch.tag, KEY_B, None) if type(a).__name__ == "Send"]
    assert join.data["got"] == 7
    # another node there: nothing received from it, nothing to say
    (fetch,) = alice.connect(3.0, "127.0.0.1", 6200, 5.0, b"cli", 3)
    (join,) = [a.msg for a in alice.on_key(3.1, fetch.tag, gen()[0], None) if type(a).__name__ == "Send"]
    assert "got" not in join.data


def test_key_port_down_uses_the_pin_or_says_what_to_do():
    alice = secure_node()
    (fetch,) = alice.connect(1.0, "127.0.0.1", 6000, 5.0, b"cli", 1)
    (reply,) = alice.on_key(1.1, fetch.tag, None, "no answer in time")
    assert reply.payload["code"] == "unreachable" and "p2p://KEY@127.0.0.1:6000" in reply.payload["error"]
    alice.trust.pin("127.0.0.1:6000", KEY_B)
    (fetch,) = alice.connect(2.0, "127.0.0.1", 6000, 5.0, b"cli", 2)
    acts = alice.on_key(2.1, fetch.tag, None, "no answer in time")
    assert [type(a).__name__ for a in acts][0] == "OpenLink" and acts[0].server_key == KEY_B


def test_gossip_without_matching_keys_is_not_linked():
    alice = secure_node()
    bob_id = node_id_for(KEY_B)
    alice.on_router_frames(1.0, join_from(KEY_B), "127.0.0.1", user_id=bob_id)
    carol_key, _ = gen()
    entries = [
        {"id": node_id_for(carol_key), "name": "carol", "addr": "127.0.0.1", "port": 7000, "pub_port": 7001, "key": carol_key},
        {"id": "mallory-id", "name": "mallory", "addr": "127.0.0.1", "port": 7100, "pub_port": 7101, "key": carol_key},
        {"id": "keyless-id", "name": "keyless", "addr": "127.0.0.1", "port": 7200, "pub_port": 7201},
    ]
    peers = testmsg.make(P.PEERS, bob_id, "bob", 1.7e9, {"peers": entries})
    alice.on_router_frames(1.2, [bob_id.encode(), P.encode(peers)], "127.0.0.1", user_id=bob_id)
    assert node_id_for(carol_key) in alice.table
    assert "mallory-id" not in alice.table and "keyless-id" not in alice.table
