"""The client side of each p2pctl command that sends one control request: the request it makes
from the command line, and how it prints the reply; one object per command.

How this works
--------------
cli.py declares each command with click (its arguments, options and help) and hands the values
click parsed to the command's object here, looked up in `CLI_COMMANDS` by the command's name as
typed (``"send"``, ``"trust add"``).  The object

* ``call(client, **values)``: checks what click cannot (a port, a time, the message text,
  read from stdin for ``-``), raising click's usage errors (exit 2), and sends the request
  through the client library (`p2pctl.client.Client`: its ``send`` and ``connect`` are the
  library's one way to build those requests), returning the reply's result;
* ``text(result, **values)``: what people read (through render.py, which escapes what a peer
  chose and owns the colour);
* ``json(result, **values)``: what ``--json`` prints; the result as the daemon sent it, unless
  the command says otherwise.

So the whole client side of a command is one class, next to the daemon side of the same
control command in p2pd/commands/ (``cmd``).  A failure is a `ClientError`, whose exit code
comes from `p2pd.errors.exit_code_for`; cli.py's ``command`` wrapper prints it.  Commands that
send no single request (``watch`` and ``chat`` stream events, ``stop`` signals the daemon,
``logs`` reads a file) are cli.py's alone; `DAEMON_ONLY` names the control commands p2pctl has no
command object for, and why.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime

import click

from . import render
from .client import Client


def text_arg(words: tuple[str, ...]) -> str:
    """A message given as words on the command line, or ``-``: read from stdin."""
    if words == ("-",):
        text = sys.stdin.read().rstrip("\n")
    else:
        text = " ".join(words)
    if not text:
        raise click.UsageError("the message is empty; give TEXT, or - to read it from stdin")
    return text


def parse_since(value: str | None) -> float | None:
    """``30m``, ``2h``, ``7d``, ``90s``, an ISO 8601 time, or UNIX seconds -> UNIX seconds."""
    if value is None:
        return None
    v = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if v[-1:] in units and v[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(v[:-1]) * units[v[-1]]
    if v.replace(".", "", 1).isdigit():
        return float(v)
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a time: use 30m, 2h, 7d, an ISO time like 2026-11-25T10:00, or UNIX seconds", param_hint="--since") from None
    return (dt if dt.tzinfo else dt.astimezone()).timestamp()


def port_number(text: str) -> int:
    """A port given on the command line: a number from 1 to 65535, or a usage error that says so."""
    if not text.strip().isdigit():
        raise click.UsageError(f"the port must be a number from 1 to 65535, not {text!r}: e.g. p2pctl connect 10.0.0.2 5000")
    port = int(text)
    if not 1 <= port <= 65535:
        raise click.UsageError(f"port {port} is out of range: the port must be a number from 1 to 65535")
    return port


def group_arg(name: str) -> str:
    """A group name given on the command line: one leading ``#`` dropped (``'#rust-dev'`` is
    ``rust-dev``), then checked as the daemon checks it; a bad name is a usage error (exit 2)
    whose one line says what to type instead."""
    from p2pd.groups import check_group_name, normalize_group

    group = normalize_group(name)
    why = check_group_name(group)
    if why is not None:
        raise click.UsageError(why)
    return group


class CliCommand:
    """One p2pctl command that sends one control request.  Subclasses set ``name`` (as typed
    after ``p2pctl``) and ``cmd`` (the control command, p2pd/commands/), and override ``call``
    unless the request takes no arguments, and ``text``."""

    name: str = ""
    cmd: str = ""

    def call(self, client: Client, **values):
        """Send the request made from the command line's ``values``; its result."""
        return client.call(self.cmd)

    def text(self, result, **values) -> str:
        """The result for people."""
        raise NotImplementedError(self.name)

    def json(self, result, **values):
        """What ``--json`` prints."""
        return result


# ---------------------------------------------------------------------------- the node


class StatusCmd(CliCommand):
    name = cmd = "status"

    def text(self, res, **values) -> str:
        return f"p2pd is running: {render.name(res['name'])} ({res['id'][:12]}), pid {res['pid']}, up {render.duration(res['uptime_s'])}"

    def json(self, res, **values):
        return {"running": True, **res}


