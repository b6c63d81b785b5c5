"""`p2pd`: start, stop and check a node.  See `p2pd COMMAND --help`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__, exitcodes
from .home import ControlChoiceError, Home, control_transport, is_running, resolve_home
from .config import check_bind_host
from .settings import ConfigError, LOG_LEVELS

READY_TIMEOUT_S = 20.0  # `p2pd start` waits this long for the detached daemon to answer (--wait)

HOME_HELP = "Node home directory (identity, config, log, socket). Default: $P2PD_HOME or the user data dir."


def _fail(message: str, code: int) -> None:
    click.echo(f"p2pd: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="p2pd")
def main():
    """p2pd - a peer-to-peer messaging daemon on ZeroMQ.

    \b
    Start a node, then drive it with p2pctl:
      p2pd start --port 5000 --name alice
      p2pctl connect 192.168.1.7 5000
      p2pctl send bob "hello"
      p2pd stop

    Exit codes: 0 ok, 1 failed, 2 usage, 3 not running, 4 timeout,
    5 permission denied, 6 already running or port in use.
    """


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (``path`` itself, or a parent
    that a start would create with it); None when the home exists."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


@main.command()
@click.option("--port", type=int, help="TCP port for peer links (ROUTER). 0 picks a free port. [default: 5000]")
@click.option("--pub-port", type=int, help="TCP port for broadcasts (PUB). [default: port+1]")
@click.option("--host", help="Interface to bind: an IPv4 or IPv6 address; :: is every interface, both families. [default: 0.0.0.0, all IPv4]")
@click.option("--advertise", help="Address other nodes should use to reach this one (for multi-homed or NATed hosts).")
@click.option("--name", help="Display name of this node (remembered in the home).")
@click.option("--join", "join", multiple=True, metavar="HOST:PORT", help="Peer to link at start and keep retrying; repeatable.")
@click.option("--home", help=HOME_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file. [default: HOME/p2pd.toml if present]")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), help="Log verbosity. [default: info]")
@click.option("--heartbeat-interval", "heartbeat_interval_s", type=float, help="PING a peer silent this long (checked as often). [default: 2]")
@click.option("--heartbeat-timeout", "heartbeat_timeout_s", type=float, help="Seconds of silence before a peer is lost. [default: 5]")
@click.option("--key-port", type=int, help="Plaintext port that tells this node's public key (TOFU). [default: port+2]")
@click.option("--insecure", is_flag=True, default=None, help="Plaintext, unauthenticated links, to talk to simple JSON peers. Not for untrusted networks.")
@click.option("--discover", type=click.Choice(["none", "lan"]),
              help="lan: find nodes on this network by UDP beacons and link to them (docs/OPERATIONS.md). [default: none]")
@click.option("--discover-port", type=int, help="UDP port of the LAN beacons. [default: 5670]")
@click.option("--fresh-store", is_flag=True,
              help="Begin an empty message store when store.db is missing or empty in a home that had one "
                   "(its history and outbox are lost); without it such a start is refused. An existing store is kept.")
@click.option("--foreground", is_flag=True, help="Stay attached (for systemd/containers) and also log to stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the started node's details as JSON.")
@click.option("--wait", "wait_s", type=click.FloatRange(min=1.0), default=READY_TIMEOUT_S, show_default=True,
              help="Seconds to wait for the detached daemon to answer; if it has not by then, it is stopped. "
                   "Give a busy machine longer.")
def start(port, pub_port, host, advertise, name, join, home, config_path, log_level, heartbeat_interval_s, heartbeat_timeout_s,
          key_port, insecure, discover, discover_port, fresh_store, foreground, as_json, wait_s):
    """Start a node.

    By default the daemon detaches and this command returns once the node
    answers on its control socket, printing its id, endpoints and log file.

    \b
    Examples:
      p2pd start --port 5000 --name alice
      p2pd start --home /tmp/bob --port 5010 --name bob --join 127.0.0.1:5000
      p2pd start --foreground          # under systemd or in a container
      p2pd start --discover lan        # link to every p2pd on this LAN by itself
    """
    from .daemon import spawn_detached, wait_ready
    from .serve import disk_full, remove_new_home, serve, settings_reader, spec

    h = Home(resolve_home(home))
    overrides = dict(port=port, pub_port=pub_port, host=host, advertise=advertise, name=name, join=list(join),
                     log_level=log_level, heartbeat_interval_s=heartbeat_interval_s, heartbeat_timeout_s=heartbeat_timeout_s,
                     key_port=key_port, insecure=insecure, discover=discover, discover_port=discover_port)
    cfg = click.format_filename(config_path) if config_path else None
    current_settings = settings_reader(h, cfg, overrides)
    try:
        control_transport(ipc_available=True)  # a bad $P2PD_CONTROL is a usage error, before anything starts
        settings = current_settings()
        check_bind_host(settings.host)  # here, not again in a detached child (a lookup of a name is I/O)
    except (ConfigError, ControlChoiceError) as e:
        _fail(str(e), exitcodes.USAGE)
    made = _first_missing(h.path)  # what this start creates, removed again if it fails
    if foreground:
        code, message = serve(h, settings, current_settings, fresh_store=fresh_store, log_to_stderr=True, made=made)
        if message:
            _fail(message, code)
        sys.exit(code)
    running, pid = is_running(h)
    if running:
        _fail(f"p2pd is already running on home {h.path} (pid {pid}); stop it with: p2pd stop --home {h.path}", exitcodes.CONFLICT)
    proc = spawn_detached(spec(h, cfg, overrides, fresh_store), h)
    info, error = wait_ready(proc, h, wait_s)
    if error:
        if proc.poll() is None:
            proc.terminate()
        import subprocess

        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code, made = None, None  # still running: leave its files alone
        message = error if code in (exitcodes.CONFLICT, exitcodes.USAGE) else disk_full(h) or error
        remove_new_home(made)
        _fail(message, code if code in (exitcodes.CONFLICT, exitcodes.USAGE) else exitcodes.FAILED)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"p2pd started: {info['name']} ({info['id']}), pid {info['pid']}")
    click.echo(f"  peer link  {info['router']}")
    click.echo(f"  broadcast  {info['pub']}")
    click.echo(f"  control    {info['control']}")
    if info.get("connect"):
        click.echo(f"  connect    {info['connect']}   (give this to peers: p2pctl connect '<it>')")
    else:
        click.echo("  security   INSECURE: plaintext, unauthenticated links")
    click.echo(f"  log        {info['log_file']}   (follow it: p2pctl --home {h.path} logs -f)")


@main.command()
@click.option("--home", help=HOME_HELP)
@click.option("--force", is_flag=True, help="Replace an existing key: the node gets a new id, and peers that pinned the old key refuse it.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def keygen(home, force, as_json):
    """Create this node's CURVE keypair (done automatically at first start).

    The key is kept in HOME/node.key with mode 0600; the node id is derived
    from its public key.  Back it up: it is the node's identity.
    """
    from .keys import KeyError_, create_keypair
    from .sockets import curve_keypair

    h = Home(resolve_home(home))
    if is_running(h)[0]:
        _fail(f"p2pd is running on home {h.path}; stop it first (p2pd stop --home {h.path})", exitcodes.CONFLICT)
    h.ensure()
    try:
        pair = create_keypair(h, curve_keypair, force=force)
    except KeyError_ as e:
        _fail(str(e), exitcodes.FAILED)
    if as_json:
        click.echo(json.dumps({"id": pair.node_id, "public_key": pair.public, "file": str(h.path / "node.key")}))
    else:
        click.echo(f"new key for node {pair.node_id}\n  public key {pair.public}\n  saved in {h.path / 'node.key'} (mode 0600)")


@main.command()
@click.option("--home", help=HOME_HELP)
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True, help="Seconds to wait for the daemon to exit.")
def stop(home, timeout_s):
    """Stop a node gracefully: it sends LEAVE to its peers first.

    Stopping a node that is not running is not an error (exit 0).
    """
    from p2pctl.client import ClientError

    from .daemon import stop_and_wait

    h = Home(resolve_home(home))
    try:
        pid = stop_and_wait(h, timeout_s)
    except ClientError as e:
        _fail(str(e), e.exit_code)
    click.echo(f"p2pd stopped (pid {pid})" if pid else f"p2pd is not running on home {h.path}")


@main.command()
@click.option("--home", help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(home, as_json):
    """Is the node running? Exit 0 if it is, 3 if it is not (as LSB init scripts)."""
    from p2pctl.client import Client, ClientError

    h = Home(resolve_home(home))
    running, pid = is_running(h)
    if not running:
        if as_json:
            click.echo(json.dumps({"running": False, "home": str(h.path)}))
        else:
            click.echo(f"p2pd is not running on home {h.path}")
        sys.exit(exitcodes.NOT_RUNNING)
    try:
        with Client(h.path, timeout_s=5.0) as c:
            st = c.call("status")
    except ClientError as e:
        _fail(str(e), e.exit_code)
    if as_json:
        click.echo(json.dumps({"running": True, **st}))
    else:
        from p2pctl.render import duration, name

        click.echo(f"p2pd is running: {name(st['name'])} ({st['id'][:12]}), pid {st['pid']}, up {duration(st['uptime_s'])}, home {h.path}")
