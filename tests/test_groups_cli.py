"""Groups (issue 16) end to end: three real daemons on loopback, driven by the real p2pctl and
the real chat.  join, groups, shout, inbox and history --group, leave; a node that is not in
the group stores none of its shouts; join --since fetches what was said before; a private group
and its invitation; and the chat's rooms (/join, /rooms, /switch, plain text as a shout).

Every wait polls a condition until a deadline (`wait_for`), never a bare sleep.  Membership
travels in signed records, so "bob sees alice in the group" is waited for before a shout
that must reach her.
"""

from __future__ import annotations

import json

import pytest

from conftest import wait_for
from test_cli_consistency import one_line_error
from test_chat import ChatSession
from test_chat_tty import TIME
from test_chat_tty import chat as tty_chat
from test_walkthrough import link_trio

from p2pd import exitcodes

SLOW = 30  # seconds: records and routes settle within a few gossip rounds (2 s each here)


@pytest.fixture
def trio(daemon_trio):
    alice, bob, charlie = daemon_trio
    link_trio(alice, bob, charlie)
    return alice, bob, charlie


def group_row(node, group: str, private: bool = False) -> dict | None:
    return next((g for g in node.call("groups")["groups"] if g["group"] == group and g["private"] == private), None)


def member_names(node, group: str, private: bool = False) -> list[str]:
    row = group_row(node, group, private)
    return sorted(m["name"] for m in row["members"]) if row else []


def wait_members(node, group: str, names: list[str], private: bool = False) -> None:
    wait_for(lambda: member_names(node, group, private) == sorted(names), SLOW,
             what=f"{node.name} to see {names} in {group}; sees {member_names(node, group, private)}")


def shouts(node, group: str | None = None) -> list[str]:
    rows = node.call("inbox", **({"group": group} if group else {}))
    return [m["text"] for m in rows if m.get("type") == "SHOUT"]


# ------------------------------------------------------------------------------ open groups


def test_join_shout_inbox_history_leave_and_a_non_member_stores_nothing(trio):
    alice, bob, charlie = trio
    out = alice.ctl("join", "rust-dev").stdout
    assert out.startswith("joined #rust-dev: 1 member(s): alice"), out
    res = bob.ctl_json("join", "#rust-dev")  # the chat's spelling is the same room
    assert res["group"] == "rust-dev" and res["private"] is False and res["already"] is False
    assert {m["name"] for m in res["members"]} >= {"bob"}
    assert bob.ctl_json("join", "rust-dev")["already"] is True
    wait_members(alice, "rust-dev", ["alice", "bob"])
    wait_members(bob, "rust-dev", ["alice", "bob"])
    wait_members(charlie, "rust-dev", ["alice", "bob"])  # charlie knows of it, from records, without being in it

    table = alice.ctl("groups").stdout.splitlines()
    assert table[0].split() == ["GROUP", "JOINED", "MEMBERS", "NAMES"]
    assert table[1].split() == ["#rust-dev", "yes", "2", "alice,", "bob"], table
    row = next(g for g in charlie.ctl_json("groups")["groups"] if g["group"] == "rust-dev")
    assert row["joined"] is False and row["count"] == 2

    sent = alice.ctl("shout", "rust-dev", "hello", "room")
    assert "to #rust-dev: sent to 1 other member(s)" in sent.stdout, sent.stdout
    bob.ctl("shout", "#rust-dev", "-", input="from stdin\nline two\n")
    wait_for(lambda: shouts(bob, "rust-dev") == ["hello room"], SLOW, what="bob to get alice's shout")
    wait_for(lambda: shouts(alice, "rust-dev") == ["from stdin\nline two"], SLOW, what="alice to get bob's shout")

    inbox = bob.ctl("inbox", "--group", "rust-dev").stdout
    assert inbox.rstrip().endswith("[#rust-dev] alice: hello room"), inbox
    history = alice.ctl("history", "--group", "#rust-dev").stdout.splitlines()
    assert history[0].endswith("[#rust-dev] you: hello room"), history
    assert history[1].endswith("[#rust-dev] bob: from stdin") and history[2].strip() == "| line two", history
    row = alice.ctl_json("inbox", "--group", "rust-dev")[-1]
    assert row["type"] == "SHOUT" and row["group"] == "rust-dev" and row["sender_name"] == "bob"
    assert "no messages in #ops" in alice.ctl("inbox", "--group", "ops").stdout

    # charlie is in no group: it stores none of their shouts, then or later
    alice.ctl("broadcast", "marker")  # sent after the shouts: once charlie has it, the shouts had their chance
    wait_for(lambda: "marker" in [m["text"] for m in charlie.call("inbox")], SLOW, what="charlie to get the broadcast")
    assert [m for m in charlie.call("inbox") if m.get("type") == "SHOUT" or m.get("group")] == []
    assert [m for m in charlie.call("history", limit=0) if m.get("group")] == []
    one_line_error(charlie.ctl("shout", "rust-dev", "let me in", check=False), exitcodes.FAILED, "join")
    as_json = json.loads(charlie.ctl("--json", "shout", "rust-dev", "x", check=False).stdout)
    assert as_json["code"] == "not_member"

    # leave: bob is out, alice's shouts reach nobody, and bob stores no more
    assert bob.ctl("leave", "rust-dev").stdout.strip() == "left #rust-dev"
    one_line_error(bob.ctl("leave", "rust-dev", check=False), exitcodes.FAILED)
    wait_members(alice, "rust-dev", ["alice"])
    out = alice.ctl("shout", "rust-dev", "anyone?").stdout
    assert "no other member is in it yet" in out, out
    alice.ctl("broadcast", "marker 2")
    wait_for(lambda: "marker 2" in [m["text"] for m in bob.call("inbox")], SLOW, what="bob to get the second broadcast")
    assert shouts(bob) == ["hello room"]

    # names are checked before anything is sent
    bad = alice.ctl("join", "rust dev", check=False)
    assert bad.returncode == exitcodes.USAGE and "try 'rust-dev'" in bad.stderr


