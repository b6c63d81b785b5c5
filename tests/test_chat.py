"""`p2pctl chat` and colour handling, driven like a person would: lines in, screen out."""

from __future__ import annotations

import os
import pty
import queue
import subprocess
import threading

from conftest import P2PCTL, wait_for


class ChatSession:
    def __init__(self, node):
        self.proc = subprocess.Popen(
            [*P2PCTL, "--home", str(node.home), "chat"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def type(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, text: str, timeout: float = 10) -> str:
        def found():
            while not self.lines.empty():
                self.seen.append(self.lines.get())
            return next((ln for ln in self.seen if text in ln), None)

        return wait_for(found, timeout, what=f"chat output containing {text!r}; seen: {self.seen}")

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(10)


def test_chat_commands_and_live_events(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    watchers = alice.call("info")["watchers"]
    chat = ChatSession(alice)
    try:
        chat.expect("chatting as alice")
        wait_for(lambda: alice.call("info")["watchers"] > watchers, what="chat to watch events")
        chat.type("/help")
        chat.expect("/msg <peer> <text>")
        chat.type(f"/connect 127.0.0.1 {bob.port}")
        chat.expect("linked to bob")
        chat.expect("bob")  # join notice
        chat.type("/peers")
        chat.expect("alive")
        chat.type("/info")
        chat.expect("bad input")
        chat.type("/msg bob psst")
        chat.expect("-> bob: psst")
        wait_for(lambda: [m["text"] for m in bob.call("inbox")] == ["psst"], what="bob to get the /msg")
        wait_for(lambda: all(p["subscribed"] for p in alice.call("peers")), what="bob subscribed to alice")
        chat.type("hello everyone")
        wait_for(lambda: [m["text"] for m in bob.call("inbox")] == ["psst", "hello everyone"], what="bob to get the broadcast")
        bob.ctl("send", "alice", "hi from bob")
        chat.expect("bob -> you: hi from bob")
        chat.type("/msg nobody x")
        chat.expect("no peer named 'nobody'")
        chat.type("/bogus")
        chat.expect("unknown command /bogus")
        bob.stop()
        chat.expect("left")
        chat.type("/quit")
        assert chat.proc.wait(10) == 0
    finally:
        chat.close()
    # the daemon keeps running after the chat ends
    assert alice.ctl("status").returncode == 0


def test_chat_ends_on_eof(make_node):
    alice = make_node("alice")
    alice.start()
    proc = subprocess.run([*P2PCTL, "--home", str(alice.home), "chat"], input="", capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0
    assert "chatting as alice" in proc.stdout


def run_in_pty(args: list[str], env: dict) -> str:
    """Run a command with stdout on a pseudo-terminal; return what it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(20)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_colour_only_on_a_terminal(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    bob.ctl("connect", alice.addr)
    wait_for(lambda: alice.alive_names() == {"bob"}, what="link")
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    args = [*P2PCTL, "--home", str(alice.home), "peers"]
    assert "\x1b[" in run_in_pty(args, env)
    assert "\x1b[" not in run_in_pty(args, {**env, "NO_COLOR": "1"})
    assert "\x1b[" not in run_in_pty([*args[:-1], "--no-color", "peers"], env)
    assert "\x1b[" not in alice.ctl("peers").stdout  # piped: plain


def test_connect_arguments_in_the_chat():
    import pytest

    from p2pctl.chat import chat_terms, parse_connect

    key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    assert parse_connect("10.0.0.2 5000") == ("10.0.0.2", 5000, None)
    assert parse_connect("10.0.0.2:5000") == ("10.0.0.2", 5000, None)
    assert parse_connect("[::1]:5000") == ("::1", 5000, None)
    assert parse_connect(f"p2p://{key}@127.0.0.1:6000") == ("127.0.0.1", 6000, key)
    for bad, says in (("127.0.0.1 abc", "the port must be a number"), ("127.0.0.1", "has no port"), ("a b c", "usage: /connect"),
                      ("h 70000", "out of range"), ("p2p://short@h:1", "not a connect string")):
        with pytest.raises(ValueError, match=says):
            parse_connect(bad)
    assert chat_terms("no peer named 'x'; `p2pctl peers` lists the peers") == "no peer named 'x'; /peers lists the peers"
    assert chat_terms("link one with: p2pctl connect HOST PORT") == "link one with: /connect HOST PORT"
