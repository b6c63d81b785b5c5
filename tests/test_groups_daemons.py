"""Groups with real daemons: shouts go on while a member is killed (kill -9) and restarted, and
every member stores every shout once, in order; a node outside the group stores none."""

from __future__ import annotations

import threading

from conftest import wait_for

SHOUTS = 30


def room_texts(d) -> list[str]:
    return [m["text"] for m in d.call("inbox", group="room", limit=0)]


def test_a_member_killed_and_restarted_while_shouts_go_on_gets_every_shout_once(make_node):
    alice, bob, carol, dave = (make_node(n) for n in ("alice", "bob", "carol", "dave"))
    alice.start()
    for d in (bob, carol, dave):
        d.start("--join", alice.addr)
    wait_for(lambda: all(len(d.alive_names()) == 3 for d in (alice, bob, carol, dave)), 30, what="all four to list the others")
    for d in (alice, carol, dave):
        assert d.call("join", group="room")["group"] == "room"

    def all_in_room(d) -> bool:
        row = next((g for g in d.call("groups")["groups"] if g["group"] == "room"), None)
        return row is not None and row["count"] == 3

    wait_for(lambda: all(all_in_room(d) for d in (alice, carol, dave)), 30, what="the room's members to be known")

    sent: list[str] = []
    half = threading.Event()

    def shouter():
        for i in range(SHOUTS):
            text = f"shout {i:02d}"
            alice.call("shout", group="room", text=text)
            sent.append(text)
            if i == SHOUTS // 2:
                half.set()
            threading.Event().wait(0.05)  # a pace for the load loop, not a synchronisation

    t = threading.Thread(target=shouter)
    t.start()
    carol.kill9()  # while the shouts go on
    half.wait(30)
    carol.start("--join", alice.addr, port=carol.port)
    t.join(60)
    assert not t.is_alive() and len(sent) == SHOUTS
    for d in (carol, dave):
        wait_for(lambda: len(room_texts(d)) >= SHOUTS, 60, what=f"{d.name} to store every shout")
        assert room_texts(d) == sent, f"{d.name}: every shout once, in order"
    assert room_texts(bob) == [] and bob.call("info")["counters"]["shouts_in"] == 0
    assert [m["text"] for m in alice.call("history", group="room", limit=0)] == sent
