"""A small seeded random source (SplitMix64) for nodes that were given none.

The daemon gives its node a `random.Random` seeded from the OS, the simulator one seeded
from its run's seed; a node built without one (unit tests) draws from this: reproducible in
a process, different for every node built (the seed names the node, its start and a
counter), and with no import of `random` or `os` in the core.
"""

from __future__ import annotations

import itertools

from .digest import sha256

_MASK = (1 << 64) - 1
_made = itertools.count()


class SplitMix64:
    def __init__(self, seed: int):
        self._state = seed & _MASK

    def _next(self) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def getrandbits(self, k: int) -> int:
        out, have = 0, 0
        while have < k:
            out = (out << 64) | self._next()
            have += 64
        return out >> (have - k)

    def randbytes(self, n: int) -> bytes:
        return self.getrandbits(n * 8).to_bytes(n, "big") if n else b""


def for_node(node_id: str, wall: float) -> SplitMix64:
    """A source of its own for a node built without one."""
    text = f"{node_id}/{wall!r}/{next(_made)}".encode()
    return SplitMix64(int.from_bytes(sha256(text).digest()[:8], "big"))
