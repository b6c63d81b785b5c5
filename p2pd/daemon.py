"""Running a node as a service: lock, pidfile, log, detach, readiness, stop.

`p2pd start` (without ``--foreground``) starts the node as a detached child in a
new session (``python -OO -m p2pd.serve``: serve.py), then waits until the child answers on
its control socket - so ``p2pd start && p2pctl ...`` just works (kubo #7352)
- or until it exits, in which case its one-line reason is printed.  One home
runs one daemon: an OS lock on ``p2pd.lock`` is held for the daemon's life,
so a stale pidfile from a crashed daemon never blocks a start.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import escape
from . import protocol as P
from . import sdnotify
from .home import Home, HomeLock, is_running, load_or_create_identity, load_peer_book, pid_alive
from .identity import Keys
from .node import Node
from .settings import Settings, parse_host_port
from .home import atomic_write
from .keys import authorized_keys, check_keypair, connect_string, known_peers, load_or_create_keypair
from .resources import raise_nofile
from .signals import install_signal_handlers
from .store import QUICK_CHECK_S, Store, StoreError
from .trust import Trust

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger("p2pd")


class AlreadyRunning(RuntimeError):
    pass


class SafeFormatter(logging.Formatter):
    """Log lines that remote text cannot forge or use against a terminal: the message, once its
    arguments are filled in (names, addresses, reasons quoting a peer's fields ...), has every
    control, format and separator character escaped (``\\x1b``, ``\\n``), so one record is one
    line.  A traceback, appended after, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape.line(record.message)
        return super().formatMessage(record)


class ReopeningFileHandler(logging.FileHandler):
    """Appends to the log file, and reopens it when logrotate (or a user) moved it away or
    removed it, as logging.handlers.WatchedFileHandler does: written here because that module
    (with the queue and pickle machinery it imports) stays in every daemon's memory for good."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8")
        self._id = self._stat_id()

    def _stat_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.baseFilename)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def emit(self, record: logging.LogRecord) -> None:
        now = self._stat_id()
        if now != self._id:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
            self._id = self._stat_id()
        super().emit(record)


def setup_logging(home: Home, level: str, to_stderr: bool) -> None:
    root = logging.getLogger("p2pd")
    root.setLevel(level.upper())
    root.propagate = False
    fmt = SafeFormatter("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    fh = ReopeningFileHandler(home.log_file)
    fh.setFormatter(fmt)
    root.handlers = [fh]
    if to_stderr:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        root.addHandler(sh)


def own_address(settings: Settings, port: int, pub_port: int) -> P.PeerAddress:
    """What we tell peers in JOIN: --advertise, else the bound host unless it is a wildcard.  With
    several advertised addresses (a multi-homed host), none: each peer uses the address it sees
    (our signed record lists them all, overlay.py)."""
    advertised = settings.advertised()
    if len(advertised) == 1:
        return P.PeerAddress(advertised[0], port, pub_port)
    if advertised:
        return P.PeerAddress(None, port, pub_port)
    host = settings.host if settings.host not in P.WILDCARD_HOSTS else None
    return P.PeerAddress(host, port, pub_port)


def reload(home: Home, running: Settings, read_settings, log_to_stderr: bool) -> None:
    """SIGHUP: read the configuration again, apply what can change while running (the log
    level), reopen the log file, and say which other changes wait for a restart."""
    from dataclasses import fields

    from .settings import ConfigError

    try:
        new = read_settings()
    except ConfigError as e:
        log.error("reload (SIGHUP) failed: %s; keeping the running configuration", e)
        return
    setup_logging(home, new.log_level, log_to_stderr)  # also reopens the log file
    later = [f.name for f in fields(Settings) if f.name != "log_level" and getattr(new, f.name) != getattr(running, f.name)]
    log.info("reloaded configuration (SIGHUP): log_level=%s, log file reopened", new.log_level)
    if later:
        log.warning("changed in the configuration, applied at the next restart: %s", ", ".join(later))


MIGRATION_GRACE_S = 3600  # how much longer systemd is asked to wait for a start that migrates the store


def _migrating(old: int, new: int) -> None:
    """An older store is about to be migrated: ~20 s per million stored messages measured, more on
    slow disks.  Under systemd, ask for more time than TimeoutStartSec so the unit is not killed
    (and the migration rolled back) over and over; systemd older than 236 ignores the request."""
    log.warning("migrating the message store from format %d to %d; this can take a while for a large store", old, new)
    sdnotify.notify(f"EXTEND_TIMEOUT_USEC={MIGRATION_GRACE_S * 1_000_000}\nSTATUS=migrating the message store (format {old} to {new})")


STORE_MARKER = "store.created"  # in the home: this home has had a store, so a missing or empty store.db is a loss


def open_store(home: Home, durability: str, fresh: bool = False) -> Store:
    """The home's store, refused (`StoreError`, one line naming the file and the fix) when it is
    damaged, or missing or empty in a home that had one, unless ``fresh`` (--fresh-store).

    SQLite makes an empty database of a missing or 0-byte file without a word, and a node
    would then go on with no history, no outbox and its numbering restarted: messages it had
    queued would be lost silently.  The home records that it has had a store in a marker
    file, written once the store opened; homes made before the marker existed get it at their
    next start (a store lost before that cannot be told from a first start)."""
    path, marker = home.store_file, home.path / STORE_MARKER
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = None
    if not size and marker.exists():
        what = "missing" if size is None else "empty (0 bytes)"
        if not fresh:
            raise StoreError(f"the message store {path} is {what}, but this home had one ({marker}): starting would silently lose "
                             f"its history and outbox; restore it from a backup (docs/OPERATIONS.md, Restoring), "
                             f"or start with --fresh-store to begin an empty one")
        log.warning("the message store %s was %s: starting an empty one (--fresh-store)", path, what)
        for suffix in ("", "-wal", "-shm"):  # a WAL left of the lost store must not be applied to the new one
            Path(str(path) + suffix).unlink(missing_ok=True)
    elif fresh:
        log.warning("--fresh-store has no effect: the message store %s is there (move it aside first to start an empty one)", path)
    store = Store(path, durability, before_migration=_migrating, check_s=QUICK_CHECK_S)
    if store.checked is False:
        log.warning("integrity check of %s stopped after %gs (a large store on a slow disk): checked in part only", path, QUICK_CHECK_S)
    if not marker.exists():
        atomic_write(marker, "This home has a message store (store.db): p2pd refuses to start if it is missing or empty,\n"
                             "unless started with --fresh-store.  See docs/OPERATIONS.md.\n")
    return store


def run_foreground(home: Home, settings: Settings, log_to_stderr: bool, read_settings=None, fresh_store: bool = False) -> int:
    """Run the node in this process until stopped; returns the exit code. Raises on a failed start."""
    from .sockets import curve_keypair, curve_public
    from .transport import Transport  # zmq is imported only here (sockets, transport)

    home.ensure()
    lock = HomeLock(home)
    exit_code = 1
    if not lock.acquire(wait_s=0.2):
        pid = home.read_pid()
        raise AlreadyRunning(f"p2pd is already running on home {home.path}" + (f" (pid {pid})" if pid else "") + "; stop it with: p2pd stop --home " + str(home.path))
    try:
        setup_logging(home, settings.log_level, log_to_stderr)
        _raise_fd_limit()
        keypair = load_or_create_keypair(home, curve_keypair)
        try:
            check_keypair(home, keypair, curve_public)
        except ValueError as e:
            log.error("start failed: %s", e)
            raise
        ident = load_or_create_identity(home, settings.name, keypair.node_id)
        name = settings.name or ident.name or _default_name(ident.id)
        home.pid_file.write_text(f"{os.getpid()}\n")  # before the socket exists: p2pctl checks it
        try:
            transport = Transport(home, settings, ident.id, name, keypair)
        except Exception as e:
            log.error("start failed: %s", e)
            home.pid_file.unlink(missing_ok=True)
            raise
        try:
            install_signal_handlers()
            address = own_address(settings, transport.port, transport.pub_port)
            now = time.monotonic()
            try:
                store = open_store(home, settings.durability, fresh_store)
            except StoreError as e:
                log.error("start failed: %s", e)
                raise
            if store.bind_owner(ident.id):
                log.warning("this node's id changed (new key): peers' message numbering toward it starts afresh")
            trust = Trust(keypair.public, secure=not settings.insecure,
                          pins={a: k for a, k, _ in known_peers(home).entries()},
                          allowed={k for _, k, _ in authorized_keys(home).entries()})
            node = Node(ident.id, name, address, settings, now, time.time(), store, trust, rng=random.Random(os.urandom(32)),
                        keys=Keys(keypair.secret, keypair.public, intern=sys.intern), hosts=record_hosts(settings), randbytes=os.urandom)
            transport.node = node
            if settings.insecure:
                log.warning("INSECURE mode: peer links are plaintext and unauthenticated; anyone on the network can read and forge traffic")
            elif trust.allowlist_mode:
                log.info("allowlist mode: %d key(s) in %s may link", len(trust.allowed), authorized_keys(home).path)
            log.info(
                "started p2pd %s: id=%s name=%s peer=tcp://%s:%d pub=tcp://%s:%d control=%s",
                _version(), ident.id, name, settings.host, transport.port, settings.host, transport.pub_port, transport.control_endpoint,
            )
            if address.addr is None and settings.advertised():
                log.info("advertising %s: each peer uses the address it sees us at, our record lists them all",
                         ", ".join(settings.advertised()))
            elif address.addr is None:
                log.info("bound to all interfaces without --advertise: peers will use the address they see us at")
            extra = {
                "pid": os.getpid(),
                "home": str(home.path),
                "log_file": str(home.log_file),
                "control": transport.control_endpoint,
                "router": P.tcp_endpoint(settings.host, transport.port),
                "pub": P.tcp_endpoint(settings.host, transport.pub_port),
                "version": _version(),
                "key_port": transport.key_port or None,
                "connect": None if settings.insecure else connect_string(keypair.public, _reachable_host(settings), transport.port),
                # Not announced (address.addr null): where peers most likely see us, for `p2pctl info`.
                "seen_as": _reachable_host(settings) if address.addr is None else None,
            }
            joins = [P.tcp_endpoint(*parse_host_port(j)) for j in settings.join]
            if read_settings is not None:
                transport.on_reload = lambda: reload(home, settings, read_settings, log_to_stderr)
            transport.apply(node.start(now, load_peer_book(home), joins))
            # The control socket is bound and the loop starts now: requests sent meanwhile wait in it.
            sdnotify.notify(f"READY=1\nSTATUS=serving on {extra['router']}, control {transport.control_endpoint}\nMAINPID={os.getpid()}")
            transport.run(node, extra)
            sdnotify.notify("STOPPING=1")
            exit_code = transport.exit_code
            log.info("stopped" if not exit_code else "stopped after a fatal error")
        finally:
            transport.close()
            if "store" in locals():
                try:
                    store.close()
                except Exception as e:
                    log.error("closing the store failed: %s", e)
            try:
                home.pid_file.unlink()
            except OSError:
                pass
    finally:
        lock.release()
    return exit_code


def _raise_fd_limit() -> None:
    """Every connection costs a file descriptor: take all the system allows (see resources.py)."""
    before, now, hard = raise_nofile()
    if before is not None and now != before:
        log.info("raised the open-file limit from %d to %d (hard limit %d)", before, now, hard)
    if now is not None and now < 4096:
        log.warning("the open-file limit is %d: inbound connections are refused well before it; raise it "
                    "(systemd: LimitNOFILE=, shell: ulimit -Hn) for a node with many peers", now)


def record_hosts(settings: Settings) -> tuple[str, ...]:
    """The hosts our signed record lists (overlay.py): every advertised one, else the bound host,
    else the one peers most likely see us at."""
    return tuple(settings.advertised()) or (_reachable_host(settings),)


def _reachable_host(settings: Settings) -> str:
    if settings.advertise:
        return settings.advertised()[0]
    if settings.host not in P.WILDCARD_HOSTS:
        return settings.host
    return _seen_host(settings.host)


def _seen_host(host: str) -> str:
    """Bound to all interfaces without --advertise, the address peers most likely see us at: this
    host's source address on its default route (a UDP socket "connected" to a documentation
    address tells it; no packet is sent), else the host name."""
    import socket

    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        if host == "0.0.0.0" and family == socket.AF_INET6:
            break
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                addr = s.getsockname()[0]
        except OSError:
            continue
        if addr not in ("0.0.0.0", "::"):
            return addr
    return socket.gethostname()


def _default_name(node_id: str) -> str:
    import socket

    host = socket.gethostname().split(".")[0] or "node"
    return P.valid_name(host) and host or f"node-{node_id[:6]}"


def _version() -> str:
    from . import __version__

    return __version__


# glibc serves allocations of this size or more with their own mmap, given back on free, instead
# of from its heaps: a network's formation allocates and frees large frames by the thousand
# (every member's record, pushed by each new neighbour), and the heaps, the ZMQ I/O thread's
# above all, were left fragmented for good.  At 200 daemons: RSS median 29.5-29.8 -> 29.0 MiB,
# the largest 31.1-31.9 -> 31.0, the I/O thread's heap 1.8-2.7 -> 1.0 MiB; `python -m bench`
# throughput unchanged (docs/SCALE.md).  Only where the user has not set it; ignored by others
# than glibc.
MMAP_THRESHOLD = "16384"


def write_daemon_bytecode() -> None:
    """Write the p2pd package's bytecode for ``python -OO`` (the detached daemon's), which pip
    does not.  A daemon writes it itself on its first start wherever it may; where it may not
    (PYTHONDONTWRITEBYTECODE, a read-only install), every start compiles every module: 0.1 s of
    CPU and up to 1.5 MiB of RSS more per daemon.  For the bench and the test suite, before they
    start daemons; an install does the same with compileall (docs/OPERATIONS.md)."""
    import compileall
    import importlib.util

    for where in importlib.util.find_spec(__package__).submodule_search_locations:
        compileall.compile_dir(where, optimize=2, quiet=1)


def daemon_environment(environ) -> dict:
    """The detached daemon's environment: the caller's, with glibc's mmap threshold set."""
    env = dict(environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
    return env


def spawn_detached(spec: str, home: Home) -> subprocess.Popen:
    """Start ``python -OO -m p2pd.serve SPEC`` (serve.py) in a new session, detached from this terminal."""
    import subprocess  # the parent's alone: not kept in every daemon's memory

    home.ensure()
    err = open(home.startup_error_file, "wb")
    kwargs: dict = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": err, "close_fds": True,
                    "env": daemon_environment(os.environ)}
    if sys.platform == "win32":  # pragma: no cover - Windows only
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | 0x00000008  # DETACHED_PROCESS
    else:
        kwargs["start_new_session"] = True
    try:
        # -OO: the daemon needs no docstrings (help texts are the parent's business) and keeps
        # none of them in memory: about 0.8 MiB less per daemon (docs/SCALE.md).  p2pd has no
        # assert that guards anything at run time (tests/test_import_graph.py checks).
        return subprocess.Popen([sys.executable, "-OO", "-m", "p2pd.serve", spec], **kwargs)
    finally:
        err.close()


