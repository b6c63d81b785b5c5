"""Rooms in `p2pctl chat`: the groups of issue 16, as a chat shows them.

How this works
--------------
A room is a group (p2pd/groups.py) written ``#name``; the ``#`` is decoration, dropped
before a request (`room_name`, which also checks the name as the daemon and the CLI do, so
a bad one is refused with its one line before anything is sent).

The chat talks to everyone (plain text is a broadcast) until a room is current: `/join
#room` and `/switch #room` make it so, and plain text is then shouted to that room's other
members; the prompt shows the room (``alice #rust-dev>``).  `/switch` alone, or `/switch *`,
goes back to everyone, and so does leaving the current room.  A shout that fails (the node
left the room elsewhere: ``not_member``) is not sent to everyone instead: the room stays
current until you switch.

`Rooms` holds the current room and what Tab completes: the names of the groups in the last
``groups`` reply, fetched again after /join, /leave, /rooms and /switch and when a group
event or an invitation comes (`refresh`, from either of the chat's threads: it replaces the
tuple whole).  It runs the room commands (`handle`) through the chat's own request method,
so a failed request is printed as any other chat failure.  This module knows nothing of the
terminal: the chat (p2pctl/chat.py) owns the prompt, the threads and the event loop.
"""

from __future__ import annotations

from p2pd import escape
from p2pd.groups import check_group_name, normalize_group

from . import render
from .client import Client, ClientError
from .commands import CLI_COMMANDS

ROOM_COMMANDS = ("/join", "/leave", "/rooms", "/switch", "/invite")
ROOM_ARG = ("/join", "/leave", "/switch", "/invite", "/history", "/inbox")  # whose first argument may be a #room
EVERYONE = "*"  # /switch * : back to everyone

HELP = """  /join #room [--private] join a room (a group) and talk in it; --private: a room others join
                         by invitation (and how you accept one)
  /leave [#room]         leave a room (without one: the current room)
  /rooms                 the rooms this node knows of, with their members
  /switch #room          talk in a room you are in: plain text is shouted there
  /switch                talk to everyone again: plain text is broadcast (/switch * too)
  /invite #room <peer>   invite a peer to a private room you are in"""


class RoomError(ValueError):
    """A room command typed wrong; its text says what to type instead."""


def room_name(word: str) -> str:
    """``#room`` or ``room`` as typed -> the group's name; `RoomError` with the one line that
    says what is wrong and offers a name to use instead."""
    group = normalize_group(word)
    why = check_group_name(group)
    if why is not None:
        raise RoomError(why)
    return group


def usable(name) -> bool:
    """A name from the daemon that Tab may complete and a prompt may show (one word)."""
    return isinstance(name, str) and check_group_name(name) is None


