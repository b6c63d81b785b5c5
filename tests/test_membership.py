"""Unit tests for the membership table (p2pd/membership.py); time is a plain float."""

from __future__ import annotations

import pytest

from p2pd.membership import ALIVE, LINKING, LOST, AmbiguousPeer, Membership, UnknownPeer, host_key, is_loopback
from p2pd.protocol import PeerAddress

A = PeerAddress("127.0.0.1", 5000, 5001)
B = PeerAddress("10.0.0.2", 5010, 5011)


@pytest.fixture
def table() -> Membership:
    return Membership("self-id", retry_min_s=1.0, retry_max_s=8.0, forget_after_s=100.0)


def alive(table: Membership, pid: str, name: str, now: float, address: PeerAddress = A):
    table.learn(pid, name, address, now)
    assert table.heard_from(pid, now) is True
    return table.get(pid)


# ---------------------------------------------------------------------------- learn / heard_from


def test_learn_new_peer_is_linking(table):
    peer, is_new = table.learn("p1", "alice", A, 10.0)
    assert is_new is True
    assert peer.state == LINKING and peer.since == 10.0
    assert peer.last_seen is None and peer.subscribed is False
    assert "p1" in table and len(table) == 1 and table.get("p1") is peer
    assert table.alive() == []


def test_learn_again_updates_name_and_address_but_keeps_state(table):
    alive(table, "p1", "alice", 1.0)
    peer, is_new = table.learn("p1", "alice2", B, 5.0)
    assert is_new is False
    assert peer.name == "alice2" and peer.address == B
    assert peer.state == ALIVE and peer.since == 1.0
    assert len(table) == 1


def test_heard_from_unknown_peer(table):
    assert table.heard_from("ghost", 1.0) is False
    assert "ghost" not in table


def test_linking_to_alive_then_refresh(table):
    table.learn("p1", "alice", A, 1.0)
    assert table.heard_from("p1", 2.0) is True
    peer = table.get("p1")
    assert peer.state == ALIVE and peer.since == 2.0 and peer.last_seen == 2.0
    assert peer.frames_in == 1
    assert table.heard_from("p1", 3.0) is False  # already alive: not "became alive" again
    assert peer.since == 2.0 and peer.last_seen == 3.0 and peer.frames_in == 2
    assert table.alive() == [peer]


def test_alive_to_lost_to_alive(table):
    peer = alive(table, "p1", "alice", 1.0)
    table.set_subscribed("p1", True)
    lost = table.mark_lost("p1", 7.0)
    assert lost is peer
    assert peer.state == LOST and peer.since == 7.0
    assert peer.subscribed is True  # its SUB is still attached to our PUB: only XPUB's unsubscribe clears it
    assert peer.retry_at == 8.0 and peer.retry_backoff_s == 1.0
    assert table.alive() == []
    assert table.heard_from("p1", 9.0) is True
    assert peer.state == ALIVE and peer.since == 9.0 and peer.subscribed is True
    assert peer.retry_at is None and peer.retry_backoff_s == 0.0


def test_mark_lost_twice_or_unknown_is_noop(table):
    alive(table, "p1", "alice", 0.0)
    assert table.mark_lost("p1", 6.0) is not None
    assert table.mark_lost("p1", 7.0) is None
    assert table.get("p1").since == 6.0 and table.get("p1").retry_at == 7.0
    assert table.mark_lost("ghost", 7.0) is None


def test_mark_lost_from_linking(table):
    table.learn("p1", "alice", A, 0.0)
    peer = table.mark_lost("p1", 6.0)
    assert peer.state == LOST and peer.retry_at == 7.0


def test_remove(table):
    alive(table, "p1", "alice", 0.0)
    assert table.remove("p1").id == "p1"
    assert "p1" not in table and len(table) == 0
    assert table.remove("p1") is None


# ---------------------------------------------------------------------------- silent


def test_silent_alive_peer_timeout_boundary(table):
    peer = alive(table, "p1", "alice", 10.0)
    assert table.silent(14.9, 5.0) == []
    assert table.silent(15.0, 5.0) == []  # exactly the timeout: not yet
    assert table.silent(15.01, 5.0) == [peer]
    table.heard_from("p1", 15.0)
    assert table.silent(15.01, 5.0) == []


def test_after_a_stall_of_ours_every_peer_gets_a_full_timeout(table):
    """`resumed`: the node itself did not run for a while; its peers' silence over it says nothing."""
    old = alive(table, "p1", "alice", 0.0)
    table.learn("p2", "bob", A, 1.0)  # a dial not yet answered
    table.silent(2.0, 5.0)  # caches "nobody silent before 5.0"
    table.resumed(20.0)  # we ran again at 20
    assert table.silent(20.0, 5.0) == [] and table.silent(25.0, 5.0) == []
    assert sorted(p.id for p in table.silent(25.01, 5.0)) == ["p1", "p2"]
    assert old.last_seen == 0.0  # what `peers` shows is left as it was


