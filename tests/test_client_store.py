"""Client and store (issue 12, items 7-9), with real daemons driven by the real p2pctl.

* what p2pctl, `p2pctl chat` or the client library report as not done is never done
  later: not by a daemon started afterwards, nor by a stopped one that resumes;
* a damaged, missing or emptied store, and a node.key whose halves do not match, are
  refused at start with one line that names the file and the fix;
* a full disk is reported as such, a known_peers file that is not UTF-8 is named, and a
  control message of the wrong frame count gets an error reply.

"Nothing arrives" is checked the way that can fail: a marker sent after the failed
request must arrive, and since direct messages to one peer are delivered in order (and
each node stores what it sends before it answers), the failed one would have come first.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import zmq

from conftest import pid_alive, wait_for
from p2pctl.client import Client, DaemonNotRunning, DaemonTimeout
from p2pd import exitcodes
from p2pd.home import Home
from test_chat import ChatSession


def linked(a, b) -> None:
    a.ctl("connect", "127.0.0.1", str(b.port))
    wait_for(lambda: "bob" in a.alive_names() and "alice" in b.alive_names(), what="alice and bob linked")


def texts(node, cmd: str = "inbox") -> list[str]:
    return [m["text"] for m in node.ctl_json(cmd)]


def assert_only_marker_arrived(sender, receiver, ghosts: list[str], marker: str, cmd: str = "inbox") -> None:
    """The marker, sent after the failed requests, arrives; the failed ones never do, at the
    receiver or in the sender's own store (where a carried-out send is stored first)."""
    wait_for(lambda: marker in texts(receiver, cmd), 15, what=f"{marker!r} at {receiver.name}")
    got = texts(receiver, cmd)
    mine = texts(sender, "history")
    for ghost in ghosts:
        assert ghost not in got, f"{ghost!r}, reported as failed, was carried out: {got}"
        assert ghost not in mine, f"{ghost!r}, reported as failed, is in {sender.name}'s history: {mine}"


# ============================================================================ item 7


def test_request_failed_while_daemon_stopped_is_not_carried_out_after_restart(make_node):
    """The chat's case: one long-lived client; its request fails while the daemon is down, and
    must not be delivered to the daemon started afterwards on the same control socket."""
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    with Client(alice.home, timeout_s=2.0) as c:
        assert c.call("status")["pid"] == alice.pid  # the client's socket is connected
        assert alice.stop().returncode == 0
        with pytest.raises(DaemonNotRunning) as e:
            c.send("bob", "ghost-library")
        assert e.value.exit_code == exitcodes.NOT_RUNNING
        cli = alice.ctl("send", "bob", "ghost-cli", check=False)
        assert cli.returncode == exitcodes.NOT_RUNNING and "not running" in cli.stderr and len(cli.stderr.splitlines()) == 1
        alice.start()
        wait_for(lambda: "bob" in alice.alive_names(), 15, what="alice to relink bob after her restart")
        # the same client object goes on working with the new daemon
        assert c.send("bob", "marker", wait_s=10.0)["status"] == "delivered"
    assert_only_marker_arrived(alice, bob, ["ghost-library", "ghost-cli"], "marker")


def test_request_to_a_stopped_daemon_is_refused_after_its_deadline(make_node):
    """SIGSTOP: the request reaches the daemon's socket, the client gives up (timeout, exit 4),
    the daemon resumes and reads it late: refused as expired, never carried out."""
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    with Client(alice.home, timeout_s=1.0) as c:
        assert c.call("status")["pid"] == alice.pid
        os.kill(alice.pid, signal.SIGSTOP)
        try:
            with pytest.raises(DaemonTimeout) as e:
                c.send("bob", "ghost-late")
            assert e.value.exit_code == exitcodes.TIMEOUT and "not carried out" in str(e.value)
        finally:
            os.kill(alice.pid, signal.SIGCONT)
    # the daemon did read it, after its deadline, and refused it
    wait_for(lambda: alice.call("info")["dropped"].get("expired_control") == 1, what="the late request counted as expired_control")
    assert "expired_control" in alice.log_text()
    wait_for(lambda: "bob" in alice.alive_names(), 15, what="alice and bob linked again after the stop")
    alice.ctl("send", "--wait", "10", "bob", "marker")
    assert_only_marker_arrived(alice, bob, ["ghost-late"], "marker")


def test_chat_line_that_failed_is_not_sent_after_restart(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    chat = ChatSession(alice)
    try:
        chat.expect("chatting as alice")
        assert alice.stop().returncode == 0
        chat.type("ghost-chat")
        chat.expect("not running")
        alice.start()
        wait_for(lambda: "bob" in alice.alive_names() and "alice" in bob.alive_names(), 15, what="alice and bob linked again")
        wait_for(lambda: alice.call("peers")[0]["subscribed"], 15, what="bob's SUB attached to alice again")
        chat.type("marker-chat")
        chat.expect("you (to 1): marker-chat")
    finally:
        chat.close()
    assert_only_marker_arrived(alice, bob, ["ghost-chat"], "marker-chat")


# ============================================================================ item 9: the control socket


def test_control_message_of_three_frames_gets_an_error_reply(make_node, zctx):
    alice = make_node("alice")
    alice.start()
    ctl = zctx.socket(zmq.DEALER)
    ctl.setsockopt(zmq.LINGER, 0)
    ctl.connect(Home(alice.home).control_endpoint)
    ctl.send_multipart([b'{"req": 41, "cmd": "status"}', b"{}", b"{}"])
    assert ctl.poll(5000), "no reply to a 3-frame control message"
    reply = json.loads(ctl.recv())
    assert reply["ok"] is False and reply["code"] == "bad_request" and reply["req"] == 41 and "had 3" in reply["error"]
    ctl.send(b'{"req": 42, "cmd": "status"}')
    assert ctl.poll(5000) and json.loads(ctl.recv())["result"]["pid"] == alice.pid
    assert pid_alive(alice.pid)
