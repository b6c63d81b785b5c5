"""`p2pctl chat` and `p2pctl watch` driven as a person would: keys typed into a pseudo-terminal,
the screen read back through a terminal emulator (pyte), real daemons behind.

Every wait is "read the terminal until the screen shows X, with a deadline"; never a sleep.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import stat
import subprocess
import threading
import time

import pyte

from conftest import P2PCTL, wait_for

UP = "\x1b[A"
CTRL_C = "\x03"
CTRL_D = "\x04"
TIME = r"\d\d:\d\d:\d\d"


class _Screen(pyte.Screen):
    """A screen that answers the terminal's reports (cursor position) like a real terminal does."""

    def __init__(self, cols, rows, master):
        super().__init__(cols, rows)
        self.master = master

    def write_process_input(self, data: str) -> None:
        os.write(self.master, data.encode())


class Terminal:
    """A command on a pseudo-terminal of ``rows`` x ``cols``, and what a person would see."""

    def __init__(self, args: list[str], rows: int = 50, cols: int = 220):
        import fcntl
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        env.update(TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.screen = _Screen(cols, rows, self.master)
        self.stream = pyte.ByteStream(self.screen)
        self.closed = False

    def _pump(self, timeout: float) -> None:
        if self.closed:
            time.sleep(timeout)
            return
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the program closed the terminal
                data = b""
            if not data:
                self.closed = True
                return
            self.stream.feed(data)

    def lines(self) -> list[str]:
        return [ln.rstrip() for ln in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.lines()).rstrip()

    def expect(self, pattern: str, timeout: float = 30) -> re.Match:
        """Read the terminal until a screen line matches the regular expression ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for ln in self.lines():
                m = rx.search(ln)
                if m:
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for a screen line matching {pattern!r}; screen:\n{self.text()}")
            self._pump(min(left, 0.1))

    def settle(self, quiet: float = 0.3, timeout: float = 5) -> None:
        """Read until the program has written nothing for ``quiet`` seconds (its redraw is done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            ready, _, _ = select.select([self.master], [], [], quiet)
            if not ready:
                return
            self._pump(0)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait_exit(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._pump(0.1)
        while not self.closed and time.monotonic() < deadline:  # what it printed last
            self._pump(0.1)
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


class Lines:
    """A command with stdout on a pipe, its lines read as they come."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        self.q: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.q.put(ln.rstrip("\n")) for ln in self.proc.stdout], daemon=True).start()

    def expect(self, pred, timeout: float = 15, what: str = "a line") -> str:
        def found():
            while not self.q.empty():
                self.seen.append(self.q.get())
            return next((ln for ln in self.seen if pred(ln)), None)

        return wait_for(found, timeout, what=f"{what}; seen: {self.seen}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def chat(node) -> Terminal:
    term = Terminal([*P2PCTL, "--home", str(node.home), "chat"])
    term.expect(rf"chatting as {node.name} ")
    term.expect(rf"^{node.name}>$")  # lines are read without trailing blanks
    return term


def linked(a, b) -> None:
    """b links to a, both ways subscribed (so that broadcasts reach)."""
    b.ctl("connect", a.addr)
    wait_for(lambda: a.alive_names() >= {b.name} and b.alive_names() >= {a.name}, what="link")
    wait_for(lambda: all(p["subscribed"] for n in (a, b) for p in n.call("peers") if p["state"] == "alive"), what="subscriptions")


def texts(node, **args) -> list[str]:
    return [m["text"] for m in node.call("inbox", **args)]


def test_typing_while_a_message_arrives_keeps_the_line(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    term = chat(alice)
    try:
        term.type("I am typing a long sen")
        term.expect(r"^alice> I am typing a long sen$")
        bob.ctl("broadcast", "interrupting!")
        bob.ctl("send", "alice", "\x1b[2J\x1b]0;pwned\x07 sneaky")
        term.expect(rf"^{TIME} bob: interrupting!$")
        term.expect(rf"^{TIME} bob -> you: \\x1b\[2J\\x1b\]0;pwned\\x07 sneaky$")  # escaped, not run
        term.settle()
        lines = term.lines()
        # the incoming lines went above the prompt; the half-typed line is whole, on the last line, cursor at its end
        prompt_row = max(i for i, ln in enumerate(lines) if ln)
        assert lines[prompt_row] == "alice> I am typing a long sen", term.text()
        assert (term.screen.cursor.y, term.screen.cursor.x) == (prompt_row, len("alice> I am typing a long sen"))
        assert lines.index(next(ln for ln in lines if ln.endswith("bob: interrupting!"))) < prompt_row
        assert not any("interrupting" in ln and "typing" in ln for ln in lines)
        term.type("tence\r")
        term.expect(rf"^{TIME} you: I am typing a long sentence$")  # own lines get a timestamp
        wait_for(lambda: "I am typing a long sentence" in texts(bob), what="bob to get the broadcast")
        assert texts(bob) == ["I am typing a long sentence"]
    finally:
        term.close()


def test_keys_typed_while_a_flood_of_lines_prints_are_never_echoed_out_of_place(make_node):
    """Lines from peers print above the prompt while the person types; each key goes to the
    prompt, none is echoed by the terminal itself beside the prompt or among the lines."""
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    term = chat(alice)
    sender = subprocess.Popen([*P2PCTL, "--home", str(bob.home), "chat"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        count = 120
        sender.stdin.write("".join(f"line {i}\n" for i in range(count)))
        sender.stdin.flush()
        term.expect(rf"^{TIME} bob: line 0$")
        typed = "abcdefghijklmnopqrstuvwxyz" * 2
        for key in typed:  # one key at a time, while the lines arrive
            term.type(key)
            term._pump(0.01)
        term.expect(rf"^{TIME} bob: line {count - 1}$")
        term.settle()
        lines = [ln for ln in term.lines() if ln]
        assert lines[-1] == f"alice> {typed}", term.text()
        stray = [ln for ln in lines[1:-1] if not re.fullmatch(rf"{TIME} bob: line \d+", ln)]
        assert stray == [], term.text()
    finally:
        sender.stdin.close()
        sender.wait(10)
        term.close()


def test_history_recall_completion_and_keys_never_sent_as_text(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    term = chat(alice)
    try:
        term.type("first line\r")
        term.expect(rf"^{TIME} you: first line$")
        term.type("/peers\r")
        term.expect(r"^bob +\S+ +127\.0\.0\.1:\d+ +alive")
        term.type(UP + UP)  # back past /peers to the first line
        term.expect(r"^alice> first line$")
        term.type("\r")
        wait_for(lambda: texts(bob) == ["first line", "first line"], what="the recalled line sent again")
        # Tab completes commands and peer names
        term.type("/ms\t")
        term.expect(r"^alice> /msg$")
        term.type("b\t")
        term.expect(r"^alice> /msg bob$")
        term.type("psst\r")
        term.expect(rf"^{TIME} you -> bob: psst")
        wait_for(lambda: texts(bob)[-1:] == ["psst"], what="bob to get the /msg")
        term.type(CTRL_D)
        assert term.wait_exit() == 0
    finally:
        term.close()
    # the history is in the node's home, private, and recalled by the next chat
    hist = alice.home / "chat_history"
    assert stat.S_IMODE(hist.stat().st_mode) == 0o600
    term = chat(alice)
    try:
        term.type(UP)
        term.expect(r"^alice> /msg bob psst$")
        term.type(CTRL_C)
        assert term.wait_exit() == 0
    finally:
        term.close()
    assert texts(bob) == ["first line", "first line", "psst"]  # no arrow key ever went out as text
    assert not any("\x1b" in m["text"] for m in bob.call("inbox"))


def test_broadcast_with_nobody_linked_says_so(make_node):
    alice = make_node("alice")
    alice.start()
    term = chat(alice)
    try:
        term.type("hello? anyone?\r")
        term.expect(rf"^{TIME} you: hello\? anyone\?$")
        term.expect(r"^nobody is linked: not delivered to anyone")
        term.type("/connect 127.0.0.1 abc\r")
        term.expect(r"the port must be a number")
        term.type("/msg nobody hi\r")
        term.expect(r"^! no peer named 'nobody'.*; /peers lists the peers$")  # chat terms, not p2pctl's
    finally:
        term.close()


def test_ctrl_c_and_ctrl_d_leave_cleanly(make_node):
    alice = make_node("alice")
    alice.start()
    for key, half_typed in ((CTRL_C, "half a thought"), (CTRL_D, "")):
        term = chat(alice)
        try:
            term.type(half_typed)
            term.expect(rf"^alice> ?{half_typed}$")
            term.type(key)
            assert term.wait_exit() == 0
            lines = term.lines()
            last = max(i for i, ln in enumerate(lines) if ln)
            assert lines[last] == "left the chat; the daemon keeps running", term.text()
            assert term.screen.cursor.x == 0 and term.screen.cursor.y == last + 1  # the shell's prompt goes on a fresh line
            assert "^C" not in term.text()
        finally:
            term.close()
    assert alice.ctl("status").returncode == 0
    assert alice.call("history") == []  # the half-typed line was not sent


def test_backlog_on_open_and_reading_marks_read(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    bob.ctl("send", "alice", "are you alive?")
    bob.ctl("send", "alice", "hello??")
    wait_for(lambda: len(texts(alice, unread=True)) == 2, what="two unread messages")
    unread_cli = alice.ctl("inbox", "--unread").stdout
    assert "are you alive?" in unread_cli and "hello??" in unread_cli
    term = chat(alice)
    try:
        term.expect(r"── 2 unread since you last read ──")
        term.expect(rf"^{TIME} bob -> you: are you alive\?$")
        term.expect(rf"^{TIME} bob -> you: hello\?\?$")
        wait_for(lambda: texts(alice, unread=True) == [], what="the chat to mark them read")
        bob.ctl("send", "alice", "live one")
        term.expect(rf"^{TIME} bob -> you: live one$")
        wait_for(lambda: texts(alice, unread=True) == [], what="a message shown live to be marked read")
        term.type(CTRL_D)
        assert term.wait_exit() == 0
    finally:
        term.close()
    assert alice.call("status")["unread"] == 0
    term = chat(alice)  # nothing new: the last few messages, and a divider saying so
    try:
        term.expect(r"── nothing new since you last read ──")
        text = term.text()
        assert text.index("are you alive?") < text.index("hello??") < text.index("live one") < text.index("nothing new")
    finally:
        term.close()


def test_a_frozen_daemon_is_down_for_watch_and_chat_until_it_runs_again(make_node):
    """A SIGSTOPped daemon keeps its sockets open but answers nothing: the control connection's
    heartbeats (its libzmq is stopped too) say so within seconds, and it is back on SIGCONT."""
    alice = make_node("alice")
    alice.start()
    watchers = alice.call("info")["watchers"]
    term = chat(alice)
    watch = Lines([*P2PCTL, "--home", str(alice.home), "--json", "watch"])
    try:
        wait_for(lambda: alice.call("info")["watchers"] >= watchers + 2, what="chat and watch to watch")
        os.kill(alice.pid, signal.SIGSTOP)
        try:
            watch.expect(lambda ln: json.loads(ln)["event"] == "daemon_down", timeout=15, what="daemon_down")
            term.expect(rf"^{TIME} ! p2pd stopped: what you type now is not sent", timeout=15)
        finally:
            os.kill(alice.pid, signal.SIGCONT)
        watch.expect(lambda ln: json.loads(ln)["event"] == "daemon_up", timeout=15, what="daemon_up")
        term.expect(rf"^{TIME} \* p2pd is back", timeout=15)
        term.type("still here\r")
        wait_for(lambda: any(m["text"] == "still here" for m in alice.call("history")), what="the line sent")
    finally:
        term.close()
        watch.close()


def test_daemon_stop_and_start_under_an_open_chat_and_watch(make_node):
    alice, bob = make_node("alice"), make_node("bob")
    alice.start()
    bob.start()
    linked(alice, bob)
    watchers = alice.call("info")["watchers"]
    term = chat(alice)
    watch = Lines([*P2PCTL, "--home", str(alice.home), "--json", "watch"])
    try:
        wait_for(lambda: alice.call("info")["watchers"] >= watchers + 2, what="chat and watch to watch")
        port = alice.port
        alice.stop()
        term.expect(rf"^{TIME} ! p2pd stopped: what you type now is not sent", timeout=5)  # noticed within seconds
        watch.expect(lambda ln: json.loads(ln)["event"] == "daemon_down", timeout=5, what="daemon_down")
        term.type("anyone there?\r")
        term.expect(r"^! not sent \(p2pd is not running; start it with: p2pd start --home .*\): anyone there\?$")
        # Bob's message waits in his outbox while alice is down.  The watch process is frozen over the
        # restart, so that the message is stored before it watches again: only `since` can bring it.
        bob.ctl("send", "alice", "sent while you were down")
        os.kill(watch.proc.pid, signal.SIGSTOP)
        try:
            alice.start(port=port)
            term.expect(rf"^{TIME} \* p2pd is back")
            term.expect(rf"^{TIME} bob -> you: sent while you were down$")
            wait_for(lambda: "sent while you were down" in texts(alice), what="bob's queued message delivered")
        finally:
            os.kill(watch.proc.pid, signal.SIGCONT)
        watch.expect(lambda ln: json.loads(ln)["event"] == "daemon_up", what="daemon_up")
        line = watch.expect(lambda ln: json.loads(ln).get("message", {}).get("text") == "sent while you were down", what="the replayed message")
        assert json.loads(line).get("replay") is True
        # and live events go on, shown once each
        bob.ctl("send", "alice", "after the restart")
        term.expect(rf"^{TIME} bob -> you: after the restart$")
        watch.expect(lambda ln: json.loads(ln).get("message", {}).get("text") == "after the restart", what="a live message")
        assert sum("sent while you were down" in ln for ln in watch.seen) == 1
        assert sum(ln.endswith("sent while you were down") for ln in term.lines()) == 1
    finally:
        term.close()
        watch.close()
    # the line typed while the daemon was down was never sent, then or later
    assert not any(m["text"] == "anyone there?" for m in alice.call("history"))
    assert "anyone there?" not in texts(bob)
