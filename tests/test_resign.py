"""resign.py: when a node signs its own record again (pure: time and roster states passed in)."""

from __future__ import annotations

from p2pd.records import ALIVE, SUSPECT
from p2pd.resign import BEACON_RESIGN_S, RESIGN_KEPT, RESIGN_MAX_S, RESIGN_MIN_S, RESIGN_SETTLE_S, Resigning

LINKS = ("a", "b", "c", "d", "e")
BEACON = (3, 1, "ep")


def signed_at(now: float = 0.0, links=LINKS, beacon=BEACON) -> Resigning:
    r = Resigning(now)
    r.signed(links, beacon)
    return r


def first_due(r: Resigning, start: float, links, states=None, beacon=BEACON, step: float = 0.1) -> float | None:
    """The first time from ``start`` (every ``step``, up to 20 s) at which ``due`` says sign."""
    state_of = (states or {}).get
    for k in range(201):
        t = round(start + k * step, 3)
        if r.due(t, links, beacon, lambda p: state_of(p, ALIVE)):
            return t
    return None


def test_nothing_changed_nothing_to_sign():
    assert first_due(signed_at(), 0.0, LINKS) is None


def test_a_link_lost_to_a_node_still_alive_is_signed_at_once():
    assert first_due(signed_at(), 5.0, LINKS[1:]) == 5.0  # routes must stop crossing it


def test_a_link_lost_to_a_suspect_waits_for_the_links_to_settle():
    lost = LINKS[1:]
    assert first_due(signed_at(), 5.0, lost, {"a": SUSPECT}) == 5.0 + RESIGN_SETTLE_S


def test_links_gained_wait_for_the_links_to_settle():
    assert first_due(signed_at(), 5.0, LINKS + ("f",)) == 5.0 + RESIGN_SETTLE_S


def test_links_that_keep_moving_are_signed_at_the_latest_after_resign_max():
    r = signed_at()
    state_of = {}.get
    seq = [LINKS + (f"n{k}",) for k in range(200)]  # a new link every second: never settles
    for k, links in enumerate(seq):
        t = 5.0 + k
        if r.due(t, links, BEACON, lambda p: state_of(p, ALIVE)):
            break
    assert t == 5.0 + RESIGN_MAX_S


def test_a_record_keeping_fewer_than_resign_kept_links_is_signed_at_once():
    gained = LINKS[:RESIGN_KEPT - 1] + ("x", "y", "z", "w")  # a net gain, but few of the signed links kept
    assert first_due(signed_at(), 5.0, gained) == 5.0


def test_signing_is_rate_limited_and_a_signature_resets_the_debounce():
    r = signed_at()
    assert r.due(5.0, LINKS[1:], BEACON, lambda p: ALIVE)
    r.signed(LINKS[1:], BEACON)
    assert first_due(r, 5.0, LINKS[2:]) == 5.0 + RESIGN_MIN_S


def test_broadcast_numbers_alone_are_signed_at_most_every_beacon_resign():
    r = signed_at()
    assert r.due(1.0, LINKS, (4, 1, "ep"), lambda p: ALIVE)
    r.signed(LINKS, (4, 1, "ep"))
    assert first_due(r, 1.0, LINKS, beacon=(5, 1, "ep")) == 1.0 + BEACON_RESIGN_S
