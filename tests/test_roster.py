"""The roster (p2pd/roster.py): precedence, verification, suspicion and refutation, left, the
bounds, the piggyback buffer; then networks of 100 and 1,000 rosters gossiping through an
in-test loop (seeded, unsigned stand-in records there: signing thousands would be slow)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from p2pd import records as r
from p2pd.records import ALIVE, DEAD, LEFT, SUSPECT, Accusation, NodeRecord, Signer
from p2pd.roster import ROUTINE_PENALTY, Heard, Roster

SIGNERS = [Signer.from_curve_secret(r.z85_encode(bytes([i + 1]) * 32)) for i in range(4)]
ME, A, B, C = SIGNERS
ADDR = ("192.0.2.1:7000",)


def rec(signer, inc=0, status=ALIVE, name=None, addrs=ADDR) -> NodeRecord:
    return r.sign(signer, name or f"n{SIGNERS.index(signer)}", addrs, inc, status)


def roster(**kw) -> Roster:
    ro = Roster(rec(ME), **kw)
    ro.piggyback(100)  # our own first announcement out of the way
    while ro.pending():
        ro.piggyback(100)
    return ro


def state(ro, signer):
    return ro.state_of(signer.node_id)


# ---------------------------------------------------------------------------- precedence, verification

def test_a_new_node_is_news_once_and_its_repeat_is_stale():
    ro = roster()
    assert ro.offer(0, rec(A)) == Heard(True, "news")
    assert ro.offer(1, rec(A)).reason == "stale"
    assert [(m.name, m.state, m.incarnation) for m in ro.members()] == [("n1", ALIVE, 0)]
    assert ro.piggyback(10) == [rec(A)]


def test_a_new_name_counts_as_a_change_and_new_links_alone_do_not():
    ro = roster()
    ro.offer(0, rec(A))
    before = ro.changes
    ro.offer(1, rec(A, inc=1, addrs=("192.0.2.1:7001",)))  # a new record, same name and state
    assert ro.changes == before
    ro.offer(2, rec(A, inc=2, name="alice"))  # renamed: the names shown are looked up again
    assert ro.changes == before + 1 and [m.name for m in ro.members()] == ["alice"]


@pytest.mark.parametrize("held, heard, news", [
    # (incarnation, status) of what we hold, of what we hear, is it news (the table of records.newer)
    ((3, ALIVE), (4, ALIVE), True),
    ((3, ALIVE), (2, ALIVE), False),
    ((3, ALIVE), (3, SUSPECT), True),
    ((3, SUSPECT), (3, DEAD), True),
    ((3, DEAD), (3, SUSPECT), False),
    ((3, SUSPECT), (3, ALIVE), False),   # a refutation needs a higher incarnation
    ((3, DEAD), (4, ALIVE), True),       # a live node comes back above its death
    ((3, ALIVE), (4, SUSPECT), False),   # nobody but the node raises its incarnation
    ((3, ALIVE), (2, DEAD), False),      # an accusation only counts against its incarnation
    ((3, LEFT), (3, DEAD), False),       # left is final for its incarnation
    ((3, ALIVE), (3, LEFT), True),
])
def test_precedence_follows_the_swim_table(held, heard, news):
    ro = roster()
    ro.offer(0, rec(A, held[0]))
    if held[1] == LEFT:
        ro.offer(0, rec(A, held[0], LEFT))
    elif held[1] != ALIVE:
        ro.offer(0, rec(B))
        assert ro.offer(0, r.accuse(B, A.node_id, held[0], held[1]))
    fact = rec(A, heard[0], heard[1]) if heard[1] in (ALIVE, LEFT) else r.accuse(C, A.node_id, heard[0], heard[1])
    ro.offer(0, rec(C))
    assert ro.offer(1, fact).news is news
    expect = heard if news else held
    assert state(ro, A) == expect[1]
    assert [m.incarnation for m in ro.members() if m.node_id == A.node_id] == [expect[0]]


def test_signatures_are_checked_with_the_real_verify_and_only_for_what_would_be_news():
    ro = roster()
    forged = replace(rec(A, 5), name="mallory")
    assert ro.offer(0, forged).reason == "bad_signature"
    assert state(ro, A) is None and ro.pending() == 0
    ro.offer(0, rec(A, 5))
    bad_acc = replace(r.accuse(B, A.node_id, 5, DEAD), status=SUSPECT)
    ro.offer(0, rec(B))
    assert ro.offer(0, bad_acc).reason == "bad_signature"
    assert state(ro, A) == ALIVE
    calls = []
    ro2 = roster(verify=calls.append)
    ro2.offer(0, rec(A))
    ro2.offer(0, rec(A))
    assert calls == [rec(A)]  # the stale repeat cost no signature check


def test_accusations_need_a_known_subject_and_a_known_live_accuser():
    ro = roster()
    assert ro.offer(0, r.accuse(B, A.node_id, 0, SUSPECT)).reason == "unknown_subject"
    ro.offer(0, rec(A))
    assert ro.offer(0, r.accuse(B, A.node_id, 0, SUSPECT)).reason == "unknown_accuser"
    ro.offer(0, rec(B))
    assert ro.offer(0, r.accuse(B, A.node_id, 0, SUSPECT))
    assert state(ro, A) == SUSPECT


# ---------------------------------------------------------------------------- suspicion, refutation, left

def test_a_suspicion_times_out_to_dead_and_lifeguard_confirmations_shorten_it():
    ro = roster(suspect_timeout_s=2.0, suspect_max_mult=6.0, suspect_confirmations=2)
    for s in (A, B, C):
        ro.offer(0, rec(s))
    assert ro.suspicion_timeout(0) == pytest.approx(12.0) and ro.suspicion_timeout(2) == pytest.approx(2.0)
    ro.offer(10, r.accuse(B, A.node_id, 0, SUSPECT))
    assert ro.tick(11) == [] and state(ro, A) == SUSPECT  # alone, B's suspicion would last 12 s
    assert ro.offer(11, r.accuse(C, A.node_id, 0, SUSPECT)).reason == "confirmation"
    assert ro.offer(11, r.accuse(C, A.node_id, 0, SUSPECT)).reason == "stale"  # the same accuser twice counts once
    # one confirmation of two: 12 - 10 * log(2) / log(3) = 5.69 s after the suspicion began
    assert ro.tick(15.6) == [] and state(ro, A) == SUSPECT
    assert ro.tick(15.7) == [(A.node_id, 0)]
    assert state(ro, A) == DEAD
    assert ro.offer(13, rec(A, 1))  # alive again above its death (a restart)
    assert state(ro, A) == ALIVE and ro.tick(100) == []


def test_down_since_counts_from_the_suspicion_not_from_the_death_it_became():
    ro = roster(suspect_timeout_s=2.0, suspect_max_mult=1.0)
    for s in (A, B):
        ro.offer(0, rec(s))
    assert ro.down_since(A.node_id) is None and ro.down_since("unknown") is None
    ro.offer(10, r.accuse(B, A.node_id, 0, SUSPECT))
    assert ro.down_since(A.node_id) == 10 and ro.since_of(A.node_id) == 10
    assert ro.tick(13) == [(A.node_id, 0)] and state(ro, A) == DEAD
    assert ro.down_since(A.node_id) == 10 and ro.since_of(A.node_id) == 13  # the state changed, not the downtime
    ro.offer(20, rec(A, 1))  # back
    assert ro.down_since(A.node_id) is None and ro.since_of(A.node_id) == 20
    ro.offer(30, rec(B, 1, LEFT))
    assert ro.down_since(B.node_id) == 30


def test_a_suspicion_of_us_is_refuted_at_a_higher_incarnation_signed_by_the_caller():
    ro = roster()
    ro.offer(0, rec(A))
    heard = ro.offer(1, r.accuse(A, ME.node_id, 0, SUSPECT))
    assert not heard and heard.reason == "about_us"
    assert heard.refute.incarnation == 1 and heard.refute.status == ALIVE and heard.refute.signature == b""
    assert ro.offer(1, r.accuse(A, ME.node_id, 0, DEAD)).refute.incarnation == 2  # pending: above it again
    signed = r.sign(ME, heard.refute.name, heard.refute.addresses, 2)
    ro.set_own(2, signed)
    assert ro.own == signed and ro.state_of(ME.node_id) == ALIVE
    assert ro.piggyback(1) == [signed]  # newest first
    assert ro.offer(3, r.accuse(A, ME.node_id, 1, DEAD)).reason == "stale"  # below our incarnation now
    with pytest.raises(ValueError):
        ro.set_own(4, signed)  # not newer


def test_an_old_record_of_ours_from_a_previous_run_is_refuted_above_it():
    ro = roster()
    assert ro.offer(0, rec(ME, 7, LEFT)).refute.incarnation == 8
    assert ro.offer(0, rec(ME, 0)).reason == "stale"


def test_a_refuted_suspicion_stops_its_timer():
    ro = roster(suspect_timeout_s=1.0)
    for s in (A, B):
        ro.offer(0, rec(s))
    ro.offer(0, r.accuse(B, A.node_id, 0, SUSPECT))
    assert ro.offer(1, rec(A, 1)) and state(ro, A) == ALIVE
    assert ro.tick(1000) == [] and state(ro, A) == ALIVE


def test_an_accusation_above_our_incarnation_cannot_drive_it_up():
    ro = roster()
    ro.offer(0, rec(A))
    heard = ro.offer(0, r.accuse(A, ME.node_id, r.MAX_INCARNATION, DEAD))
    assert heard.reason == "stale" and heard.refute is None and ro.own.incarnation == 0


def test_confirmations_are_counted_up_to_what_shortens_the_timer():
    ro = roster(suspect_confirmations=1)
    for s in (A, B, C):
        ro.offer(0, rec(s))
    ro.offer(0, r.accuse(A, C.node_id, 0, SUSPECT))
    assert ro.offer(0, r.accuse(B, C.node_id, 0, SUSPECT)).reason == "confirmation"
    assert ro.offer(0, r.accuse(ME, C.node_id, 0, SUSPECT)).reason == "stale"  # the timer is at its minimum


def test_left_is_final_for_its_incarnation():
    ro = roster()
    for s in (A, B):
        ro.offer(0, rec(s))
    assert ro.offer(1, rec(A, 0, LEFT))
    assert not ro.offer(2, rec(A, 0, ALIVE)) and not ro.offer(2, r.accuse(B, A.node_id, 0, DEAD))
    assert state(ro, A) == LEFT
    assert ro.offer(3, rec(A, 1)) and state(ro, A) == ALIVE  # only the node, above it


# ---------------------------------------------------------------------------- bounds

def stand_in(i: int, inc=0, status=ALIVE) -> NodeRecord:
    return NodeRecord(f"{i:032x}", f"n{i}", "", b"", (), inc, status)


def _trusted(fact) -> None:
    """Stand-in records carry no signature: the simulations skip the check (tested above)."""


def test_members_are_bounded_and_gone_ones_forgotten_or_evicted():
    ro = Roster(stand_in(0), verify=_trusted, max_members=3, forget_after_s=100)
    for i in (1, 2, 3):
        assert ro.offer(0, stand_in(i))
    assert ro.offer(0, stand_in(4)).reason == "full"
    assert ro.offer(5, stand_in(2, 0, LEFT))
    assert ro.offer(6, stand_in(4))  # the left one made room
    assert ro.state_of(stand_in(2).node_id) is None and ro.size() == 4
    ro.offer(7, stand_in(3, 0, LEFT))
    ro.tick(106)
    assert ro.state_of(stand_in(3).node_id) == LEFT
    ro.tick(107)
    assert ro.state_of(stand_in(3).node_id) is None and len(ro.members()) == 2


def test_a_node_gone_again_is_forgotten_from_its_last_going_not_its_first():
    ro = Roster(stand_in(0), verify=_trusted, forget_after_s=100)
    a, b = stand_in(1).node_id, stand_in(2).node_id
    ro.offer(0, stand_in(1))
    ro.offer(0, stand_in(2))
    ro.offer(5, stand_in(1, 0, LEFT))
    ro.offer(6, stand_in(2, 0, LEFT))
    ro.offer(50, stand_in(1, 1))  # back, then gone again
    ro.offer(60, stand_in(1, 1, LEFT))
    ro.tick(106.5)
    assert ro.state_of(b) is None and ro.state_of(a) == LEFT
    ro.tick(159.5)
    assert ro.state_of(a) == LEFT
    ro.tick(160)
    assert ro.state_of(a) is None


def test_loading_from_the_store_is_bounded_too_and_spreads_nothing():
    ro = Roster(stand_in(0), verify=_trusted, max_members=5)
    ro.piggyback(100)
    while ro.pending():
        ro.piggyback(100)
    assert ro.load([stand_in(i) for i in range(10)], 0) == 5  # ourselves skipped, then five
    assert ro.pending() == 0 and ro.size() == 6


def test_what_one_frame_can_add_is_bounded():
    ro = Roster(stand_in(0), verify=_trusted, max_items_per_frame=10, max_new_per_frame=4)
    heard = ro.offer_many(0, [stand_in(i) for i in range(1, 13)])
    assert [h.reason for h in heard] == ["news"] * 4 + ["too_many_new"] * 6 + ["too_many"] * 2
    assert len(ro.members()) == 4
    # updates of known nodes are not limited by the new-node allowance
    assert all(ro.offer_many(1, [stand_in(i, 1) for i in range(1, 5)]))


def test_each_item_is_piggybacked_lambda_log2_n_times_least_sent_and_newest_first():
    ro = Roster(stand_in(0), verify=_trusted, retransmit_mult=2)
    ro.load([stand_in(i) for i in range(1, 7)], 0)  # loaded: known, not news
    assert ro.size() == 7 and ro.retransmit_limit() == 2 * 3
    assert ro.piggyback(10) == [stand_in(0)]  # only our own announcement
    while ro.pending():
        ro.piggyback(10)
    ro.offer(0, stand_in(1, 1))
    ro.offer(0, stand_in(2, 1))
    assert ro.piggyback(1) == [stand_in(2, 1)]  # newest first
    assert ro.piggyback(2) == [stand_in(1, 1), stand_in(2, 1)]  # least sent first
    sent = {stand_in(1).node_id: 1, stand_in(2).node_id: 2}
    while ro.pending():
        for f in ro.piggyback(2):
            sent[f.node_id] += 1
    assert list(sent.values()) == [6, 6]  # each exactly retransmit_limit() times, then dropped
    ro.offer(0, stand_in(3, 1))
    ro.offer(0, stand_in(3, 2))  # newer news about the same node replaces the item
    assert ro.piggyback(10) == [stand_in(3, 2)]


def test_a_change_of_state_goes_before_a_live_nodes_new_links():
    """After a mass failure every survivor re-signs its record with new links, again and again:
    always fresh, such routine news used to crowd the suspicions out (the last survivors
    heard of a death 8 s after the first).  It now waits as if sent ROUTINE_PENALTY times."""
    ro = Roster(stand_in(0), verify=_trusted)
    ro.load([stand_in(i) for i in range(1, 7)], 0)
    while ro.pending():
        ro.piggyback(10)
    ro.offer(1, Accusation(stand_in(2).node_id, "", b"", stand_in(1).node_id, 0, SUSPECT))
    assert [f.node_id for f in ro.piggyback(1)] == [stand_in(1).node_id]  # the suspicion, sent once
    for i in (3, 4, 5):
        ro.offer(2, stand_in(i, 1))  # routine: known live nodes with new records
    first = ro.piggyback(1)[0]
    assert isinstance(first, Accusation)  # sent once, it still goes before fresh routine news
    assert ro.piggyback(1) == [stand_in(5, 1)]  # sent twice, it ties with them: the newest first
    ro.offer(3, stand_in(7))  # a join is a change of state: first
    assert ro.piggyback(1) == [stand_in(7)]


# ---------------------------------------------------------------------------- networks of rosters

class Net:
    """N rosters; each round every live node sends its piggyback items to ``fanout`` random
    others (one frame each, lost if the target is down), then every node ticks."""

    def __init__(self, n, seed, fanout=3, max_items=8, suspect_timeout_s=2.0):
        self.rng = random.Random(seed)
        self.n, self.fanout, self.max_items = n, fanout, max_items
        recs = [stand_in(i) for i in range(n)]
        self.rosters = []
        for i in range(n):
            ro = Roster(recs[i], verify=_trusted, suspect_timeout_s=suspect_timeout_s)
            ro.load(recs, 0)
            while ro.pending():  # everyone already knows everyone: start quiet
                ro.piggyback(100)
            self.rosters.append(ro)
        self.up = set(range(n))
        self.now = 0.0
        self.sent_per_round: list[int] = []  # the most items any one node sent in a round
        self.items_sent = 0

    def round(self):
        self.now += 1.0
        frames, most = [], 0
        for i in sorted(self.up):
            count = 0
            for _ in range(self.fanout):
                items = self.rosters[i].piggyback(self.max_items)
                if not items:
                    break
                count += len(items)
                j = self.rng.randrange(self.n - 1)
                frames.append((j + (j >= i), items))
            most = max(most, count)
        self.sent_per_round.append(most)
        self.items_sent += sum(len(items) for _, items in frames)
        for j, items in frames:
            if j in self.up:
                for heard in self.rosters[j].offer_many(self.now, items):
                    if heard.refute is not None:  # the node signs its refutation (stand-in: as is)
                        self.rosters[j].set_own(self.now, heard.refute)
        for i in sorted(self.up):
            for node_id, inc in self.rosters[i].tick(self.now):
                self.rosters[i].offer(self.now, Accusation(stand_in(i).node_id, "", b"", node_id, inc, DEAD))

    def run_until(self, done, limit):
        for k in range(1, limit + 1):
            self.round()
            if done():
                return k
        raise AssertionError(f"not done in {limit} rounds")

    def everyone(self, pred):
        return all(pred(self.rosters[i]) for i in self.up)


@pytest.fixture(scope="module")
def big():
    return Net(1000, seed=15)


def test_a_join_reaches_all_1000_in_log_rounds(big):
    new = stand_in(1000)
    big.rosters[0].offer(big.now, new)  # node 0 is the joiner's introducer
    rounds = big.run_until(lambda: big.everyone(lambda ro: ro.state_of(new.node_id) == ALIVE), 40)
    assert rounds <= 20, rounds  # ~ log_4(1000) + a tail; measured 8 (8-9 over seeds 1-3)
    big.run_until(lambda: big.everyone(lambda ro: ro.pending() == 0), 60)  # and the rumour dies out


def test_a_false_suspicion_is_refuted_everywhere(big):
    victim, accuser = 7, 8
    acc = Accusation(stand_in(accuser).node_id, "", b"", stand_in(victim).node_id, 0, SUSPECT)
    assert big.rosters[accuser].offer(big.now, acc)
    vid = stand_in(victim).node_id
    rounds = big.run_until(lambda: big.everyone(
        lambda ro: ro.state_of(vid) == ALIVE and ro.record_of(vid).incarnation == 1), 40)
    assert rounds <= 25, rounds  # measured 13: the suspicion reaches the victim, the refutation comes back
    assert big.rosters[victim].own.incarnation == 1
    big.run_until(lambda: big.everyone(lambda ro: ro.pending() == 0), 60)
    assert big.everyone(lambda ro: ro.state_of(vid) == ALIVE)  # nobody's timer fired meanwhile


def test_a_real_death_becomes_dead_everywhere(big):
    victim, accuser = 11, 12
    vid = stand_in(victim).node_id
    big.up.discard(victim)
    big.rosters[accuser].offer(big.now, Accusation(stand_in(accuser).node_id, "", b"", vid, 0, SUSPECT))
    # the accuser's timer: 6 x 2 s x log10(1000) = 36 rounds, then its dead accusation spreads
    rounds = big.run_until(lambda: big.everyone(lambda ro: ro.state_of(vid) == DEAD), 80)
    assert rounds <= 36 + 20, rounds  # measured 43
    big.run_until(lambda: big.everyone(lambda ro: ro.pending() == 0), 60)


def _one_join(net, new_id):
    """Spread one join; return (most items one node sent in one round, items sent per live node)."""
    net.run_until(lambda: net.everyone(lambda ro: ro.pending() == 0), 60)
    before, rounds_before = net.items_sent, len(net.sent_per_round)
    net.rosters[0].offer(net.now, stand_in(new_id))
    net.run_until(lambda: net.everyone(lambda ro: ro.pending() == 0), 80)
    return max(net.sent_per_round[rounds_before:]), (net.items_sent - before) / len(net.up)


def test_items_sent_per_node_stay_bounded_as_n_grows(big):
    peak_100, total_100 = _one_join(Net(100, seed=3), 100)
    peak_1000, total_1000 = _one_join(big, 2000)
    # per round: at most one frame per target, one item per rumour, whatever N
    assert peak_100 <= 3 and peak_1000 <= 3, (peak_100, peak_1000)
    # per rumour: 3 x ceil(log2(N + 1)) sends by each node, 21 vs 30; a full mesh would send 10x more
    assert (total_100, total_1000) == (21, 30)


def test_a_round_of_frames_ranks_once_and_picks_as_frame_by_frame_would():
    """`piggyback_round` (one gossip round, one frame per neighbour) ranks the buffer once and
    gives each frame what calling `piggyback` once per frame gives: state changes to every
    neighbour first, a backlog of routine news dealt over them, each item dropped after its
    retransmit limit."""
    def loaded():
        ro = Roster(stand_in(0), verify=_trusted, retransmit_mult=1)
        ro.load([stand_in(i) for i in range(1, 80)], 0)
        while ro.pending():
            ro.piggyback(100)
        for i in range(1, 61):
            ro.offer(0, stand_in(i, 1))  # new links: routine news
        for i in range(61, 66):
            ro.offer(0, stand_in(i, 1, LEFT))  # a change of state: urgent
        return ro

    one_by_one, at_once = loaded(), loaded()
    for round_ in range(20):  # 65 items x 7 sends (retransmit_limit) in rounds of 40
        expected = [one_by_one.piggyback(8) for _ in range(5)]
        got = at_once.piggyback_round(8, 5)
        assert got == expected
        assert at_once.pending() == one_by_one.pending()
        if round_ == 0:  # state changes first, to the first 1 + ROUTINE_PENALTY neighbours; routine news dealt
            changes = {f.node_id for f in stand_ins(61, 66)}
            assert all(changes <= {f.node_id for f in frame} for frame in got[:1 + ROUTINE_PENALTY])
            assert len({f.node_id for frame in got for f in frame}) > 8 * 2
    assert at_once.pending() == 0
    assert at_once.piggyback_round(8, 0) == [] and Roster(stand_in(0), verify=_trusted).piggyback_round(0, 2) == [[], []]


def stand_ins(lo: int, hi: int) -> list[NodeRecord]:
    return [stand_in(i, 1, LEFT) for i in range(lo, hi)]


def test_bad_news_and_its_denial_are_hurried_joins_and_new_links_are_not():
    """`alarm_pending` (the gossip round then goes to every neighbour): a suspicion, a death, a
    leave, a node back from one; not a join (hurrying each join made 200 daemons start half as
    slowly again) nor a live node's new links."""
    ro = roster()
    ro.offer(0, rec(A))
    assert ro.pending() == 1 and not ro.alarm_pending()  # a join: first in frames, not hurried
    ro.piggyback(100)
    while ro.pending():
        ro.piggyback(100)
    ro.offer(1, rec(A, 1))
    assert ro.pending() == 1 and not ro.alarm_pending()  # new links: routine
    ro.offer(2, rec(B))
    ro.offer(3, r.accuse(B, A.node_id, 1, SUSPECT))
    assert state(ro, A) == SUSPECT and ro.alarm_pending()
    while ro.pending():
        ro.piggyback(100)
    ro.offer(4, rec(A, 2))  # A refutes
    assert state(ro, A) == ALIVE and ro.alarm_pending()
