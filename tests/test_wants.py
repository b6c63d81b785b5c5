"""Records asked of a neighbour after its digest (p2pd/wants.py): each asked of one neighbour at
a time, the next one that offered it asked when the answer is late or the link went."""

from p2pd.wants import MAX_OFFERS, Wants


def test_a_record_is_asked_of_one_neighbour_and_of_the_next_when_the_answer_is_late():
    w = Wants(wait_s=2.0)
    assert w.offered(0.0, "a", "x", 8) is True
    assert w.offered(0.1, "b", "x", 8) is False  # asked of a already
    assert w.offered(0.2, "c", "x", 4) is False  # an older one: nothing to ask
    assert w.due(1.0, {"a", "b", "c"}) == {}
    assert w.due(2.5, {"a", "b", "c"}) == {"b": ["x"]}
    assert w.due(5.0, {"a", "b"}) == {}  # c offered older; nobody else: given up
    assert len(w) == 0


def test_what_came_is_asked_no_more_and_a_newer_offer_is_asked_again():
    w = Wants()
    assert w.offered(0.0, "a", "x", 8)
    w.got("x", 4)  # older than what we asked for: still wanted
    assert len(w) == 1
    assert w.offered(0.5, "b", "x", 12) is True  # newer than what a was asked for
    w.got("x", 12)
    assert len(w) == 0 and w.due(10.0, {"a", "b"}) == {}


def test_a_lost_link_makes_its_asks_due_from_the_next_offer_still_linked():
    w = Wants()
    w.offered(0.0, "a", "x", 8)
    w.offered(0.0, "b", "x", 8)
    w.offered(0.0, "c", "x", 8)
    w.forget_peer("a")
    w.forget_peer("b")
    assert w.due(0.1, {"c"}) == {"c": ["x"]}


def test_a_peer_not_to_be_asked_is_only_noted_until_a_neighbour_offers_or_it_becomes_one():
    w = Wants()
    assert w.offered(0.0, "p", "x", 8, ask=False) is False
    assert w.offered(0.1, "n", "x", 8) is True  # a neighbour offers: asked at once
    w2 = Wants()
    w2.offered(0.0, "p", "x", 8, ask=False)
    assert w2.due(3.0, {"p"}) == {"p": ["x"]}  # p became a neighbour meanwhile


def test_state_is_bounded():
    w = Wants(max_ids=10)
    assert all(w.offered(0.0, "a", f"n{i}", 1) for i in range(10))
    assert w.offered(0.0, "a", "n10", 1) is False and len(w) == 10
    for i in range(MAX_OFFERS + 5):
        w.offered(0.0, f"p{i}", "n0", 1)
    asked = w.due(3.0, {f"p{i}" for i in range(100)})
    assert asked == {"p0": ["n0"]}  # n0 to its first other offer; the rest, offered by a alone, given up
    assert sum(1 for _ in range(MAX_OFFERS) if w.due(9.0 + _ * 3, {f"p{i}" for i in range(100)})) == MAX_OFFERS - 1


def test_what_came_by_another_way_is_not_asked_for_when_due():
    w = Wants()
    w.offered(0.0, "p", "x", 8, ask=False)
    w.offered(0.0, "p", "y", 8, ask=False)
    assert w.due(3.0, {"p"}, lambda node_id, order: node_id == "y") == {"p": ["y"]}
    assert len(w) == 1


def test_one_peer_cannot_fill_the_table_against_the_others():
    w = Wants(max_ids=100, max_per_peer=25)
    made_up = [w.offered(0.0, "hostile", f"fake{i}", 1) for i in range(1000)]
    assert sum(made_up) == 25 and len(w) == 25
    assert all(w.offered(0.1, "honest", f"n{i}", 1) for i in range(25))
    w.offered(0.2, "hostile", "n0", 1)  # offering what another brought in costs it nothing
    assert w.due(2.05, {"hostile", "honest"}) == {}  # the made-up ones, unanswered, given up
    assert len(w) == 25
    assert all(w.offered(2.1, "hostile", f"fake{i}", 1) for i in range(25))  # its share is free again
    w.got("n0", 1)
    assert len(w) == 49