class InfoCmd(CliCommand):
    name = cmd = "info"

    def text(self, res, **values) -> str:
        return render.info_text(res)


# ---------------------------------------------------------------------------- peers


class PeersCmd(CliCommand):
    name = cmd = "peers"

    def text(self, res, **values) -> str:
        return render.peers_table(res)


class ConnectCmd(CliCommand):
    name = cmd = "connect"

    def call(self, client: Client, target: str, port: str | None, since: str | None):
        """``target``: HOST, HOST:PORT or p2p://KEY@HOST:PORT; ``port``: the PORT of HOST PORT."""
        key = None
        if port is not None:
            port = port_number(port)
        if target.startswith("p2p://"):
            # Loaded only for a p2p:// string: no other p2pctl run needs the key files module.
            from p2pd.keys import KeyError_, parse_connect_string

            if port is not None:
                raise click.UsageError("a p2p:// connect string already holds the port; give it alone")
            try:
                key, target, port = parse_connect_string(target)
            except KeyError_ as e:
                raise click.UsageError(str(e)) from None
        if port is None:
            host, sep, p = target.rpartition(":")
            if not sep or not p or (not p.isdigit() and ":" in host and not host.endswith("]")):  # (the latter: a bare IPv6 address)
                raise click.UsageError(f"{target!r} has no port: use HOST PORT or HOST:PORT, e.g. p2pctl connect 10.0.0.2 5000")
            port = port_number(p)
            target = host
        return client.connect(target, port, wait_s=client.timeout_s, since=parse_since(since), key=key)

    def text(self, res, **values) -> str:
        peer = res["peer"]
        linked = "already linked to" if res.get("already") else "linked to"
        return f"{linked} {render.cyan(render.name(peer['name']))} ({peer['id'][:12]}) at {render.name(peer['address'])}"


class DisconnectCmd(CliCommand):
    name = cmd = "disconnect"

    def call(self, client: Client, peer: str):
        return client.call(self.cmd, peer=peer)

    def text(self, res, **values) -> str:
        p = res["peer"]
        return f"disconnected from {render.name(p['name'])} ({p['id'][:12]})"


class PingCmd(CliCommand):
    name = cmd = "ping"

    def call(self, client: Client, peer: str):
        # The daemon waits the whole --timeout for the PONG; the client a second more for its answer.
        return client.call(self.cmd, timeout_s=client.timeout_s + 1, peer=peer, wait_s=client.timeout_s)

    def text(self, res, **values) -> str:
        return f"pong from {render.name(res['peer'])} ({res['id'][:12]}): {res['rtt_ms']:.3f} ms"


# ---------------------------------------------------------------------------- messages


class SendCmd(CliCommand):
    """`p2pctl send PEER TEXT... [--wait [S]]` (docs/PROTOCOL.md 9.2, "send in detail"): without
    --wait, the daemon waits a moment (at most 2 s) for the ACK, so a peer that answers quickly
    shows ``delivered``; with it, the daemon waits S seconds and a peer that does not acknowledge
    in time is the error ``timeout`` (exit 4)."""

    name = cmd = "send"

    def call(self, client: Client, peer: str, text: tuple[str, ...], wait_opt: str | None):
        wait_s = None
        if wait_opt is not None:
            try:
                wait_s = float(wait_opt)
            except ValueError:  # `send --wait bob hi`: the option took the peer's name as its value
                peer, text, wait_s = wait_opt, (peer, *text), 60.0
            if not 0 < wait_s <= 30 * 86400:
                raise click.BadParameter("must be a positive number of seconds", param_hint="--wait")
        if not text:
            raise click.UsageError("missing TEXT: p2pctl send PEER TEXT... (or - to read stdin)")
        body = text_arg(text)
        require = wait_s is not None
        return client.send(peer, body, wait_s=wait_s if require else min(client.timeout_s, 2.0), require=require)

    def text(self, res, **values) -> str:
        to = f"{render.name(res['peer'])} ({res['peer_id'][:12]}), message {res['id'][:12]}"
        if res["status"] == "delivered":
            return f"delivered to {to}"
        return f"queued for {to}: delivered when it is reachable (see: p2pctl outbox)"


