"""How many inbound connections the node holds, and which ones it refuses.

How this works
--------------
Anyone who can reach the peer, broadcast or key port can open TCP connections
to it, with no key at all; each costs a file descriptor (and, once its CURVE
handshake is done, libzmq's buffers).  Held by the thousand they used to make
the daemon run out of descriptors and exit, or libzmq abort.

libzmq accepts every connection itself and tells the transport through a
socket monitor (ACCEPTED with the connection's descriptor, DISCONNECTED when
it goes).  For each accepted one the transport asks `InboundGuard.accepted`,
which says whether to keep it: not if its source address already holds
``max_inbound_per_host`` connections, not if the node holds ``max_inbound``
(at most half of what the descriptor limit leaves after twice ``HEADROOM``:
libzmq has accepted a connection before we hear of it, so under a fast flood
the descriptors in use run ahead of our count), and not if the process is
within ``HEADROOM`` descriptors of its limit.  A
refused connection is shut down at once (libzmq then closes it); connections
that never finish their handshake are closed by libzmq after its handshake
timeout, and dead ones by ZMTP heartbeats (transport.py).

Pure bookkeeping: no sockets; the transport passes descriptors, addresses and
the count of open descriptors in.
"""

from __future__ import annotations

from collections import Counter

# Descriptors kept free whatever happens: the store and its journal, the log, p2pctl's
# connections to the control socket (libzmq aborts if it cannot accept one), new links.
HEADROOM = 128
# After a flood, each time at least this many connections have gone since the peak (or the
# last trim) and at most half of it remains, freed memory is handed back to the system
# (resources.trim_memory): a handful of trims as a flood of any size drains away.
TRIM_AFTER = 16


class InboundGuard:
    def __init__(self, max_total: int, max_per_host: int, fd_limit: int | None):
        # libzmq accepts before we hear of it, so a fast flood runs ahead of our refusals: keep at
        # least half of a small descriptor budget out of the cap's reach (1,024 -> 384 connections).
        self.max_total = max_total if fd_limit is None else min(max_total, max(16, (fd_limit - 2 * HEADROOM) // 2))
        self.max_per_host = max_per_host
        self.fd_limit = fd_limit
        self.conns: dict[int, str] = {}  # descriptor -> source address, of the connections we keep
        self.per_host: Counter = Counter()
        self.refused = 0
        self.accepted_total = 0
        self.peak = 0

    def accepted(self, fd: int, host: str, open_fds: int | None) -> str | None:
        """A connection came in: None to keep it, else why it is refused (then not tracked)."""
        self.closed(fd)  # a descriptor we still counted was closed and reused: its DISCONNECTED came late
        reason = None
        if self.per_host[host] >= self.max_per_host:
            reason = f"{host} already holds {self.per_host[host]} connections (max_inbound_per_host={self.max_per_host})"
        elif len(self.conns) >= self.max_total:
            reason = f"already {len(self.conns)} inbound connections (max_inbound={self.max_total})"
        elif open_fds is not None and self.fd_limit is not None and open_fds > self.fd_limit - HEADROOM:
            reason = f"{open_fds} of {self.fd_limit} file descriptors in use"
        if reason is not None:
            self.refused += 1
            return reason
        self.accepted_total += 1
        self.conns[fd] = host
        self.per_host[host] += 1
        self.peak = max(self.peak, len(self.conns))
        return None

    def closed(self, fd: int) -> None:
        host = self.conns.pop(fd, None)
        if host is not None:
            self.per_host[host] -= 1
            if self.per_host[host] <= 0:
                del self.per_host[host]

    def flood_over(self) -> bool:
        """True once after many connections went (time to hand memory back); then counts from here."""
        if self.peak - len(self.conns) >= TRIM_AFTER and len(self.conns) * 2 <= self.peak:
            self.peak = len(self.conns)
            return True
        return False

    def describe(self) -> dict:
        """What `p2pctl info --json` shows under ``inbound``."""
        busiest = self.per_host.most_common(1)
        return {
            "connections": len(self.conns),
            "max_inbound": self.max_total,
            "max_inbound_per_host": self.max_per_host,
            "refused": self.refused,
            "accepted": self.accepted_total,
            "busiest_host": {"host": busiest[0][0], "connections": busiest[0][1]} if busiest else None,
            "fd_limit": self.fd_limit,
        }