class Rooms:
    """The chat's rooms: the current one, the names to complete, the room commands."""

    def __init__(self, chat):
        self.chat = chat  # .call(cmd, client=None, **args), .out(text)
        self.current: str | None = None  # the room plain text goes to; None: everyone
        self.names: tuple[str, ...] = ()  # every group the last `groups` named, for Tab
        self.joined: frozenset[str] = frozenset()  # those this node is in
        self.invited: frozenset[str] = frozenset()  # private groups this node was invited to, not joined

    # ------------------------------------------------------------------ state
    def refresh(self, client: Client | None = None, reply: dict | None = None) -> dict | None:
        """Take the group names from ``reply``, else ask the daemon; None if it cannot answer
        (gone, or older than groups): the names held stay."""
        if reply is None:
            try:
                reply = self.chat.call("groups", client)
            except ClientError:
                return None
        groups = [g for g in (reply or {}).get("groups") or [] if isinstance(g, dict) and usable(g.get("group"))]
        self.names = tuple(sorted({g["group"] for g in groups}))
        self.joined = frozenset(g["group"] for g in groups if g.get("joined"))
        self.invited = frozenset(g["group"] for g in groups if g.get("invited") and g.get("private") and not g.get("joined"))
        return reply

    def prompt(self) -> str:
        """What the prompt adds after the node's name: `` #room`` while a room is current."""
        return "" if self.current is None else " " + render.room(self.current)

    def where(self) -> str:
        """Where plain text goes now, for the notices."""
        return "everyone" if self.current is None else render.room(self.current)

    # ------------------------------------------------------------------ typed
    def handle(self, cmd: str, rest: str) -> bool:
        """Run a room command; False if ``cmd`` is not one.  `RoomError` for a line typed wrong
        (the chat prints it), `ClientError` for a request that failed."""
        if cmd == "/join":
            self.join(rest)
        elif cmd == "/leave":
            self.leave(rest)
        elif cmd == "/rooms":
            self.rooms()
        elif cmd == "/switch":
            self.switch(rest)
        elif cmd == "/invite":
            self.invite(rest)
        else:
            return False
        return True

    def join(self, rest: str) -> None:
        """/join #room [--private]; an invitation held to a private #room makes a bare /join
        #room a mistake (the open #room is another room): refused with the line to type,
        unless --open says that the open one is meant."""
        words = rest.split()
        private, open_ = "--private" in words, "--open" in words
        names = [w for w in words if w not in ("--private", "--open")]
        if len(names) != 1 or any(w.startswith("--") for w in names) or (private and open_):
            raise RoomError("usage: /join #room [--private]   (/rooms lists the rooms)")
        group = room_name(names[0])
        if not private and not open_ and group in self.invited and group not in self.joined:
            raise RoomError(f"you were invited to the private #{group}: /join #{group} --private joins it "
                            f"(/join #{group} --open: the open #{group}, another room)")
        res = self.chat.call("join", group=group, private=private)
        self.chat.out(CLI_COMMANDS["join"].text(res))  # as `p2pctl join` says it
        self.current = res.get("group", group) if usable(res.get("group", group)) else group
        self.chat.out(f"talking in {render.room(self.current)}: plain text is shouted to its members (/switch alone: everyone again)")
        self.refresh()

    def leave(self, rest: str) -> None:
        words = rest.split()
        if len(words) > 1:
            raise RoomError("usage: /leave [#room]   (without one: the current room)")
        if words:
            group = room_name(words[0])
        elif self.current is not None:
            group = self.current
        else:
            raise RoomError("you are talking to everyone, not in a room: /leave #room names the room to leave")
        res = self.chat.call("leave", group=group)
        self.chat.out(CLI_COMMANDS["leave"].text({"group": group, **res}))  # as `p2pctl leave` says it
        if self.current == group:
            self.current = None
            self.chat.out("talking to everyone again: plain text is broadcast")
        self.refresh()

    def rooms(self) -> None:
        reply = self.chat.call("groups")
        self.refresh(reply=reply)
        if not (reply or {}).get("groups"):
            self.chat.out("no rooms yet; join one with /join #room (e.g. /join #rust-dev)")
        else:
            self.chat.out(render.groups_table(reply))
        self.chat.out(f"plain text goes to {self.where()}")

    def switch(self, rest: str) -> None:
        words = rest.split()
        if len(words) > 1:
            raise RoomError("usage: /switch #room, or /switch alone to talk to everyone")
        if not words or words[0] == EVERYONE:
            self.current = None
            self.chat.out("talking to everyone: plain text is broadcast to every linked peer")
            return
        group = room_name(words[0])
        self.refresh(reply=self.chat.call("groups"))
        if group not in self.joined:
            raise RoomError(f"you are not in #{group}: /join #{group} first")  # the chat prints it escaped
        self.current = group
        self.chat.out(f"talking in {render.room(group)}: plain text is shouted to its members (/switch alone: everyone again)")

    def invite(self, rest: str) -> None:
        words = rest.split(None, 1)
        if len(words) != 2:
            raise RoomError("usage: /invite #room <peer>   (a private room you are in; /peers lists the peers)")
        group = room_name(words[0])
        res = self.chat.call("invite", group=group, peer=words[1].strip())
        peer = render.name(res.get("peer", words[1]))
        queued = " (queued: sent when it is reachable)" if res.get("status") == "queued" else ""
        self.chat.out(f"invited {render.cyan(peer)} to {render.room(res.get('group', group))}{queued}")

    # ------------------------------------------------------------------ plain text
    def say(self, text: str) -> None:
        """Shout plain text to the current room, and show it."""
        group = self.current
        res = self.chat.call("shout", group=group, text=text)
        tag = render.room_tag({"group": group})
        self.chat.out(f"{render.clock()} {tag}{render.magenta('you')}: {escape.text(text, render.CONT)}")
        if not res.get("members"):
            self.chat.out(render.yellow(f"nobody else is in {render.room(group)} yet: nobody got it")
                          + " (/rooms shows who is in which room)")
