"""Signed node records (p2pd/records.py): the key binding, signatures, tampering, precedence,
refutation, the wire form, and a fixed vector for docs/PROTOCOL.md."""

from __future__ import annotations

import dataclasses
from hashlib import sha512

import orjson
import pytest
import zmq
import zmq.utils.z85
from nacl import bindings as na
from nacl.signing import SigningKey

from p2pd import records as r
from p2pd.records import ALIVE, DEAD, LEFT, SUSPECT, Accusation, BadRecord, NodeRecord, Signer
from p2pd.trust import node_id_for

# Fixed keys for the vector: CURVE secrets 0x00..0x1f and 0x20..0x3f, as Z85 text.
SECRET_A = "009c61o!#m2NH?C3>iWS5d]J*6CRx17-skh9337x"
SECRET_B = "ar.{NbQB=+c[cR@eg&FcfFLssg=mfIi5%2YjuU>)"
ALICE = Signer.from_curve_secret(SECRET_A)
BOB = Signer.from_curve_secret(SECRET_B)
CAROL = Signer.from_curve_secret(zmq.curve_keypair()[1].decode())
ADDRS = ("192.0.2.1:7000", "[2001:db8::1]:7000")


def rec(signer=ALICE, inc=3, status=ALIVE, name="alice", addrs=ADDRS) -> NodeRecord:
    return r.sign(signer, name, addrs, inc, status)


def kind(fact) -> str:
    with pytest.raises(BadRecord) as info:
        r.verify(fact)
    return info.value.kind


# --- keys and the signing primitive ------------------------------------------------------

def test_z85_and_the_curve_key_match_zeromq():
    for _ in range(5):
        public, secret = zmq.curve_keypair()
        assert r.z85_decode(secret.decode()) == zmq.utils.z85.decode(secret)
        signer = Signer.from_curve_secret(secret.decode())
        assert signer.curve_key == public.decode()  # the same identity the daemon has today
        assert signer.node_id == node_id_for(public.decode())
    assert zmq.utils.z85.encode(bytes(range(32))).decode() == SECRET_A


def test_the_verify_key_is_the_edwards_form_of_the_curve_key():
    for signer in (ALICE, BOB, CAROL):
        assert na.crypto_sign_ed25519_pk_to_curve25519(signer.verify_key) == r.z85_decode(signer.curve_key)
        r.check_binding(signer.node_id, signer.curve_key, signer.verify_key)


def _rfc8032_parts(seed: bytes):
    h = sha512(seed).digest()
    scalar = na.crypto_core_ed25519_scalar_reduce(r._clamp(h[:32]) + bytes(32))
    return scalar, h[32:], na.crypto_scalarmult_ed25519_base(h[:32])


