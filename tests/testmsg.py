"""Messages for tests, as a peer would build them: `p2pd.protocol.make` draws ids from a random
source its caller gives; tests share this one (seeded, so a failing test replays alike)."""

from __future__ import annotations

import random
import time

from p2pd import protocol as P

RNG = random.Random(20261206)


def make(*args, **kwargs) -> P.Message:
    """`P.make` with the tests' random source for the id (used only when no msg_id is given)."""
    return P.make(*args, rng=RNG, **kwargs)


def new_id(epoch_s: float | None = None) -> str:
    """A fresh message id (now, unless ``epoch_s`` is given)."""
    return P.new_message_id(time.time() if epoch_s is None else epoch_s, RNG)
