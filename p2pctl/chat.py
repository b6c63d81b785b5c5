"""`p2pctl chat`: the terminal chat, on top of a running daemon.

How this works
--------------
On a terminal (stdin and stdout both), the line editor is prompt_toolkit's
(the one IPython uses): a prompt that stays at the bottom while incoming lines
print above it (`p2pctl.above`: a line from any thread goes above the
prompt and the half-typed line is drawn again under it, the terminal left raw
so a key typed meanwhile is never echoed out of place), line editing, the
history of typed lines in the node's home (``chat_history``, kept across
sessions, Up/Down to recall), Tab completion of
/commands, peer names and #rooms (`completions`), and Ctrl-C or Ctrl-D to leave.  Keys are keys:
an arrow never reaches a peer as text.

Elsewhere (a pipe, a script, the tests) it reads plain lines from stdin and
prints plain lines: no prompt, no colour, no terminal codes.

Two threads on a terminal: the main one runs the prompt and the commands
typed (its own control connection); the other follows the daemon's events
(`p2pctl.events.EventStream`, which notices the daemon stopping and coming
back, and resumes where it was) and marks what it showed as read (a second
connection: a ZeroMQ socket belongs to one thread).  Without a terminal one
thread alternates between the two.

What a peer wrote is shown through `render` (escaped: it cannot move the
cursor or forge a line), and a typed line loses its control characters
before it is sent (a pasted escape sequence is not text).

Rooms (groups, issue 16: /join, /leave, /rooms, /switch, /invite, and where plain text
goes) are p2pctl/rooms.py's.
"""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
from pathlib import Path

import click

from p2pd import escape

from . import render
from .above import AbovePrompt
from .client import Client, ClientError, DaemonNotRunning, DaemonTimeout
from .events import MESSAGE_EVENTS, EventStream
from .rooms import HELP as ROOMS_HELP
from .rooms import ROOM_ARG, ROOM_COMMANDS, RoomError, Rooms, room_name

HELP = """commands:
  /connect HOST PORT     link to a peer (HOST:PORT and p2p://KEY@HOST:PORT work too)
  /peers                 list peers
  /info                  this node
  /msg <peer> <text>     direct message (peer: name or id prefix)
  /history [<peer>|#room] the last messages, sent and received (with one peer, or in one room)
  /inbox [#room]         the last messages received (in one room)
  /ping <peer>           round-trip time
""" + ROOMS_HELP + """
  /help                  this help
  /quit                  leave the chat (the daemon keeps running); Ctrl-D and Ctrl-C too
  anything else          broadcast to every linked peer, or, after /switch #room, shouted
                         to that room (//text sends "/text")"""

COMMANDS = ("/connect", "/peers", "/info", "/msg", "/history", "/inbox", "/ping", *ROOM_COMMANDS, "/help", "/quit")
PEER_ARG = ("/msg", "/history", "/ping")  # commands whose first argument is a peer
HISTORY_FILE = "chat_history"
BACKLOG_MAX = 50  # unread messages shown on opening; more are counted, /inbox lists them
LAST_FEW = 5  # messages shown on opening when nothing is unread
LIST_MAX = 20  # /history and /inbox

_CLI_HINT = re.compile(r"`?p2pctl (peers|info|inbox|history|connect)( HOST PORT)?`?")
_CLI_JOIN = re.compile(r"`?p2pctl join '?#?([^\s'`]+?)'?`?(?=[\s,;:)]|$)")
_CLI_GROUPS = re.compile(r"`?p2pctl groups`?")
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # all C0/C1 controls but TAB


def chat_terms(text: str) -> str:
    """A daemon's or the client's hint, in chat terms: `p2pctl peers` -> /peers,
    `p2pctl join rust-dev` -> /join #rust-dev, `p2pctl groups` -> /rooms."""
    text = _CLI_JOIN.sub(lambda m: "/join #" + m.group(1), text)
    text = _CLI_GROUPS.sub("/rooms", text)
    return _CLI_HINT.sub(lambda m: "/" + m.group(1) + (m.group(2) or ""), text)


clock = render.clock


def divider(text: str) -> str:
    return render.yellow(f"──── {text} ────")


def _cursor(row: dict) -> int | None:
    c = row.get("cursor")
    return c if isinstance(c, int) and not isinstance(c, bool) else None


