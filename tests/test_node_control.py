"""Unit tests of the control API (p2pd/control.py) against nodes on the in-memory `Net` of memnet.py:
every command, every bad request, and fuzzing that it never raises."""

from __future__ import annotations

import orjson

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pd import control
from p2pd import protocol as P
from p2pd.actions import CloseLink, EditAuthorizedKeys, ForgetPin, Send, Shutdown, ToClient
from p2pd.membership import ALIVE, LOST
from p2pd.node import Node

from memnet import CLI, FAST, HOST, WALL, WATCH, handle, join_frame, linked_alice, state, watch
from memnet import net, mem_pair, busy_alice  # noqa: F401 (fixtures)


# ============================================================================ control.handle


def test_control_status_info_peers(net, mem_pair):
    alice, bob = mem_pair
    r = net.call(alice, 5.0, "status")
    assert r["ok"] is True and r["result"] == {"pid": 4242, "id": "alice-id", "name": "alice", "uptime_s": 5.0, "unread": 0, "read_upto": 0}
    r = net.call(alice, 5.0, "info")["result"]
    assert r["pid"] == 4242 and r["id"] == "alice-id" and r["peers"] == 1 and r["peers_alive"] == 1 and r["peers_lost"] == 0
    assert r["protocol_version"] == P.PROTOCOL_VERSION and r["address"] == {"addr": HOST, "port": 5001, "pub_port": 5002}
    assert r["started"] == P.utc_timestamp(WALL) and r["uptime_s"] == 5.0 and r["dropped_total"] == 0
    assert set(r["counters"]) >= {"routed_out", "routed_relayed", "routed_in", "tree_payloads_out"}  # bench --scale reads them
    r = net.call(alice, 5.0, "peers")["result"]
    assert [p["name"] for p in r] == ["bob"] and r[0]["state"] == ALIVE and r[0]["subscribed"] is True


def test_control_disconnect(net, mem_pair):
    alice, bob = mem_pair
    watch(net, bob)
    r = net.call(alice, 2.0, "disconnect", peer="bob")
    assert r["ok"] is True and r["result"]["peer"]["id"] == bob.id
    assert state(alice, bob) is None and "bob-id" not in alice.links
    # the LEAVE went out before the link closed, so bob dropped alice too
    kinds = [type(a).__name__ for _, a in net.acts("alice", (Send, CloseLink), since=2.0)]
    assert kinds[:2] == ["Send", "CloseLink"]
    assert state(bob, alice) is None
    assert [e["peer"]["id"] for e in net.events(bob, "left")] == [alice.id]


def test_control_disconnect_lost_peer_allowed(net, mem_pair):
    alice, bob = mem_pair
    net.kill(bob)
    net.tick(6.0, alice)
    assert state(alice, bob) == LOST
    r = net.call(alice, 6.5, "disconnect", peer="bob")
    assert r["ok"] is True and state(alice, bob) is None
    assert not any(a.msg.type == P.LEAVE for _, a in net.acts("alice", Send, since=6.5))


def test_control_inbox_and_limit(net, mem_pair):
    alice, bob = mem_pair
    for t in ("one", "two", "three"):
        net.call(bob, 1.0, "send", peer="alice", text=t)
    assert [m["text"] for m in net.call(alice, 2.0, "inbox")["result"]] == ["one", "two", "three"]
    assert [m["text"] for m in net.call(alice, 2.0, "inbox", limit=2)["result"]] == ["two", "three"]
    assert [m["text"] for m in net.call(alice, 2.0, "inbox", limit=0)["result"]] == ["one", "two", "three"]
    assert [m["text"] for m in net.call(alice, 2.0, "inbox", limit=99)["result"]] == ["one", "two", "three"]


def test_control_watch_and_stop(net, mem_pair):
    alice, bob = mem_pair
    r = handle(alice, {"req": "w", "cmd": "watch"}, client=WATCH)
    assert r == {"req": "w", "ok": True, "result": {"watching": True, "id": "alice-id", "name": "alice", "cursor": 0}}
    assert WATCH in alice.watchers
    acts = control.handle(alice, 2.0, CLI, b'{"req": 3, "cmd": "stop"}', {})
    assert acts[0] == ToClient(CLI, {"req": 3, "ok": True, "result": {"stopping": True}})
    assert [a.msg.type for a in acts if isinstance(a, Send)] == [P.FACTS, P.LEAVE]  # our signed "left", then LEAVE
    assert isinstance(acts[-1], Shutdown) and alice.stopping is True


def test_control_ping_happy_path(net, mem_pair):
    alice, bob = mem_pair
    r = net.call(alice, 3.0, "ping", peer="bob-i")  # id prefix works too
    assert r["ok"] is True and r["result"]["id"] == "bob-id" and r["result"]["rtt_ms"] == 0.0


