"""Groups at the node (p2pd/shouts.py): join, leave, shouts over the overlay, private groups,
and every kind of bad input a hostile neighbour can send, on the in-memory network."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest
import testmsg

from p2pd import protocol as P
from p2pd import records as R
from p2pd.groups import MAX_GROUPS
from p2pd.memstore import MemoryStore
from p2pd.shouts import MAX_TO, check_shout, signed_bytes

from memnet import FAST, HOST, WALL, WATCH, Net, watch
from memnet import net, mem_pair, alice_bob  # noqa: F401 (fixtures)
from test_protocol_doc import fixed_keys

ONE = replace(FAST, active_view=1)


@pytest.fixture
def chain():
    """dave - erin - frank with keys (signed records and shouts), dave and frank not linked: what
    goes between them is relayed by erin.  Returns (net, dave, erin, frank, now)."""
    net = Net()
    dave = net.add("dave", settings=ONE, keys=fixed_keys(0x00))
    erin = net.add("erin", settings=replace(FAST, active_view=2), keys=fixed_keys(0x40))
    frank = net.add("frank", settings=ONE, keys=fixed_keys(0x20))
    assert net.call(dave, 0.0, "connect", host=HOST, port=erin.address.port)["ok"]
    assert net.call(frank, 0.1, "connect", host=HOST, port=erin.address.port)["ok"]
    net.tick_range(0.5, 4.0, 0.5, dave, erin, frank)
    assert frank.id not in dave.links and dave.routes.hops(frank.id) == 2
    return net, dave, erin, frank, 4.0


def texts(net, node, now, **args) -> list[str]:
    return [m["text"] for m in net.call(node, now, "inbox", **args)["result"]]


def spread(net, nodes, start: float, seconds: float = 2.0) -> float:
    net.tick_range(start, start + seconds, 0.5, *nodes)
    return start + seconds


# ============================================================================ the happy paths


def test_a_shout_is_relayed_by_a_non_member_and_stored_by_the_member_only(chain):
    net, dave, erin, frank, now = chain
    for node in (dave, frank):
        assert net.call(node, now, "join", group="#rust-dev")["result"]["group"] == "rust-dev"
    now = spread(net, (dave, erin, frank), now + 0.5)
    assert dave.groups.members("rust-dev") == sorted([dave.id, frank.id])
    reply = net.call(dave, now, "shout", group="rust-dev", text="hello room")["result"]
    assert reply["members"] == 1 and reply["status"] == "sent"
    now = spread(net, (dave, erin, frank), now + 0.5)
    assert texts(net, frank, now, group="rust-dev") == ["hello room"]
    assert texts(net, erin, now) == []  # relayed, never stored
    assert erin.stats["shouts_relayed"] == 1 and dave.stats["shout_copies_out"] == 1
    assert dave.msgs.pending_count() == 0  # frank's ACK came back through erin
    assert [r["group"] for r in net.call(dave, now, "history", group="rust-dev")["result"]] == ["rust-dev"]


def test_groups_lists_members_and_events_name_the_joiner(chain):
    net, dave, erin, frank, now = chain
    net.call(dave, now, "join", group="rust-dev")
    watch(net, dave, now)
    net.call(frank, now, "join", group="rust-dev")
    net.call(erin, now, "join", group="other")
    now = spread(net, (dave, erin, frank), now + 0.5)
    rows = {r["group"]: r for r in net.call(dave, now, "groups")["result"]["groups"]}
    assert rows["rust-dev"]["joined"] and rows["rust-dev"]["count"] == 2
    assert {m["name"] for m in rows["rust-dev"]["members"]} == {"dave", "frank"}
    assert not rows["other"]["joined"] and rows["other"]["count"] == 1
    events = net.events(dave, "group")
    assert [(e["kind"], e["group"], e["peer"]["name"]) for e in events] == [("join", "rust-dev", "frank")]  # not "other"
    net.call(frank, now, "leave", group="rust-dev")
    now = spread(net, (dave, erin, frank), now + 0.5)
    assert [(e["kind"], e["peer"]["name"]) for e in net.events(dave, "group")][-1] == ("leave", "frank")
    assert dave.groups.members("rust-dev") == [dave.id]


def test_a_node_that_left_takes_a_shout_in_flight_without_storing_it(chain):
    net, dave, erin, frank, now = chain
    for node in (dave, frank):
        net.call(node, now, "join", group="rust-dev")
    now = spread(net, (dave, erin, frank), now + 0.5)
    net.call(frank, now, "leave", group="rust-dev")  # dave has not heard yet
    net.call(dave, now, "shout", group="rust-dev", text="late")
    now = spread(net, (dave, erin, frank), now + 0.5)
    assert texts(net, frank, now) == [] and frank.stats["shouts_not_member"] == 1
    assert dave.msgs.pending_count() == 0  # acknowledged all the same: nothing waits forever


def test_private_group_invite_join_since_and_relays_see_ciphertext(chain):
    net, dave, erin, frank, now = chain
    assert net.call(dave, now, "join", group="ops", private=True)["result"]["private"] is True
    erin_sent_before = len(net.delivered)
    watch(net, frank, now)
    assert net.call(dave, now, "invite", group="ops", peer="frank")["result"]["status"] == "sent"  # routed through erin
    now = spread(net, (dave, erin, frank), now + 0.5)
    assert [e["group"] for e in net.events(frank, "invited")] == ["ops"]
    rows = net.call(frank, now, "groups")["result"]["groups"]
    assert [(r["group"], r["invited"], r["joined"]) for r in rows] == [("ops", True, False)]
    assert net.call(erin, now, "groups")["result"]["groups"] == []  # no key: the group is invisible
    net.call(dave, now, "shout", group="ops", text="before frank")
    assert net.call(frank, now + 0.1, "join", group="ops", private=True, since=0.0)["ok"]
    now = spread(net, (dave, erin, frank), now + 0.5, 3.0)
    net.call(dave, now, "shout", group="ops", text="after frank")
    now = spread(net, (dave, erin, frank), now + 0.5)
    assert texts(net, frank, now, group="ops") == ["before frank", "after frank"]
    # erin relayed the SHOUT: its body is ciphertext, and the key never crossed a link in the clear
    shouts = [m for _, f, _, m in net.delivered[erin_sent_before:] if m.type == P.SHOUT]
    assert shouts and all("after frank" not in m.data["body"] for m in shouts)
    assert not any("ops" in str(m.data) and m.type == P.MESSAGE for _, _, to, m in net.delivered if to == "erin")
    assert texts(net, erin, now) == []
    # dave sees frank as a member (his tag checks out with the key); erin does not
    assert frank.id in dave.groups.members("~" + next(iter(dave.groups.keys)))
    assert erin.groups.directory.groups() == {}


def test_a_join_with_an_invitation_pending_keeps_open_and_private_apart(chain):
    net, dave, erin, frank, now = chain
    net.call(dave, now, "join", group="ops", private=True)
    net.call(dave, now, "invite", group="ops", peer="frank")
    now = spread(net, (dave, erin, frank), now + 0.5)
    assert net.call(frank, now, "join", group="ops")["result"]["private"] is False  # the open one, as asked
    reply = net.call(frank, now, "join", group="ops", private=True)
    assert reply["ok"] is False and reply["code"] == "bad_request" and "leave it first" in reply["error"]


def test_groups_survive_a_restart_and_the_record_lists_them():
    net = Net()
    store = MemoryStore(lambda n: bytes(n))
    alice = net.add("alice", store=store)
    net.call(alice, 0.0, "join", group="a-room")
    net.call(alice, 0.0, "join", group="secret", private=True)
    again = net.add("alice", store=store, now=1.0)
    assert set(again.groups.joined.values()) == {"a-room", "secret"}
    entries = again.roster.own.groups
    assert entries[0] == "a-room" and entries[1].startswith("~") and len(entries) == 2


def test_watch_of_one_group_gets_only_its_events(chain):
    net, dave, erin, frank, now = chain
    for g in ("a", "b"):
        net.call(dave, now, "join", group=g)
        net.call(frank, now, "join", group=g)
    now = spread(net, (dave, erin, frank), now + 0.5)
    assert net.call(frank, now, "watch", client=WATCH, group="b")["ok"]
    net.call(dave, now, "shout", group="a", text="in a")
    net.call(dave, now, "shout", group="b", text="in b")
    net.call(dave, now, "send", peer="frank", text="direct")
    now = spread(net, (dave, erin, frank), now + 0.5)
    events = net.events(frank)
    assert [e["message"]["text"] for e in events if e["event"] == "shout"] == ["in b"]
    assert not any(e["event"] in ("message", "broadcast") for e in events)


# ============================================================================ refusals


def test_control_refusals_name_the_fix(net, alice_bob):
    alice, _ = alice_bob
    bad = net.call(alice, 1.0, "join", group="two words")
    assert bad["code"] == "bad_request" and "two-words" in bad["error"]
    assert net.call(alice, 1.0, "join", group="~x")["code"] == "bad_request"
    assert net.call(alice, 1.0, "shout", group="nope", text="x")["code"] == "not_member"
    assert net.call(alice, 1.0, "leave", group="nope")["code"] == "not_member"
    net.call(alice, 1.0, "join", group="open")
    refused = net.call(alice, 1.0, "invite", group="open", peer="bob")
    assert refused["code"] == "bad_request" and "open group" in refused["error"]
    for i in range(MAX_GROUPS - 1):
        assert net.call(alice, 1.0, "join", group=f"g{i}")["ok"]
    full = net.call(alice, 1.0, "join", group="one-more")
    assert full["code"] == "bad_request" and "leave one first" in full["error"]
    assert net.call(alice, 1.0, "join", group="open")["result"]["already"] is True


def test_record_groups_lists_are_checked():
    ok = ("room", "~" + "a" * 32 + ":" + "b" * 32)
    assert R.valid_groups(ok) and R.valid_groups(())
    for bad in (["room"], ("room", "room"), ("two words",), ("#x",), ("~" + "a" * 32,), ("~" + "A" * 32 + ":" + "b" * 32,),
                tuple(f"g{i}" for i in range(MAX_GROUPS + 1)), tuple("x" * 64 + str(i) for i in range(32)) , (5,)):
        assert not R.valid_groups(bad), bad


def _shout(origin: str, members: dict, **override) -> dict:
    d = {"g": "room", "o": origin, "mid": "m1", "ts": "2026-01-01T00:00:00.000Z", "ep": "e1", "n": 1, "body": "hi",
         "to": members, "sig": None, "fwd": list(members), "ttl": 15}
    d.update(override)
    return d


@pytest.mark.parametrize("override, kind", [
    ({"g": "#bad"}, "shout_malformed"),
    ({"o": "bad id"}, "shout_malformed"),
    ({"n": 0}, "shout_malformed"),
    ({"ts": "\x1b[2Jnot a time"}, "shout_malformed"),
    ({"body": 5}, "shout_malformed"),
    ({"to": {}}, "shout_malformed"),
    ({"to": {"alice-id": [1, 2]}}, "shout_malformed"),  # base above seq
    ({"to": {f"x{i}": [1, 1] for i in range(MAX_TO + 1)}}, "shout_malformed"),
    ({"fwd": ["nobody"]}, "shout_malformed"),  # not among the addressed
    ({"fwd": ["alice-id", "alice-id"]}, "shout_malformed"),
    ({"ttl": 65}, "shout_malformed"),
    ({"sig": "zz"}, "shout_malformed"),
    ({"o": "alice-id"}, "shout_own"),
])
def test_bad_shouts_are_dropped_counted_and_the_node_carries_on(net, alice_bob, override, kind):
    alice, bob = alice_bob
    d = _shout("charlie-id", {"alice-id": [1, 1]}, **override)
    frame = P.encode(testmsg.make(P.SHOUT, bob.id, "bob", WALL, d))
    assert alice.on_router_frames(2.0, [bob.id.encode(), frame], HOST) == []
    assert alice.dropped[kind] == 1
    assert net.call(alice, 2.1, "send", peer="bob", text="still fine")["ok"]


def test_check_shout_takes_a_good_one():
    assert check_shout(_shout("charlie-id", {"alice-id": [3, 1], "bob-id": [1, 1]}, fwd=["bob-id"])) is None


def test_forged_or_unverifiable_shouts_are_refused(chain):
    net, dave, erin, frank, now = chain
    net.call(frank, now, "join", group="room")
    now = spread(net, (dave, erin, frank), now + 0.5)
    d = _shout(dave.id, {frank.id: [1, 1]})
    d["sig"] = "00" * 64
    frame = P.encode(testmsg.make(P.SHOUT, erin.id, "erin", WALL, d))
    frank.on_router_frames(now, [erin.id.encode(), frame], HOST, erin.id)
    assert frank.dropped["shout_bad_sig"] == 1
    # signed by erin, claiming dave as origin: the signature is checked with dave's key
    d["sig"] = erin.keys.sign(signed_bytes(d)).hex()
    frank.on_router_frames(now, [erin.id.encode(), P.encode(testmsg.make(P.SHOUT, erin.id, "erin", WALL, d))], HOST, erin.id)
    assert frank.dropped["shout_bad_sig"] == 2
    d = _shout("f" * 32, {frank.id: [1, 1]}, sig="00" * 64)  # nobody we hold a record of
    frank.on_router_frames(now, [erin.id.encode(), P.encode(testmsg.make(P.SHOUT, erin.id, "erin", WALL, d))], HOST, erin.id)
    assert frank.dropped["shout_unverified"] == 1
    assert texts(net, frank, now) == []


def test_a_garbage_invitation_is_dropped(chain):
    net, dave, erin, frank, now = chain
    epoch = dave.out.epoch(now)
    dave.msgs.delivery.enqueue(frank.id, dave.out.new_id(epoch), orjson.dumps({"kind": "nope"}).decode(), P.utc_timestamp(epoch),
                               epoch, group="+invite")
    net.apply(dave, dave.msgs.pump(now, frank.id), now)
    now = spread(net, (dave, erin, frank), now + 0.5)
    assert frank.dropped["bad_invite"] == 1 and frank.groups.keys == {}
    assert dave.msgs.pending_count() == 0


def test_invitations_held_are_bounded_and_a_repeated_fetch_queues_nothing_new(chain):
    from p2pd.groupkeys import invite_payload, new_group_key
    from p2pd.shouts import MAX_INVITES

    net, dave, erin, frank, now = chain
    epoch = dave.out.epoch(now)
    for i in range(MAX_INVITES + 5):  # any node may invite: frank keeps the newest MAX_INVITES
        gk = new_group_key(f"g{i}", bytes([i]) * 32)
        dave.msgs.delivery.enqueue(frank.id, dave.out.new_id(epoch), orjson.dumps(invite_payload(gk)).decode(),
                                   P.utc_timestamp(epoch), epoch, group="+invite")
    net.apply(dave, dave.msgs.pump(now, frank.id), now)
    now = spread(net, (dave, erin, frank), now + 0.5)
    assert len(frank.groups.keys) == MAX_INVITES
    assert {gk.group for gk in frank.groups.keys.values()} == {f"g{i}" for i in range(5, MAX_INVITES + 5)}
    # join --since twice: the second asks for what is queued already, and nothing is added
    for node in (dave, frank):
        net.call(node, now, "join", group="room")
    now = spread(net, (dave, erin, frank), now + 0.5)
    net.call(dave, now, "shout", group="room", text="one")
    now = spread(net, (dave, erin, frank), now + 0.5)
    for _ in range(2):
        net.call(frank, now, "join", group="room", since=0.0)
        now = spread(net, (dave, erin, frank), now + 0.5)
    assert texts(net, frank, now, group="room") == ["one"]
    assert dave.stats["shouts_replayed"] == 0  # frank had it: the outbox already holds that id for him


def test_a_private_group_left_keeps_its_name_for_what_was_stored(chain):
    net, dave, erin, frank, now = chain
    net.call(dave, now, "join", group="sec", private=True)
    net.call(dave, now, "invite", group="sec", peer="frank")
    now = spread(net, (dave, erin, frank), now + 0.5)
    net.call(frank, now, "join", group="sec", private=True)
    now = spread(net, (dave, erin, frank), now + 0.5)
    net.call(dave, now, "shout", group="sec", text="secret msg")
    now = spread(net, (dave, erin, frank), now + 0.5)
    assert net.call(frank, now, "leave", group="sec")["ok"] and frank.groups.keys == {}
    assert [(m["group"], m["text"]) for m in net.call(frank, now, "inbox")["result"]] == [("sec", "secret msg")]
    assert texts(net, frank, now, group="sec") == ["secret msg"]


def test_a_node_with_more_than_eight_links_is_routable():
    """active_view may be up to 16 (a record lists 16 links): the route table takes such records."""
    from p2pd import records as R

    net = Net()
    alice = net.add("alice", settings=replace(FAST, active_view=16))
    many = tuple(f"{i:032x}" for i in range(1, 13))
    assert alice.routes.update(many[0], 1, many[1:] + (alice.id,)) == "ok"
    assert R.MAX_LINKS == 16
