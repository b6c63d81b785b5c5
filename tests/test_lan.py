"""Unit tests of LAN discovery: the beacon codec, when to beacon and whom to dial (no sockets).

The beacons themselves only ever go out inside network namespaces (tests/test_netlab.py).
"""

from __future__ import annotations

import pytest
import zmq
from hypothesis import given, settings as hsettings, strategies as st

from p2pd import lan
from p2pd import protocol as P
from p2pd.actions import LanBeacon, OpenLink, PinKey
from p2pd.node import Node
from p2pd.settings import ConfigError, Settings, build
from p2pd.trust import Trust, node_id_for


def gen() -> str:
    return zmq.curve_keypair()[0].decode()


KEY_A, KEY_B, KEY_C = gen(), gen(), gen()
ID_A, ID_B = node_id_for(KEY_A), node_id_for(KEY_B)


def test_secure_and_insecure_beacons_round_trip_at_their_fixed_sizes():
    data = lan.encode(ID_A, 7000, KEY_A)
    assert len(data) == lan.SECURE_SIZE == 64 and data[:4] == b"P2PB"
    assert lan.decode(data) == lan.Beacon(ID_A, 7000, KEY_A)
    plain = lan.encode("0123456789abcdef0123456789abcdef", 5000, None)
    assert len(plain) == lan.INSECURE_SIZE == 24
    assert lan.decode(plain) == lan.Beacon("0123456789abcdef0123456789abcdef", 5000, None)


@pytest.mark.parametrize("spoil, reason", [
    (lambda b: b[:-1], "bytes, a beacon has"),
    (lambda b: b"XXXX" + b[4:], "wrong magic"),
    (lambda b: b[:4] + b"\x02" + b[5:], "version 2"),
    (lambda b: b[:5] + b"\x03" + b[6:], "unknown flags"),
    (lambda b: b[:5] + b"\x00" + b[6:], "secure flag does not match"),
    (lambda b: b[:6] + b"\x00\x00" + b[8:], "port 0"),
    (lambda b: b[:8] + bytes(16) + b[24:], "not the one its key gives"),
    (lambda b: b[:24] + b"\xff" * 40, "not Z85 text"),
    (lambda b: b[:24] + b" " * 40, "not a Z85 CURVE key"),
])
def test_every_kind_of_bad_beacon_is_refused_with_a_reason(spoil, reason):
    with pytest.raises(lan.BadBeacon, match=reason):
        lan.decode(spoil(lan.encode(ID_A, 7000, KEY_A)))


@hsettings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_decoding_arbitrary_bytes_only_ever_raises_bad_beacon(data):
    try:
        lan.decode(data)
    except lan.BadBeacon:
        pass


def test_beacons_go_out_once_per_interval_from_the_start():
    d = lan.LanDiscovery(ID_A, 7000, KEY_A, 1.0, now=10.0)
    assert d.due(10.0) == lan.encode(ID_A, 7000, KEY_A)
    assert d.due(10.5) is None
    assert d.due(11.0) is not None and d.sent == 2


def test_the_smaller_id_dials_at_once_the_larger_waits_and_steps_in_later():
    small, big = sorted([ID_A, ID_B])
    key_of = {ID_A: KEY_A, ID_B: KEY_B}
    d_small = lan.LanDiscovery(small, 7000, key_of[small], 1.0, 0.0)
    d_big = lan.LanDiscovery(big, 7000, key_of[big], 1.0, 0.0)
    assert d_small.should_dial(0.0, lan.Beacon(big, 7000, key_of[big]), linked=False)
    assert not d_big.should_dial(0.0, lan.Beacon(small, 7000, key_of[small]), linked=False)
    assert not d_big.should_dial(2.9, lan.Beacon(small, 7000, key_of[small]), linked=False)
    assert d_big.should_dial(3.0, lan.Beacon(small, 7000, key_of[small]), linked=False)  # the smaller never did


def test_no_dial_to_ourselves_to_a_linked_peer_to_another_mode_or_twice_within_redial():
    d = lan.LanDiscovery("0" * 32, 7000, KEY_A, 1.0, 0.0)
    assert not d.should_dial(0.0, lan.Beacon("0" * 32, 7000, KEY_A), linked=False)
    assert not d.should_dial(0.0, lan.Beacon(ID_B, 7000, None), linked=False)  # an insecure node
    assert not d.should_dial(0.0, lan.Beacon(ID_B, 7000, KEY_B), linked=True)
    assert d.should_dial(0.0, lan.Beacon(ID_B, 7000, KEY_B), linked=False)
    assert not d.should_dial(lan.REDIAL_S - 0.1, lan.Beacon(ID_B, 7000, KEY_B), linked=False)
    assert d.should_dial(lan.REDIAL_S, lan.Beacon(ID_B, 7000, KEY_B), linked=False)


