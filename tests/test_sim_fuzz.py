"""Bad input never kills a node, and nothing is lost for it: the simulator's network corrupts a
share of the frames between nodes that sign their records (as daemons do), JSON-aware (a value
swapped for one of another type, a key dropped, a list item repeated), while the nodes form an
overlay and exchange direct messages and broadcasts.  Every corrupted frame must be dropped by
the receiver (an exception out of a node's entry point aborts the run: the test fails), and once
the network is clean again every message must reach its application exactly once (outbox
resends, gap fetches).  Fuzzing like this found a VIEW/TREE ``kind`` that was a list raising
TypeError out of the codec."""

from __future__ import annotations

import random

import orjson
import pytest

from p2pd.sim import Sim, workload

VALUES = [None, True, False, 0, -1, 1, 2**63, -2**63, 2**64 - 1, 1.5, 1e308, "", "x", "\x1b[2J", "a" * 300,
          [], [1], ["x"], [[1, 2]], {}, {"a": 1}, [None], [[None, None]], {"": None}]


def _mutate(rng: random.Random, o, depth: int = 0):
    """``o`` with one thing changed somewhere inside it (or replaced whole)."""
    if isinstance(o, dict) and o:
        k = rng.choice(list(o))
        r = rng.random()
        if r < 0.15:
            del o[k]
        elif r < 0.6 or depth > 4:
            o[k] = rng.choice(VALUES)
        else:
            o[k] = _mutate(rng, o[k], depth + 1)
        return o
    if isinstance(o, list) and o:
        i = rng.randrange(len(o))
        r = rng.random()
        if r < 0.2:
            del o[i]
        elif r < 0.3:
            o.append(o[i])
        elif r < 0.6 or depth > 4:
            o[i] = rng.choice(VALUES)
        else:
            o[i] = _mutate(rng, o[i], depth + 1)
        return o
    return rng.choice(VALUES)


def corrupting(rng: random.Random, share: float, mangled: list):
    """A `Sim.mangle` hook: each ZeroMQ message is corrupted with probability ``share``."""

    def mangle(src: str, dst: str, frames: list) -> list:
        if rng.random() >= share:
            return frames
        frames = list(frames)
        i = rng.randrange(len(frames))
        try:
            obj = orjson.loads(frames[i])
        except orjson.JSONDecodeError:
            return frames  # a routing id, or a batch's binary framing: left as it is
        for _ in range(rng.randint(1, 3)):
            obj = _mutate(rng, obj)
        frames[i] = orjson.dumps(obj)
        mangled.append(1)
        return frames

    return mangle


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_corrupted_frames_are_dropped_and_nothing_is_lost_or_doubled(seed):
    sim = Sim(12, seed, seeds=2, signed=True)
    sim.run_until(1.0)
    sim.run_while(lambda s: not s.meshed(), 60.0)
    assert sim.meshed()
    mangled: list = []
    sim.mangle = corrupting(random.Random(seed), 0.1, mangled)
    start = sim.now
    workload(sim, start, 10.0, direct_per_s=8, broadcasts_per_s=2)
    sim.run_until(start + 12.0)
    sim.mangle = None
    sim.run_while(lambda s: not s.all_delivered(), 120.0)
    c = sim.counts()
    dropped = sum(sum(s.node.dropped.values()) for s in sim.nodes)
    assert len(mangled) > 50 and dropped > 0, (len(mangled), dropped)
    assert c["direct_sent"] >= 60 and c["broadcasts_sent"] >= 15, c
    assert sim.exactly_once(), c
