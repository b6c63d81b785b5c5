"""Group keys (p2pd/groupkeys.py): private groups' ids, membership tags, sealed shouts, invites."""

from __future__ import annotations

import base64

import orjson
import pytest

from p2pd import groupkeys as gkm
from p2pd.groupkeys import GroupKey, GroupKeyError
from p2pd.protocol import MAX_TEXT_LEN
from p2pd.records import z85_encode

K1 = bytes(range(32))
K2 = bytes(range(1, 33))
GK = gkm.new_group_key("rust-dev", K1)
OTHER = gkm.new_group_key("rust-dev", K2)  # same name, another key
A = "0123456789abcdef0123456789abcdef"
B = "fedcba9876543210fedcba9876543210"
N1 = bytes(24)
N2 = bytes([7]) * 24
TEXT = "meet me at the usual place, 7pm ✓"


def kind(fn, *args) -> str:
    with pytest.raises(GroupKeyError) as exc:
        fn(*args)
    return exc.value.kind


def sealed(gk=GK, nonce=N1, sender=A, seq=5, text=TEXT) -> str:
    return gkm.seal_shout(gk, nonce, sender, seq, text)


def flip(text: str, byte: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[byte] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# --- keys ---------------------------------------------------------------------------------

def test_a_key_round_trips_through_its_dict_and_json():
    gk = gkm.new_group_key("ops", K2, epoch=3)
    data = orjson.loads(orjson.dumps(gk.encode()))
    assert data == {"v": 1, "group": "ops", "key": z85_encode(K2), "epoch": 3}
    assert GroupKey.decode(data) == gk


def test_the_repr_never_shows_the_key():
    assert z85_encode(K1) not in repr(GK) and str(K1) not in repr(GK) and "rust-dev" in repr(GK)


@pytest.mark.parametrize("change", [
    {"key": z85_encode(K1)[:-5]}, {"key": z85_encode(K1 + bytes(4))}, {"key": K1}, {"key": "#" * 40},
    {"key": "%%%%%" * 8},  # every group over 2**32: not Z85
    {"epoch": -1}, {"epoch": 1.0}, {"epoch": True}, {"epoch": "0"}, {"epoch": 2**60},
    {"group": ""}, {"group": "two words"}, {"group": "#room"}, {"group": "x" * 65}, {"group": 5},
    {"v": 2}, {"v": True}, {"extra": 1},
])
def test_decode_refuses_a_bad_field_with_a_one_line_reason(change):
    data = {**GK.encode(), **change}
    with pytest.raises(GroupKeyError) as exc:
        GroupKey.decode(data)
    assert exc.value.kind == "malformed" and "\n" not in str(exc.value)


@pytest.mark.parametrize("data", [None, [], "key", {}, {"v": 1, "group": "a", "key": z85_encode(K1)}])
def test_decode_refuses_what_is_not_a_key_dict(data):
    assert kind(GroupKey.decode, data) == "malformed"


@pytest.mark.parametrize("random32", [bytes(31), bytes(33), bytearray(32), "x" * 32, None])
def test_a_new_key_needs_32_random_bytes(random32):
    assert kind(gkm.new_group_key, "ops", random32) == "malformed"


def test_the_constructor_validates_too():
    assert kind(GroupKey, "ops", bytes(16), 0) == "malformed"
    assert kind(GroupKey, "bad name", K1, 0) == "malformed"
    assert kind(GroupKey, "ops", K1, -1) == "malformed"


# --- group ids ----------------------------------------------------------------------------

def test_the_group_id_is_32_hex_stable_and_the_keys_not_the_names():
    gid = gkm.group_id(GK)
    assert len(gid) == 32 and int(gid, 16) >= 0 and gid == gid.lower()
    assert gkm.group_id(gkm.new_group_key("rust-dev", K1)) == gid      # stable
    assert gkm.group_id(OTHER) != gid                                 # same name, other key
    assert gkm.group_id(gkm.new_group_key("elsewhere", K1)) == gid    # the name plays no part
    assert gkm.group_id(gkm.new_group_key("rust-dev", K1, epoch=1)) == gid  # the key, not the epoch
    assert "rust-dev" not in gid and K1.hex()[:32] != gid


# --- membership tags ----------------------------------------------------------------------

def test_a_tag_verifies_only_for_its_node_incarnation_and_key():
    tag = gkm.member_tag(GK, A, 4)
    assert len(tag) == 32 and tag == tag.lower() and int(tag, 16) >= 0
    assert gkm.is_member_tag(GK, A, 4, tag)
    assert not gkm.is_member_tag(GK, B, 4, tag)       # copied into another node's record
    assert not gkm.is_member_tag(GK, A, 5, tag)       # another incarnation
    assert not gkm.is_member_tag(OTHER, A, 4, tag)    # another group of the same name
    assert gkm.member_tag(GK, A, 5) != tag            # unlinkable across incarnations
    assert gkm.member_tag(GK, B, 4) != tag
    assert gkm.member_tag(OTHER, A, 4) != tag
    assert tag != gkm.group_id(GK)                    # another domain than the id


@pytest.mark.parametrize("bad", [None, 5, "", "zz" * 16, "AB" * 16, "ab" * 15, "ab" * 17, b"ab" * 16])
def test_a_malformed_tag_is_just_not_a_member(bad):
    assert gkm.is_member_tag(GK, A, 4, bad) is False


def test_a_flipped_tag_does_not_verify():
    tag = gkm.member_tag(GK, A, 4)
    other = ("1" if tag[0] == "0" else "0") + tag[1:]
    assert not gkm.is_member_tag(GK, A, 4, other)


@pytest.mark.parametrize("node_id, inc", [("", 0), ("a b", 0), ("x" * 65, 0), (None, 0), (A, -1), (A, True), (A, 1.5)])
def test_tags_refuse_bad_ids_and_incarnations(node_id, inc):
    assert kind(gkm.member_tag, GK, node_id, inc) == "malformed"
    assert kind(gkm.is_member_tag, GK, node_id, inc, "00" * 16) == "malformed"


# --- shouts -------------------------------------------------------------------------------

def test_a_shout_round_trips_and_is_deterministic_in_its_random_bytes():
    s = sealed()
    assert gkm.open_shout(GK, s, A, 5) == TEXT
    assert sealed() == s                         # same random bytes, same shout: same text
    assert sealed(nonce=N2) != s                 # other random bytes: unlinkable
    assert gkm.open_shout(GK, sealed(nonce=N2), A, 5) == TEXT
    assert TEXT not in s and base64.b64encode(s.encode()) != s
    assert gkm.open_shout(GK, sealed(text=""), A, 5) == ""


def test_a_repeated_random_input_still_never_repeats_a_nonce():
    """Two different shouts with the same (bad) random bytes get different nonces."""
    nonces = {base64.b64decode(sealed(sender=s, seq=q, text=t))[:24]
              for s in (A, B) for q in (1, 2) for t in ("a", "b")}
    assert len(nonces) == 8


def test_the_wire_form_is_canonical_base64_of_a_bounded_size():
    s = sealed(text="hi")
    raw = base64.b64decode(s, validate=True)
    assert base64.b64encode(raw).decode() == s
    assert len(raw) == 24 + 16 + 17 + 2 and len(s) == 80


@pytest.mark.parametrize("case, args", [
    ("wrong key", (OTHER, A, 5)),
    ("next key", (gkm.new_group_key("rust-dev", K2, epoch=1), A, 5)),
])
def test_another_key_cannot_open_it(case, args):
    assert kind(gkm.open_shout, args[0], sealed(), args[1], args[2]) == "bad_box"


@pytest.mark.parametrize("gk, sender, seq", [
    (GK, B, 5),                                       # moved to another sender
    (GK, A, 6),                                       # moved to another seq
    (GK, A, 4),
    (gkm.new_group_key("rust-dev", K1, epoch=1), A, 5),  # same key bytes, another epoch
])
def test_a_moved_shout_is_refused_as_bad_binding(gk, sender, seq):
    assert kind(gkm.open_shout, gk, sealed(), sender, seq) == "bad_binding"


def test_a_shout_moved_to_another_group_does_not_open():
    s = sealed(gk=OTHER)
    assert kind(gkm.open_shout, GK, s, A, 5) == "bad_box"
    assert gkm.open_shout(OTHER, s, A, 5) == TEXT


@pytest.mark.parametrize("cut", [1, 4, 16, 40, 58])
def test_a_truncated_shout_is_refused(cut):
    raw = base64.b64decode(sealed())
    short = base64.b64encode(raw[:-cut]).decode()
    assert kind(gkm.open_shout, GK, short, A, 5) in {"bad_box", "malformed"}


def test_truncation_below_the_minimum_is_malformed_and_above_it_bad_box():
    raw = base64.b64decode(sealed(text=""))
    assert kind(gkm.open_shout, GK, base64.b64encode(raw[:-1]).decode(), A, 5) == "malformed"
    raw = base64.b64decode(sealed(text="a longer text"))
    assert kind(gkm.open_shout, GK, base64.b64encode(raw[:-1]).decode(), A, 5) == "bad_box"


def test_every_flipped_bit_position_is_refused():
    s = sealed(text="x")
    for byte in range(len(base64.b64decode(s))):
        assert kind(gkm.open_shout, GK, flip(s, byte), A, 5) == "bad_box", byte


@pytest.mark.parametrize("bad", [None, 5, b"abc", "not base64!", "QUJD", "QUJDRA", "QUJDRA=", "é" * 8])
def test_a_malformed_sealed_text_is_refused(bad):
    assert kind(gkm.open_shout, GK, bad, A, 5) == "malformed"


def test_non_canonical_base64_is_refused():
    s = sealed(text="hi")  # 59 bytes: one padding character, the last symbol has 2 spare bits
    assert s.endswith("=") and not s.endswith("==")
    last = s[-2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    variant = s[:-2] + alphabet[alphabet.index(last) ^ 1] + "="
    assert base64.b64decode(variant) == base64.b64decode(s)
    assert kind(gkm.open_shout, GK, variant, A, 5) == "malformed"


def test_sizes_are_bounded_both_ways():
    assert kind(sealed, GK, N1, A, 5, "x" * (MAX_TEXT_LEN + 1)) == "too_large"
    longest = sealed(text="\U0001F600" * MAX_TEXT_LEN)  # 4 UTF-8 bytes each: the worst case
    assert len(longest) <= gkm.MAX_SEALED_CHARS
    assert gkm.open_shout(GK, longest, A, 5) == "\U0001F600" * MAX_TEXT_LEN
    assert kind(gkm.open_shout, GK, "A" * (gkm.MAX_SEALED_CHARS + 4), A, 5) == "too_large"


@pytest.mark.parametrize("nonce, sender, seq, text", [
    (bytes(23), A, 5, "x"), (bytearray(24), A, 5, "x"), (None, A, 5, "x"),
    (N1, "", 5, "x"), (N1, "a b", 5, "x"), (N1, None, 5, "x"),
    (N1, A, 0, "x"), (N1, A, -1, "x"), (N1, A, True, "x"), (N1, A, 2**60, "x"),
    (N1, A, 5, b"x"), (N1, A, 5, None), (N1, A, 5, "\ud800"),
])
def test_seal_refuses_bad_arguments(nonce, sender, seq, text):
    assert kind(gkm.seal_shout, GK, nonce, sender, seq, text) == "malformed"


@pytest.mark.parametrize("sender, seq", [("", 5), (None, 5), (A, 0), (A, "5")])
def test_open_refuses_bad_arguments(sender, seq):
    assert kind(gkm.open_shout, GK, sealed(), sender, seq) == "malformed"


def test_a_box_that_opens_but_is_not_a_shout_is_refused():
    """Made with the key but not by seal_shout (a buggy or hostile member): no crash."""
    import nacl.bindings as na

    def forged(plaintext: bytes) -> str:
        return base64.b64encode(N1 + na.crypto_secretbox(plaintext, N1, K1)).decode()

    assert kind(gkm.open_shout, GK, forged(b""), A, 5) == "malformed"           # shorter than a header
    assert kind(gkm.open_shout, GK, forged(b"\x02" + bytes(20)), A, 5) == "bad_text"  # another version
    header = gkm._header(GK, A, 5)
    assert kind(gkm.open_shout, GK, forged(header + b"\xff\xfe"), A, 5) == "bad_text"  # not UTF-8
    assert gkm.open_shout(GK, forged(header + b"ok"), A, 5) == "ok"


def test_not_a_group_key_is_refused():
    assert kind(gkm.group_id, "rust-dev") == "malformed"
    assert kind(gkm.seal_shout, None, N1, A, 5, "x") == "malformed"


# --- invites ------------------------------------------------------------------------------

def test_an_invite_round_trips_through_json():
    gk = gkm.new_group_key("ops", K2, epoch=7)
    payload = orjson.loads(orjson.dumps(gkm.invite_payload(gk)))
    assert payload["kind"] == "group_invite"
    got = gkm.accept_invite(payload)
    assert got == gk and gkm.group_id(got) == gkm.group_id(gk)
    assert gkm.open_shout(got, gkm.seal_shout(gk, N1, A, 1, "hello"), A, 1) == "hello"


@pytest.mark.parametrize("change", [
    {"kind": "other"}, {"key": z85_encode(K1)[:35]}, {"epoch": -1}, {"group": "a\nb"}, {"more": 1},
])
def test_accept_invite_refuses_a_bad_payload(change):
    assert kind(gkm.accept_invite, {**gkm.invite_payload(GK), **change}) == "malformed"


@pytest.mark.parametrize("payload", [None, [], {}, GK.encode()])
def test_accept_invite_refuses_what_is_not_an_invite(payload):
    assert kind(gkm.accept_invite, payload) == "malformed"