def test_silent_unanswered_link_boundary(table):
    table.learn("p1", "alice", A, 10.0)
    assert table.silent(15.0, 5.0) == []
    assert [p.id for p in table.silent(15.5, 5.0)] == ["p1"]


def test_silent_ignores_lost_peers(table):
    alive(table, "p1", "alice", 0.0)
    table.mark_lost("p1", 6.0)
    assert table.silent(1000.0, 5.0) == []


def test_silent_mixed(table):
    alive(table, "old", "a", 0.0)
    alive(table, "fresh", "b", 9.0)
    table.learn("linking", "c", A, 1.0)
    assert sorted(p.id for p in table.silent(10.0, 5.0)) == ["linking", "old"]


# ---------------------------------------------------------------------------- retries / forgetting


def test_due_retries_exponential_backoff_capped(table):
    alive(table, "p1", "alice", 0.0)
    table.mark_lost("p1", 10.0)
    peer = table.get("p1")
    assert table.due_retries(10.5) == []
    times = []
    now = 10.0
    for _ in range(7):
        now = peer.retry_at
        assert table.due_retries(now - 0.001) == []
        assert table.due_retries(now) == [peer]
        times.append(now)
    assert times == [11.0, 13.0, 17.0, 25.0, 33.0, 41.0, 49.0]  # +1 +2 +4 +8 then capped at 8
    assert peer.retry_backoff_s == 8.0
    assert peer.state == LOST  # retrying does not change the state


def test_due_retries_only_lost_peers(table):
    alive(table, "p1", "alice", 0.0)
    table.learn("p2", "bob", A, 0.0)
    assert table.due_retries(1000.0) == []


def test_backoff_resets_after_recovery(table):
    alive(table, "p1", "alice", 0.0)
    table.mark_lost("p1", 10.0)
    table.due_retries(11.0)
    table.due_retries(13.0)
    assert table.get("p1").retry_backoff_s == 4.0
    table.heard_from("p1", 14.0)
    table.mark_lost("p1", 30.0)
    assert table.get("p1").retry_at == 31.0  # starts from retry_min again


def test_retry_min_larger_than_doubling():
    t = Membership("me", retry_min_s=3.0, retry_max_s=5.0)
    t.learn("p", "p", A, 0.0)
    t.mark_lost("p", 0.0)
    assert t.get("p").retry_at == 3.0
    t.due_retries(3.0)
    assert t.get("p").retry_at == 8.0  # 6 capped at 5


def test_forgettable(table):
    alive(table, "p1", "alice", 0.0)
    alive(table, "p2", "bob", 0.0)
    table.mark_lost("p1", 10.0)
    assert table.forgettable(110.0) == []  # exactly forget_after_s: kept
    assert [p.id for p in table.forgettable(110.5)] == ["p1"]
    assert "p1" in table  # forgettable only reports


# ---------------------------------------------------------------------------- resolve


@pytest.fixture
def crowd(table) -> Membership:
    table.learn("abcd1234ffff", "alice", A, 0.0)
    table.learn("abcd9999eeee", "bob", A, 0.0)
    table.learn("bob-second-id", "bob", B, 0.0)
    table.learn("fedc0000", "carol", B, 0.0)
    table.learn("zzz", "abc", B, 0.0)  # a name that is also an id prefix
    return table


def test_resolve_by_exact_id(crowd):
    assert crowd.resolve("abcd1234ffff").name == "alice"
    assert crowd.resolve("bob-second-id").address == B


def test_resolve_by_unique_name(crowd):
    assert crowd.resolve("alice").id == "abcd1234ffff"
    assert crowd.resolve("carol").id == "fedc0000"


def test_resolve_name_takes_precedence_over_prefix(crowd):
    assert crowd.resolve("abc").id == "zzz"


def test_resolve_by_unique_prefix(crowd):
    assert crowd.resolve("fedc").id == "fedc0000"
    assert crowd.resolve("abcd1").id == "abcd1234ffff"
    assert crowd.resolve("bob-s").id == "bob-second-id"


def test_resolve_prefix_needs_four_chars(crowd):
    with pytest.raises(UnknownPeer, match="'fed'"):
        crowd.resolve("fed")


def test_resolve_ambiguous_name_lists_candidates(crowd):
    with pytest.raises(AmbiguousPeer) as ei:
        crowd.resolve("bob")
    assert [p.id for p in ei.value.candidates] == ["abcd9999eeee", "bob-second-id"]
    text = str(ei.value)
    assert "matches 2 peers" in text and "bob (abcd9999eeee)" in text and "bob (bob-second-i)" in text
    assert "id prefix" in text


