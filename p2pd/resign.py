"""When a node signs its own record again: soon enough for routes, rarely enough for a repair.

How this works
--------------
A node's signed record lists its links and its broadcast numbers (overlay.py, records.py).
Every record a node signs is verified by every other node, and after a mass failure each
survivor loses its dead neighbours one by one as its heartbeat finds them silent, then gains
replacements one by one: signing each change (at most every RESIGN_MIN_S) made about four
records per survivor in 15 s, whose flood, more than the deaths, kept 160 daemons on 2 cores
busy for a minute.  So `Resigning.due` says:

- a link lost to a node still alive in our roster: sign at once (routes must stop crossing
  it), at most every RESIGN_MIN_S;
- links lost to nodes we hold suspect or dead (the accusation already tells everyone to route
  around them) and links gained (routes keep using the ones we had): sign once our links
  have held for RESIGN_SETTLE_S, RESIGN_MAX_S after the first change at the latest;
- a record that would keep fewer than RESIGN_KEPT of its links still held (a node joining,
  or one that lost most of its neighbours): sign at once;
- links unchanged, broadcast numbers moved: at most every BEACON_RESIGN_S (they only serve
  nodes that missed some).

Whatever makes the overlay sign (these, a change of groups, a refutation), it reports what the
record lists with `signed`.  Owned by `overlay.Overlay`.  Pure: time and the roster's states
are passed in.  (docs/PROTOCOL.md 12.3.)
"""

from __future__ import annotations

from collections.abc import Callable

from .records import ALIVE

RESIGN_MIN_S = 1.0  # our record is signed again at most this often when our links change
RESIGN_SETTLE_S = 2.0  # links gained, or lost to nodes we suspect: signed once they held this long ...
RESIGN_MAX_S = 8.0  # ... or this long after the first such change
RESIGN_KEPT = 3  # a record keeping fewer links still held than this is signed at once
BEACON_RESIGN_S = 5.0  # broadcast numbers alone: signed again at most this often


class Resigning:
    """What our last signed record lists, and the debounce of the changes since."""

    __slots__ = ("links", "beacon", "_seen", "_moved_at", "_unsigned_since", "_at", "_beacon_at")

    def __init__(self, now: float):
        self.links: tuple[str, ...] = ()  # the links our last signed record lists
        self.beacon: tuple = (0, 0, "")  # ... and its broadcast numbers (bseq, boldest, epoch)
        self._seen: tuple[str, ...] = ()  # our links when they last changed ...
        self._moved_at = now  # ... and when
        self._unsigned_since: float | None = None  # the first change of our links not signed yet
        self._at = now  # when a change of links may be signed again
        self._beacon_at = now  # ... and one of broadcast numbers alone

    def signed(self, links: tuple[str, ...], beacon: tuple) -> None:
        """We signed a record listing ``links`` and ``beacon``, for whatever reason."""
        self.links, self.beacon, self._unsigned_since = links, beacon, None

    def due(self, now: float, links: tuple[str, ...], beacon: tuple, state_of: Callable[[str], str | None]) -> bool:
        """Should our record be signed again now, holding ``links`` and numbering broadcasts as
        ``beacon``?  ``state_of``: a node's state in our roster.  True starts the rate limits:
        the caller signs, then reports it with `signed`."""
        if links != self.links:
            if links != self._seen:
                self._seen, self._moved_at = links, now
                if self._unsigned_since is None:
                    self._unsigned_since = now
            if now < self._at:
                return False
            since = self._unsigned_since if self._unsigned_since is not None else now
            held = set(links)
            lost_alive = any(p not in held and state_of(p) == ALIVE for p in self.links)
            routine = not lost_alive and len(held.intersection(self.links)) >= RESIGN_KEPT
            if routine and now - self._moved_at < RESIGN_SETTLE_S and now - since < RESIGN_MAX_S:
                return False
        elif beacon == self.beacon or now < self._beacon_at:
            return False
        self._at = now + RESIGN_MIN_S
        self._beacon_at = now + BEACON_RESIGN_S
        return True