def test_signing_from_a_scalar_is_rfc8032_ed25519_byte_for_byte():
    # RFC 8032 section 7.1, TEST 1 (empty message).
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    scalar, prefix, pk = _rfc8032_parts(seed)
    assert pk.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert r._ed25519_sign(scalar, prefix, pk, b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    # And libsodium's own signer agrees on other seeds and messages.
    for i in range(8):
        seed = sha512(b"seed %d" % i).digest()[:32]
        msg = b"m" * (i * 37)
        scalar, prefix, pk = _rfc8032_parts(seed)
        key = SigningKey(seed)
        assert bytes(key.verify_key) == pk
        assert r._ed25519_sign(scalar, prefix, pk, msg) == key.sign(msg).signature


# --- records: round trip and tampering ---------------------------------------------------

def test_sign_verify_and_the_wire_round_trip():
    a = rec()
    r.verify(a)
    wire = orjson.loads(orjson.dumps(r.encode(a)))
    assert r.decode(wire) == a
    r.verify(r.decode(wire))
    multi = rec(addrs=("10.0.0.1:1", "10.1.0.1:2", "host.example:65535"))
    r.verify(r.decode(r.encode(multi)))
    r.verify(rec(addrs=()))  # a node that accepts nothing (dials out only)


TAMPERED = [
    ("node_id", BOB.node_id, "bad_id"),
    ("name", "mallory", "bad_signature"),
    ("curve_key", BOB.curve_key, "bad_id"),
    ("verify_key", BOB.verify_key, "bad_verify_key"),
    ("verify_key", bytes(32), "bad_verify_key"),
    ("addresses", ("203.0.113.9:7000",), "bad_signature"),
    ("addresses", ADDRS[::-1], "bad_signature"),
    ("addresses", ADDRS[:1], "bad_signature"),
    ("incarnation", 4, "bad_signature"),
    ("incarnation", 2, "bad_signature"),
    ("status", LEFT, "bad_signature"),
    ("status", DEAD, "bad_status"),
    ("signature", b"", "bad_signature"),
]


@pytest.mark.parametrize("field,value,expected", TAMPERED, ids=[f"{f}-{e}" for f, _, e in TAMPERED])
def test_every_field_tampered_fails(field, value, expected):
    assert kind(dataclasses.replace(rec(), **{field: value})) == expected


def test_every_bit_of_the_signature_matters():
    good = rec()
    for i in range(0, 512, 7):
        sig = bytearray(good.signature)
        sig[i // 8] ^= 1 << (i % 8)
        assert kind(dataclasses.replace(good, signature=bytes(sig))) == "bad_signature"


def test_every_field_tampered_on_the_wire_fails():
    wire = r.encode(rec())
    changes = {"id": BOB.node_id, "name": "mallory", "key": BOB.curve_key, "vk": BOB.verify_key.hex(),
               "addrs": ["203.0.113.9:7000"], "inc": 9, "status": LEFT, "sig": "00" * 64}
    for field, value in changes.items():
        with pytest.raises(BadRecord):
            r.verify(r.decode({**wire, field: value}))


def test_a_record_for_x_signed_by_y_fails():
    x = rec(ALICE)
    # Y's own verify key beside X's CURVE key and id: the binding refuses it.
    forged = dataclasses.replace(x, verify_key=BOB.verify_key, name="alice-evil")
    forged = dataclasses.replace(forged, signature=BOB.sign(forged.signed_bytes()))
    assert kind(forged) == "bad_verify_key"
    # X's verify key kept, signed by Y: the signature fails.
    forged = dataclasses.replace(x, addresses=("203.0.113.9:7000",))
    forged = dataclasses.replace(forged, signature=BOB.sign(forged.signed_bytes()))
    assert kind(forged) == "bad_signature"
    # -A maps to the same CURVE key (the binding passes) but only -a signs for it: Y cannot.
    minus_a = na.crypto_core_ed25519_sub(bytes([1]) + bytes(31), ALICE.verify_key)
    r.check_binding(ALICE.node_id, ALICE.curve_key, minus_a)
    forged = dataclasses.replace(x, verify_key=minus_a, incarnation=99)
    forged = dataclasses.replace(forged, signature=BOB.sign(forged.signed_bytes()))
    assert kind(forged) == "bad_signature"


def test_a_remembered_binding_skips_only_the_binding_check_and_the_set_is_bounded(monkeypatch):
    bound: set = set()
    r.verify(rec(ALICE), bound)
    assert bound == {(ALICE.node_id, ALICE.curve_key, ALICE.verify_key)}
    calls = []
    real = r.check_binding
    monkeypatch.setattr(r, "check_binding", lambda *a: calls.append(a) or real(*a))
    r.verify(rec(ALICE, inc=4), bound)
    assert calls == []  # alice's keys were checked once
    with pytest.raises(BadRecord) as info:  # the signature is still checked every time
        r.verify(dataclasses.replace(rec(ALICE, inc=5), name="mallory"), bound)
    assert info.value.kind == "bad_signature"
    forged = dataclasses.replace(rec(ALICE), verify_key=BOB.verify_key)  # another triple: checked, refused, not kept
    with pytest.raises(BadRecord):
        r.verify(dataclasses.replace(forged, signature=BOB.sign(forged.signed_bytes())), bound)
    assert len(calls) == 1 and len(bound) == 1
    monkeypatch.setattr(r, "BOUND_MAX", 1)
    r.verify(rec(BOB, name="bob"), bound)  # full: forgotten all at once, then bob kept
    assert bound == {(BOB.node_id, BOB.curve_key, BOB.verify_key)}


def test_a_node_says_only_alive_or_left_of_itself_and_fields_are_bounded():
    for status in (SUSPECT, DEAD, "zombie"):
        with pytest.raises(BadRecord) as info:
            rec(status=status)
        assert info.value.kind == "bad_status"
    for bad in (dict(name=""), dict(name="x" * 65), dict(addrs=("nohost",)), dict(addrs=("h:0",)),
                dict(addrs=("h:70000",)), dict(addrs=("h:1", "h:1")), dict(addrs=tuple(f"h:{i}" for i in range(1, 10))),
                dict(inc=-1), dict(inc=2**63)):
        with pytest.raises(BadRecord) as info:
            rec(**bad)
        assert info.value.kind == "malformed", bad


@pytest.mark.parametrize("wire", [
    None, [], "x", {},
    {"id": "a"},
    lambda w: {**w, "extra": 1},
    lambda w: {**w, "inc": "3"},
    lambda w: {**w, "inc": True},
    lambda w: {**w, "addrs": "192.0.2.1:7000"},
    lambda w: {**w, "addrs": [7000]},
    lambda w: {**w, "vk": "zz" * 32},
    lambda w: {**w, "vk": "AB" * 32},
    lambda w: {**w, "sig": "00" * 63},
    lambda w: {**w, "key": "short"},
    lambda w: {**w, "id": w["id"].upper()},
])
def test_decode_refuses_a_malformed_wire_form(wire):
    if callable(wire):
        wire = wire(r.encode(rec()))
    with pytest.raises(BadRecord) as info:
        r.decode(wire)
    assert info.value.kind == "malformed"


# --- accusations -------------------------------------------------------------------------

def test_an_accusation_is_signed_by_its_accuser_and_bound_to_it():
    acc = r.accuse(BOB, ALICE.node_id, 3, DEAD)
    r.verify(acc)
    assert r.decode(orjson.loads(orjson.dumps(r.encode(acc)))) == acc
    for field, value in (("node_id", CAROL.node_id), ("incarnation", 4), ("status", SUSPECT), ("accuser_id", CAROL.node_id),
                         ("accuser_key", CAROL.curve_key), ("accuser_verify_key", CAROL.verify_key)):
        with pytest.raises(BadRecord):
            r.verify(dataclasses.replace(acc, **{field: value}))
    # Carol cannot put words in Bob's mouth.
    framed = dataclasses.replace(acc, signature=CAROL.sign(acc.signed_bytes()))
    assert kind(framed) == "bad_signature"
    # A record's signature is never an accusation's (domain separation), and vice versa.
    assert not acc.signed_bytes().startswith(r.DOMAIN_RECORD)
    for status in (ALIVE, LEFT):
        with pytest.raises(BadRecord):
            r.accuse(BOB, ALICE.node_id, 3, status)
    with pytest.raises(BadRecord):
        r.accuse(ALICE, ALICE.node_id, 3, DEAD)  # a node leaves, it does not accuse itself


# --- precedence --------------------------------------------------------------------------

def acc(status, inc=3, by=BOB):
    return r.accuse(by, ALICE.node_id, inc, status)


PRECEDENCE = [
    # (a, b, a supersedes b?)
    ("alive 4", "alive 3", True),
    ("alive 3", "alive 4", False),
    ("alive 3", "alive 3", False),
    ("suspect 3", "alive 3", True),
    ("dead 3", "alive 3", True),
    ("dead 3", "suspect 3", True),
    ("suspect 3", "dead 3", False),
    ("alive 3", "suspect 3", False),   # same incarnation: a node must raise it to refute
    ("alive 4", "suspect 3", True),    # the refutation
    ("alive 4", "dead 3", True),       # a false death refuted
    ("suspect 3", "alive 4", False),   # an old suspicion does not undo a refutation
    ("dead 3", "alive 4", False),
    ("suspect 5", "alive 4", False),   # a third party cannot raise the incarnation
    ("dead 5", "alive 4", False),
    ("left 3", "alive 3", True),
    ("left 3", "dead 3", True),
    ("dead 3", "left 3", False),       # left is final for its incarnation
    ("suspect 3", "left 3", False),
    ("alive 3", "left 3", False),
    ("dead 9", "left 3", False),
    ("alive 4", "left 3", True),       # only the node itself comes back (a restart)
    ("left 4", "dead 3", True),
]


def fact(text: str):
    status, inc = text.split()
    return rec(inc=int(inc), status=status) if status in (ALIVE, LEFT) else acc(status, int(inc))


@pytest.mark.parametrize("a,b,expected", PRECEDENCE)
def test_precedence(a, b, expected):
    assert r.newer(fact(a), fact(b)) is expected


def test_newer_refuses_facts_about_two_nodes():
    with pytest.raises(ValueError):
        r.newer(rec(ALICE), rec(BOB, name="bob"))


def test_a_live_node_refutes_a_false_suspicion_and_a_false_death():
    """What a node holding facts about alice sees, step by step."""
    held = rec(inc=1)
    suspicion = acc(SUSPECT, 1, by=BOB)
    assert r.newer(suspicion, held)
    held = suspicion
    death = acc(DEAD, 1, by=CAROL)
    assert r.newer(death, held)
    held = death
    # Alice hears it and signs herself alive at a higher incarnation: that wins.
    refutation = rec(inc=2)
    r.verify(refutation)
    assert r.newer(refutation, held)
    held = refutation
    # The stale accusations still travelling lose; a new one must name incarnation 2.
    assert not r.newer(death, held) and not r.newer(suspicion, held)
    assert r.newer(acc(SUSPECT, 2, by=BOB), held)
    # Nobody but alice can make a higher incarnation: a forged one fails verification.
    forged = dataclasses.replace(rec(inc=1), incarnation=7)
    assert kind(forged) == "bad_signature"


# --- the vector for docs/PROTOCOL.md -----------------------------------------------------

def test_third_party_vector():
    assert ALICE.curve_key == "K3HW^WVq.zo69t)(umF>:XvwTj:QGN^yKlWaVH(S"
    assert ALICE.node_id == "d33dc78c88f28add81e5c0dec7e4b1dd"
    assert ALICE.verify_key.hex() == "1ac105ea144728da5ebea01e5ee75d70584f1f3cd448b1ec7c2bddda3fbd1f0e"
    a = rec()  # alice, 192.0.2.1:7000 and [2001:db8::1]:7000, incarnation 3, alive
    assert a.signed_bytes().hex() == (
        "703270642d7265636f72642d7632000020"  # "p2pd-record-v2\0", len 32
        "6433336463373863383866323861646438316535633064656337653462316464"  # id
        "0005616c696365"  # "alice"
        "00284b3348575e5756712e7a6f3639742928756d463e3a587677546a3a51474e5e794b6c576156482853"  # CURVE key
        "1ac105ea144728da5ebea01e5ee75d70584f1f3cd448b1ec7c2bddda3fbd1f0e"  # verify key
        "0002000e3139322e302e322e313a37303030" "00125b323030313a6462383a3a315d3a37303030"  # 2 addresses
        "0000000000000003"  # incarnation
        "0005616c697665"  # "alive"
        "0000000000000000"  # PUB port (none)
        "0000"  # links (none)
        "0000000000000000" "0000000000000000" "0000"  # bseq, boldest, bepoch (none)
        "0000")  # groups (none)
    assert a.signature.hex() == (
        "13e4b19847fa02aa45c18df95d8e73c8d2bbd65bed84a63aac8761cec5518540"
        "4a8c9699f1acfc2ababf99b8cb7a5c01a48d6b2f97ec639faa505f9cf7d92707")
    d = r.accuse(BOB, ALICE.node_id, 3, DEAD)
    assert d.signed_bytes().hex() == (
        "703270642d61636375736174696f6e2d7631000020393438383336373431343736636265363638663364666637306430343964666600"
        "286867502e2368445548535569455e683f26503677693850355e516b3f72542831656b262b5b3a2b2f"
        "99e4c39f3468c44dc1a3041c24554e3463624540ecb758ba31abaaccbc4c8458"
        "002064333364633738633838663238616464383165356330646563376534623164640000000000000003000464656164")
    assert d.signature.hex() == (
        "746845918180ba1aac568747f0e158d73c42809ebea6a628d707306f414c1249"
        "8f4bb75043342511a078ee9e738bb4b7e20ac54d943f3ba33bca5c5eb2ed4a0f")
    # A third party checks it with any Ed25519 library.
    from nacl.signing import VerifyKey
    VerifyKey(ALICE.verify_key).verify(a.signed_bytes(), a.signature)


@pytest.mark.parametrize("obj", [
    {"by": "a-id", "id": "b-id", "inc": 1, "status": "\x1b[2J"},  # found by fuzzing: reached records.newer, KeyError
    {"by": "a-id", "id": "b-id", "inc": 1, "status": ALIVE},  # nobody accuses another of being alive
    {"by": "a-id", "id": "b-id", "inc": -1, "status": DEAD},
    {"by": "a-id", "id": "b-id", "inc": 1, "status": [DEAD]},
    {"id": "b-id", "name": "b", "addrs": [], "inc": 1, "status": SUSPECT, "pub": 0, "links": [], "bseq": 0, "boldest": 0, "bepoch": ""},
])
def test_unsigned_records_of_the_simulator_are_shape_checked_before_precedence(obj):
    """`identity.NoKeys` (tests, the simulator) believes any well-shaped record, but its status and
    incarnation are what precedence reads first, so they are checked as a daemon's are."""
    from p2pd.identity import NoKeys

    with pytest.raises(BadRecord):
        NoKeys.decode(obj)