def parse_connect(rest: str) -> tuple[str, int, str | None]:
    """``HOST PORT``, ``HOST:PORT`` or ``p2p://KEY@HOST:PORT`` -> (host, port, key); ValueError says what is wrong."""
    usage = "usage: /connect HOST PORT (or HOST:PORT, or the p2p:// connect string that /info shows on the other node)"
    if rest.startswith("p2p://"):
        from p2pd.keys import KeyError_, parse_connect_string

        try:
            key, host, port = parse_connect_string(rest)
        except KeyError_ as e:
            raise ValueError(str(e)) from None
        return host, port, key
    parts = rest.split()
    if len(parts) == 2:
        host, port = parts
    elif len(parts) == 1:
        host, sep, port = parts[0].rpartition(":")
        if not sep or not host:
            raise ValueError(f"{parts[0]!r} has no port; {usage}")
    else:
        raise ValueError(usage)
    if not port.isdigit():
        raise ValueError(f"the port must be a number, not {port!r}: /connect HOST PORT")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return host.strip("[]"), int(port), None


class Chat:
    """The chat's state and what it prints; ``out`` writes one block of lines."""

    def __init__(self, commands: Client, out, timeout_s: float):
        self.commands = commands
        self.out = out
        self.timeout_s = timeout_s
        self.me: dict = {}
        self.peer_names: tuple[str, ...] = ()  # for Tab; replaced whole, read by the prompt's thread
        self.shown_upto: int | None = None  # the newest message cursor shown (and marked read)
        self.daemon_down = False
        self.rooms = Rooms(self)

    # ------------------------------------------------------------------ daemon calls
    def call(self, cmd: str, client: Client | None = None, **args):
        return (client or self.commands).call(cmd, timeout_s=self.timeout_s + 1, **args)

    def refresh_peers(self, client: Client | None = None, peers: list | None = None) -> None:
        try:
            peers = peers if peers is not None else self.call("peers", client)
        except ClientError:
            return
        self.peer_names = tuple(sorted({p["name"] for p in peers if p.get("name") and not any(c.isspace() for c in p["name"])}))

    def mark_read(self, cursor: int | None, client: Client | None = None) -> None:
        """Shown is read: move the daemon's read mark (forward only) to ``cursor``."""
        if cursor is None or (self.shown_upto is not None and cursor <= self.shown_upto):
            return
        self.shown_upto = cursor
        try:
            self.call("read", client, upto=cursor)
        except ClientError:
            pass  # the daemon went, or is older than the read mark: nothing to keep

    # ------------------------------------------------------------------ opening
    def open(self, stream_cursor: int | None) -> None:
        """The greeting and the backlog: what arrived since the last read, else the last few messages."""
        me = self.me = self.call("info")
        self.out(f"chatting as {render.bold(render.name(me['name']))} ({me['id'][:12]}); "
                 f"{me['peers_alive']} peer(s) linked. /help for commands.")
        self.refresh_peers()
        self.rooms.refresh()
        try:
            unread = self.call("inbox", unread=True)
        except ClientError:
            unread = []
        unread = [r for r in unread if _cursor(r) is not None and (stream_cursor is None or _cursor(r) <= stream_cursor)]
        if unread:
            more = len(unread) - BACKLOG_MAX
            self.out(divider(f"{len(unread)} unread since you last read" + (f"; the last {BACKLOG_MAX} (/inbox lists more)" if more > 0 else "")))
            self.out("\n".join(render.message_line(m) for m in unread[-BACKLOG_MAX:]))
            self.out(divider("now"))
            self.mark_read(max(_cursor(r) for r in unread))
            return
        try:
            last = self.call("history", limit=LAST_FEW)
        except ClientError:
            last = []
        if last:
            self.out("\n".join(render.history_line(m) for m in last))
            self.out(divider("nothing new since you last read"))

    # ------------------------------------------------------------------ events
    def show_events(self, events: list[dict], client: Client | None = None) -> None:
        """Print events (the events thread); mark the messages shown as read."""
        newest = None
        peers_changed = rooms_changed = False
        for ev in events:
            kind = ev.get("event")
            if kind == "daemon_down":
                self.daemon_down = True
                self.out(f"{clock()} {render.red('! p2pd stopped')}: what you type now is not sent; waiting for it to come back ...")
                continue
            if kind == "daemon_up":
                self.daemon_down = False
                self.out(f"{clock()} {render.green('* p2pd is back')}: chatting again; what arrived meanwhile follows")
                peers_changed = rooms_changed = True
                continue
            self.out(render.event_line(ev, in_chat=True))
            if kind in MESSAGE_EVENTS:
                c = _cursor(ev.get("message") or {})
                if c is not None:
                    newest = c if newest is None else max(newest, c)
            elif kind in ("joined", "left", "lost", "member"):
                peers_changed = True
            elif kind in ("group", "invited"):
                rooms_changed = True
        if newest is not None:
            self.mark_read(newest, client)
        if peers_changed:
            self.refresh_peers(client)
        if rooms_changed:
            self.rooms.refresh(client)

    # ------------------------------------------------------------------ typed lines
    def handle_line(self, line: str) -> bool:
        """Run one typed line; False to leave.  A failure is printed, and what failed was not done."""
        line = _CONTROL.sub("", line).strip()
        if not line:
            return True
        is_send = not line.startswith("/") or line.startswith("//") or line.split(" ", 1)[0] == "/msg"
        try:
            return self._handle(line)
        except (DaemonNotRunning, DaemonTimeout) as e:
            # Not carried out, now or later (see p2pctl.client): say so, the line is not kept either.
            why = str(e)
            if type(e) is DaemonNotRunning:
                why = f"p2pd is not running; start it with: p2pd start --home {self.commands.home.path}"
            self.out(render.red(f"! {'not sent' if is_send else 'not done'} ({escape.line(chat_terms(why))}): ") + escape.line(line))
        except ClientError as e:
            self.out(render.red(f"! {escape.line(chat_terms(str(e)))}"))
        except RoomError as e:
            self.out(render.red(f"! {escape.line(str(e))}"))
        return True

    def _handle(self, line: str) -> bool:
        if line.startswith("//") or not line.startswith("/"):
            text = line[1:] if line.startswith("//") else line
            if self.rooms.current is not None:
                self.rooms.say(text)
            else:
                self.broadcast(text)
            return True
        cmd, _, rest = line.partition(" ")
        rest = rest.strip()
        if cmd in ("/quit", "/exit", "/q"):
            return False
        if cmd == "/help":
            self.out(HELP)
        elif cmd == "/peers":
            peers = self.call("peers")
            self.refresh_peers(peers=peers)
            self.out(render.peers_table(peers) if peers else "no peers yet; link one with /connect HOST PORT")
        elif cmd == "/info":
            self.out(render.info_text(self.call("info")))
        elif cmd == "/connect":
            self.connect(rest)
        elif cmd == "/msg":
            peer, _, text = rest.partition(" ")
            if not peer or not text.strip():
                self.out(render.red("! usage: /msg <peer> <text>   (/peers lists the peers)"))
                return True
            res = self.commands.call("send", timeout_s=self.timeout_s + 1, peer=peer, text=text.strip(), wait_s=1.0)
            note = "" if res["status"] == "delivered" else render.yellow(f" (queued: delivered when {render.name(res['peer'])} is reachable)")
            self.out(f"{clock()} {render.magenta('you')} -> {render.cyan(render.name(res['peer']))}: {escape.text(text.strip(), render.CONT)}{note}")
        elif cmd == "/history":
            which = {"group": room_name(rest)} if rest.startswith("#") else {"peer": rest} if rest else {}
            rows = self.call("history", limit=LIST_MAX, **which)
            self.out("\n".join(render.history_line(m) for m in rows) if rows else "no messages yet")
        elif cmd == "/inbox":
            rows = self.call("inbox", limit=LIST_MAX, **({"group": room_name(rest)} if rest else {}))
            self.out("\n".join(render.message_line(m) for m in rows) if rows else "inbox is empty")
            cursors = [c for c in map(_cursor, rows) if c is not None]
            if cursors:
                self.mark_read(max(cursors))
        elif cmd == "/ping":
            if not rest:
                self.out(render.red("! usage: /ping <peer>"))
                return True
            res = self.commands.call("ping", timeout_s=self.timeout_s + 1, peer=rest, wait_s=self.timeout_s)
            self.out(f"pong from {render.name(res['peer'])}: {res['rtt_ms']:.3f} ms")
        elif self.rooms.handle(cmd, rest):
            pass
        else:
            self.out(render.red(f"! unknown command {escape.line(cmd)}; /help lists them"))
        return True

    def broadcast(self, text: str) -> None:
        res = self.call("broadcast", text=text)
        self.out(f"{clock()} {render.magenta('you')}: {escape.text(text, render.CONT)}")
        if render.nobody_linked(res):
            self.out(render.yellow("nobody is linked: not delivered to anyone") + " (/connect HOST PORT links a peer)")

    def connect(self, rest: str) -> None:
        try:
            host, port, key = parse_connect(rest)
        except ValueError as e:
            self.out(render.red(f"! {escape.line(chat_terms(str(e)))}"))
            return
        res = self.commands.connect(host, port, wait_s=self.timeout_s, key=key)
        p = res["peer"]
        self.out(f"{'already linked to' if res.get('already') else 'linked to'} {render.cyan(render.name(p['name']))} "
                 f"(id {render.name(p['id'][:12])}) at {render.name(p['address'])}")
        self.refresh_peers()


