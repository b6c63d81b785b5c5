"""Reading settings from outside: the TOML file, and whether a host to bind exists here.

The edge of settings.py: `Settings` itself is a pure record (the core reads it), while this
module opens files and asks the resolver, so only the command line (p2pd/cli.py) imports it.
"""

from __future__ import annotations

import ipaddress
import socket
import tomllib
from pathlib import Path

from .protocol import valid_host
from .settings import SETTING_NAMES, ConfigError


def load_file(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - SETTING_NAMES)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; see configs/p2pd.toml for the list")
    return data


def check_bind_host(host: str) -> None:
    """Refuse a ``host`` to bind that cannot be one (``127.0.0.2x``), before `p2pd start` creates
    anything: an IP address, ``*``, an interface of this machine (``eth0``), or a host name that
    resolves here (``localhost``), as ZeroMQ binds them.  Not part of `Settings.validate`: that
    runs in the daemon's loop at a reload too, and a name lookup is I/O."""
    h = host.strip("[]") if host.startswith("[") else host
    if h in ("*", "0.0.0.0", "::"):
        return
    try:
        ipaddress.ip_address(h.partition("%")[0])
        return
    except ValueError:
        pass
    try:
        if h in {name for _, name in socket.if_nameindex()}:
            return
    except (AttributeError, OSError):  # no if_nameindex on this platform
        pass
    hint = "an IP address of this machine (0.0.0.0 for all, 127.0.0.1 for this host only), or an interface name such as eth0"
    labels = h.split(".")
    if len(labels) >= 3 and all(label.isascii() and label.isdigit() for label in labels[:-1]):  # 127.0.0.2x, 10.0.0.256
        raise ConfigError(f"host {host!r} is not an IP address: use {hint}")
    if not valid_host(h):
        raise ConfigError(f"host {host!r} is not an IP address, interface or host name: use {hint}")
    try:
        socket.getaddrinfo(h, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ConfigError(f"host {host!r} is not an IP address or interface of this machine, and no such host name resolves: use {hint}") from None
