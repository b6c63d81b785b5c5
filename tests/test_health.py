"""Local health (p2pd/health.py): a node that shows signs of being slow itself gives its peers
longer to be heard from before it takes them for silent (Lifeguard's local health multiplier)."""

from __future__ import annotations

from p2pd.health import DECAY_S, MAX_SCORE, LocalHealth


def test_a_healthy_node_judges_by_the_configured_timeout():
    h = LocalHealth()
    assert h.score(100.0) == 0
    assert h.timeout(100.0, 5.0) == 5.0


def test_each_sign_lengthens_the_timeout_up_to_four_times():
    h = LocalHealth()
    h.degraded(10.0, "stalled")
    assert h.timeout(10.0, 5.0) == 10.0
    h.degraded(11.0, "refuted")
    assert h.timeout(11.0, 5.0) == 15.0
    for t in range(12, 20):
        h.degraded(float(t), "refuted")
    assert h.score(20.0) == MAX_SCORE and h.timeout(20.0, 5.0) == 5.0 * (1 + MAX_SCORE)


def test_calm_takes_one_step_off_per_decay_period_and_a_new_sign_restarts_it():
    h = LocalHealth()
    h.degraded(0.0, "a")
    h.degraded(1.0, "b")
    h.degraded(2.0, "c")
    assert h.score(2.0 + DECAY_S - 0.1) == 3
    assert h.score(2.0 + DECAY_S) == 2
    assert h.score(2.0 + 2.5 * DECAY_S) == 1  # half a period kept: the next step is at 3 periods
    assert h.score(2.0 + 3 * DECAY_S) == 0
    assert h.score(2.0 + 100 * DECAY_S) == 0
    h.degraded(1000.0, "d")
    assert h.score(1000.0 + DECAY_S - 0.1) == 1 and h.score(1000.0 + DECAY_S) == 0