# ---------------------------------------------------------------------- plain lines (no terminal)

_EOF = object()


def _reader(q: queue.Queue) -> None:
    """Read stdin lines with os.read on the raw fd.

    Not input()/sys.stdin: a daemon thread blocked inside the buffered stdin
    holds its lock, and the interpreter then aborts at exit (SIGABRT).
    """
    fd = sys.stdin.fileno()
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            if pending.strip():
                q.put(pending.decode("utf-8", "replace"))
            q.put(_EOF)
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            q.put(line.rstrip(b"\r").decode("utf-8", "replace"))


def _plain(chat: Chat, stream: EventStream) -> int:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(lines,), daemon=True).start()
    while True:
        chat.show_events(stream.poll(0.1))
        while True:
            try:
                line = lines.get_nowait()
            except queue.Empty:
                break
            if line is _EOF or not chat.handle_line(line):
                return 0


# ---------------------------------------------------------------------- on a terminal


def _history_file(home: Path):
    from prompt_toolkit.history import FileHistory

    path = home / HISTORY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # what you typed is yours alone
        os.close(fd)
    except OSError:
        from prompt_toolkit.history import InMemoryHistory

        return InMemoryHistory()
    return FileHistory(str(path))


def completions(chat: Chat, text: str) -> list[tuple[str, int, str]]:
    """What Tab offers for ``text`` (the line before the cursor): (text to insert, where it
    starts, relative to the cursor, what the menu shows).  A /command; a peer after a command
    that takes one (and after /invite's room); a #room after /join, /leave, /switch, /invite,
    /history and /inbox, and for any word that starts with ``#``."""
    def rooms(word: str) -> list[tuple[str, int, str]]:
        bare = word[1:] if word.startswith("#") else word
        return [(f"#{n} ", -len(word), "#" + escape.line(n)) for n in chat.rooms.names if n.startswith(bare)]

    def peers(word: str) -> list[tuple[str, int, str]]:
        return [(n + " ", -len(word), escape.line(n)) for n in chat.peer_names if n.startswith(word)]

    cmd, space, rest = text.partition(" ")
    if text.startswith("/") and not text.startswith("//"):
        if not space:
            return [(c + " ", -len(cmd), c) for c in COMMANDS if c.startswith(cmd)]
        if " " not in rest:
            if cmd in ROOM_ARG and (rest.startswith("#") or cmd not in PEER_ARG):
                return rooms(rest)
            if cmd in PEER_ARG:
                return peers(rest)
        elif cmd == "/invite" and rest.count(" ") == 1:
            return peers(rest.split(" ", 1)[1])
    word = text.rsplit(" ", 1)[-1]
    return rooms(word) if word.startswith("#") else []


