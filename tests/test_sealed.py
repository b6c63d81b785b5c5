"""Sealed envelopes (p2pd/sealed.py): end-to-end encryption of routed direct messages."""

from __future__ import annotations

import base64
import time

import orjson
import pytest
import zmq

from p2pd import sealed as s
from p2pd.protocol import DEFAULT_MAX_FRAME_BYTES
from p2pd.records import z85_encode, z85_decode
from p2pd.sealed import BadSeal
from p2pd.seeded import SplitMix64
from p2pd.trust import node_id_for


def keypair(first: int) -> tuple[str, str]:
    """A fixed CURVE keypair: secret bytes first..first+31, as Z85 (secret, public)."""
    secret = z85_encode(bytes(range(first, first + 32)))
    return secret, zmq.curve_public(secret.encode()).decode()


A_SEC, A_PUB = keypair(0x00)
B_SEC, B_PUB = keypair(0x20)
C_SEC, C_PUB = keypair(0x40)
A_ID, B_ID, C_ID = (node_id_for(k) for k in (A_PUB, B_PUB, C_PUB))
KEYS = {A_ID: A_PUB, B_ID: B_PUB, C_ID: C_PUB}
TEXT = "meet me at the usual place, 7pm"
INNER = {"id": "0192a3b4c5d6e7f8091a2b3c4d5e6f70", "seq": 7, "base": 3, "epoch": "e1",
         "text": TEXT, "timestamp": "2026-12-06T11:20:00.000Z"}


def sealed_ab(inner=INNER, seed=1, **kw) -> dict:
    return s.seal(A_SEC, A_PUB, B_PUB, inner, SplitMix64(seed), **kw)


def kind(secret, outer, lookup=KEYS.get) -> str:
    with pytest.raises(BadSeal) as info:
        s.open_(secret, outer, lookup)
    return info.value.kind


def test_keys_are_real_curve_keys():
    assert z85_encode(z85_decode(A_SEC)) == A_SEC and len({A_ID, B_ID, C_ID}) == 3


def test_round_trip_both_ways():
    outer = sealed_ab()
    assert set(outer) == s.FIELDS
    assert (outer["from"], outer["to"], outer["ttl"], outer["sv"]) == (A_ID, B_ID, s.DEFAULT_TTL, 1)
    assert s.open_(B_SEC, outer, KEYS.get) == INNER
    back = s.seal(B_SEC, B_PUB, A_PUB, {"id": "x", "upto": 7}, SplitMix64(2))
    assert s.open_(A_SEC, back, KEYS.get) == {"id": "x", "upto": 7}
    unicode = {**INNER, "text": "ünïcødé ✓ \u202e"}
    assert s.open_(B_SEC, sealed_ab(unicode), KEYS.get) == unicode


def test_the_outer_body_survives_a_json_round_trip_and_relays():
    outer = orjson.loads(orjson.dumps(sealed_ab(ttl=2)))
    once = s.forward(outer)
    twice = s.forward(once)
    assert (once["ttl"], twice["ttl"], outer["ttl"]) == (1, 0, 2)  # forward copies
    with pytest.raises(BadSeal) as info:
        s.forward(twice)
    assert info.value.kind == "ttl_expired"
    assert s.open_(B_SEC, twice, KEYS.get) == INNER  # the ttl is not authenticated: relays change it


def test_a_relay_cannot_read():
    outer = sealed_ab()
    wire = orjson.dumps(outer)
    box = base64.b64decode(outer["box"])
    for needle in (TEXT, "usual", INNER["id"], "timestamp"):
        assert needle.encode() not in wire and needle.encode() not in box
    assert set(outer) == {"sv", "from", "to", "ttl", "nonce", "box"}  # nothing of the inner outside


def test_a_relay_cannot_open_it_with_its_own_key_even_if_named_the_destination():
    outer = sealed_ab()
    assert kind(C_SEC, outer) == "not_for_us"
    assert kind(C_SEC, {**outer, "to": C_ID}) == "bad_box"  # sealed to B: C's key does not open it
    assert kind(A_SEC, outer) == "not_for_us"