def test_join_since_fetches_what_was_shouted_before(trio):
    alice, bob, charlie = trio
    alice.ctl("join", "rust-dev")
    bob.ctl("join", "rust-dev")
    wait_members(alice, "rust-dev", ["alice", "bob"])
    alice.ctl("shout", "rust-dev", "before 1")
    alice.ctl("shout", "rust-dev", "before 2")
    wait_for(lambda: shouts(bob, "rust-dev") == ["before 1", "before 2"], SLOW, what="bob to get the early shouts")

    # a plain join does not fetch the past
    charlie.ctl("join", "rust-dev")
    wait_members(alice, "rust-dev", ["alice", "bob", "charlie"])
    alice.ctl("shout", "rust-dev", "after")
    wait_for(lambda: shouts(charlie, "rust-dev") == ["after"], SLOW, what="charlie to get the shout after its join")
    # join --since (also when already in) fetches them, each once
    res = charlie.ctl_json("join", "rust-dev", "--since", "1h")
    assert res["already"] is True
    wait_for(lambda: sorted(shouts(charlie, "rust-dev")) == ["after", "before 1", "before 2"], SLOW,
             what=f"charlie to fetch the early shouts; has {shouts(charlie, 'rust-dev')}")
    out = charlie.ctl("history", "--group", "rust-dev", "--since", "1h").stdout
    assert "[#rust-dev] alice: before 1" in out and "[#rust-dev] alice: after" in out


# ------------------------------------------------------------------------------ private groups


def test_a_private_group_by_invitation(trio):
    alice, bob, charlie = trio
    out = alice.ctl("join", "ops", "--private").stdout
    assert out.startswith("joined #ops (private)"), out
    # an open group has nothing to invite to; a non-member cannot invite
    bob.ctl("join", "rust-dev")
    one_line_error(bob.ctl("invite", "rust-dev", "alice", check=False), exitcodes.FAILED)
    one_line_error(charlie.ctl("invite", "ops", "bob", check=False), exitcodes.FAILED)
    out = alice.ctl("invite", "#ops", "bob").stdout
    assert "invited bob" in out and "#ops" in out and "p2pctl join ops --private" in out, out
    wait_for(lambda: (group_row(bob, "ops", private=True) or {}).get("invited"), SLOW, what="bob to get the invitation")
    row = next(ln for ln in bob.ctl("groups").stdout.splitlines() if ln.startswith("#ops"))
    assert row.split()[:5] == ["#ops", "(private)", "invited", "by", "alice"], row
    res = bob.ctl_json("join", "ops", "--private")
    assert res["private"] is True and (res.get("invited_by") or {}).get("name") == "alice"
    wait_members(alice, "ops", ["alice", "bob"], private=True)
    alice.ctl("shout", "ops", "for members only")
    wait_for(lambda: shouts(bob, "ops") == ["for members only"], SLOW, what="bob to get the private shout")
    alice.ctl("broadcast", "marker")
    wait_for(lambda: "marker" in [m["text"] for m in charlie.call("inbox")], SLOW, what="charlie to get the broadcast")
    assert shouts(charlie) == []
    assert group_row(charlie, "ops", private=True) is None  # not even listed: charlie holds no key