def test_a_flood_of_beacons_dials_at_most_a_few_a_second_and_stays_bounded():
    d = lan.LanDiscovery("0" * 32, 7000, None, 1.0, 0.0)
    dials = sum(d.should_dial(0.5, lan.Beacon(f"{i + 1:032x}", 7000, None), linked=False) for i in range(5000))
    assert dials == lan.MAX_DIALS_PER_S
    assert len(d.first_heard) <= lan.MAX_TRACKED and len(d.dialed) <= lan.MAX_TRACKED


def lan_node(key=KEY_A, allowed=None, secure=True) -> Node:
    s = Settings(host="0.0.0.0", discover="lan", discover_interval_s=1.0)
    return Node(node_id_for(key), "alice", P.PeerAddress(None, 7000, 7001), s, 0.0, 1.7e9,
                trust=Trust(key, secure=secure, allowed=allowed))


def test_a_node_with_lan_discovery_beacons_on_its_ticks_and_wakes_for_them():
    node = lan_node()
    assert [a.payload for a in node.tick(0.0) if isinstance(a, LanBeacon)] == [lan.encode(node.id, 7000, KEY_A)]
    assert not [a for a in node.tick(0.5) if isinstance(a, LanBeacon)]
    assert node.next_deadline(0.5) <= 0.5
    assert node.info(0.5)["discover"]["beacons_sent"] == 1


def test_a_beacon_from_an_unlinked_node_dials_it_with_the_key_it_carries():
    node = lan_node(KEY_A)
    other = KEY_B
    acts = node.on_lan_beacon(1.0, lan.encode(node_id_for(other), 7100, other), "10.0.0.9")
    if node.id > node_id_for(other):
        acts = node.on_lan_beacon(1.0 + lan.WAIT_INTERVALS, lan.encode(node_id_for(other), 7100, other), "10.0.0.9")
    kinds = {type(a) for a in acts}
    # pinned only when the node of that key answers there: a forged beacon pins nothing
    assert OpenLink in kinds and PinKey not in kinds
    (link,) = [a for a in acts if isinstance(a, OpenLink)]
    assert link.endpoint == "tcp://10.0.0.9:7100" and link.server_key == other


def test_bad_beacons_are_counted_and_untrusted_keys_ignored():
    node = lan_node(KEY_A, allowed={KEY_A})
    assert node.on_lan_beacon(1.0, b"junk", "10.0.0.9") == []
    assert node.dropped["bad_beacon"] == 1
    for t in (1.0, 5.0):  # whatever the id order, an unlisted key is never dialed
        assert node.on_lan_beacon(t, lan.encode(ID_B, 7100, KEY_B), "10.0.0.9") == []


def test_a_node_without_lan_discovery_ignores_beacons():
    node = Node(ID_A, "alice", P.PeerAddress(None, 7000, 7001), Settings(), 0.0, 1.7e9, trust=Trust(KEY_A, secure=True))
    assert node.on_lan_beacon(1.0, lan.encode(ID_B, 7100, KEY_B), "10.0.0.9") == []
    assert not [a for a in node.tick(0.0) if isinstance(a, LanBeacon)]
    assert node.info(0.0)["discover"] is None


@pytest.mark.parametrize("values, message", [
    ({"discover": "mdns"}, 'discover must be "none" or "lan"'),
    ({"discover_port": 0}, "discover_port must be 1-65535"),
    ({"discover_to": "everyone"}, "discover_to must be an IPv4 broadcast address"),
    ({"discover_interval_s": 0}, "discover_interval_s must be a positive number"),
])
def test_lan_settings_are_checked(values, message):
    with pytest.raises(ConfigError, match=message):
        build(values, {})


def test_lan_settings_from_flags_override_the_file():
    s = build({"discover": "none", "discover_port": 6000}, {"discover": "lan", "discover_port": None})
    assert (s.discover, s.discover_port, s.discover_to) == ("lan", 6000, "255.255.255.255")