BAD_REQUESTS = [
    (b"not json", "bad_request"),
    (b"\xff\xfe", "bad_request"),
    (b"", "bad_request"),
    (b"[1, 2]", "bad_request"),
    (b'"status"', "bad_request"),
    (b"null", "bad_request"),
    (b"[" * 50_000, "bad_request"),
    (b" " * (control.MAX_REQUEST_BYTES + 1), "bad_request"),
    ({"cmd": "status", "args": []}, "bad_request"),
    ({"cmd": "status", "args": "x"}, "bad_request"),
    ({"cmd": "fly"}, "unknown_command"),
    ({}, "unknown_command"),
    ({"cmd": ["send"]}, "unknown_command"),
    ({"cmd": None}, "unknown_command"),
    ({"cmd": "send", "args": {"peer": "bob-1"}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": "bob-1", "text": ""}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": "bob-1", "text": 5}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": "bob-1", "text": "x" * (P.MAX_TEXT_LEN + 1)}}, "too_large"),
    ({"cmd": "send", "args": {"text": "hi"}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": "", "text": "hi"}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": 7, "text": "hi"}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": "b" * 257, "text": "hi"}}, "bad_request"),
    ({"cmd": "broadcast", "args": {}}, "bad_request"),
    ({"cmd": "broadcast", "args": {"text": None}}, "bad_request"),
    ({"cmd": "connect", "args": {"port": 5001}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 0}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 65536}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": "abc"}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": True}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 5001.5}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": "²"}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 5001, "wait_s": 0}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 5001, "wait_s": True}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 5001, "wait_s": "5"}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": HOST, "port": 5001, "wait_s": 3601}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": "localhost", "port": 5001, "addrs": "127.0.0.1"}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": "localhost", "port": 5001, "addrs": ["localhost"]}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": "localhost", "port": 5001, "addrs": [7]}}, "bad_request"),
    ({"cmd": "connect", "args": {"host": "localhost", "port": 5001, "addrs": ["127.0.0.1"] * 17}}, "bad_request"),
    ({"cmd": "ping", "args": {"peer": "bob-1", "wait_s": 0.001}}, "bad_request"),
    ({"cmd": "ping", "args": {"peer": "bob-1", "wait_s": 601}}, "bad_request"),
    ({"cmd": "ping", "args": {}}, "bad_request"),
    ({"cmd": "inbox", "args": {"limit": -1}}, "bad_request"),
    ({"cmd": "inbox", "args": {"limit": "3"}}, "bad_request"),
    ({"cmd": "inbox", "args": {"limit": False}}, "bad_request"),
    ({"cmd": "disconnect", "args": {}}, "bad_request"),
    ({"cmd": "send", "args": {"peer": "dave", "text": "hi"}}, "unknown_peer"),
    ({"cmd": "ping", "args": {"peer": "nobody"}}, "unknown_peer"),
    ({"cmd": "disconnect", "args": {"peer": "xyz"}}, "unknown_peer"),
    ({"cmd": "send", "args": {"peer": "bob", "text": "hi"}}, "ambiguous"),
    ({"cmd": "ping", "args": {"peer": "bob"}}, "ambiguous"),
    ({"cmd": "disconnect", "args": {"peer": "bob"}}, "ambiguous"),
    ({"cmd": "ping", "args": {"peer": "carol"}}, "not_linked"),
]


@pytest.mark.parametrize("raw, code", BAD_REQUESTS, ids=[f"{i}-{c}" for i, (_, c) in enumerate(BAD_REQUESTS)])
def test_control_bad_requests(busy_alice, raw, code):
    if isinstance(raw, dict):
        raw = {"req": 17, **raw}
    before_peers = len(busy_alice.table)
    reply = handle(busy_alice, raw)
    assert reply["ok"] is False and reply["code"] == code, reply
    assert isinstance(reply["error"], str) and reply["error"] and "\n" not in reply["error"]
    assert reply["req"] == (17 if isinstance(raw, dict) else None)
    assert len(busy_alice.table) == before_peers
    counted = busy_alice.dropped["bad_control"]
    assert counted == (1 if code in ("bad_request", "unknown_command") else 0)


def test_control_ambiguous_lists_candidates_and_id_prefix_resolves(busy_alice):
    reply = handle(busy_alice, {"cmd": "send", "args": {"peer": "bob", "text": "hi"}})
    assert "bob (bob-1)" in reply["error"] and "bob (bob-2)" in reply["error"]
    assert handle(busy_alice, {"cmd": "send", "args": {"peer": "bob-2", "text": "hi"}})["ok"] is True