class BroadcastCmd(CliCommand):
    name = cmd = "broadcast"

    def call(self, client: Client, text: tuple[str, ...]):
        return client.call(self.cmd, text=text_arg(text))

    def text(self, res, **values) -> str:
        """Whom it reached, and plainly when nobody is there to hear."""
        mid = res["id"][:12]
        linked = res.get("linked")
        if render.nobody_linked(res):
            return f"nobody is linked: not delivered to anyone (broadcast {mid} is kept: a peer linked before fetches it when it is back)"
        line = f"broadcast {mid} to {res['subscribers']} subscribed peer(s)"
        if linked is not None and linked > res["subscribers"]:
            line += f" ({linked - res['subscribers']} more linked, not subscribed yet: they fetch it by its number)"
        return line


def _group_filter(group: str | None) -> dict:
    """The ``group`` argument of inbox, history and watch: only when one is given."""
    return {} if group is None else {"group": group_arg(group)}


class InboxCmd(CliCommand):
    name = cmd = "inbox"

    def call(self, client: Client, limit: int, unread: bool, group: str | None = None):
        return client.call(self.cmd, limit=limit, unread=unread, **_group_filter(group))

    def text(self, res, unread: bool = False, group: str | None = None, **values) -> str:
        if not res:
            where = f" in {render.room(group_arg(group))}" if group else ""
            return f"no unread messages{where}" if unread else f"no messages{where}" if group else "inbox is empty"
        return "\n".join(render.message_line(m) for m in res)


class HistoryCmd(CliCommand):
    name = cmd = "history"

    def call(self, client: Client, peer: str | None, since: str | None, limit: int, group: str | None = None):
        return client.call(self.cmd, peer=peer, since=parse_since(since), limit=limit, **_group_filter(group))

    def text(self, res, group: str | None = None, **values) -> str:
        if not res:
            return f"no messages in {render.room(group_arg(group))}" if group else "no messages"
        return "\n".join(render.history_line(m) for m in res)


class OutboxCmd(CliCommand):
    """Asks for one row more than ``--limit``, to say when there are more than it shows."""

    name = cmd = "outbox"

    def call(self, client: Client, show_all: bool, limit: int):
        return client.call(self.cmd, all=show_all, limit=limit + 1)

    def text(self, res, limit: int, **values) -> str:
        text = render.outbox_table(res[:limit])
        if len(res) > limit:
            text += "\n... more not shown; raise --limit (p2pctl info shows how many are pending)"
        return text

    def json(self, res, limit: int, **values):
        return res[:limit]


# ---------------------------------------------------------------------------- groups (issue 16)


class JoinCmd(CliCommand):
    """`p2pctl join GROUP [--private] [--since WHEN]`: the daemon answers with the members."""

    name = cmd = "join"

    def call(self, client: Client, group: str, private: bool = False, since: str | None = None):
        args = {"group": group_arg(group), "private": bool(private)}
        when = parse_since(since)
        if when is not None:
            args["since"] = when
        return client.call(self.cmd, **args)

    def text(self, res, **values) -> str:
        where = render.room(res["group"]) + (" (private)" if res.get("private") else "")
        members = render.by_name(res.get("members") or [])
        names = ", ".join(render.cyan(render.name(m.get("name") or str(m.get("id", "?"))[:12])) for m in members)
        head = f"already in {where}" if res.get("already") else f"joined {where}"
        by = res.get("invited_by")
        if isinstance(by, dict):
            head += f" (invited by {render.cyan(render.name(by.get('name') or str(by.get('id', '?'))[:12]))})"
        return f"{head}: {len(members)} member(s): {names}" if members else head


class LeaveCmd(CliCommand):
    name = cmd = "leave"

    def call(self, client: Client, group: str):
        return client.call(self.cmd, group=group_arg(group))

    def text(self, res, **values) -> str:
        if res.get("private"):
            return f"left {render.room(res['group'])} (private): its key is forgotten, so back in only by a new invitation"
        return f"left {render.room(res['group'])}"