@pytest.mark.parametrize("field", ["nonce", "box"])
def test_flipping_any_bit_of_nonce_or_box_fails(field):
    outer = sealed_ab()
    raw = bytearray(base64.b64decode(outer[field]))
    for i in (0, len(raw) // 2, len(raw) - 1):
        for bit in (0, 7):
            bad = bytearray(raw)
            bad[i] ^= 1 << bit
            assert kind(B_SEC, {**outer, field: base64.b64encode(bytes(bad)).decode()}) == "bad_box"


def test_truncated_or_extended_box_fails():
    outer = sealed_ab()
    raw = base64.b64decode(outer["box"])
    assert kind(B_SEC, {**outer, "box": base64.b64encode(raw[:-1]).decode()}) == "bad_box"
    assert kind(B_SEC, {**outer, "box": base64.b64encode(raw + b"\0").decode()}) == "bad_box"
    assert kind(B_SEC, {**outer, "box": base64.b64encode(raw[:15]).decode()}) == "malformed"


def test_rewriting_the_origin_fails():
    outer = sealed_ab()
    # to another known node's id: its key does not open A's box
    assert kind(B_SEC, {**outer, "from": C_ID}) == "bad_box"
    # to an id nobody holds a key for
    assert kind(B_SEC, {**outer, "from": "f" * 32}) == "unknown_sender"


def test_rewriting_the_destination_fails():
    outer = sealed_ab()
    assert kind(B_SEC, {**outer, "to": C_ID}) == "not_for_us"
    assert kind(C_SEC, {**outer, "to": C_ID}) == "bad_box"


def test_a_reflected_envelope_fails_on_the_binding():
    """crypto_box's key is the pair's, the same both ways: swapping from and to makes a box A
    opens as if from B.  The sealed ids refuse it."""
    outer = sealed_ab()
    assert kind(A_SEC, {**outer, "from": B_ID, "to": A_ID}) == "bad_binding"


def test_a_key_that_is_not_the_origin_ids_fails():
    outer = sealed_ab()
    assert kind(B_SEC, outer, lambda node: C_PUB) == "key_mismatch"  # a lying key table
    assert kind(B_SEC, outer, lambda node: "not a key") == "key_mismatch"
    assert kind(B_SEC, outer, lambda node: None) == "unknown_sender"


def test_a_message_sealed_to_b_is_not_opened_by_c():
    outer = sealed_ab()
    assert kind(C_SEC, outer) == "not_for_us"
    to_c = s.seal(A_SEC, A_PUB, C_PUB, INNER, SplitMix64(1))
    assert s.open_(C_SEC, to_c, KEYS.get) == INNER
    assert kind(B_SEC, to_c) == "not_for_us"
    assert kind(B_SEC, {**to_c, "to": B_ID}) == "bad_box"


@pytest.mark.parametrize("change", [
    {"sv": 2}, {"sv": True}, {"from": "A" * 32}, {"to": 5}, {"ttl": -1}, {"ttl": s.MAX_TTL + 1}, {"ttl": True},
    {"ttl": 1.0}, {"nonce": 7}, {"nonce": "not base64!"}, {"box": "QUJD"[:3]}, {"extra": 1},
])
def test_malformed_outer_bodies_are_named(change):
    assert kind(B_SEC, {**sealed_ab(), **change}) == "malformed"


def _next_b64_char(c: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return alphabet[alphabet.index(c) + 1]  # the last character's low bits are unused before "="


def test_base64_must_be_canonical_and_the_nonce_24_bytes():
    outer = sealed_ab()
    assert kind(B_SEC, {**outer, "nonce": base64.b64encode(bytes(23)).decode()}) == "malformed"
    padded = next(o for o in (sealed_ab({"text": "x" * n}) for n in range(3)) if o["box"].endswith("="))
    assert kind(B_SEC, {**padded, "box": padded["box"].rstrip("=")}) == "malformed"  # padding is required
    # the same bytes, spelled with nonzero unused bits before the padding: decodes, but is not canonical
    box = padded["box"].rstrip("=")
    pad = padded["box"][len(box):]
    variant = box[:-1] + _next_b64_char(box[-1]) + pad
    assert base64.b64decode(variant) == base64.b64decode(padded["box"])
    assert kind(B_SEC, {**padded, "box": variant}) == "malformed"
    assert kind(B_SEC, {**outer, "box": outer["box"] + "\n"}) == "malformed"
    for bad in (None, [], "x"):
        with pytest.raises(BadSeal) as info:
            s.open_(B_SEC, bad, KEYS.get)
        assert info.value.kind == "malformed"


def test_an_inner_that_is_not_our_shape_is_refused_after_opening():
    """A genuine sender that seals garbage (or another implementation): bad_inner, not a crash."""
    from nacl import bindings as na
    outer = sealed_ab()
    shared = na.crypto_box_beforenm(z85_decode(A_PUB), z85_decode(B_SEC))
    nonce = base64.b64decode(outer["nonce"])
    for plain in (b"\xff not json", b"[1]", orjson.dumps({"sv": 1, "from": A_ID, "to": B_ID, "msg": [1]}),
                  orjson.dumps({"sv": 1, "from": A_ID, "to": B_ID})):
        box = base64.b64encode(na.crypto_box_afternm(plain, nonce, shared)).decode()
        assert kind(B_SEC, {**outer, "box": box}) == "bad_inner"
    box = base64.b64encode(na.crypto_box_afternm(
        orjson.dumps({"sv": 1, "from": A_ID, "to": C_ID, "msg": {}}), nonce, shared)).decode()
    assert kind(B_SEC, {**outer, "box": box}) == "bad_binding"


def test_size_bound():
    outer = sealed_ab({"text": "x" * 64 * 1024})  # the largest text a MESSAGE may carry fits
    assert len(orjson.dumps(outer)) + s.ENVELOPE_RESERVE <= DEFAULT_MAX_FRAME_BYTES
    # just over the bound once sealed (base64 grows it by 4/3), though the plaintext is smaller
    n = (DEFAULT_MAX_FRAME_BYTES - s.ENVELOPE_RESERVE) * 3 // 4
    with pytest.raises(BadSeal) as info:
        sealed_ab({"text": "x" * n})
    assert info.value.kind == "too_large"
    with pytest.raises(BadSeal) as info:
        sealed_ab({"text": "x" * DEFAULT_MAX_FRAME_BYTES})
    assert info.value.kind == "too_large"
    small = sealed_ab({"text": "x" * 1500}, max_frame=4096)
    assert len(orjson.dumps(small)) <= 4096 - s.ENVELOPE_RESERVE
    with pytest.raises(BadSeal) as info:  # the plaintext fits the limit, its base64 body does not
        sealed_ab({"text": "x" * 2300}, max_frame=4096)
    assert info.value.kind == "too_large"
    # the recipient refuses an oversized box before any crypto
    assert s.open_(B_SEC, small, KEYS.get, max_frame=4096)["text"] == "x" * 1500
    big = sealed_ab({"text": "x" * 5000})
    with pytest.raises(BadSeal) as info:
        s.open_(B_SEC, big, KEYS.get, max_frame=4096)
    assert info.value.kind == "too_large"


def test_bad_arguments_to_seal_are_value_errors():
    rng = SplitMix64(1)
    with pytest.raises(ValueError, match="not the secret key's"):
        s.seal(A_SEC, B_PUB, B_PUB, INNER, rng)
    with pytest.raises(ValueError):
        s.seal(A_SEC, A_PUB, "short", INNER, rng)
    with pytest.raises(ValueError):
        s.seal("x" * 40, A_PUB, B_PUB, INNER, rng)
    with pytest.raises(ValueError):
        s.seal(A_SEC, A_PUB, B_PUB, [INNER], rng)
    with pytest.raises(ValueError):
        s.seal(A_SEC, A_PUB, B_PUB, {"t": {1, 2}}, rng)
    for ttl in (-1, s.MAX_TTL + 1, True, 2.0):
        with pytest.raises(ValueError):
            s.seal(A_SEC, A_PUB, B_PUB, INNER, rng, ttl=ttl)


def test_nonces_never_repeat_for_different_messages_even_with_a_stuck_rng():
    """The nonce is synthesised from the rng's bytes and the plaintext: a random source that
    returns the same bytes every time (a restarted seeded one) still never reuses a nonce for
    two different messages; the same message sealed twice is the same ciphertext."""
    class Stuck:
        def getrandbits(self, k):
            return 0

    first = s.seal(A_SEC, A_PUB, B_PUB, INNER, Stuck())
    other = s.seal(A_SEC, A_PUB, B_PUB, {**INNER, "seq": 8}, Stuck())
    again = s.seal(A_SEC, A_PUB, B_PUB, INNER, Stuck())
    assert first["nonce"] != other["nonce"]
    assert first == again
    # the reverse direction (same pair key) with the same inner fields: another plaintext, another nonce
    back = s.seal(B_SEC, B_PUB, A_PUB, INNER, Stuck())
    assert back["nonce"] != first["nonce"]
    # a good rng makes equal messages unlinkable
    assert sealed_ab(seed=1)["nonce"] != sealed_ab(seed=2)["nonce"]
    nonces = {sealed_ab({**INNER, "seq": i}, seed=1)["nonce"] for i in range(200)}
    assert len(nonces) == 200


def test_fixed_vector():
    """Fixed keys (CURVE secrets 0x00..0x1f from A, 0x20..0x3f to B), fixed random bytes
    (SplitMix64(1).getrandbits(192), 24 bytes big-endian): the exact outer body, for docs/PROTOCOL.md.  A change here
    is a wire-format change."""
    outer = s.seal(A_SEC, A_PUB, B_PUB, {"id": "m1", "seq": 1, "base": 1, "text": "hi"}, SplitMix64(1), ttl=8)
    assert (A_SEC, A_PUB) == ("009c61o!#m2NH?C3>iWS5d]J*6CRx17-skh9337x", VECTOR_A_PUB)
    assert (B_SEC, B_PUB) == ("ar.{NbQB=+c[cR@eg&FcfFLssg=mfIi5%2YjuU>)", VECTOR_B_PUB)
    assert outer == VECTOR
    assert s.open_(B_SEC, VECTOR, KEYS.get) == {"id": "m1", "seq": 1, "base": 1, "text": "hi"}


VECTOR_A_PUB = "K3HW^WVq.zo69t)(umF>:XvwTj:QGN^yKlWaVH(S"
VECTOR_B_PUB = "hgP.#hDUHSUiE^h?&P6wi8P5^Qk?rT(1ek&+[:+/"
VECTOR = {
    "sv": 1, "from": "d33dc78c88f28add81e5c0dec7e4b1dd", "to": "948836741476cbe668f3dff70d049dff", "ttl": 8,
    "nonce": "zopehzWVVAl6E4LRxhwlj+5mIDW1/zFP",
    "box": ("5kN03h64vDegUWY74wAULzh5KIP4FgmLFdBMqP+POL+ixnniX5Hz5xKruufc6lyZTQHnGwPLfp5ho6TSmGXMV1KV64tP"
            "gfmoo+C1dpnVQzsRrFtzMIrBWwy2O066sVIEtA9rP4kEYkgpnCu2o+ibIade909AnjetrWLLm8vemTmUrOHogOsXCvUs"
            "5k0j4nRcMZ+agb2LwW61"),
}


def test_the_vector_follows_the_documented_construction():
    """Rebuilt from the module doc with PyNaCl's high-level Box and hashlib, not sealed.py's code."""
    from hashlib import blake2b

    from nacl.public import Box, PrivateKey, PublicKey

    box = Box(PrivateKey(z85_decode(A_SEC)), PublicKey(z85_decode(B_PUB)))
    plaintext = b'{"from":"%s","msg":{"base":1,"id":"m1","seq":1,"text":"hi"},"sv":1,"to":"%s"}' % (
        A_ID.encode(), B_ID.encode())
    nonce_key = blake2b(key=box.shared_key(), person=b"p2pd-seal-nonce", digest_size=32).digest()
    nonce = blake2b(SplitMix64(1).getrandbits(192).to_bytes(24, "big") + plaintext, key=nonce_key, digest_size=24).digest()
    assert base64.b64encode(nonce).decode() == VECTOR["nonce"]
    assert base64.b64encode(box.encrypt(plaintext, nonce).ciphertext).decode() == VECTOR["box"]
    assert A_ID == node_id_for(A_PUB) == VECTOR["from"]


def test_cost(capsys):
    """Seal and open of a short MESSAGE, microseconds each (printed; run with -s to see)."""
    rng = SplitMix64(3)
    n = 200
    t0 = time.perf_counter()
    outers = [s.seal(A_SEC, A_PUB, B_PUB, INNER, rng) for _ in range(n)]
    t1 = time.perf_counter()
    for outer in outers:
        s.open_(B_SEC, outer, KEYS.get)
    t2 = time.perf_counter()
    seal_us, open_us = (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6
    with capsys.disabled():
        print(f"\nsealed: seal {seal_us:.0f} us, open {open_us:.0f} us per short message")
    assert seal_us < 5000 and open_us < 5000  # generous: a sanity bound, not a benchmark


def test_the_largest_body_seal_accepts_fits_a_frame_with_the_largest_carrying_envelope():
    """ENVELOPE_RESERVE is enough: the biggest body `seal` lets through, carried in a frame with
    the longest sender name (64 four-byte characters) and every id at its longest, still fits."""
    from p2pd import protocol

    def fits(n: int) -> bool:
        try:
            sealed_ab({"text": "x" * n})
        except BadSeal:
            return False
        return True

    lo, hi = 0, DEFAULT_MAX_FRAME_BYTES  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    body = sealed_ab({"text": "x" * lo})
    frame = protocol.encode(protocol.make("ROUTED", "i" * 64, "\U0001F600" * 64, 2e9, body, target_id="t" * 64,
                                          msg_id="m" * 64))
    assert DEFAULT_MAX_FRAME_BYTES - s.ENVELOPE_RESERVE - 4 < len(orjson.dumps(body)) <= DEFAULT_MAX_FRAME_BYTES - s.ENVELOPE_RESERVE
    assert len(frame) <= DEFAULT_MAX_FRAME_BYTES


# --- Sealer: a node's keypair, its id derived once, pair keys cached -------------------------

def test_sealer_makes_the_module_functions_bytes_and_opens_theirs():
    """Same wire format: with the same rng, the same body byte for byte; each opens the other's."""
    a, b = s.Sealer(A_SEC, A_PUB), s.Sealer(B_SEC)
    assert (a.node_id, b.node_id) == (A_ID, B_ID)
    assert a.seal(B_PUB, INNER, SplitMix64(1)) == sealed_ab()
    assert b.open_(sealed_ab(), KEYS.get) == INNER
    assert s.open_(B_SEC, a.seal(B_PUB, INNER, SplitMix64(5)), KEYS.get) == INNER


def test_sealer_refuses_as_the_module_does():
    b = s.Sealer(B_SEC, B_PUB)
    outer = sealed_ab()
    for bad, want in (({**outer, "from": C_ID}, "bad_box"), ({**outer, "to": C_ID}, "not_for_us"),
                      ({**outer, "from": outer["to"], "to": outer["from"]}, "not_for_us"),
                      ({**outer, "sv": 2}, "malformed")):
        with pytest.raises(BadSeal) as info:
            b.open_(bad, KEYS.get)
        assert info.value.kind == want == kind(B_SEC, bad)
    reflected = {**outer, "from": B_ID, "to": A_ID}  # the pair key is symmetric: the binding catches it
    with pytest.raises(BadSeal) as info:
        s.Sealer(A_SEC).open_(reflected, KEYS.get)
    assert info.value.kind == "bad_binding"
    with pytest.raises(ValueError):
        s.Sealer(A_SEC, B_PUB)  # the public key is not the secret's


def test_sealer_cache_is_bounded_and_keyed_by_public_key():
    a = s.Sealer(A_SEC, cache_size=2)
    a.seal(B_PUB, INNER, SplitMix64(1))
    a.seal(C_PUB, INNER, SplitMix64(1))
    a.pair_key(B_PUB)  # B is now the most recent: C goes first
    _, d_pub = keypair(0x60)
    a.pair_key(d_pub)
    assert list(a._pairs) == [B_PUB, d_pub]
    assert a.pair_key(B_PUB) == s._na.crypto_box_beforenm(z85_decode(B_PUB), z85_decode(A_SEC))


def test_sealer_cost(capsys):
    """Seal and open with the pair keys cached, microseconds each (printed; run with -s)."""
    a, b, rng, n = s.Sealer(A_SEC), s.Sealer(B_SEC), SplitMix64(4), 500
    b.open_(a.seal(B_PUB, INNER, rng), KEYS.get)  # warm both caches
    t0 = time.perf_counter()
    outers = [a.seal(B_PUB, INNER, rng) for _ in range(n)]
    t1 = time.perf_counter()
    for outer in outers:
        b.open_(outer, KEYS.get)
    t2 = time.perf_counter()
    seal_us, open_us = (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6
    with capsys.disabled():
        print(f"\nSealer (cached pair key): seal {seal_us:.1f} us, open {open_us:.1f} us per short message")
    assert seal_us < 1000 and open_us < 1000
