"""`p2pctl chat`: the original terminal chat, on top of a running daemon.

A thread reads stdin lines into a queue (portable: `select` on stdin does not
work on Windows); the main thread owns both ZeroMQ sockets - one watching
events, one for commands - and alternates between them.
"""

from __future__ import annotations

import os
import queue
import sys
import threading

import click

from . import render
from .client import ClientError

HELP = """commands:
  /connect <ip> <port>   link to a peer (HOST:PORT and p2p://KEY@HOST:PORT work too)
  /peers                 list peers
  /info                  this node
  /msg <peer> <text>     direct message (peer: name or id prefix)
  /ping <peer>           round-trip time
  /help                  this help
  /quit                  leave the chat (the daemon keeps running)
  anything else          broadcast to every linked peer"""

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


def handle_line(line: str, call, echo) -> bool:
    """Run one chat line; return False to quit."""
    line = line.strip()
    if not line:
        return True
    if not line.startswith("/"):
        res = call("broadcast", text=line)
        echo(f"{render.dim('you')} (to {res['subscribers']}): {line}")
        return True
    cmd, _, rest = line.partition(" ")
    rest = rest.strip()
    if cmd in ("/quit", "/exit", "/q"):
        return False
    if cmd == "/help":
        echo(HELP)
    elif cmd == "/peers":
        echo(render.peers_table(call("peers")))
    elif cmd == "/info":
        echo(render.info_text(call("info")))
    elif cmd == "/connect":
        key = None
        if rest.startswith("p2p://"):
            from p2pd.keys import KeyError_, parse_connect_string

            try:
                key, host, port = parse_connect_string(rest)
            except KeyError_ as e:
                echo(render.error(str(e)))
                return True
            parts = [host, str(port)]
        else:
            parts = rest.rsplit(":", 1) if rest.count(" ") == 0 else rest.split()
        if len(parts) != 2 or not parts[1].isdigit():
            echo(render.error("usage: /connect <ip> <port>  (or HOST:PORT, or a p2p:// connect string)"))
            return True
        res = call("connect", host=parts[0].strip("[]"), port=int(parts[1]), **({"key": key} if key else {}))
        echo(f"linked to {render.cyan(render.name(res['peer']['name']))} at {render.name(res['peer']['address'])}")
    elif cmd == "/msg":
        peer, _, text = rest.partition(" ")
        if not peer or not text.strip():
            echo(render.error("usage: /msg <peer> <text>"))
            return True
        res = call("send", peer=peer, text=text.strip(), wait_s=1.0)
        note = "" if res["status"] == "delivered" else render.yellow(" (queued: delivered when it is reachable)")
        echo(f"{render.dim('you')} {render.magenta('->')} {render.cyan(render.name(res['peer']))}: {text.strip()}{note}")
    elif cmd == "/ping":
        if not rest:
            echo(render.error("usage: /ping <peer>"))
            return True
        res = call("ping", peer=rest)
        echo(f"pong from {render.name(res['peer'])}: {res['rtt_ms']:.3f} ms")
    else:
        echo(render.error(f"unknown command {cmd}; /help lists them"))
    return True


def run_chat(make_client, timeout_s: float) -> int:
    with make_client() as commands, make_client() as events:
        me = commands.call("info")
        click.echo(f"chatting as {render.bold(render.name(me['name']))} ({me['id'][:12]}); {me['peers_alive']} peer(s) linked. /help for commands.")

        def call(cmd, **args):
            return commands.call(cmd, timeout_s=timeout_s + 1, **args)

        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(lines,), daemon=True).start()
        for ev in events.watch(poll_s=0.1):
            if ev is not None:
                click.echo(render.event_line(ev))
            while True:
                try:
                    line = lines.get_nowait()
                except queue.Empty:
                    break
                if line is _EOF:
                    return 0
                try:
                    if not handle_line(line, call, click.echo):
                        return 0
                except ClientError as e:
                    click.echo(render.error(str(e)))
    return 0