def _completer(chat: Chat):
    from prompt_toolkit.completion import Completer, Completion

    class ChatCompleter(Completer):
        def get_completions(self, document, complete_event):
            for insert, start, display in completions(chat, document.text_before_cursor):
                yield Completion(insert, start_position=start, display=display)

    return ChatCompleter()


def _events_loop(chat: Chat, stream: EventStream, side: Client, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            chat.show_events(stream.poll(0.2), side)
    finally:
        stream.close()
        side.close()


def _terminal(chat: Chat, stream: EventStream, make_client, home: Path, screen: AbovePrompt) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.formatted_text import ANSI

    session = PromptSession(history=_history_file(home), completer=_completer(chat), complete_while_typing=False,
                            erase_when_done=True, enable_suspend=True)
    def prompt():  # read at each redraw: it shows the current room
        return ANSI(render.bold(render.name(chat.me.get("name", "chat"))) + chat.rooms.prompt() + render.bold("> "))
    stop = threading.Event()
    side = make_client()
    screen.attach(session.app)
    events = threading.Thread(target=_events_loop, args=(chat, stream, side, stop), name="p2pctl-chat-events")
    events.start()
    try:
        while True:
            try:
                line = session.prompt(prompt)
            except (KeyboardInterrupt, EOFError):
                break
            if line.strip().startswith("/") and not line.strip().startswith("//"):
                room = "" if chat.rooms.current is None else f" #{escape.line(chat.rooms.current)}"
                chat.out(render.dim(f"{render.name(chat.me.get('name', ''))}{room}> {escape.line(line.strip())}"))
            try:
                if not chat.handle_line(line):
                    break
            except KeyboardInterrupt:  # Ctrl-C while a command waits (a /connect): leave
                break
    finally:
        stop.set()
        events.join(5)
    click.echo(render.dim("left the chat; the daemon keeps running"))
    return 0


def run_chat(make_client, timeout_s: float) -> int:
    commands = make_client()
    stream = EventStream(make_client)
    try:
        reply = stream.open()  # first: every message from here on comes as an event (the backlog ends at its cursor)
        tty = sys.stdin.isatty() and sys.stdout.isatty()
        screen = AbovePrompt()
        chat = Chat(commands, screen.write if tty else click.echo, timeout_s)  # on a terminal: above the prompt, from any thread
        chat.open(reply.get("cursor"))
        if tty:
            return _terminal(chat, stream, make_client, commands.home.path, screen)
        try:
            return _plain(chat, stream)
        except KeyboardInterrupt:
            return 0
    finally:
        stream.close()
        commands.close()
