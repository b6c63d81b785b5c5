"""The daemon's event stream for `p2pctl watch` and `p2pctl chat`, across the daemon's restarts.

How this works
--------------
`EventStream` registers a ``watch`` on the control socket and hands out the
events that come.  When the daemon stops, it hands out one
``{"event": "daemon_down"}``, then tries to watch again every ``retry_s``;
when that works it hands out ``{"event": "daemon_up"}`` and resumes.

Noticing the stop: the watch connection's socket monitor.  libzmq reports
DISCONNECTED on it as soon as the daemon's end of the connection closes,
which happens when the daemon exits for whatever reason (``p2pd stop``, a
crash, SIGKILL: the kernel closes its sockets), over ipc and over loopback
TCP alike.  So a stop is seen within one poll (``poll``'s timeout, 0.2 s in
watch and chat) at no cost: no request to the daemon, no timer of its own.
The other ways were worse: a periodic ``status`` call costs the daemon a
request per client per period and notices only at the next period; the
home's pid file or lock says nothing while the pid is alive yet the socket
is gone (stopping), and needs a file read per poll.  What the monitor does
not see is a daemon that is alive but does not answer (SIGSTOP, a stalled
disk): that daemon has not stopped, and the events it sends later still come.

Nothing missed: every ``message`` and ``broadcast`` event carries
``message.cursor``, the store's row number of that message.  The stream
remembers the last cursor it saw and re-watches with ``since`` = that cursor:
the daemon then sends every stored incoming message after it (``replay``:
true) before the live events.  Shouts (``shout`` events, issue 16) carry cursors too.
With ``group``, the stream is one group's (`p2pctl watch --group`): the daemon sends only
its shouts and its members' joins and leaves.  Messages are handed out once: an event whose
cursor is not after the last one seen is dropped.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone

from .client import Client, ClientError


MESSAGE_EVENTS = ("message", "broadcast", "shout")  # the events that carry a stored message (and its cursor)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventStream:
    def __init__(self, make_client, retry_s: float = 0.5, cursor: int | None = None, group: str | None = None):
        self._make_client = make_client
        self.group = group  # only this group's events (a normalized, valid name), or all
        self.retry_s = retry_s
        self.cursor = cursor  # the newest message cursor handed out (or given to start from)
        self.reply: dict = {}  # the last watch reply
        self._client: Client | None = None
        self._next_try = 0.0

    @property
    def down(self) -> bool:
        return self._client is None

    def open(self) -> dict:
        """Watch; raises `ClientError` (the daemon is not running ...).  Returns the watch reply;
        its ``cursor`` (the newest message now) is where the stream starts when none was given."""
        client = self._make_client()
        try:
            args = {} if self.cursor is None else {"since": self.cursor}
            if self.group is not None:
                args["group"] = self.group
            reply = client.call("watch", **args)
        except BaseException:
            client.close()
            raise
        self._client = client
        self.reply = reply or {}
        if self.cursor is None and isinstance(self.reply.get("cursor"), int):
            self.cursor = self.reply["cursor"]
        return self.reply

    def poll(self, timeout_s: float) -> list[dict]:
        """The events within ``timeout_s`` (maybe none), with ``daemon_down``/``daemon_up`` ones."""
        if self._client is None:
            wait = self._next_try - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, timeout_s))
                return []
            try:
                self.open()
            except ClientError:
                self._next_try = time.monotonic() + self.retry_s
                return []
            return [{"event": "daemon_up", "time": now_iso(), "name": self.reply.get("name"), "id": self.reply.get("id")}]
        events, lost = self._client.watch_events(timeout_s)
        out = [ev for ev in events if self._fresh(ev)]
        if lost:
            self._client.close()
            self._client = None
            self._next_try = time.monotonic() + min(self.retry_s, 0.2)
            out.append({"event": "daemon_down", "time": now_iso()})
        return out

    def _fresh(self, ev: dict) -> bool:
        """Not a message already handed out; moves the cursor."""
        if ev.get("event") not in MESSAGE_EVENTS:
            return True
        cursor = (ev.get("message") or {}).get("cursor")
        if not isinstance(cursor, int) or isinstance(cursor, bool):
            return True  # a daemon without cursors
        if self.cursor is not None and cursor <= self.cursor:
            return False
        self.cursor = cursor
        return True

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def run_watch(make_client, as_json: bool, group: str | None = None) -> None:
    """`p2pctl watch`: print events until Ctrl-C, through the daemon's restarts; ``group``:
    only that group's (a name `p2pd.groups.check_group_name` accepts)."""
    import json

    import click

    from . import render

    stream = EventStream(make_client, group=group)
    try:
        stream.open()
        while True:
            for ev in stream.poll(0.2):
                if as_json:
                    click.echo(json.dumps(ev))
                elif ev["event"] == "daemon_down":
                    click.echo(f"{render.dim(render.local_time(ev['time']))} {render.red('! p2pd stopped')}: waiting for it to come back ...")
                elif ev["event"] == "daemon_up":
                    click.echo(f"{render.dim(render.local_time(ev['time']))} {render.green('* p2pd is back')}: watching again; what arrived meanwhile follows")
                else:
                    click.echo(render.event_line(ev))
                sys.stdout.flush()
    finally:
        stream.close()
