"""systemd's readiness protocol (sd_notify) without a dependency: one datagram to $NOTIFY_SOCKET.

Under a unit with ``Type=notify`` systemd sets ``NOTIFY_SOCKET`` and waits for
``READY=1`` before it counts the service as started (and starts what depends on
it).  Anywhere else the variable is unset and `notify` does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False if there is no one to tell."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or not hasattr(socket, "AF_UNIX"):
        return False
    if addr.startswith("@"):  # a socket in the abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False