def wait_ready(proc: subprocess.Popen, home: Home, timeout_s: float):
    """Wait until the child answers `status` (returns the reply) or exits (returns its error line)."""
    from p2pctl.client import Client, ClientError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return None, _startup_error(home) or f"p2pd exited with code {code} during start; see {home.log_file}"
        if home.socket_path.exists() or home.control_endpoint_file.exists():
            # Up to 5 s for an answer: on a busy machine a daemon that is up may answer slowly,
            # and asking again every half second only queued more requests for it.
            try:
                with Client(home.path, timeout_s=max(0.5, min(5.0, deadline - time.monotonic()))) as c:
                    return c.call("info"), None
            except ClientError:
                pass
        time.sleep(0.05)
    return None, (f"p2pd did not answer within {timeout_s:g}s (pid {proc.pid}), so it was stopped; on a busy machine "
                  f"give it longer: p2pd start --wait {max(60, 3 * timeout_s):g} ...; see {home.log_file}")


def _startup_error(home: Home) -> str | None:
    try:
        lines = [ln for ln in home.startup_error_file.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1].removeprefix("p2pd: ") if lines else None


def stop_and_wait(home: Home, timeout_s: float) -> int | None:
    """Ask the node to leave and wait for its process to exit.

    Returns the pid that stopped, or None if nothing was running.  Raises the
    client's errors (with their exit codes) if the node will not stop.
    """
    from p2pctl.client import Client, DaemonTimeout

    running, pid = is_running(home)
    if not running:
        return None
    with Client(home.path, timeout_s=min(timeout_s, 5.0)) as c:
        c.call("stop")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(home)[0] and not pid_alive(pid):
            return pid
        time.sleep(0.05)
    raise DaemonTimeout(f"p2pd (pid {pid}) did not exit within {timeout_s:g}s; see {home.log_file}")
