"""`trust` and `known` on the in-memory `Net`: the node checks the request and asks for the file
edit as an effect (`EditAuthorizedKeys`, `ForgetPin`); the edge (p2pd/trustfiles.py, run here by
memnet as the transport runs it) edits the file in the node's home, updates the node's `Trust`
and answers.  The replies and error codes are those the handlers gave when they wrote the files
themselves; tests/test_security.py drives the same through real daemons and p2pctl."""

from __future__ import annotations

import json

import pytest
import zmq

from p2pd import control
from p2pd.actions import EditAuthorizedKeys, ForgetPin, ToClient
from p2pd.home import Home
from p2pd.keys import known_peers, node_id_for

from memnet import net  # noqa: F401 (fixture)


def new_key() -> str:
    return zmq.curve_keypair()[0].decode()


KEY_A, KEY_B = new_key(), new_key()


@pytest.fixture
def alice(net, tmp_path):
    node = net.add("alice")
    net.homes["alice"] = Home(tmp_path)
    return node


def call(net, node, cmd: str, **args) -> dict:
    """A request answered through the edge, as the daemon answers it."""
    return net.call(node, 1.0, cmd, **args)


def effects(node, cmd: str, **args) -> list:
    """What the node returns for a request (req 4), before any edge performs it."""
    return control.handle(node, 1.0, b"cli", json.dumps({"req": 4, "cmd": cmd, "args": args}).encode(), {})


def test_trust_add_list_remove_edit_the_file_and_the_allowlist(net, alice, tmp_path):
    r = call(net, alice, "trust")
    assert r == {"req": 1, "ok": True, "result": {"allowlist": False, "keys": []}}
    r = call(net, alice, "trust", action="add", key=KEY_A, comment="a's laptop")
    assert r["result"] == {"allowlist": True, "keys": [{"key": KEY_A, "id": node_id_for(KEY_A), "comment": "a's laptop"}]}
    assert (tmp_path / "authorized_keys").read_text() == f"{KEY_A} a's laptop\n"
    assert alice.trust.allowed == {KEY_A} and alice.trust.authorize(KEY_B)[0] is False
    call(net, alice, "trust", action="add", key=KEY_B)
    r = call(net, alice, "trust", action="remove", match=node_id_for(KEY_A))  # by node id
    assert [k["key"] for k in r["result"]["keys"]] == [KEY_B] and alice.trust.allowed == {KEY_B}
    r = call(net, alice, "trust", action="remove", match=KEY_B)  # by key: the last one, allowlist mode off
    assert r["result"] == {"allowlist": False, "keys": []} and alice.trust.allowed is None


def test_trust_list_applies_hand_edits(net, alice, tmp_path):
    (tmp_path / "authorized_keys").write_text(f"# edited by hand\n{KEY_B} bob\n")
    assert call(net, alice, "trust", action="list")["result"]["keys"] == [{"key": KEY_B, "id": node_id_for(KEY_B), "comment": "bob"}]
    assert alice.trust.allowed == {KEY_B}


def test_trust_remove_of_nothing_is_unknown_peer_and_changes_nothing(net, alice, tmp_path):
    call(net, alice, "trust", action="add", key=KEY_A)
    r = call(net, alice, "trust", action="remove", match="laptop")
    assert r["ok"] is False and r["code"] == "unknown_peer"
    assert r["error"] == "no authorized key matches 'laptop'; `p2pctl trust list` shows them"
    assert (tmp_path / "authorized_keys").read_text() == f"{KEY_A}\n" and alice.trust.allowed == {KEY_A}


@pytest.mark.parametrize("cmd, args", [("trust", {"action": "list"}), ("trust", {"action": "add", "key": KEY_A}),
                                       ("known", {"action": "forget", "match": "127.0.0.1:9"})])
def test_an_unreadable_file_is_bad_file_naming_it(net, alice, tmp_path, cmd, args):
    name = "authorized_keys" if cmd == "trust" else "known_peers"
    (tmp_path / name).write_bytes(b"# keys\n\xff\xfe not utf-8\n")
    r = call(net, alice, cmd, **args)
    assert r["ok"] is False and r["code"] == "bad_file"
    assert str(tmp_path / name) in r["error"] and "line 2" in r["error"] and "\n" not in r["error"]
    assert alice.dropped["bad_control"] == 0  # the request was good; the file is not


