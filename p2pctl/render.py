"""Everything p2pctl prints for people: tables, events, colour.

This is the only module that knows about colorama.  Colour is on only when
stdout is a terminal and neither ``--no-color`` nor ``NO_COLOR`` says
otherwise, so piped output is plain text.

Text that came from the network (names, message texts, addresses,
timestamps) is shown through p2pd.escape: control, format (bidi) and
separator characters appear as ``\\x1b``-style escapes, and a message text's
continuation lines are indented under it (`CONT`), so that what a peer sends
cannot clear the screen, retitle the terminal or pass for another line.  The
escaping comes first and the colour after: only our own codes reach the
terminal.  ``--json`` output is not made here and keeps the exact text.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime

from p2pd import escape

CONT = "    | "  # starts each continuation line of a multi-line message text

_enabled = False
_codes: dict[str, str] = {}  # colour name -> escape code, filled when colour is on


def setup(no_color: bool = False) -> None:
    global _enabled
    _enabled = not no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()
    if _enabled:  # imported only when needed: most scripted runs never print colour
        import colorama

        colorama.just_fix_windows_console()
        _codes.update({name: getattr(colorama.Fore, name) for name in ("GREEN", "RED", "YELLOW", "CYAN", "MAGENTA", "BLUE")})
        _codes.update(DIM=colorama.Style.DIM, BRIGHT=colorama.Style.BRIGHT, RESET=colorama.Style.RESET_ALL)


def _c(color: str, text: str) -> str:
    return f"{_codes[color]}{text}{_codes['RESET']}" if _enabled else text


def green(t: str) -> str:
    return _c("GREEN", t)


def red(t: str) -> str:
    return _c("RED", t)


def yellow(t: str) -> str:
    return _c("YELLOW", t)


def cyan(t: str) -> str:
    return _c("CYAN", t)


def magenta(t: str) -> str:
    return _c("MAGENTA", t)


def blue(t: str) -> str:
    return _c("BLUE", t)


def dim(t: str) -> str:
    return _c("DIM", t)


def bold(t: str) -> str:
    return _c("BRIGHT", t)


STATE_COLOR = {"alive": green, "linking": yellow, "suspect": yellow, "lost": red, "left": red}


def local_time(iso: str | None) -> str:
    if not iso:
        return "--:--:--"
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except (ValueError, TypeError, AttributeError):
        return escape.line(iso)


def clock() -> str:
    """Now, as the chat stamps the lines typed in it."""
    return dim(datetime.now().strftime("%H:%M:%S"))


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 1:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def duration(seconds: float | None) -> str:
    """A span of time such as an uptime: ``45s``, ``12m 05s``, ``3h 07m``, ``2d 04h`` (rounded down).
    `p2pd status`, `p2pctl status` and `p2pctl info` all show uptime this way."""
    if seconds is None:
        return "?"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def table(headers: list[str], rows: list[list[str]], colorize=None) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(bold(h.ljust(widths[i])) for i, h in enumerate(headers)).rstrip()]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        if colorize:
            cells = colorize(row, cells)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def peers_table(peers: list[dict]) -> str:
    if not peers:
        return "no peers yet; link one with: p2pctl connect HOST PORT"
    rows = [
        [escape.line(p["name"]), escape.line(p["id"][:12]), escape.line(p.get("address") or "-"), escape.line(str(p["state"])),
         _link(p), ago(p.get("last_seen_s")) if p.get("last_seen_s") is not None or p.get("linked", True) else "-",
         "-" if p.get("rtt_ms") is None else f"{p['rtt_ms']:.2f} ms"]
        for p in peers
    ]

    def colorize(row, cells):
        cells[3] = STATE_COLOR.get(row[3], str)(cells[3])
        return cells

    return table(["NAME", "ID", "ADDRESS", "STATE", "LINK", "LAST SEEN", "RTT"], rows, colorize)


def _link(p: dict) -> str:
    """How the node is reached: over our own link (a simple peer's: ``leaf``, outside the
    overlay), or through others (how many hops away)."""
    if p.get("linked"):
        return "leaf" if p.get("leaf") else "direct"
    hops = p.get("hops")
    return "-" if hops is None else f"{hops} hops" if hops != 1 else "1 hop"


def info_text(i: dict) -> str:
    dropped = i.get("dropped", {})
    drop_text = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "none"
    lines = [
        f"{bold(escape.line(i['name']))} ({i['id']})",
        f"  peer link   {i.get('router')}   advertised as {_advertised(i)}",
        f"  broadcast   {i.get('pub')}",
        f"  control     {i.get('control')}",
        f"  log         {i.get('log_file')}",
        f"  pid         {i.get('pid')}, up {duration(i.get('uptime_s'))}, version {i.get('version')}",
        f"  security    {_security(i)}",
        f"  peers       {i['peers_alive']} alive, {i['peers_lost']} lost, {i['peers']} known",
        f"  messages    {i['messages_in']} in, {i['messages_out']} out ({i.get('outbox_pending', 0)} waiting in the outbox); broadcasts {i['broadcasts_in']} in, {i['broadcasts_out']} out",
        f"  bad input   {i['dropped_total']} dropped ({drop_text})",
    ]
    lan = i.get("discover")
    if lan:
        lines.insert(-3, f"  discovery   LAN beacons on UDP {lan['port']} to {lan['to']}: {lan['beacons_sent']} sent, {lan['beacons_heard']} heard")
    return "\n".join(lines)


def _advertised(i: dict) -> str:
    """The address peers reach this node at.  Announced (``--advertise``, or a specific ``--host``),
    or, bound to all interfaces without --advertise, not announced: each peer then uses the
    address it sees, which the daemon guessed at start (``seen_as``: this host's address on
    its default route, as in the connect string)."""
    addr = i.get("address", {}).get("addr")
    if addr:
        return escape.line(addr)
    seen = i.get("seen_as")
    if seen:
        return f"{escape.line(seen)} (as peers see it; not announced: set --advertise to fix one)"
    return "the address each peer sees (not announced: set --advertise to fix one)"


def _security(i: dict) -> str:
    if i.get("security") == "insecure":
        return red("INSECURE: plaintext, unauthenticated (--insecure)")
    mode = "allowlist (authorized_keys)" if i.get("allowlist") else "any key may link"
    return f"CURVE, {mode}; connect string:\n              {i.get('connect')}"


def trust_text(res: dict) -> str:
    if not res["keys"]:
        return "no authorized keys: any node with a valid key may link (add one to switch to allowlist mode)"
    lines = [f"allowlist mode: {len(res['keys'])} authorized key(s)"]
    lines += [f"  {k['key']}  {k['id'][:12]}  {escape.line(k['comment'])}".rstrip() for k in res["keys"]]
    return "\n".join(lines)


def sender(m: dict) -> str:
    """Who sent a message: the name bound to its key at JOIN, with a short id when another node
    has that name too (the daemon's ``sender_label``), escaped."""
    return escape.line(m.get("sender_label") or m.get("sender_name") or "?")


def message_text(m: dict) -> str:
    """A message's text, escaped; continuation lines start with `CONT`."""
    return escape.text(m.get("text", ""), CONT)


def room(group) -> str:
    """A group as the chat writes it, ``#name``, escaped (a peer chose the name) and coloured."""
    return blue("#" + escape.line(str(group)))


def room_tag(m: dict) -> str:
    """``[#room] `` before a shout (a message with a ``group``); nothing before other messages."""
    group = m.get("group")
    return f"{dim('[')}{room(group)}{dim(']')} " if group else ""


def message_line(m: dict, self_id: str | None = None) -> str:
    t = dim(local_time(m.get("timestamp")))
    who = cyan(sender(m))
    if m.get("type") == "MESSAGE" and not m.get("group"):
        return f"{t} {who} {magenta('->')} {magenta('you')}: {message_text(m)}"
    return f"{t} {room_tag(m)}{who}: {message_text(m)}"


def event_line(ev: dict, self_id: str | None = None, in_chat: bool = False) -> str:
    """One event for people; ``in_chat``: hints name the chat's /commands, not p2pctl's."""
    kind = ev.get("event")
    t = dim(local_time(ev.get("time")))
    if kind in ("message", "broadcast", "shout"):
        return message_line(ev.get("message") or {}, self_id)
    if kind == "group":
        return group_event_line(ev)
    if kind == "invited":
        return invited_line(ev, in_chat)
    peer = ev.get("peer", {})
    who = escape.line(f"{peer.get('name', '?')} ({str(peer.get('id', ''))[:12]})")
    if kind == "joined":
        return f"{t} {green('*')} {green(who)} joined from {escape.line(peer.get('address'))}"
    if kind == "left":
        return f"{t} {yellow('*')} {yellow(who)} left"
    if kind == "lost":
        return f"{t} {red('*')} {red(who)} lost (no heartbeat)"
    if kind == "member":  # a node of the network we hold no link to (the overlay)
        state, hops = ev.get("state"), peer.get("hops")
        where = f" ({hops} hops away)" if isinstance(hops, int) else ""
        if state == "alive":
            return f"{t} {green('*')} {green(who)} is in the network{where}"
        if state == "left":
            return f"{t} {yellow('*')} {yellow(who)} left the network"
        if state == "lost":
            return f"{t} {red('*')} {red(who)} is gone from the network (no one hears it)"
        return f"{t} {dim('*')} {dim(who)} not heard lately ({escape.line(str(state))})"
    if kind == "expired":
        m = ev.get("message", {})
        return f"{t} {red('!')} message {escape.line(str(m.get('id'))[:12])} to {escape.line(str(m.get('peer_id'))[:12])} expired undelivered"
    return f"{t} {escape.line(f'{kind}: {ev}')}"


def _who(peer) -> str:
    """``name (id12)`` of a peer object from an event, escaped."""
    peer = peer if isinstance(peer, dict) else {}
    return escape.line(f"{peer.get('name', '?')} ({str(peer.get('id', ''))[:12]})")


def group_event_line(ev: dict) -> str:
    """Another node joined or left a group: ``12:00:01 * bob (01acf8ce4c88) joined #rust-dev``."""
    t = dim(local_time(ev.get("time")))
    where = room(ev.get("group")) + (dim(" (private)") if ev.get("private") else "")
    who = _who(ev.get("peer"))
    if ev.get("kind") == "leave":
        return f"{t} {yellow('*')} {yellow(who)} left {where}"
    if ev.get("kind") == "join":
        return f"{t} {green('*')} {green(who)} joined {where}"
    return f"{t} {dim('*')} {who} {escape.line(str(ev.get('kind')))} {where}"


def join_hint(group, in_chat: bool = False, private: bool = False) -> str:
    """How to join ``group``, as the command line or the chat writes it (escaped).  A private
    group is joined with --private: without it, the same name is an open group, another room."""
    cmd = f"/join #{escape.line(str(group))}" if in_chat else f"p2pctl join {escape.line(str(group))}"
    return cmd + (" --private" if private else "")


def invited_line(ev: dict, in_chat: bool = False) -> str:
    """This node was invited to a private group, and how to accept."""
    t = dim(local_time(ev.get("time")))
    return (f"{t} {magenta('*')} {cyan(_who(ev.get('by')))} invited you to {room(ev.get('group'))} "
            f"{dim('(private)')}: {join_hint(ev.get('group'), in_chat, private=True)} to join it")


def history_line(m: dict) -> str:
    t = dim(local_time(m.get("timestamp")))
    if m.get("direction") == "out" and m.get("group"):
        return f"{t} {room_tag(m)}{magenta('you')}: {message_text(m)}"
    if m.get("direction") == "out":
        to = "everyone" if m.get("type") == "BROADCAST" else escape.line(m.get("peer_label") or m.get("peer_name") or (m.get("peer_id") or "?")[:12])
        return f"{t} {magenta('you')} -> {to}: {message_text(m)}"
    return message_line(m)


def _member(m: dict) -> str:
    """A member's name in the groups table; a member not alive says its state."""
    label = escape.line(str(m.get("name") or str(m.get("id", "?"))[:12]))
    state = m.get("state")
    return label if state in (None, "alive") else f"{label} ({escape.line(str(state))})"


def by_name(members: list) -> list:
    """Members in the order people look for them, by name (the daemon lists them by id)."""
    return sorted((m for m in members if isinstance(m, dict)), key=lambda m: (str(m.get("name") or "").casefold(), str(m.get("id"))))


def groups_table(res: dict) -> str:
    """`p2pctl groups` and the chat's /rooms: one row per group this node knows of."""
    groups = res.get("groups", []) if isinstance(res, dict) else res
    if not groups:
        return "no groups yet; join one with: p2pctl join GROUP (e.g. p2pctl join rust-dev)"
    rows = []
    for g in groups:
        name = "#" + escape.line(str(g.get("group")))
        joined = "yes" if g.get("joined") else "invited" if g.get("invited") else "no"
        by = g.get("invited_by")
        if joined == "invited" and isinstance(by, dict) and by.get("name"):
            joined += f" by {escape.line(str(by['name']))}"
        members = by_name(g.get("members") or [])
        rows.append([name + (" (private)" if g.get("private") else ""), joined, str(g.get("count", len(members))),
                     ", ".join(_member(m) for m in members) or "-"])

    def colorize(row, cells):
        cells[0] = blue(cells[0])
        cells[1] = (green if row[1] == "yes" else magenta if row[1].startswith("invited") else dim)(cells[1])
        return cells

    return table(["GROUP", "JOINED", "MEMBERS", "NAMES"], rows, colorize)


def outbox_table(rows: list[dict]) -> str:
    if not rows:
        return "outbox is empty: every message was delivered"
    out = []
    for r in rows:
        text = escape.line(r["text"][:40]) + ("..." if len(r["text"]) > 40 else "")  # one line: a newline shows as \n
        out.append([r["id"][:12], escape.line(r.get("peer_label") or r.get("peer") or r["peer_id"][:12]), str(r["seq"]), r["status"],
                    str(r["attempts"]), local_time(_iso(r["created"])), text])

    def colorize(row, cells):
        cells[3] = {"pending": yellow, "expired": red, "delivered": green}.get(row[3], str)(cells[3])
        return cells

    return table(["ID", "PEER", "SEQ", "STATUS", "RESENT", "QUEUED", "TEXT"], out, colorize)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat()


def error(text: str) -> str:
    """One line: an error may quote a peer's name or a daemon's text."""
    return red(f"p2pctl: {escape.line(text)}")


def name(text) -> str:
    """A peer's name (or anything else a peer chose), escaped for one line."""
    return escape.line(text)


def nobody_linked(broadcast_reply: dict) -> bool:
    """Did a broadcast reach nobody because no peer is linked?  (`p2pctl broadcast` and the chat say so.)"""
    linked = broadcast_reply.get("linked")  # from p2pd before December 2026: only "subscribers"
    return linked == 0 or (linked is None and not broadcast_reply.get("subscribers"))