@pytest.mark.parametrize("req, echoed", [(7, 7), ("abc", "abc"), (None, None), (True, None), ([1], None), ({"a": 1}, None), (1.5, None)])
def test_control_req_echo(busy_alice, req, echoed):
    assert handle(busy_alice, {"req": req, "cmd": "status"})["req"] == echoed
    assert handle(busy_alice, {"req": req, "cmd": "nope"})["req"] == echoed


ARG_VALUES = st.none() | st.booleans() | st.integers(-10, 70000) | st.floats() | st.text(max_size=8) | st.sampled_from(["bob", "bob-1", "carol", "alice"]) | st.lists(st.integers(), max_size=2)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(list(control.COMMANDS) + ["nope"]),
    st.dictionaries(st.sampled_from(["peer", "text", "host", "port", "wait_s", "limit", "x"]), ARG_VALUES, max_size=4),
    st.none() | st.integers() | st.text(max_size=4) | st.lists(st.none(), max_size=1),
)
def test_control_never_raises(cmd, args, req):
    alice = Node("alice-id", "alice", P.PeerAddress(HOST, 5001, 5002), FAST, 0.0, WALL)
    alice.on_router_frames(0.0, join_frame("bob-1", 5003, HOST, name="bob"), HOST)
    acts = control.handle(alice, 1.0, CLI, json.dumps({"req": req, "cmd": cmd, "args": args}).encode(), {})
    replies = [a.payload for a in acts if isinstance(a, ToClient)]
    if cmd in ("connect", "ping") and not replies:
        assert any(isinstance(a, Send) for a in acts)  # the answer comes later
    elif cmd == "send" and not replies:
        assert alice.msgs.waiters  # it waits for bob's ACK (wait_s), and answers then or at its deadline
    elif cmd in ("trust", "known") and not replies:
        assert [type(a) for a in acts] in ([EditAuthorizedKeys], [ForgetPin])  # the edge edits the file and answers
    else:
        assert len(replies) == 1 and replies[0]["ok"] in (True, False)
        assert replies[0]["ok"] or replies[0]["code"] in ("bad_request", "unknown_command", "unknown_peer", "ambiguous", "not_linked")


@settings(max_examples=40, deadline=None, database=None)
@given(st.binary(max_size=80))
def test_control_arbitrary_bytes_never_raise(raw):
    alice = Node("alice-id", "alice", P.PeerAddress(HOST, 5001, 5002), FAST, 0.0, WALL)
    acts = control.handle(alice, 1.0, CLI, raw, {})
    assert len(acts) >= 1 and isinstance(acts[0], ToClient)


# ============================================================================ deadlines, internal errors, frame counts (issue 12, items 7-9)


def test_control_request_past_its_deadline_is_refused_and_not_done(net, mem_pair):
    """A request read after its deadline (the client had given up and said so) does nothing."""
    alice, bob = mem_pair
    raw = json.dumps({"req": 1, "cmd": "send", "args": {"peer": "bob", "text": "too late"}, "deadline": WALL + 10.0}).encode()
    acts = control.handle(alice, 5.0, CLI, raw, {"pid": 1}, wall=WALL + 10.5)
    assert [a.payload["code"] for a in acts if isinstance(a, ToClient)] == ["expired"]
    assert not any(isinstance(a, Send) for a in acts)
    assert alice.store.history() == [] and alice.dropped["expired_control"] == 1
    # in time (or with no deadline at all, as an older client sends): carried out
    acts = control.handle(alice, 5.0, CLI, raw, {"pid": 1}, wall=WALL + 9.5)
    assert [a.payload["ok"] for a in acts if isinstance(a, ToClient)] == [True]
    assert [r["text"] for r in alice.store.history()] == ["too late"]
    assert handle(alice, {"req": 2, "cmd": "status"})["ok"] is True  # no wall given: not checked


@pytest.mark.parametrize("deadline", ["soon", True, -1, 1e12, [1]])
def test_control_bad_deadline_is_a_bad_request(deadline):
    alice = linked_alice()
    r = control.handle(alice, 5.0, CLI, json.dumps({"req": 3, "cmd": "status", "deadline": deadline}).encode(), {"pid": 1}, wall=WALL)
    assert r[0].payload["code"] == "bad_request" and "deadline" in r[0].payload["error"] and r[0].payload["req"] == 3


def test_control_handler_that_raises_still_answers(caplog):
    """A handler's exception (here a store that fails) becomes an `internal` error reply, logged once."""
    alice = linked_alice()

    def broken(*a, **k):
        raise RuntimeError("database disk image is malformed")

    alice.store.history = broken
    with caplog.at_level("ERROR", logger="p2pd.control"):
        r = handle(alice, {"req": 7, "cmd": "history"})
    assert r["ok"] is False and r["code"] == "internal" and r["req"] == 7
    assert "malformed" in r["error"] and "\n" not in r["error"]
    assert [rec.levelname for rec in caplog.records] == ["ERROR"] and caplog.records[0].exc_info
    assert handle(alice, {"req": 8, "cmd": "status"})["ok"] is True  # and it serves on