def test_resolve_ambiguous_prefix(crowd):
    with pytest.raises(AmbiguousPeer) as ei:
        crowd.resolve("abcd")
    assert [p.name for p in ei.value.candidates] == ["alice", "bob"]


@pytest.mark.parametrize("query", ["dave", "abcx", "", "x" * 70])
def test_resolve_unknown(crowd, query):
    with pytest.raises(UnknownPeer):
        crowd.resolve(query)


def test_all_sorted_by_name_then_id(crowd):
    assert [(p.name, p.id) for p in crowd.all()] == [
        ("abc", "zzz"),
        ("alice", "abcd1234ffff"),
        ("bob", "abcd9999eeee"),
        ("bob", "bob-second-id"),
        ("carol", "fedc0000"),
    ]


def test_find_by_endpoint(crowd):
    assert crowd.find_by_endpoint("tcp://10.0.0.2:5010").id in {"bob-second-id", "fedc0000", "zzz"}
    assert crowd.find_by_endpoint("tcp://127.0.0.1:5001") is None  # a pub endpoint is not a router endpoint
    assert crowd.find_by_endpoint("tcp://9.9.9.9:1") is None


# ---------------------------------------------------------------------------- subscriptions


def test_set_subscribed_before_learn(table):
    table.set_subscribed("p1", True)
    peer, _ = table.learn("p1", "alice", A, 0.0)
    assert peer.subscribed is True


def test_set_subscribed_after_learn_and_unsubscribe(table):
    peer, _ = table.learn("p1", "alice", A, 0.0)
    assert peer.subscribed is False
    table.set_subscribed("p1", True)
    assert peer.subscribed is True
    table.set_subscribed("p1", False)
    assert peer.subscribed is False


def test_unsubscribe_before_learn_forgets_early_subscription(table):
    table.set_subscribed("p1", True)
    table.set_subscribed("p1", False)
    assert table.learn("p1", "alice", A, 0.0)[0].subscribed is False


def test_remove_keeps_a_subscription_in_place(table):
    table.set_subscribed("p1", True)
    table.learn("p1", "alice", A, 0.0)
    table.remove("p1")  # e.g. forgotten, or a LEAVE whose connections have not closed yet
    peer = table.learn("p1", "alice", A, 1.0)[0]
    assert peer.subscribed is True
    table.set_subscribed("p1", False)  # XPUB: the connection ended
    assert peer.subscribed is False


def test_lost_and_relinked_peer_stays_subscribed_until_unsubscribed(table):
    """Issue 12: a peer marked lost whose SUB stayed attached relinks without a new subscribe."""
    peer = alive(table, "p1", "alice", 1.0)
    table.set_subscribed("p1", True)
    table.mark_lost("p1", 7.0)
    table.heard_from("p1", 8.0)
    assert peer.state == ALIVE and peer.subscribed is True
    table.set_subscribed("p1", False)
    assert peer.subscribed is False


def test_subscribed_while_any_connection_is_attached(table):
    """A reconnecting SUB: the new connection's subscribe may come before the old one's unsubscribe."""
    peer = alive(table, "p1", "alice", 1.0)
    table.set_subscribed("p1", True)  # old connection
    table.set_subscribed("p1", True)  # new connection
    table.set_subscribed("p1", False)  # old connection ends
    assert peer.subscribed is True
    table.set_subscribed("p1", False)  # new connection ends
    assert peer.subscribed is False
    table.set_subscribed("p1", False)  # a stray unsubscribe does not go below none
    table.set_subscribed("p1", True)
    assert peer.subscribed is True


# ---------------------------------------------------------------------------- addresses by any spelling


def test_host_key_compares_spellings_of_one_address_without_resolving():
    assert host_key("127.0.0.1") == host_key("::ffff:127.0.0.1") == host_key("[::ffff:127.0.0.1]") == "127.0.0.1"
    assert host_key("::1") == host_key("[0:0:0:0:0:0:0:1]") == "::1"
    assert host_key("Node1.Example.") == host_key("node1.example") == "node1.example"
    assert host_key("localhost") != host_key("127.0.0.1")  # a name is matched by what the client resolved it to


def test_find_by_address_matches_any_given_spelling_at_that_port(table):
    peer = alive(table, "p1", "alice", 1.0, PeerAddress("127.0.0.1", 6000, 6001))
    assert table.find_by_address(["localhost", "127.0.0.1", "::1"], 6000) is peer
    assert table.find_by_address(["::ffff:127.0.0.1"], 6000) is peer
    assert table.find_by_address(["localhost", "::1"], 6000) is None  # none of them is where alice is
    assert table.find_by_address(["127.0.0.1"], 6010) is None


