"""`p2pctl`: drive a running p2pd over its control socket.  See `p2pctl COMMAND --help`.

Here are the command line's words: each command's arguments, options and help, as click reads
them.  A command that sends one control request hands the values to its object in
p2pctl/commands.py (`Ctx.run`), which makes the request and prints the reply; the rest
(``watch``, ``stop``, ``logs``, ``chat``) are here whole.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from p2pd import __version__

from . import render
from .client import Client, ClientError
from .commands import CLI_COMMANDS

HOME_HELP = "Node home directory. Default: $P2PD_HOME or the user data dir."


class Ctx:
    def __init__(self, home, as_json, no_color, timeout_s):
        self.home = home
        self.as_json = as_json
        self.timeout_s = timeout_s
        render.setup(no_color)

    def client(self) -> Client:
        return Client(self.home, timeout_s=self.timeout_s)

    def out(self, data, text: str | None = None) -> None:
        if self.as_json:
            click.echo(json.dumps(data))
        else:
            click.echo(text if text is not None else data)

    def run(self, name: str, **values) -> None:
        """The command ``name`` of p2pctl/commands.py: its request, made from the command line's
        ``values``, then its reply printed (``--json``: as JSON)."""
        command = CLI_COMMANDS[name]
        with self.client() as c:
            result = command.call(c, **values)
        if self.as_json:
            click.echo(json.dumps(command.json(result, **values)))
        else:
            click.echo(command.text(result, **values))


def _positive(click_ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter("must be a positive number of seconds", ctx=click_ctx, param=param)
    return value


def command(fn):
    """Run a command; turn client errors into one line and the documented exit code.

    Every command also takes the global options after its name (``p2pctl peers
    --home X --json``): ``--home``, ``--json``, ``--no-color`` and ``--timeout``
    given there win over the same option given before the command.
    """

    @click.option("--home", "home_here", metavar="DIR", help="Node home directory (same as p2pctl --home).")
    @click.option("--json", "json_here", is_flag=True, help="Machine-readable output (same as p2pctl --json).")
    @click.option("--no-color", "no_color_here", is_flag=True, help="No colour (same as p2pctl --no-color).")
    @click.option("--timeout", "timeout_here", type=float, callback=_positive, metavar="SECONDS",
                  help="Seconds to wait for the daemon (same as p2pctl --timeout).")
    @functools.wraps(fn)
    @click.pass_obj
    def wrapper(ctx: Ctx, *args, json_here=False, home_here=None, no_color_here=False, timeout_here=None, **kwargs):
        ctx.as_json = ctx.as_json or json_here
        if home_here is not None:
            ctx.home = home_here
        if timeout_here is not None:
            ctx.timeout_s = timeout_here
        if no_color_here:
            render.setup(no_color=True)
        try:
            return fn(ctx, *args, **kwargs)
        except ClientError as e:
            if ctx.as_json:
                click.echo(json.dumps({"ok": False, "code": e.code, "error": str(e)}))
            click.echo(render.error(str(e)), err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper


KEY_COMMANDS = {("trust", "add"), ("trust", "remove"), ("known", "forget")}  # whose first argument may be a key


class _Main(click.Group):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, protect_keys(args))


def _valid_key(text: str) -> bool:
    from p2pd.protocol import valid_key  # here, not at the top: the codec is 10 ms of every command's start

    return valid_key(text)


def protect_keys(args: list[str]) -> list[str]:
    """A public key is 40 characters of Z85, which may begin with "-": click would take
    `p2pctl trust add -OG&:Fh...` for options and refuse it.  Put "--" before such a key where
    a key command takes it, so that it is read as the argument it is."""
    args = list(args)
    for i in range(len(args) - 2):
        if (args[i], args[i + 1]) in KEY_COMMANDS and args[i + 2].startswith("-") and _valid_key(args[i + 2]):
            args.insert(i + 2, "--")
            break
    return args


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--home", envvar="P2PD_HOME", help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON; JSON lines for streams).")
@click.option("--no-color", is_flag=True, help="No colour (also when NO_COLOR is set or output is not a terminal).")
@click.option("--timeout", "timeout_s", type=float, default=5.0, show_default=True, help="Seconds to wait for the daemon.")
@click.version_option(__version__, prog_name="p2pctl")
@click.pass_context
def main(click_ctx, home, as_json, no_color, timeout_s):
    """p2pctl - talk to a running p2pd node.

    \b
    Examples:
      p2pctl connect 192.168.1.7 5000     link to a peer (HOST:PORT works too)
      p2pctl peers                        who is linked
      p2pctl send bob hello there         direct message by name or id prefix
      echo report | p2pctl send bob -     text from stdin
      p2pctl broadcast "lunch?"           to every linked peer
      p2pctl join rust-dev                join a group (a chat room)
      p2pctl shout rust-dev "hi all"      to the group's members
      p2pctl watch                        live messages, joins and leaves
      p2pctl chat                         interactive chat

    Pick the node with --home (several nodes may run on one machine).

    Exit codes: 0 ok, 1 failed, 2 usage, 3 daemon not running, 4 timeout,
    5 permission denied.
    """
    if timeout_s <= 0:
        raise click.BadParameter("must be positive", param_hint="--timeout")
    click_ctx.obj = Ctx(home, as_json, no_color, timeout_s)


@main.command()
@click.argument("target", metavar="HOST[:PORT]")
@click.argument("port", required=False)
@click.option("--since", help="Also fetch this peer's broadcasts sent since then (30m, 2h, 7d, ISO time).")
@command
def connect(ctx, target, port, since):
    """Link to the peer at HOST PORT (or HOST:PORT, or p2p://KEY@HOST:PORT); waits for its answer.

    With HOST PORT the peer's key is fetched from its key port (PORT+2) and
    pinned on first use; a later change is refused (see `p2pctl known`).
    The p2p:// string printed by `p2pctl info` carries the key itself.

    A new peer's old broadcasts are not replayed unless --since asks for them.
    """
    ctx.run("connect", target=target, port=port, since=since)


@main.command()
@click.argument("peer")
@command
def disconnect(ctx, peer):
    """Unlink PEER (name or id prefix): it is sent LEAVE and forgotten."""
    ctx.run("disconnect", peer=peer)


@main.command()
@command
def peers(ctx):
    """List known peers: name, id, address, state, last seen, round-trip time."""
    ctx.run("peers")


@main.command()
@command
def info(ctx):
    """This node: id, name, endpoints, uptime, peers, traffic, bad input dropped."""
    ctx.run("info")


@main.command()
@click.argument("peer")
@click.argument("text", nargs=-1)
@click.option("--wait", "wait_opt", is_flag=False, flag_value="60", default=None, metavar="[SECONDS]",
              help="Block until delivered (default 60 s); exit 4 if not delivered by then.")
@command
def send(ctx, peer, text, wait_opt):
    """Send a direct message to PEER: a full node id, a name, or an id prefix.

    \b
    PEER is resolved in this order (peers that are offline or have left
    are found in the address book too):
      1. a full node id always wins, whatever names other nodes took;
      2. else a name (of a linked peer first) or an id prefix of at least
         4 characters that fits exactly one node;
      3. a name carried by several nodes, a prefix of several ids, or the
         name of one node that is also an id prefix of another is refused
         as ambiguous, listing them: give more of the id.

    TEXT may be several words; "-" reads the message from stdin.  The
    message is stored before this returns and retried until the peer
    acknowledges it (or it expires, after 7 days by default).  Prints
    "delivered" if the peer acknowledged it within a moment, else "queued".
    """
    ctx.run("send", peer=peer, text=text, wait_opt=wait_opt)


@main.command()
@click.argument("text", nargs=-1, required=True)
@command
def broadcast(ctx, text):
    """Send TEXT to every linked peer ("-" reads stdin).

    Prints how many peers it reached ("subscribers" in --json: the linked peers
    whose subscription is attached; "linked": the peers linked now).  With no
    peer linked it says "nobody is linked: not delivered to anyone".

    That is still exit 0: the broadcast is stored and numbered, and a peer that
    was linked before fetches what it missed when it comes back; a script that
    needs a listener checks "subscribers" in --json.
    """
    ctx.run("broadcast", text=text)


@main.command()
@click.argument("peer")
@command
def ping(ctx, peer):
    """Measure the round-trip time to PEER."""
    ctx.run("ping", peer=peer)


@main.command()
@click.option("-n", "--limit", type=click.IntRange(0), default=0, help="Only the newest N messages (0: all kept).")
@click.option("--unread", is_flag=True, help="Only messages not read yet (in the chat).")
@click.option("--group", metavar="GROUP", help="Only the shouts of this group (#GROUP works too).")
@command
def inbox(ctx, limit, unread, group):
    """Messages received (direct, broadcast and group shouts), newest last.

    With --unread, only those not read yet: the chat marks what it shows as read
    (`p2pctl chat` opens with the same set).

    \b
    Example:
      p2pctl inbox --group rust-dev -n 20"""
    ctx.run("inbox", limit=limit, unread=unread, group=group)


@main.command()
@click.option("--peer", help="Only the conversation with this peer (name or id prefix).")
@click.option("--group", metavar="GROUP", help="Only the shouts of this group, sent and received (#GROUP works too).")
@click.option("--since", help="Only messages since then (30m, 2h, 7d, ISO time, UNIX seconds).")
@click.option("-n", "--limit", type=click.IntRange(0), default=100, show_default=True, help="The newest N messages (0: all).")
@command
def history(ctx, peer, group, since, limit):
    """The stored conversation, sent and received, oldest first; survives restarts.

    \b
    Example:
      p2pctl history --group rust-dev --since 2h"""
    ctx.run("history", peer=peer, since=since, limit=limit, group=group)


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Also list delivered messages still kept.")
@click.option("-n", "--limit", type=click.IntRange(1), default=1000, show_default=True, help="List at most N messages (oldest first).")
@command
def outbox(ctx, show_all, limit):
    """Direct messages not yet delivered (pending) or given up (expired)."""
    ctx.run("outbox", show_all=show_all, limit=limit)


@main.command()
@click.option("--group", metavar="GROUP", help="Only this group's shouts and its members' joins and leaves.")
@command
def watch(ctx, group):
    """Stream messages, shouts, joins, leaves and losses live until Ctrl-C (--json: JSON lines).

    When the daemon stops, or is frozen for 3 s (SIGSTOP), says so (--json: {"event": "daemon_down"}), waits for it,
    says when it is back ({"event": "daemon_up"}) and goes on from where it was:
    the messages that arrived meanwhile come first.

    \b
    Example:
      p2pctl watch --group rust-dev"""
    from .commands import group_arg
    from .events import run_watch

    run_watch(ctx.client, ctx.as_json, group=None if group is None else group_arg(group))


# ---------------------------------------------------------------------------- groups (issue 16)


@main.command()
@click.argument("group")
@click.option("--private", is_flag=True, help="A private group: not advertised to the network; others join when a member invites them.")
@click.option("--since", metavar="WHEN", help="Also fetch the group's shouts since then (30m, 2h, 7d, ISO time, UNIX seconds).")
@command
def join(ctx, group, private, since):
    """Join the group GROUP (a chat room; "#GROUP" works too) and list its members.

    Shouts to the group (p2pctl shout) then reach this node.  Shouts from
    before the join are not fetched unless --since asks for them.  An invitation
    to a private group (p2pctl invite, on a member) is accepted with --private:
    without it, the same name is an open group, another room.

    \b
    Examples:
      p2pctl join rust-dev
      p2pctl join rust-dev --since 1d     and the last day's shouts
      p2pctl join ops --private           a room others join by invitation"""
    ctx.run("join", group=group, private=private, since=since)


@main.command()
@click.argument("group")
@command
def leave(ctx, group):
    """Leave the group GROUP: its shouts no longer reach this node.

    \b
    Example:
      p2pctl leave rust-dev"""
    ctx.run("leave", group=group)


@main.command()
@command
def groups(ctx):
    """List the groups this node knows of: joined or not, members and their names.

    Private groups are marked; "invited" means a member invited this node
    (p2pctl join GROUP --private accepts).

    \b
    Example:
      p2pctl groups --json"""
    ctx.run("groups")


@main.command()
@click.argument("group")
@click.argument("text", nargs=-1)
@command
def shout(ctx, group, text):
    """Send TEXT to every other member of GROUP ("-" reads stdin).

    This node must be in the group (p2pctl join GROUP).  Prints how many
    other members it was sent to.

    \b
    Examples:
      p2pctl shout rust-dev "release is out"
      make 2>&1 | tail -1 | p2pctl shout '#ci' -"""
    ctx.run("shout", group=group, text=text)


@main.command()
@click.argument("group")
@click.argument("peer")
@command
def invite(ctx, group, peer):
    """Invite PEER (name or id prefix) to the private group GROUP this node is in.

    The peer is told, and joins with p2pctl join GROUP --private.  An open group needs no
    invitation: anyone may join it.

    \b
    Example:
      p2pctl invite ops bob"""
    ctx.run("invite", group=group, peer=peer)


@main.command()
@command
def status(ctx):
    """Is the daemon running? Exit 0 if it is, 3 if not."""
    ctx.run("status")


@main.command()
@command
def stop(ctx):
    """Stop the daemon gracefully (it sends LEAVE to its peers)."""
    from p2pd.daemon import stop_and_wait
    from p2pd.home import Home, resolve_home

    home = Home(resolve_home(ctx.home))
    pid = stop_and_wait(home, max(ctx.timeout_s, 10.0))
    if pid is None:
        ctx.out({"stopped": False, "running": False}, f"p2pd is not running on home {home.path}")
    else:
        ctx.out({"stopped": True, "pid": pid}, f"p2pd stopped (pid {pid})")


@main.command()
@click.option("-n", "--lines", "lines", type=click.IntRange(min=0), default=50, show_default=True, help="How many of the last lines to print.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as the daemon writes them (Ctrl-C stops); follows a rotated log.")
@command
def logs(ctx, lines, follow):
    """Print the daemon's log (HOME/p2pd.log), like tail; the daemon need not be running."""
    from p2pd.home import Home, resolve_home

    from .logtail import follow_lines, last_lines

    path = Home(resolve_home(ctx.home)).log_file
    if not path.exists() and not follow:
        click.echo(render.error(f"no log at {path}: has a node run with this home? (p2pd start --home {path.parent})"), err=True)
        sys.exit(1)
    for line in last_lines(path, lines):
        click.echo(render.name(line))  # p2pd escapes what it logs; a log from an older p2pd may hold raw escapes
    if follow:
        sys.stdout.flush()
        for line in follow_lines(path):
            click.echo(render.name(line))
            sys.stdout.flush()  # a pipe (| grep) sees each line as it comes


@main.group()
def trust():
    """Closed networks: the keys in authorized_keys (allowlist mode when any is listed).

    \b
    Examples:
      p2pctl trust list
      p2pctl trust add 'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7' laptop
      p2pctl trust remove laptop-node-id-or-key
    """


@trust.command("list")
@command
def trust_list(ctx):
    """List the authorized keys."""
    ctx.run("trust list")


@trust.command("add")
@click.argument("key")
@click.argument("comment", required=False, default="")
@command
def trust_add(ctx, key, comment):
    """Allow KEY (a node's public key, from `p2pctl info` there) to link; turns on allowlist mode."""
    ctx.run("trust add", key=key, comment=comment)


@trust.command("remove")
@click.argument("match")
@command
def trust_remove(ctx, match):
    """Remove the authorized key equal to MATCH (a key or a node id)."""
    ctx.run("trust remove", match=match)


@main.group()
def known():
    """Pinned peer keys (trust on first use), like ssh's known_hosts."""


@known.command("list")
@command
def known_list(ctx):
    """List the addresses whose keys are pinned."""
    ctx.run("known list")


@known.command("forget")
@click.argument("match")
@command
def known_forget(ctx, match):
    """Forget the pinned key of MATCH (HOST:PORT, key or node id), to accept a changed key."""
    ctx.run("known forget", match=match)


@main.command()
@command
def chat(ctx):
    """Interactive chat on the running node: /help lists the commands."""
    from .chat import run_chat

    sys.exit(run_chat(ctx.client, ctx.timeout_s))

