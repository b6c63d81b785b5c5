"""Unit tests of the inbound-connection guard (p2pd/inbound.py): caps per source address, in all,
and near the file-descriptor limit; bookkeeping across closes and reused descriptors."""

from __future__ import annotations

from p2pd.inbound import HEADROOM, TRIM_AFTER, InboundGuard


def test_one_address_is_capped_others_still_get_in():
    g = InboundGuard(max_total=100, max_per_host=3, fd_limit=10_000)
    assert [g.accepted(fd, "10.0.0.9", 50) for fd in (10, 11, 12)] == [None, None, None]
    reason = g.accepted(13, "10.0.0.9", 50)
    assert reason is not None and "10.0.0.9 already holds 3" in reason and "max_inbound_per_host=3" in reason
    assert g.accepted(14, "10.0.0.1", 50) is None  # a legitimate node elsewhere
    g.closed(13)  # the refused one was never counted: its close changes nothing
    assert g.describe()["connections"] == 4 and g.refused == 1
    g.closed(10)
    assert g.accepted(15, "10.0.0.9", 50) is None  # room again once one went


def test_the_total_and_the_descriptor_budget_are_capped():
    g = InboundGuard(max_total=2, max_per_host=10, fd_limit=1024)
    assert g.accepted(1, "a", 10) is None and g.accepted(2, "b", 10) is None
    assert "max_inbound=2" in g.accepted(3, "c", 10)
    g = InboundGuard(max_total=100, max_per_host=10, fd_limit=1024)
    assert g.accepted(1, "a", 1024 - HEADROOM) is None
    assert "file descriptors in use" in g.accepted(2, "b", 1024 - HEADROOM + 1)
    assert g.accepted(3, "c", None) is None  # where the system does not tell, the other caps still hold


def test_a_reused_descriptor_is_not_counted_twice():
    g = InboundGuard(max_total=100, max_per_host=10, fd_limit=None)
    g.accepted(7, "a", None)
    g.accepted(7, "b", None)  # 7 was closed and reused before its DISCONNECTED reached us
    assert g.describe()["connections"] == 1 and dict(g.per_host) == {"b": 1}
    g.closed(7)
    assert g.describe()["connections"] == 0 and not g.per_host and g.describe()["busiest_host"] is None


def test_memory_is_handed_back_a_few_times_as_a_flood_drains():
    g = InboundGuard(max_total=2000, max_per_host=2000, fd_limit=None)
    for fd in range(1000):
        g.accepted(fd, "x", None)
    trims = []
    for fd in range(1000):
        g.closed(fd)
        if g.flood_over():
            trims.append(len(g.conns))
    assert 3 <= len(trims) <= 8 and trims[0] == 500 and trims[-1] <= 2 * TRIM_AFTER
    assert not g.flood_over()


def test_a_small_descriptor_limit_lowers_the_cap_to_leave_slack():
    assert InboundGuard(1024, 128, fd_limit=1024).max_total == (1024 - 2 * HEADROOM) // 2 == 384
    assert InboundGuard(1024, 128, fd_limit=65536).max_total == 1024
    assert InboundGuard(1024, 128, fd_limit=None).max_total == 1024
    assert InboundGuard(1024, 128, fd_limit=200).max_total == 16
