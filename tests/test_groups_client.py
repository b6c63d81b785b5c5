"""The client side of groups (issue 16), without a daemon: p2pctl's join, leave, groups, shout,
invite and --group (the requests they make, what they print, the names they refuse), the
rendering of shouts and group events (escaped: a group or peer name is a peer's choice), and
the chat's rooms (/join, /leave, /rooms, /switch, /invite, plain text as a shout, Tab) driven
with a fake client that answers as the daemon's control API (docs/PROTOCOL.md 9) says."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from p2pctl import chat as chat_mod
from p2pctl import cli, render
from p2pctl.chat import Chat, chat_terms, completions
from p2pctl.client import RequestFailed
from p2pctl.commands import CLI_COMMANDS, group_arg
from p2pctl.events import EventStream
from p2pd.errors import ErrorCode

HOSTILE = "evil\x1b]0;pwned\x07\x1b[2J\u202e"  # retitles the terminal, clears it, flips the text
ALICE = {"id": "a" * 32, "name": "alice"}
BOB = {"id": "b" * 32, "name": "bob"}


class FakeClient:
    """Answers requests from ``replies`` (cmd -> result, an exception to raise, or a function of
    the args); records every request."""

    def __init__(self, replies: dict | None = None):
        self.replies = dict(replies or {})
        self.calls: list[tuple[str, dict]] = []
        self.timeout_s = 5.0

    def call(self, cmd: str, timeout_s: float | None = None, **args):
        self.calls.append((cmd, args))
        r = self.replies.get(cmd)
        if callable(r):
            r = r(**args)
        if isinstance(r, Exception):
            raise r
        return r

    def sent(self, cmd: str) -> list[dict]:
        return [a for c, a in self.calls if c == cmd]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def groups_reply(*rows) -> dict:
    return {"groups": [{"group": g, "private": p, "joined": j, "invited": False, "count": 1,
                        "members": [{**ALICE, "state": "alive"}]} for g, p, j in rows]}


def shout_row(group: str, text: str, name: str = "bob", cursor: int = 5) -> dict:
    return {"id": "c" * 32, "type": "SHOUT", "sender_id": BOB["id"], "sender_name": name, "sender_label": name,
            "timestamp": "2026-12-06T10:00:00.000Z", "text": text, "target_id": None, "group": group, "cursor": cursor}


@pytest.fixture(autouse=True)
def plain():
    render.setup(no_color=True)


# ------------------------------------------------------------------------------ names


def test_a_group_name_loses_one_hash_and_a_bad_one_is_a_usage_error_naming_the_fix():
    assert group_arg("rust-dev") == group_arg("#rust-dev") == "rust-dev"
    for bad, says in (("rust dev", "try 'rust-dev'"), ("##x", "do not start with '#'"), ("", "1-64 characters"),
                      ("x" * 65, "at most 64"), ("a\x1bb", "no spaces or control characters")):
        with pytest.raises(click.UsageError) as e:
            group_arg(bad)
        assert says in e.value.message and "\n" not in e.value.message


@pytest.mark.parametrize("argv", [["join", "rust dev"], ["leave", "rust dev"], ["shout", "rust dev", "hi"],
                                  ["invite", "rust dev", "bob"], ["inbox", "--group", "rust dev"],
                                  ["history", "--group", "rust dev"], ["watch", "--group", "rust dev"]])
def test_a_bad_group_name_is_exit_2_with_its_one_line_before_any_request(argv, tmp_path, monkeypatch):
    fake = FakeClient()
    monkeypatch.setattr(cli.Ctx, "client", lambda self: fake)
    res = CliRunner().invoke(cli.main, ["--home", str(tmp_path / "none"), *argv])
    assert res.exit_code == 2, res.output
    assert "group names have no spaces or control characters: try 'rust-dev'" in res.output
    assert fake.calls == []


# ------------------------------------------------------------------------------ requests


def run_cli(monkeypatch, replies: dict, *argv: str, input: str | None = None):
    fake = FakeClient(replies)
    monkeypatch.setattr(cli.Ctx, "client", lambda self: fake)
    res = CliRunner().invoke(cli.main, ["--no-color", *argv], input=input)
    return res, fake


def test_join_sends_the_name_private_and_since_and_lists_the_members(monkeypatch):
    reply = {"group": "rust-dev", "private": False, "already": False, "members": [ALICE, BOB]}
    res, fake = run_cli(monkeypatch, {"join": reply}, "join", "#rust-dev", "--since", "2h")
    assert res.exit_code == 0, res.output
    (args,) = fake.sent("join")
    assert args["group"] == "rust-dev" and args["private"] is False and isinstance(args["since"], float)
    assert res.output.strip() == "joined #rust-dev: 2 member(s): alice, bob"
    res, fake = run_cli(monkeypatch, {"join": {**reply, "group": "ops", "private": True, "already": True}}, "join", "ops", "--private")
    assert fake.sent("join") == [{"group": "ops", "private": True}]  # no since unless asked
    assert res.output.startswith("already in #ops (private)")
    res, _ = run_cli(monkeypatch, {"join": reply}, "join", "x", "--since", "yesterday")
    assert res.exit_code == 2 and "is not a time" in res.output


def test_leave_groups_invite_and_json(monkeypatch):
    res, fake = run_cli(monkeypatch, {"leave": {"group": "rust-dev", "private": False}}, "leave", "#rust-dev")
    assert fake.sent("leave") == [{"group": "rust-dev"}] and res.output.strip() == "left #rust-dev"
    res, _ = run_cli(monkeypatch, {"leave": {"group": "ops", "private": True}}, "leave", "ops")
    assert res.output.strip() == "left #ops (private): its key is forgotten, so back in only by a new invitation"
    reply = {"groups": [
        {"group": "ops", "private": True, "joined": False, "invited": True, "count": 1, "members": [{**BOB, "state": "alive"}]},
        {"group": "rust-dev", "private": False, "joined": True, "invited": False, "count": 2,
         "members": [{**ALICE, "state": "alive"}, {**BOB, "state": "lost"}]}]}
    res, fake = run_cli(monkeypatch, {"groups": reply}, "groups")
    assert fake.sent("groups") == [{}]
    lines = res.output.splitlines()
    assert lines[0].split() == ["GROUP", "JOINED", "MEMBERS", "NAMES"]
    assert lines[1].split() == ["#ops", "(private)", "invited", "1", "bob"]
    assert lines[2].split() == ["#rust-dev", "yes", "2", "alice,", "bob", "(lost)"]
    res, _ = run_cli(monkeypatch, {"groups": reply}, "groups", "--json")
    assert json.loads(res.output) == reply
    res, _ = run_cli(monkeypatch, {"groups": {"groups": []}}, "groups")
    assert "no groups yet" in res.output and "p2pctl join" in res.output
    invited = {"group": "ops", "peer": "bob", "peer_id": BOB["id"], "status": "queued"}
    res, fake = run_cli(monkeypatch, {"invite": invited}, "invite", "#ops", "bob")
    assert fake.sent("invite") == [{"group": "ops", "peer": "bob"}]
    assert "invited bob (bbbbbbbbbbbb) to #ops" in res.output and "p2pctl join ops --private" in res.output


def test_shout_takes_words_or_stdin_and_says_whom_it_reached(monkeypatch):
    reply = {"id": "d" * 32, "group": "rust-dev", "private": False, "members": 2, "status": "sent"}
    res, fake = run_cli(monkeypatch, {"shout": reply}, "shout", "#rust-dev", "release", "is", "out")
    assert fake.sent("shout") == [{"group": "rust-dev", "text": "release is out"}]
    assert res.output.strip() == f"shout {'d' * 12} to #rust-dev: sent to 2 other member(s)"
    res, fake = run_cli(monkeypatch, {"shout": {**reply, "members": 0}}, "shout", "rust-dev", "-", input="line 1\nline 2\n")
    assert fake.sent("shout") == [{"group": "rust-dev", "text": "line 1\nline 2"}]
    assert "no other member is in it yet" in res.output
    res, fake = run_cli(monkeypatch, {"shout": reply}, "shout", "rust-dev")
    assert res.exit_code == 2 and "missing TEXT" in res.output and fake.calls == []
    res, _ = run_cli(monkeypatch, {"shout": reply}, "shout", "rust-dev", "-", input="\n")
    assert res.exit_code == 2 and "the message is empty" in res.output


def test_not_member_is_exit_1_with_the_daemons_line(monkeypatch):
    failed = RequestFailed(ErrorCode.NOT_MEMBER, "this node is not in 'rust-dev': p2pctl join rust-dev")
    res, _ = run_cli(monkeypatch, {"shout": failed}, "shout", "rust-dev", "hi")
    assert res.exit_code == 1 and "p2pctl: this node is not in 'rust-dev': p2pctl join rust-dev" in res.output
    res, _ = run_cli(monkeypatch, {"leave": failed}, "--json", "leave", "rust-dev")
    assert res.exit_code == 1 and json.loads(res.output.splitlines()[0])["code"] == "not_member"


def test_inbox_and_history_take_a_group_and_show_the_room(monkeypatch):
    rows = [shout_row("rust-dev", "hi")]
    res, fake = run_cli(monkeypatch, {"inbox": rows}, "inbox", "--group", "#rust-dev")
    assert fake.sent("inbox") == [{"limit": 0, "unread": False, "group": "rust-dev"}]
    assert res.output.rstrip().endswith("[#rust-dev] bob: hi")
    res, fake = run_cli(monkeypatch, {"inbox": []}, "inbox")
    assert fake.sent("inbox") == [{"limit": 0, "unread": False}]  # no group unless asked
    res, _ = run_cli(monkeypatch, {"inbox": []}, "inbox", "--group", "ops")
    assert res.output.strip() == "no messages in #ops"
    mine = {**shout_row("rust-dev", "mine"), "direction": "out"}
    res, fake = run_cli(monkeypatch, {"history": [mine, {**rows[0], "direction": "in"}]}, "history", "--group", "rust-dev")
    assert fake.sent("history")[0]["group"] == "rust-dev"
    out = res.output.splitlines()
    assert out[0].endswith("[#rust-dev] you: mine") and out[1].endswith("[#rust-dev] bob: hi")


def test_every_group_command_has_help_with_an_example():
    runner = CliRunner()
    for argv in (["join"], ["leave"], ["groups"], ["shout"], ["invite"], ["inbox"], ["history"], ["watch"]):
        text = runner.invoke(cli.main, [*argv, "--help"]).output
        assert "Example" in text and "p2pctl " in text.split("Example", 1)[1], argv
    assert {"join", "leave", "groups", "shout", "invite"} <= set(CLI_COMMANDS)
    assert {c.cmd for n, c in CLI_COMMANDS.items() if n in ("join", "leave", "groups", "shout", "invite")} == {
        "join", "leave", "groups", "shout", "invite"}


def test_watch_with_a_group_asks_for_that_group_only():
    made = []

    def make_client():
        made.append(FakeClient({"watch": {"watching": True, "cursor": 3}}))
        return made[-1]

    EventStream(make_client, group="rust-dev").open()
    assert made[0].sent("watch") == [{"group": "rust-dev"}]
    stream = EventStream(make_client)
    stream.open()
    assert made[1].sent("watch") == [{}]
    # shouts carry cursors: one seen again (a replay) is not handed out twice
    ev = {"event": "shout", "message": shout_row("rust-dev", "x", cursor=4)}
    assert stream._fresh(ev) and not stream._fresh(ev) and stream.cursor == 4


# ------------------------------------------------------------------------------ rendering


def test_hostile_group_and_peer_names_are_escaped_everywhere():
    evil_peer = {"id": "e" * 32, "name": HOSTILE}
    lines = [
        render.message_line(shout_row(HOSTILE, "hi " + HOSTILE, name=HOSTILE)),
        render.history_line({**shout_row(HOSTILE, "x"), "direction": "out"}),
        render.event_line({"event": "shout", "time": "2026-12-06T10:00:00Z", "message": shout_row(HOSTILE, "x")}),
        render.event_line({"event": "group", "time": "2026-12-06T10:00:00Z", "kind": "join", "group": HOSTILE,
                           "private": False, "peer": evil_peer}),
        render.event_line({"event": "group", "time": "2026-12-06T10:00:00Z", "kind": "leave", "group": HOSTILE,
                           "private": True, "peer": evil_peer}),
        render.event_line({"event": "invited", "time": "2026-12-06T10:00:00Z", "group": HOSTILE, "by": evil_peer}),
        render.event_line({"event": "invited", "time": "2026-12-06T10:00:00Z", "group": HOSTILE, "by": evil_peer}, in_chat=True),
        render.groups_table({"groups": [{"group": HOSTILE, "private": True, "joined": True, "invited": False, "count": 1,
                                         "members": [{**evil_peer, "state": HOSTILE}]}]}),
        CLI_COMMANDS["join"].text({"group": HOSTILE, "private": False, "already": False, "members": [evil_peer]}),
        CLI_COMMANDS["invite"].text({"group": HOSTILE, "peer": HOSTILE, "peer_id": HOSTILE, "status": "queued"}),
        CLI_COMMANDS["shout"].text({"id": HOSTILE, "group": HOSTILE, "members": 1}),
        CLI_COMMANDS["leave"].text({"group": HOSTILE, "private": False}),
    ]
    for line in lines:
        assert not any(c in line for c in "\x1b\x07\u202e"), repr(line)
        assert "\\x1b" in line, repr(line)
    assert "\n" not in "".join(lines[:7])


def test_shouts_and_group_events_read_as_a_chat_would_show_them():
    assert render.message_line(shout_row("rust-dev", "hi")).endswith(" [#rust-dev] bob: hi")
    t = "2026-12-06T10:00:00Z"
    join = render.event_line({"event": "group", "time": t, "kind": "join", "group": "rust-dev", "private": False, "peer": BOB})
    assert join.endswith("* bob (bbbbbbbbbbbb) joined #rust-dev")
    leave = render.event_line({"event": "group", "time": t, "kind": "leave", "group": "ops", "private": True, "peer": BOB})
    assert leave.endswith("* bob (bbbbbbbbbbbb) left #ops (private)")
    inv = {"event": "invited", "time": t, "group": "ops", "by": BOB}
    assert render.event_line(inv).endswith("invited you to #ops (private): p2pctl join ops --private to join it")
    assert render.event_line(inv, in_chat=True).endswith(": /join #ops --private to join it")
    # a direct message and a broadcast look as before
    dm = {**shout_row(None, "psst"), "type": "MESSAGE"}
    assert render.message_line(dm).endswith("bob -> you: psst")
    assert render.message_line({**shout_row(None, "all"), "type": "BROADCAST"}).endswith(" bob: all")


# ------------------------------------------------------------------------------ the chat


def chat_with(replies: dict) -> tuple[Chat, FakeClient, list[str]]:
    fake = FakeClient({"peers": [{**BOB, "state": "alive"}], "groups": groups_reply(), **replies})
    shown: list[str] = []
    chat = Chat(fake, shown.append, timeout_s=1.0)
    chat.refresh_peers()
    return chat, fake, shown


def test_chat_join_switch_shout_leave():
    joined = set()

    def groups(**_):
        return groups_reply(*((g, False, True) for g in sorted(joined)), ("ops", True, False))

    def join(group, private):
        joined.add(group)
        return {"group": group, "private": private, "already": False, "members": [ALICE, BOB]}

    def leave(group):
        joined.discard(group)
        return {"group": group, "private": False}

    chat, fake, shown = chat_with({"groups": groups, "join": join, "leave": leave,
                                   "shout": {"id": "s" * 32, "group": "rust-dev", "private": False, "members": 1, "status": "sent"},
                                   "broadcast": {"id": "b" * 32, "status": "sent", "subscribers": 1, "linked": 1}})
    chat.handle_line("before any room")
    assert fake.sent("broadcast") == [{"text": "before any room"}]
    chat.handle_line("/join #rust-dev")
    assert fake.sent("join") == [{"group": "rust-dev", "private": False}]
    assert "joined #rust-dev: 2 member(s): alice, bob" in shown and chat.rooms.current == "rust-dev"
    assert chat.rooms.names == ("ops", "rust-dev") and chat.rooms.prompt() == " #rust-dev"
    chat.handle_line("hello room")
    assert fake.sent("shout") == [{"group": "rust-dev", "text": "hello room"}]
    assert shown[-1].endswith("[#rust-dev] you: hello room")
    chat.handle_line("//slash in the room")
    assert fake.sent("shout")[-1] == {"group": "rust-dev", "text": "/slash in the room"}
    chat.handle_line("/switch")
    assert chat.rooms.current is None and chat.rooms.prompt() == ""
    chat.handle_line("to everyone")
    assert fake.sent("broadcast")[-1] == {"text": "to everyone"} and len(fake.sent("shout")) == 2
    chat.handle_line("/switch #rust-dev")
    assert chat.rooms.current == "rust-dev"
    chat.handle_line("/switch *")
    assert chat.rooms.current is None
    chat.handle_line("/switch #ops")  # known, not joined
    assert chat.rooms.current is None and shown[-1] == "! you are not in #ops: /join #ops first"
    chat.handle_line("/switch rust-dev")
    chat.handle_line("/leave")  # the current room
    assert fake.sent("leave") == [{"group": "rust-dev"}] and chat.rooms.current is None
    assert "left #rust-dev" in shown and chat.rooms.names == ("ops",)
    chat.handle_line("/leave")
    assert "! you are talking to everyone, not in a room" in shown[-1] and len(fake.sent("leave")) == 1
    chat.handle_line("/join ops --private")
    assert fake.sent("join")[-1] == {"group": "ops", "private": True}


def test_chat_rooms_invite_and_bad_lines():
    invited = {"group": "ops", "peer": "bob", "peer_id": BOB["id"], "status": "queued"}
    chat, fake, shown = chat_with({"groups": groups_reply(("ops", True, True), ("rust-dev", False, False)), "invite": invited})
    chat.handle_line("/rooms")
    table = "\n".join(shown)
    assert "#ops (private)" in table and "#rust-dev" in table and "plain text goes to everyone" in table
    chat.handle_line("/invite #ops bob")
    assert fake.sent("invite") == [{"group": "ops", "peer": "bob"}] and shown[-1].startswith("invited bob to #ops (queued")
    calls = len(fake.calls)
    for line, says in (("/join rust dev", None), ("/join", "usage: /join #room"), ("/join a b", "usage: /join"),
                       ("/invite #ops", "usage: /invite"), ("/switch a b", "usage: /switch"), ("/join ##x", "do not start with '#'"),
                       ("/history #bad name", "no spaces")):
        shown.clear()
        assert chat.handle_line(line) is True
        assert len(shown) == 1 and shown[0].startswith("! "), (line, shown)
        if says:
            assert says in shown[0], (line, shown)
    assert len(fake.calls) == calls  # none of them sent anything
    chat, fake, shown = chat_with({"groups": groups_reply()})
    chat.handle_line("/rooms")
    assert shown[0].startswith("no rooms yet; join one with /join #room")


def test_chat_a_failed_shout_is_not_sent_to_everyone_and_names_the_chat_fix():
    failed = RequestFailed(ErrorCode.NOT_MEMBER, "this node is not in 'rust-dev': join it first with `p2pctl join rust-dev`")
    chat, fake, shown = chat_with({"shout": failed, "groups": groups_reply(("rust-dev", False, True))})
    chat.handle_line("/switch #rust-dev")
    chat.handle_line("still here?")
    assert shown[-1] == "! this node is not in 'rust-dev': join it first with /join #rust-dev"
    assert fake.sent("broadcast") == [] and chat.rooms.current == "rust-dev"


def test_chat_terms_for_groups():
    assert chat_terms("not a member: p2pctl join rust-dev") == "not a member: /join #rust-dev"
    assert chat_terms("run `p2pctl join 'ops'` first") == "run /join #ops first"
    assert chat_terms("see p2pctl groups; or p2pctl peers") == "see /rooms; or /peers"


def test_chat_history_and_inbox_of_a_room():
    chat, fake, shown = chat_with({"history": [shout_row("rust-dev", "x")], "inbox": [shout_row("rust-dev", "y", cursor=9)], "read": {}})
    chat.handle_line("/history #rust-dev")
    chat.handle_line("/history bob")
    chat.handle_line("/inbox #rust-dev")
    assert [a.get("group", a.get("peer")) for a in fake.sent("history")] == ["rust-dev", "bob"]
    assert fake.sent("inbox")[0]["group"] == "rust-dev"
    assert shown[0].endswith("[#rust-dev] bob: x") and shown[-1].endswith("[#rust-dev] bob: y")
    assert fake.sent("read") == [{"upto": 9}]


def test_chat_shows_shouts_and_group_events_and_refreshes_the_rooms():
    chat, fake, shown = chat_with({"read": {}, "groups": groups_reply(("rust-dev", False, True))})
    t = "2026-12-06T10:00:00Z"
    chat.show_events([
        {"event": "shout", "time": t, "message": shout_row("rust-dev", "hey", cursor=11)},
        {"event": "group", "time": t, "kind": "join", "group": "rust-dev", "private": False, "peer": BOB},
        {"event": "invited", "time": t, "group": "ops", "by": BOB},
    ])
    assert shown[0].endswith("[#rust-dev] bob: hey")
    assert shown[1].endswith("bob (bbbbbbbbbbbb) joined #rust-dev")
    assert shown[2].endswith("invited you to #ops (private): /join #ops --private to join it")
    assert fake.sent("read") == [{"upto": 11}]
    assert fake.sent("groups") == [{}] and chat.rooms.names == ("rust-dev",)  # once for the batch


def test_tab_completes_rooms_and_peers():
    chat, _, _ = chat_with({"groups": groups_reply(("rust-dev", False, True), ("rustaceans", False, False), ("ops", True, True))})
    chat.rooms.refresh()
    chat.peer_names = ("bob", "bobby", "carol")

    def offered(text):
        return [insert for insert, start, _ in completions(chat, text)]

    assert offered("/jo") == ["/join "]
    assert offered("/sw") == ["/switch "]
    assert offered("/join ru") == ["#rust-dev ", "#rustaceans "]
    assert offered("/join #ru") == ["#rust-dev ", "#rustaceans "]
    assert offered("/leave #o") == ["#ops "]
    assert offered("/switch ") == ["#ops ", "#rust-dev ", "#rustaceans "]
    assert offered("/invite #ops bo") == ["bob ", "bobby "]
    assert offered("/invite o") == ["#ops "]
    assert offered("/history #rust-") == ["#rust-dev "]
    assert offered("/history bo") == ["bob ", "bobby "]
    assert offered("/msg car") == ["carol "]
    assert offered("see you in #rus") == ["#rust-dev ", "#rustaceans "]
    assert offered("/msg bob see #o") == ["#ops "]
    assert offered("plain words") == [] and offered("/ping #x") == []
    (insert, start, display), = completions(chat, "/join #rust-d")
    assert (insert, start, display) == ("#rust-dev ", -len("#rust-d"), "#rust-dev")
    # a name the daemon sent that is not one word is never offered
    chat.rooms.refresh(reply={"groups": [{"group": "two words", "joined": True}, {"group": HOSTILE, "joined": True}]})
    assert chat.rooms.names == ()


def test_chat_help_lists_the_room_commands():
    for c in ("/join", "/leave", "/rooms", "/switch", "/invite"):
        assert c in chat_mod.COMMANDS and c in chat_mod.HELP


def test_chat_join_of_a_room_you_were_invited_to_asks_for_private():
    """The open #ops and the private #ops are two rooms: a bare /join #ops while an invitation
    to the private one is held is refused with the line to type (--open: the open one)."""
    reply = {"groups": [{"group": "ops", "private": True, "joined": False, "invited": True, "count": 1,
                         "members": [{**BOB, "state": "alive"}]}]}
    chat, fake, shown = chat_with({"groups": reply, "join": lambda group, private: {
        "group": group, "private": private, "already": False, "members": [ALICE, BOB]}})
    chat.rooms.refresh()
    chat.handle_line("/join #ops")
    assert shown[-1] == "! you were invited to the private #ops: /join #ops --private joins it (/join #ops --open: the open #ops, another room)"
    assert fake.sent("join") == []
    chat.handle_line("/join #ops --private")
    assert fake.sent("join") == [{"group": "ops", "private": True}] and "joined #ops (private)" in shown[-2]
    chat.handle_line("/join #ops --open")
    assert fake.sent("join")[-1] == {"group": "ops", "private": False}
    assert chat_terms("invited: p2pctl join ops --private to join it") == "invited: /join #ops --private to join it"


def test_who_invited_and_members_by_name():
    reply = {"groups": [{"group": "ops", "private": True, "joined": False, "invited": True, "invited_by": BOB, "count": 2,
                         "members": [{**BOB, "state": "alive"}, {"id": "0" * 32, "name": "Zed", "state": "alive"},
                                     {"id": "1" * 32, "name": "carol", "state": "suspect"}]}]}
    row = render.groups_table(reply).splitlines()[1]
    assert row.split() == ["#ops", "(private)", "invited", "by", "bob", "2", "bob,", "carol", "(suspect),", "Zed"]
    text = CLI_COMMANDS["join"].text({"group": "ops", "private": True, "already": False, "invited_by": BOB,
                                      "members": [BOB, ALICE]})
    assert text == "joined #ops (private) (invited by bob): 2 member(s): alice, bob"
