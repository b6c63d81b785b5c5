"""What p2pctl prints, exactly, where no other test looks: the empty answers (no peers, an empty
inbox, outbox and history, no keys), `trust` and `known` from start to end, and `outbox --limit`
with more rows than it shows.  Real daemons driven by the real p2pctl; each command's client
side is one object in p2pctl/commands.py, and these outputs are held to what they were before."""

from __future__ import annotations

import json
import re

from p2pd import exitcodes
from p2pd.keys import node_id_for

EMPTY = {
    ("peers",): "no peers yet; link one with: p2pctl connect HOST PORT\n",
    ("inbox",): "inbox is empty\n",
    ("inbox", "--unread"): "no unread messages\n",
    ("history",): "no messages\n",
    ("outbox",): "outbox is empty: every message was delivered\n",
    ("trust", "list"): "no authorized keys: any node with a valid key may link (add one to switch to allowlist mode)\n",
    ("known", "list"): "no pinned keys\n",
}


def test_what_an_empty_node_prints(make_node):
    alice = make_node("alice")
    alice.start()
    for argv, text in EMPTY.items():
        proc = alice.ctl(*argv)
        assert (proc.stdout, proc.stderr) == (text, ""), argv
    assert [alice.ctl_json(*argv) for argv in EMPTY] == [[], [], [], [], [], {"allowlist": False, "keys": []}, []]


def test_trust_add_and_remove_print_the_keys_and_refuse_what_matches_nothing(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    key = bob.call("info")["public_key"]
    added = alice.ctl("trust", "add", key, "bob's laptop").stdout
    assert added == f"allowlist mode: 1 authorized key(s)\n  {key}  {node_id_for(key)[:12]}  bob's laptop\n"
    assert alice.ctl("trust", "list").stdout == added
    missing = alice.ctl("trust", "remove", "laptop", check=False)
    assert (missing.returncode, missing.stdout) == (exitcodes.FAILED, "")
    assert missing.stderr == "p2pctl: no authorized key matches 'laptop'; `p2pctl trust list` shows them\n"
    as_json = alice.ctl("--json", "trust", "remove", "laptop", check=False)
    assert json.loads(as_json.stdout) == {"ok": False, "code": "unknown_peer",
                                          "error": "no authorized key matches 'laptop'; `p2pctl trust list` shows them"}
    assert alice.ctl("trust", "remove", node_id_for(key)).stdout == EMPTY[("trust", "list")]


def test_known_lists_and_forgets_a_pin(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    alice.ctl("connect", bob.addr)
    key = bob.call("info")["public_key"]
    assert alice.ctl("known", "list").stdout == f"{bob.addr}  {key}  ({bob.id[:12]})\n"
    assert alice.ctl_json("known", "list") == [{"address": bob.addr, "key": key, "id": bob.id}]
    assert alice.ctl("known", "forget", bob.addr).stdout == f"forgot {bob.addr}; the next connect pins the key it finds\n"
    assert alice.ctl("known", "list").stdout == EMPTY[("known", "list")]
    again = alice.ctl("known", "forget", bob.id, check=False)
    assert (again.returncode, again.stdout) == (exitcodes.FAILED, "")
    assert again.stderr == f"p2pctl: no pinned key for {bob.id!r}; `p2pctl known list` shows them\n"


def test_outbox_says_when_it_shows_fewer_rows_than_there_are(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    alice.ctl("connect", bob.addr)
    assert bob.stop().returncode == 0  # bob leaves: what alice sends him now waits in her outbox
    for text in ("one", "two", "three"):
        assert alice.ctl("send", "bob", text).stdout.startswith("queued for bob (")
    lines = alice.ctl("outbox", "-n", "2").stdout.splitlines()
    assert re.fullmatch(r"ID +PEER +SEQ +STATUS +RESENT +QUEUED +TEXT", lines[0]), lines
    assert [line.split()[1:4] + line.split()[-1:] for line in lines[1:3]] == [["bob", "1", "pending", "one"], ["bob", "2", "pending", "two"]]
    assert lines[3:] == ["... more not shown; raise --limit (p2pctl info shows how many are pending)"]
    assert [r["text"] for r in alice.ctl_json("outbox", "-n", "2")] == ["one", "two"]  # --json: the rows shown, no note
    assert len(alice.ctl("outbox", "-n", "3").stdout.splitlines()) == 4  # all of them: no note
    history = alice.ctl("history").stdout.splitlines()
    assert [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in history] == ["you -> bob: one", "you -> bob: two", "you -> bob: three"]