def test_a_file_that_cannot_be_read_at_all_is_an_internal_error_answered_once(net, alice, tmp_path, caplog):
    (tmp_path / "authorized_keys").mkdir()  # an OSError, not a KeyError_
    with caplog.at_level("ERROR", logger="p2pd.control"):
        r = call(net, alice, "trust", action="add", key=KEY_A)
    assert r["ok"] is False and r["code"] == "internal" and "IsADirectoryError" in r["error"]
    assert f"see {tmp_path / 'p2pd.log'}" in r["error"] and "\n" not in r["error"]
    assert [rec.levelname for rec in caplog.records] == ["ERROR"] and caplog.records[0].exc_info
    assert alice.trust.allowed is None


def test_known_list_forget_by_address_key_or_id(net, alice, tmp_path):
    for address, key in (("10.0.0.1:5000", KEY_A), ("10.0.0.2:5000", KEY_B)):
        alice.trust.pin(address, key)
        known_peers(Home(tmp_path)).add(key, address=address)
    assert call(net, alice, "known")["result"] == [{"address": "10.0.0.1:5000", "key": KEY_A, "id": node_id_for(KEY_A)},
                                                   {"address": "10.0.0.2:5000", "key": KEY_B, "id": node_id_for(KEY_B)}]
    r = call(net, alice, "known", action="forget", match=node_id_for(KEY_A))
    assert r["result"] == [{"address": "10.0.0.2:5000", "key": KEY_B, "id": node_id_for(KEY_B)}]
    assert alice.trust.pins == {"10.0.0.2:5000": KEY_B} and "10.0.0.1" not in (tmp_path / "known_peers").read_text()
    assert call(net, alice, "known", action="forget", match="10.0.0.2:5000")["result"] == []
    assert alice.trust.pins == {} and (tmp_path / "known_peers").read_text() == ""


def test_known_forget_of_a_pin_only_in_memory_or_of_nothing(net, alice, tmp_path):
    alice.trust.pin("10.0.0.3:5000", KEY_A)  # pinned this run, its file line lost (or never written)
    assert call(net, alice, "known", action="forget", match="10.0.0.3:5000")["result"] == []
    assert alice.trust.pins == {}
    r = call(net, alice, "known", action="forget", match="10.0.0.9:1")
    assert r["ok"] is False and r["code"] == "unknown_peer"
    assert r["error"] == "no pinned key for '10.0.0.9:1'; `p2pctl known list` shows them"


@pytest.mark.parametrize("cmd, args", [
    ("trust", {"action": "add", "key": "not a key"}),
    ("trust", {"action": "add", "key": KEY_A, "comment": "two\nlines"}),
    ("trust", {"action": "add", "key": KEY_A, "comment": "x" * 201}),
    ("trust", {"action": "remove"}),
    ("trust", {"action": "drop"}),
    ("known", {"action": "forget", "match": ""}),
    ("known", {"action": "drop"}),
])
def test_bad_requests_are_refused_by_the_node_before_any_file_is_touched(net, alice, tmp_path, cmd, args):
    acts = effects(alice, cmd, **args)
    assert [type(a) for a in acts] == [ToClient] and acts[0].payload["code"] == "bad_request" and acts[0].payload["req"] == 4
    assert list(tmp_path.iterdir()) == []


def test_the_node_asks_for_the_edit_as_an_effect_and_does_no_file_io(net, tmp_path):
    """Without a home in the test, the node still answers what needs no file, and asks for the rest."""
    bob = net.add("bob")
    assert effects(bob, "trust", action="add", key=KEY_A, comment="c") == [EditAuthorizedKeys("add", b"cli", 4, key=KEY_A, comment="c")]
    assert effects(bob, "trust") == [EditAuthorizedKeys("list", b"cli", 4)]
    assert effects(bob, "known", action="forget", match="x:1") == [ForgetPin("x:1", b"cli", 4)]
    assert [a.payload["result"] for a in effects(bob, "known")] == [[]]
