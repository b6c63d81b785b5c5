"""Bad input: counted by kind, logged at most once a second per kind.

Every component that rejects something from the network or the control socket reports it
here, so that `info` shows one ``dropped`` table and a flood of one kind of garbage costs one
log line a second, not one per frame.
"""

from __future__ import annotations

import logging
from collections import Counter

from .ratelimit import LogRateLimiter

log = logging.getLogger("p2pd.node")


class Drops:
    def __init__(self):
        self.counts: Counter = Counter()
        self._limiter = LogRateLimiter(1.0)

    def __call__(self, now: float, kind: str, reason: str, source="") -> None:
        """Count and (rate-limited) log one piece of bad input.

        ``source`` may be a function returning it: looked up only when logged."""
        self.counts[kind] += 1
        ok, suppressed = self._limiter.allow(kind, now)
        if ok:
            if callable(source):
                source = source()
            more = f" ({suppressed} more like it suppressed)" if suppressed else ""
            log.warning("dropped bad input [%s] from %s: %s%s", kind, source or "?", reason, more)
