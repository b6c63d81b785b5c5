"""Operating-system resources of the daemon: its file-descriptor budget and returning freed memory.

Every TCP connection, ZeroMQ socket and open file costs a descriptor, and at
the soft limit (often 1,024) libzmq and Python fail in places that cannot
recover (libzmq aborts when its IPC listener cannot accept).  So the daemon
raises its soft limit to the hard one at start, and `inbound.InboundGuard`
refuses inbound connections well before the budget runs out.
"""

from __future__ import annotations

import os
import sys

try:
    import resource
except ImportError:  # Windows: no rlimits; the C runtime's own limit applies
    resource = None

_FD_DIR = "/proc/self/fd" if sys.platform.startswith("linux") else "/dev/fd"


def raise_nofile() -> tuple[int | None, int | None, int | None]:
    """Raise the soft RLIMIT_NOFILE to the hard limit: (before, now, hard); Nones where unknown."""
    if resource is None:
        return None, None, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if want == resource.RLIM_INFINITY or want > 1_048_576:
        want = 1_048_576  # macOS reports "unlimited" but refuses more than its own cap
    if soft != resource.RLIM_INFINITY and soft < want:
        for target in (want, 65_536, 10_240):  # macOS: OPEN_MAX may be below the hard limit
            if target <= soft:
                break
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                break
            except (ValueError, OSError):
                continue
    now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, now, hard


def soft_limit() -> int | None:
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def open_fds() -> int | None:
    """How many descriptors this process has open now (None where the system does not tell)."""
    try:
        return len(os.listdir(_FD_DIR))
    except OSError:
        return None


_libc = None


def trim_memory() -> bool:
    """Give freed heap memory back to the system (glibc's malloc_trim); False where there is none.

    libzmq allocates buffers per connection in its I/O thread; after a flood of
    connections closes, glibc keeps those pages in its arenas, and the daemon's
    RSS would stay at the flood's peak for good."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            import ctypes  # only after a flood: not worth its memory in every idle daemon

            _libc = ctypes.CDLL(None)  # the symbols already loaded: glibc's, where it is glibc
        return bool(_libc.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False


class Trimmer:
    """Hand freed heap memory back now and then (`trim_memory`).  Joining a network allocates in
    bursts (every member's record pushed by each new neighbour, decoded, most of it dropped as
    already known); glibc keeps the freed pages, and an idle daemon would sit at that peak.  A
    trim costs about a millisecond: every ``early_s`` for the first ``early_for_s`` (a network
    of hundreds forms, and repairs after a start, within a minute or two of it; one trim at
    30 s came before the burst ended in most daemons of a 200-node start), then every
    ``every_s``."""

    def __init__(self, now: float, early_s: float = 20.0, early_for_s: float = 300.0, every_s: float = 300.0):
        self.started = now
        self.next_at = now + early_s
        self.early_s = early_s
        self.early_for_s = early_for_s
        self.every_s = every_s

    def tick(self, now: float) -> None:
        if now >= self.next_at:
            early = now - self.started < self.early_for_s
            self.next_at = now + (self.early_s if early else self.every_s)
            trim_memory()