class GroupsCmd(CliCommand):
    name = cmd = "groups"

    def text(self, res, **values) -> str:
        return render.groups_table(res)


class ShoutCmd(CliCommand):
    """`p2pctl shout GROUP TEXT...`: to the group's other members; ``-`` reads stdin, as send."""

    name = cmd = "shout"

    def call(self, client: Client, group: str, text: tuple[str, ...]):
        group = group_arg(group)
        if not text:
            raise click.UsageError("missing TEXT: p2pctl shout GROUP TEXT... (or - to read stdin)")
        return client.call(self.cmd, group=group, text=text_arg(text))

    def text(self, res, **values) -> str:
        where = render.room(res["group"])
        ids = res.get("ids") or [res.get("id")]
        mid = render.name(str(ids[0])[:12]) + (f" and {len(ids) - 1} more" if len(ids) > 1 else "")
        n = res.get("members", 0)
        if not n:
            return f"shout {mid} to {where}: no other member is in it yet, so nobody got it (a member who joins with --since fetches it)"
        return f"shout {mid} to {where}: sent to {n} other member(s)"


class InviteCmd(CliCommand):
    name = cmd = "invite"

    def call(self, client: Client, group: str, peer: str):
        return client.call(self.cmd, group=group_arg(group), peer=peer)

    def text(self, res, **values) -> str:
        peer = render.name(res["peer"])
        who = f"{render.cyan(peer)} ({render.name(str(res.get('peer_id', ''))[:12])})"
        queued = f" (queued: sent when {peer} is reachable)" if res.get("status") == "queued" else ""
        return f"invited {who} to {render.room(res['group'])}{queued}; {peer} joins it with: {render.join_hint(res['group'], private=True)}"


# ---------------------------------------------------------------------------- keys


class TrustListCmd(CliCommand):
    name, cmd = "trust list", "trust"

    def call(self, client: Client):
        return client.call(self.cmd, action="list")

    def text(self, res, **values) -> str:
        return render.trust_text(res)


class TrustAddCmd(CliCommand):
    name, cmd = "trust add", "trust"

    def call(self, client: Client, key: str, comment: str):
        return client.call(self.cmd, action="add", key=key, comment=comment)

    def text(self, res, **values) -> str:
        return render.trust_text(res)


class TrustRemoveCmd(CliCommand):
    name, cmd = "trust remove", "trust"

    def call(self, client: Client, match: str):
        return client.call(self.cmd, action="remove", match=match)

    def text(self, res, **values) -> str:
        return render.trust_text(res)


class KnownListCmd(CliCommand):
    name, cmd = "known list", "known"

    def call(self, client: Client):
        return client.call(self.cmd, action="list")

    def text(self, res, **values) -> str:
        return "\n".join(f"{r['address']}  {r['key']}  ({r['id'][:12]})" for r in res) or "no pinned keys"


class KnownForgetCmd(CliCommand):
    name, cmd = "known forget", "known"

    def call(self, client: Client, match: str):
        return client.call(self.cmd, action="forget", match=match)

    def text(self, res, match: str, **values) -> str:
        return f"forgot {match}; the next connect pins the key it finds"


CLI_COMMANDS: dict[str, CliCommand] = {c.name: c for c in (
    StatusCmd(), InfoCmd(), PeersCmd(), ConnectCmd(), DisconnectCmd(), PingCmd(), SendCmd(), BroadcastCmd(), InboxCmd(), HistoryCmd(),
    OutboxCmd(), JoinCmd(), LeaveCmd(), GroupsCmd(), ShoutCmd(), InviteCmd(),
    TrustListCmd(), TrustAddCmd(), TrustRemoveCmd(), KnownListCmd(), KnownForgetCmd(),
)}

# Control commands p2pctl sends other than through a command object above, and where.
DAEMON_ONLY = {
    "watch": "streamed: `p2pctl watch` and the chat read events as they come (p2pctl/events.py)",
    "read": "the chat moves the read mark over what it has shown (p2pctl/chat.py); no command of its own",
    "stop": "`p2pctl stop` signals the daemon and waits for its exit (p2pd/daemon.py stop_and_wait); the request serves other clients",
}