def test_find_by_address_prefers_the_alive_peer_at_an_address(table):
    table.learn("old", "bob", PeerAddress("127.0.0.1", 6000, 6001), 0.0)  # a previous identity, never answered
    new = alive(table, "new", "bob", 1.0, PeerAddress("127.0.0.1", 6000, 6001))
    assert table.find_by_address(["127.0.0.1"], 6000) is new


# ---------------------------------------------------------------------------- describe / loopback


def test_describe(table):
    peer = alive(table, "p1", "alice", 10.0, PeerAddress("::1", 5000, 5001))
    peer.rtt_ms = 1.23456
    d = peer.describe(12.5)
    assert d == {
        "id": "p1",
        "name": "alice",
        "address": "[::1]:5000",  # IPv6 in brackets, as dialled and pinned
        "router": "tcp://[::1]:5000",
        "pub": "tcp://[::1]:5001",
        "state": ALIVE,
        "state_for_s": 2.5,  # alive since 10.0
        "known_for_s": 2.5,  # learned at 10.0
        "last_seen_s": 2.5,
        "rtt_ms": 1.235,
        "subscribed": False,
        "key": None,
        "msgs_in": 0,  # direct messages delivered: none, only the frame that made it alive
        "msgs_out": 0,
        "frames_in": 1,
        "frames_out": 0,
    }
    fresh, _ = table.learn("p2", "bob", A, 0.0)
    assert fresh.describe(1.0)["last_seen_s"] is None and fresh.describe(1.0)["rtt_ms"] is None


def test_lost_peer_shows_no_stale_rtt(table):
    """Issue 13: a lost peer's last RTT is not shown (null, "-"), nor again once it is back until measured anew."""
    peer = alive(table, "p1", "alice", 10.0)
    peer.rtt_ms = 2.5
    assert peer.describe(11.0)["rtt_ms"] == 2.5
    table.mark_lost("p1", 20.0)
    assert peer.describe(21.0)["rtt_ms"] is None
    peer.rtt_ms = 2.5  # even if something set it while lost: only an alive peer shows one
    assert peer.describe(21.0)["rtt_ms"] is None
    peer.rtt_ms = None
    table.heard_from("p1", 30.0)
    peer.rtt_ms = 3.0  # measured on the new link
    table.mark_lost("p1", 40.0)
    table.heard_from("p1", 41.0)  # back: the RTT of the link that died is gone
    assert peer.state == ALIVE and peer.describe(41.0)["rtt_ms"] is None


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
        ("10.0.0.1", False), ("0.0.0.0", False), ("::", False), ("example.org", False), ("", False), (None, False),
        ("192.168.1.1", False), ("localhost.example", False),
    ],
)
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


def test_subscription_bookkeeping_is_bounded_whatever_the_xpub_is_sent():
    from p2pd.membership import SUBSCRIPTIONS_MAX, SUBSCRIPTIONS_PER_ID, Membership

    t = Membership("me")
    for i in range(SUBSCRIPTIONS_MAX + 500):  # a hostile subscriber naming ever new ids
        t.set_subscribed(f"ghost-{i}", True)
    for _ in range(SUBSCRIPTIONS_PER_ID + 500):  # or one id over and over
        t.set_subscribed("ghost-1", True)
    assert len(t._subscriptions) == SUBSCRIPTIONS_MAX and t._subscriptions["ghost-1"] == SUBSCRIPTIONS_PER_ID


def test_silent_skips_the_scan_only_while_nobody_can_be_silent():
    """`silent` remembers the earliest deadline; a peer learned or heard from later, and one
    learned into a table that was empty, are still found the moment they are silent."""
    t = Membership("me")
    assert t.silent(0.0, 5.0) == []  # empty: nobody can be silent before 5.0
    t.learn("a", "a", PeerAddress("10.0.0.1", 1, 2), 1.0)  # linking since 1.0: silent after 6.0
    assert t.silent(5.5, 5.0) == []
    assert [p.id for p in t.silent(6.01, 5.0)] == ["a"]
    t.heard_from("a", 7.0)  # alive, heard at 7.0: silent after 12.0
    t.learn("b", "b", PeerAddress("10.0.0.2", 1, 2), 7.5)
    assert t.silent(8.0, 5.0) == []
    t.heard_from("b", 9.0)
    assert [p.id for p in t.silent(12.01, 5.0)] == ["a"]  # b was heard at 9.0
    assert [p.id for p in t.silent(14.01, 5.0)] == ["a", "b"]
    assert [p.id for p in t.silent(14.01, 2.0)] == ["a", "b"]  # another timeout: its own bound