@pytest.mark.parametrize("frames, req", [
    ([b"cli", b'{"req": 5, "cmd": "status"}', b'{"req": 6, "cmd": "status"}'], 5),
    ([b"cli", b"", b'{"req": "r", "cmd": "status"}'], "r"),  # a REQ socket's empty delimiter first
    ([b"cli", b"x", b"y", b"z"], None),
])
def test_control_message_of_wrong_frame_count_gets_an_error_reply(frames, req):
    alice = linked_alice()
    acts = control.wrong_frame_count(alice, 5.0, frames)
    assert len(acts) == 1 and acts[0].client == b"cli"
    reply = acts[0].payload
    assert reply["ok"] is False and reply["code"] == "bad_request" and reply["req"] == req
    assert f"had {len(frames) - 1}" in reply["error"] and alice.dropped["bad_control"] == 1


def test_events_carry_a_cursor_and_a_returning_watcher_misses_nothing(net, mem_pair):
    """Each received message has a cursor (its row number in the store); `watch since=C` first
    sends what was stored after C, then live events: a watcher that lost the daemon comes back
    without a gap.  `read` moves the read mark; `inbox unread` and `status` follow it."""
    alice, bob = mem_pair
    net.call(alice, 1.0, "watch", client=WATCH)
    net.call(bob, 1.0, "send", peer="alice", text="first")
    [first] = [e for e in net.events(alice) if e["event"] == "message"]
    assert first["message"]["text"] == "first" and first["message"]["cursor"] >= 1
    alice.watchers.discard(WATCH)  # the watcher goes away (the daemon stopped, say)
    for t in ("second", "third"):
        net.call(bob, 2.0, "send", peer="alice", text=t)
    net.call(bob, 2.0, "broadcast", text="to all")
    replies = []
    acts = control.handle(alice, 3.0, b"w2", orjson.dumps({"req": 1, "cmd": "watch", "args": {"since": first["message"]["cursor"]}}), {})
    replies = [a.payload for a in acts if isinstance(a, ToClient)]
    assert replies[0]["result"]["cursor"] == alice.store.last_cursor
    replayed = replies[1:]
    assert [(e["event"], e["message"]["text"], e["replay"]) for e in replayed] == [
        ("message", "second", True), ("message", "third", True), ("broadcast", "to all", True)]
    cursors = [e["message"]["cursor"] for e in replayed]
    assert cursors == sorted(cursors) and cursors[0] > first["message"]["cursor"]
    # read marks: forward only, never past the newest; inbox --unread and status follow them
    assert net.call(alice, 3.0, "status")["result"]["unread"] == 4
    r = net.call(alice, 3.0, "read", upto=cursors[0])["result"]
    assert r == {"read_upto": cursors[0], "unread": 2}
    assert [m["text"] for m in net.call(alice, 3.0, "inbox", unread=True)["result"]] == ["third", "to all"]
    assert net.call(alice, 3.0, "read", upto=1)["result"]["read_upto"] == cursors[0]  # never back
    assert net.call(alice, 3.0, "read", upto=10**9)["result"] == {"read_upto": alice.store.last_cursor, "unread": 0}
    assert net.call(alice, 3.0, "inbox", unread=True)["result"] == []
    for bad in ({"upto": -1}, {"upto": "x"}, {}):
        assert net.call(alice, 3.0, "read", **bad)["code"] == "bad_request"
    assert net.call(alice, 3.0, "watch", since=True)["code"] == "bad_request"


def test_cursors_only_grow_even_after_every_message_was_pruned(tmp_path):
    from p2pd.store import Store

    s = Store(str(tmp_path / "store.db"))
    first = s.add_message("in", "MESSAGE", "m1", "p", "p", "p", "me", "hi", "2026-01-01T00:00:00.000Z", 1.0)
    second = s.add_message("in", "MESSAGE", "m2", "p", "p", "p", "me", "hi", "2026-01-01T00:00:00.000Z", 2.0, defer=True)
    assert 0 < first < second == s.last_cursor
    assert s.add_message("in", "MESSAGE", "m1", "p", "p", "p", "me", "hi", "2026-01-01T00:00:00.000Z", 3.0) == 0  # a duplicate
    s.prune(10_000.0, max_age_s=1.0, max_messages=10)  # everything is old
    s.close()
    s = Store(str(tmp_path / "store.db"))
    assert s.history() == [] and s.add_message("in", "MESSAGE", "m3", "p", "p", "p", "me", "x", "2026-01-01T00:00:00.000Z", 4.0) > second
