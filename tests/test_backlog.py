"""Unread messages and the event cursor with real daemons: `p2pctl inbox --unread`, `read`, and a
watcher that comes back after the daemon stopped and started again misses nothing."""

from __future__ import annotations

import json
import time

from conftest import wait_for
from sechelp import inbox_texts, link


def collect(events, until, timeout: float = 10.0) -> list[dict]:
    """Events from a `Client.watch` generator until ``until(events so far)`` holds (bounded in time)."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    for e in events:  # yields None every poll_s of quiet, so the deadline is checked
        if e is not None:
            got.append(e)
        if until(got):
            return got
        assert time.monotonic() < deadline, f"timed out; events so far: {got}"
    return got


def test_unread_messages_and_a_watcher_that_returns_after_a_restart(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    link(alice, bob)
    for t in ("one", "two"):
        bob.ctl("send", "alice", t, "--wait", "5")
    unread = json.loads(alice.ctl("--json", "inbox", "--unread").stdout)
    assert [m["text"] for m in unread] == ["one", "two"] and alice.call("status")["unread"] == 2
    alice.call("read", upto=unread[0]["cursor"])
    assert [m["text"] for m in json.loads(alice.ctl("--json", "inbox", "--unread").stdout)] == ["two"]
    alice.call("read", upto=unread[-1]["cursor"])
    assert alice.ctl("inbox", "--unread").stdout.strip() == "no unread messages"

    # a watcher sees "three" live, then loses the daemon; bob's messages wait in his outbox
    with alice.client() as c:
        events = c.watch(poll_s=0.1)
        assert next(events) is None  # the watch is registered (a generator starts on its first next)
        bob.ctl("send", "alice", "three")
        [seen] = collect(events, lambda got: any(e["event"] == "message" for e in got))
        assert seen["message"]["text"] == "three"
    last = seen["message"]["cursor"]
    assert alice.stop().returncode == 0
    for t in ("four", "five"):
        bob.ctl("send", "alice", t)  # queued: alice is down
    bob.ctl("broadcast", "to everyone")
    alice.start()
    wait_for(lambda: {"four", "five"} <= set(inbox_texts(alice)), timeout=20, what="bob's queued messages at alice")
    with alice.client() as c:
        events = c.watch(poll_s=0.1, since=last)
        got = collect(events, lambda got: {"four", "five"} <= {e["message"]["text"] for e in got if "message" in e})
    texts = [e["message"]["text"] for e in got if e["event"] in ("message", "broadcast")]
    assert "three" not in texts and texts.index("four") < texts.index("five")
    assert all(e.get("replay") for e in got if e["message"]["text"] in ("four", "five"))
    assert alice.call("status")["unread"] >= 3  # three, four, five (and the broadcast, if it came)
