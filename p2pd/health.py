"""Local health: how far this node trusts its own judgement that a peer went silent.

How this works
--------------
Lifeguard (Dadgar et al., 2018; memberlist's "awareness") observed that most false failure
reports in SWIM come from the *accuser* being slow: a node starved of CPU, or behind on its
inbound queue, hears its peers late and takes them for dead.  On an overloaded host every
daemon is such a node, and each false suspicion costs the whole network a signed accusation,
a refutation and a link replaced, which loads the host further.

So the node keeps a score from 0 to ``MAX_SCORE``, raised by one each time it has to refute
a suspicion of itself (a peer found it silent: it was slow, or its host is).  Not by a stall
of its own event loop (liveness.py, ``STALL_S``), which has its own rule: under sustained
overload (200 daemons on 2 cores, after 40 were killed) stalls come every few seconds, and
a score raised by each kept the true deaths unnoticed for 46 s instead of 15-22.

Each ``DECAY_S`` without a new sign takes one off.  The heartbeat timeout used to find a peer
silent is the configured one times ``1 + score``: up to four times longer while the node or its
host is struggling, back to the configured value at most 45 s after the last sign.  A crashed peer is
still found dead, later; a peer found silent before the node had any sign is found as fast
as before (after a mass failure the true deaths are seen first, the overload comes after).

Pure: time is passed in.
"""

from __future__ import annotations

import logging

log = logging.getLogger("p2pd.node")

MAX_SCORE = 3
DECAY_S = 15.0


class LocalHealth:
    def __init__(self) -> None:
        self._score = 0
        self._since = 0.0  # when the score was last raised or last decayed by a step

    def score(self, now: float) -> int:
        """The score after decay: one step off per DECAY_S since it was last raised."""
        if self._score and now - self._since >= DECAY_S:
            steps = int((now - self._since) // DECAY_S)
            self._score = max(0, self._score - steps)
            self._since += steps * DECAY_S
        return self._score

    def degraded(self, now: float, why: str) -> None:
        """A sign that this node is slow: its timeouts for others grow (see the module's text)."""
        before = self.score(now)
        self._score = min(MAX_SCORE, before + 1)
        self._since = now
        if self._score != before:
            log.info("local health %d of %d (%s): peers now get %dx the heartbeat timeout before they count as silent",
                     self._score, MAX_SCORE, why, 1 + self._score)

    def timeout(self, now: float, base_s: float) -> float:
        """The heartbeat timeout to judge peers by now."""
        return base_s * (1 + self.score(now))
