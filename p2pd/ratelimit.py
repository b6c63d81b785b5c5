"""At most one log line per key per interval, with a count of what was suppressed.

A peer spraying garbage must not flood the log (tailscale #282, kubo #866):
the first bad frame of each kind is logged at once, later ones within the
interval are only counted and reported with the next line that gets through.
Pure: the caller passes the time.
"""

from __future__ import annotations


class LogRateLimiter:
    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str, now: float) -> tuple[bool, int]:
        """(may log now, how many were suppressed since the last line)."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)