# ------------------------------------------------------------------------------ the chat


def test_chat_rooms_join_switch_shout_and_rooms(trio):
    alice, bob, charlie = trio
    bob.ctl("join", "rust-dev")
    chat = ChatSession(alice)
    try:
        chat.expect("chatting as alice")
        chat.type("/join #rust-dev")
        chat.expect("joined #rust-dev")
        chat.expect("talking in #rust-dev")
        wait_members(alice, "rust-dev", ["alice", "bob"])
        wait_members(bob, "rust-dev", ["alice", "bob"])
        chat.type("hello room")
        chat.expect("[#rust-dev] you: hello room")
        wait_for(lambda: shouts(bob, "rust-dev") == ["hello room"], SLOW, what="bob to get the chat's shout")
        chat.type("/rooms")
        chat.expect("GROUP")
        line = chat.expect("#rust-dev  ")
        assert "yes" in line and "alice" in line and "bob" in line, line
        chat.expect("plain text goes to #rust-dev")
        bob.ctl("shout", "rust-dev", "hi from bob")
        chat.expect("[#rust-dev] bob: hi from bob")
        chat.type("/switch")
        chat.expect("talking to everyone")
        chat.type("to everyone")
        wait_for(lambda: "to everyone" in [m["text"] for m in charlie.call("inbox")], SLOW, what="charlie to get the broadcast")
        assert shouts(charlie) == [] and shouts(bob, "rust-dev") == ["hello room"]
        chat.type("/switch #nowhere")
        chat.expect("you are not in #nowhere")
        # another node's leave, and an invitation, are notices
        bob.ctl("leave", "rust-dev")
        chat.expect("left #rust-dev")
        charlie.ctl("join", "secret", "--private")
        charlie.ctl("invite", "secret", "alice")
        chat.expect("invited you to #secret (private): /join #secret --private")
        chat.type("/join #secret")
        chat.expect("/join #secret --private joins it")
        chat.type("/join #secret --private")
        chat.expect("joined #secret (private)")
        chat.type("/quit")
        assert chat.proc.wait(10) == 0
    finally:
        chat.close()


def test_chat_on_a_terminal_shows_the_room_in_the_prompt_and_tab_completes_rooms(trio):
    alice, bob, _ = trio
    bob.ctl("join", "rust-dev")
    alice.ctl("join", "ops")
    wait_members(alice, "rust-dev", ["bob"])
    term = tty_chat(alice)
    try:
        term.type("/sw\t")
        term.expect(r"^alice> /switch$")
        term.type("#o\t")
        term.expect(r"^alice> /switch #ops$")
        term.type("\r")
        term.expect(r"talking in #ops")
        term.expect(r"^alice #ops>$")  # the prompt shows the room
        term.type("/join ru\t")
        term.expect(r"^alice #ops> /join #rust-dev$")
        term.type("\r")
        term.expect(r"^alice #rust-dev>$")
        wait_members(bob, "rust-dev", ["alice", "bob"])
        term.type("shouted from a terminal\r")
        term.expect(rf"^{TIME} \[#rust-dev\] you: shouted from a terminal$")
        wait_for(lambda: shouts(bob, "rust-dev") == ["shouted from a terminal"], SLOW, what="bob to get the shout")
        term.type("/switch *\r")
        term.expect(r"^alice>$")
        term.type("\x04")  # Ctrl-D
        assert term.wait_exit() == 0
    finally:
        term.close()
