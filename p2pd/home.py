"""A node's home directory: identity, config, log, pidfile, peer book and control socket.

Both programs find everything from one directory (``--home``, ``P2PD_HOME``,
or the platform default), so `p2pctl` never has to guess where the daemon put
its socket - the long-running complaint against supervisor.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .digest import sha256


ENV_HOME = "P2PD_HOME"
IPC_PATH_MAX = 100  # sun_path is 104-108 bytes; leave room
ENV_CONTROL = "P2PD_CONTROL"  # force the control API's transport: ipc or tcp
CONTROL_TRANSPORTS = ("ipc", "tcp")
CONTROL_TCP_PREFIX = "tcp://127.0.0.1:"  # the TCP fallback is loopback only


class ControlChoiceError(ValueError):
    """$P2PD_CONTROL asks for something this machine cannot do."""


def control_transport(ipc_available: bool, endpoint_file: Path | None = None) -> str:
    """``ipc`` or ``tcp``: $P2PD_CONTROL if set, else ipc where ZeroMQ has it, else loopback TCP.

    The caller says whether ZeroMQ has ipc (only transport.py and p2pctl import
    zmq).  A client also passes the home's control.endpoint file: when it is
    there, the daemon was started with TCP control.
    """
    raw = os.environ.get(ENV_CONTROL, "")
    kind = raw.strip().lower()
    if kind:
        if kind not in CONTROL_TRANSPORTS:
            raise ControlChoiceError(f"{ENV_CONTROL}={raw!r} is not valid: use ipc or tcp (or leave it unset)")
        if kind == "ipc" and not ipc_available:
            raise ControlChoiceError(f"{ENV_CONTROL}=ipc, but this ZeroMQ has no ipc:// transport: use tcp (or leave it unset)")
        return kind
    if not ipc_available:
        return "tcp"
    try:
        return "tcp" if endpoint_file is not None and endpoint_file.exists() else "ipc"
    except OSError:  # a home we may not enter: the ipc path reports "permission denied"
        return "ipc"


def default_home() -> Path:
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "p2pd"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "p2pd"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "p2pd"


def resolve_home(option: str | None) -> Path:
    raw = option or os.environ.get(ENV_HOME)
    return (Path(raw).expanduser() if raw else default_home()).absolute()


class Home:
    """Where a node keeps its files.  (A plain class: p2pctl imports this on every run, and
    dataclasses would add their import cost to each command.)"""

    __slots__ = ("path",)

    def __init__(self, path: Path):
        self.path = path

    def __eq__(self, other) -> bool:
        return isinstance(other, Home) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Home({self.path!r})"

    @property
    def identity_file(self) -> Path:
        return self.path / "identity.json"

    @property
    def config_file(self) -> Path:
        return self.path / "p2pd.toml"

    @property
    def log_file(self) -> Path:
        return self.path / "p2pd.log"

    @property
    def pid_file(self) -> Path:
        return self.path / "p2pd.pid"

    @property
    def lock_file(self) -> Path:
        return self.path / "p2pd.lock"

    @property
    def peers_file(self) -> Path:
        return self.path / "peers.json"

    @property
    def store_file(self) -> Path:
        return self.path / "store.db"

    @property
    def startup_error_file(self) -> Path:
        return self.path / "startup.err"

    @property
    def socket_path(self) -> Path:
        """The control socket; moved to a short per-user runtime path if the home's is too long."""
        direct = self.path / "control.sock"
        if len(str(direct)) <= IPC_PATH_MAX:
            return direct
        import tempfile

        digest = sha256(str(self.path).encode()).hexdigest()[:20]
        uid = os.getuid() if hasattr(os, "getuid") else 0
        return Path(tempfile.gettempdir()) / f"p2pd-{uid}" / f"{digest}.sock"

    @property
    def control_endpoint(self) -> str:
        """The ipc endpoint; with TCP control the endpoint is in `control_endpoint_file`."""
        return f"ipc://{self.socket_path}"

    @property
    def control_endpoint_file(self) -> Path:
        return self.path / "control.endpoint"

    @property
    def control_token_file(self) -> Path:
        return self.path / "control.token"

    def write_control_files(self, endpoint: str, token: str) -> None:
        """TCP control: the endpoint and its token, each mode 0600 from creation and replaced
        atomically.  The token first, so a client that finds the endpoint finds the token."""
        atomic_write(self.control_token_file, token + "\n")
        atomic_write(self.control_endpoint_file, endpoint + "\n")

    def read_control_files(self) -> tuple[str, str]:
        """(endpoint, token); OSError if missing or unreadable, ValueError if damaged."""
        endpoint = self.control_endpoint_file.read_text(encoding="utf-8").strip()
        token = self.control_token_file.read_text(encoding="utf-8").strip()
        port = endpoint.removeprefix(CONTROL_TCP_PREFIX)
        if not endpoint.startswith(CONTROL_TCP_PREFIX) or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"{self.control_endpoint_file} does not hold a {CONTROL_TCP_PREFIX}PORT endpoint")
        if len(token) != 64 or not all(c in "0123456789abcdef" for c in token):
            raise ValueError(f"{self.control_token_file} does not hold a 64-digit hex token")
        return endpoint, token

    def remove_control_files(self) -> None:
        for path in (self.control_endpoint_file, self.control_token_file):
            try:
                path.unlink()
            except OSError:
                pass

    def ensure(self) -> None:
        """Create the home (mode 0700: it holds the identity and control socket)."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(self.path, 0o700)
        except OSError:
            pass
        sock_dir = self.socket_path.parent
        if sock_dir != self.path:
            sock_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(sock_dir, 0o700)

    def read_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid > 0 else None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A dead daemon not yet reaped (containers whose init is slow or never reaps) is not running."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False  # no /proc (macOS): os.kill's answer stands


class HomeLock:
    """An exclusive OS lock: released by the kernel when the process dies, even by kill -9."""

    def __init__(self, home: Home):
        self.path = home.lock_file
        self.fd: int | None = None

    def acquire(self, wait_s: float = 0.0) -> bool:
        """Take the lock; try for ``wait_s`` (a `p2pd status` or p2pctl may be probing it just then)."""
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                if sys.platform == "win32":  # pragma: no cover - Windows only
                    import msvcrt

                    msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)
                else:
                    import fcntl

                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    self.fd = None
                    return False
                time.sleep(0.02)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def is_running(home: Home) -> tuple[bool, int | None]:
    """(running, pid): whether a daemon holds the home's lock, the only sure sign (a pid may be
    reused, a pidfile stale).  Here, next to the lock file, because both the daemon and
    p2pctl ask it: in daemon.py it made p2pctl.client and p2pd.daemon import each other."""
    lock = HomeLock(home)
    if not home.path.exists():
        return False, None
    try:
        got = lock.acquire()
    except OSError:
        pid = home.read_pid()
        return pid_alive(pid), pid
    if got:
        lock.release()
        return False, None
    return True, home.read_pid()


class Identity:
    __slots__ = ("id", "name")

    def __init__(self, id: str, name: str | None):
        self.id = id
        self.name = name


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def load_or_create_identity(home: Home, name: str | None, node_id: str | None = None) -> Identity:
    """The node id is made once and kept, so a restarted node is the same peer.

    A name given once (``--name``) is remembered too, so later restarts
    without the flag keep it.
    """
    from .protocol import valid_name, valid_node_id

    ident = None
    try:
        data = json.loads(home.identity_file.read_text(encoding="utf-8"))
        if isinstance(data, dict) and valid_node_id(data.get("id", "")):
            stored = data.get("name")
            ident = Identity(data["id"], stored if isinstance(stored, str) and valid_name(stored) else None)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        raise RuntimeError(f"identity file {home.identity_file} is unreadable ({e}); move it away to create a new identity") from None
    changed = ident is None
    if ident is None:
        ident = Identity(os.urandom(16).hex(), None)
    if name and name != ident.name:
        ident.name = name
        changed = True
    if node_id and node_id != ident.id:  # the id follows the node's key
        ident.id = node_id
        changed = True
    if changed:
        atomic_write(home.identity_file, json.dumps({"id": ident.id, "name": ident.name}, indent=2) + "\n")
    return ident


def load_peer_book(home: Home) -> list:
    try:
        data = json.loads(home.peers_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def save_peer_book(home: Home, peers: list) -> None:
    atomic_write(home.peers_file, json.dumps(peers, indent=1) + "\n")
