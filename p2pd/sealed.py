"""Sealed envelopes: end-to-end encryption for routed direct messages (issue 15).

Used by relay.py, which the node's `Outbound` hands every direct envelope for a node it
holds no link to.

How this works
--------------
A direct message to a node we have no link to travels through relays.  Only its two ends
may read it or make it.  `seal` turns the inner message (the MESSAGE or ACK fields: id, seq,
base, epoch, text, timestamp ...) into an **outer body** that carries only what a relay
needs; `open_` turns it back, or raises `BadSeal(kind)`.

**The box.**  libsodium's ``crypto_box`` (X25519 + XSalsa20-Poly1305) from the sender's CURVE
secret key to the recipient's CURVE public key: the keys every node already has, so nothing
new is exchanged.  The recipient finds the sender's key from the outer ``from`` id (the caller's
``sender_public_lookup``: the key table, pins, signed records) and checks that it is *that* id's
key (``trust.node_id_for(key) == from``) before trying it.

**Binding the outer ids.**  ``crypto_box`` has no associated data, and its key is the
*pair's*: ``k = H(X25519(a, B)) = H(X25519(b, A))`` is the same from A to B as from B to A.
So the box alone would let a relay *reflect* a message A sealed to B back to A as if B had
sealed it to A (swap ``from`` and ``to``: A looks up B's key, derives the same ``k``, and the
box opens).  The plaintext therefore repeats the outer version, ``from`` and ``to``, and
`open_` refuses a box whose inner ones differ from the outer (``bad_binding``).  With that, a
relay that rewrites ``from`` gets ``bad_box`` (another key, the box fails) or ``unknown_sender``
/ ``key_mismatch``; one that rewrites ``to`` gets ``not_for_us`` at the real recipient or
``bad_box`` at the new one; one that swaps them gets ``bad_binding``.

**Not authenticated: the hop limit.**  ``ttl`` is for relays, which decrement it (`forward`);
a relay can set it to anything in 0..``MAX_TTL``, which only changes how far the envelope
travels, never what it says.  **Replay** of a whole sealed envelope (a relay sends it twice,
or again later) opens fine: it is caught above, by the delivery layer's per-pair sequence
numbers and message ids, which sit *inside* the box where no relay can change them.

**Nonces.**  ``crypto_box`` must never see one nonce twice under one key (the keystream
and the Poly1305 key would repeat: both plaintexts leak and forgeries follow).  The random
source a node is given need not be cryptographic (the simulator's is seeded; `seeded.py` is
SplitMix64), so the nonce is not taken from it raw but *synthesised* (as in SIV modes):
``nonce = BLAKE2b-192(key = BLAKE2b-256(key = k, person = "p2pd-seal-nonce"), data = r ||
plaintext)`` with ``r = rng.getrandbits(192)`` as 24 bytes big-endian.  Two seals share a
nonce only if they share ``r`` *and* the whole plaintext (which carries the message id, seq
and both ids, so two different messages never do; short of a 192-bit BLAKE2b collision), and
then they are the same ciphertext, which says only "this is the same message again".  A good
``rng`` makes equal messages unlinkable; a bad one cannot cause a nonce reuse.  The recipient
never recomputes the nonce.

**Wire format** (outer body, a JSON object; explicit for docs/PROTOCOL.md)::

    {"sv": 1, "from": <32 hex, origin node id>, "to": <32 hex, destination node id>,
     "ttl": <int 0..64, hops left, not authenticated>,
     "nonce": <base64 of 24 bytes>, "box": <base64 of crypto_box(plaintext)>}

base64 is RFC 4648 with padding, canonical (re-encoding gives the same text).  The
plaintext is the compact UTF-8 JSON, keys sorted, of ``{"sv": 1, "from": ..., "to": ...,
"msg": <the inner dict>}``.

**Size.**  `seal` refuses (``too_large``) an inner message whose outer body, JSON-encoded,
plus ``ENVELOPE_RESERVE`` bytes for the frame that will carry it, would exceed
``max_frame`` (``protocol.DEFAULT_MAX_FRAME_BYTES``); `open_` refuses a box that large before
any crypto.

**Cost** (this machine, 2 cores; `test_cost` prints it): about 75 µs to seal and 70 µs to
open a short MESSAGE.  Nearly all of it is two X25519 operations each: the pair key
(``crypto_box_beforenm``, ~40 µs) and deriving our own public key and id from the secret
(~27 µs, which also checks that ``sender_public_z85`` is the secret's).  `Sealer` (a node's
keypair) derives its id once and caches the pair keys of its busy peers, so that with a cached
pair key a short message costs the symmetric part, a few µs (`test_sealer_cost` prints it).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Callable, Optional

import orjson
from nacl import bindings as _na
from nacl.exceptions import CryptoError

from .digest import blake2b
from .protocol import DEFAULT_MAX_FRAME_BYTES, valid_key
from .records import z85_encode, z85_decode
from .trust import node_id_for

SEAL_VERSION = 1
DEFAULT_TTL = 16
MAX_TTL = 64
ENVELOPE_RESERVE = 1024  # the carrying frame's own fields (v, id, type, sender, timestamp ...)
NONCE_BYTES = 24
MAC_BYTES = 16
NONCE_PERSON = b"p2pd-seal-nonce"
FIELDS = frozenset({"sv", "from", "to", "ttl", "nonce", "box"})

_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")

Lookup = Callable[[str], Optional[str]]


class BadSeal(ValueError):
    """A sealed envelope that must not be believed (or cannot be made); ``kind`` names why.

    Kinds: ``malformed`` (shape), ``too_large``, ``not_for_us``, ``unknown_sender``,
    ``key_mismatch`` (the key found is not the ``from`` id's), ``bad_box`` (does not open:
    forged, altered, or not sealed to us), ``bad_binding`` (the inner ids or version are not the
    outer ones), ``bad_inner`` (opened, but not a JSON object as sealed), ``ttl_expired``
    (`forward` only)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


# --- keys ---------------------------------------------------------------------------------

def _secret(secret_z85: str) -> bytes:
    try:
        raw = z85_decode(secret_z85)
    except (KeyError, ValueError, TypeError):
        raise ValueError("a CURVE secret key is 40 characters of Z85") from None
    if len(raw) != 32:
        raise ValueError("a CURVE secret key is 32 bytes (40 characters of Z85)")
    return raw


def _public(public_z85: str) -> bytes:
    if not valid_key(public_z85):
        raise ValueError("a CURVE public key is 40 characters of Z85")
    return z85_decode(public_z85)


def _own_id(secret: bytes, public_z85: Optional[str] = None) -> str:
    derived = z85_encode(_na.crypto_scalarmult_base(secret))
    if public_z85 is not None and derived != public_z85:
        raise ValueError("the public key is not the secret key's")
    return node_id_for(derived)


def _nonce(shared: bytes, random24: bytes, plaintext: bytes) -> bytes:
    nonce_key = blake2b(key=shared, person=NONCE_PERSON, digest_size=32).digest()
    return blake2b(random24 + plaintext, key=nonce_key, digest_size=NONCE_BYTES).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text, field: str) -> bytes:
    if type(text) is not str or not text.isascii():
        raise BadSeal("malformed", field)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadSeal("malformed", field) from None
    if _b64(raw) != text:  # one text per byte string: no relay-chosen variants
        raise BadSeal("malformed", f"{field} is not canonical base64")
    return raw


def _plaintext(origin: str, destination: str, inner: dict) -> bytes:
    return orjson.dumps({"sv": SEAL_VERSION, "from": origin, "to": destination, "msg": inner},
                        option=orjson.OPT_SORT_KEYS)


def _limit(max_frame: int) -> int:
    return max_frame - ENVELOPE_RESERVE


# --- sealing ------------------------------------------------------------------------------

def seal(sender_secret_z85: str, sender_public_z85: str, recipient_public_z85: str, inner: dict, rng,
         ttl: int = DEFAULT_TTL, max_frame: int = DEFAULT_MAX_FRAME_BYTES) -> dict:
    """The outer body carrying ``inner`` from us to the recipient (see the module doc).

    ``rng`` has ``getrandbits(k)`` (``protocol.RandomBits``: ``random.Random``, `seeded.SplitMix64`).  Raises
    `BadSeal("too_large")` if the body would not fit a frame, ``ValueError`` for bad keys, a
    ``ttl`` out of 0..MAX_TTL, or an ``inner`` that is not a JSON object."""
    if type(inner) is not dict:
        raise ValueError("the inner message is a dict")
    if type(ttl) is not int or not 0 <= ttl <= MAX_TTL:
        raise ValueError(f"ttl is an int in 0..{MAX_TTL}")
    secret = _secret(sender_secret_z85)
    origin = _own_id(secret, sender_public_z85)
    recipient = _public(recipient_public_z85)
    return _seal(origin, recipient_public_z85, lambda: _na.crypto_box_beforenm(recipient, secret), inner, rng, ttl, max_frame)


def _seal(origin: str, recipient_public_z85: str, pair_key: Callable[[], bytes], inner: dict, rng, ttl: int,
          max_frame: int) -> dict:
    """`seal` once the keys are known: ``pair_key()`` gives the pair's ``crypto_box_beforenm`` key
    (called only once the plaintext is known to fit: a refused message costs no X25519)."""
    destination = node_id_for(recipient_public_z85)
    try:
        plaintext = _plaintext(origin, destination, inner)
    except TypeError as exc:  # orjson.JSONEncodeError: not JSON
        raise ValueError(f"the inner message is not JSON: {exc}") from None
    limit = _limit(max_frame)
    if len(plaintext) > limit:  # the body is longer still (base64): no need to encrypt to know
        raise BadSeal("too_large", f"{len(plaintext)} bytes of plaintext, frames hold {max_frame}")
    shared = pair_key()
    nonce = _nonce(shared, rng.getrandbits(8 * NONCE_BYTES).to_bytes(NONCE_BYTES, "big"), plaintext)
    box = _na.crypto_box_afternm(plaintext, nonce, shared)
    outer = {"sv": SEAL_VERSION, "from": origin, "to": destination, "ttl": ttl,
             "nonce": _b64(nonce), "box": _b64(box)}
    size = len(orjson.dumps(outer))
    if size > limit:
        raise BadSeal("too_large", f"a {size}-byte body, frames hold {max_frame} with {ENVELOPE_RESERVE} reserved")
    return outer


# --- relaying -----------------------------------------------------------------------------

def check_shape(outer) -> None:
    """Raise `BadSeal("malformed")` unless ``outer`` has the outer body's shape (relays check
    this much; only the recipient can check more)."""
    if type(outer) is not dict or set(outer) != FIELDS:
        raise BadSeal("malformed", "fields")
    if outer["sv"] != SEAL_VERSION or type(outer["sv"]) is not int:
        raise BadSeal("malformed", f"sv: this node opens sealed version {SEAL_VERSION}")
    for field in ("from", "to"):
        if not (type(outer[field]) is str and _ID_RE.match(outer[field])):
            raise BadSeal("malformed", field)
    ttl = outer["ttl"]
    if type(ttl) is not int or not 0 <= ttl <= MAX_TTL:
        raise BadSeal("malformed", "ttl")
    for field in ("nonce", "box"):
        if type(outer[field]) is not str:
            raise BadSeal("malformed", field)


def forward(outer: dict) -> dict:
    """The body a relay passes on: the same, one hop fewer.  `BadSeal("ttl_expired")` at 0."""
    check_shape(outer)
    if outer["ttl"] == 0:
        raise BadSeal("ttl_expired")
    return {**outer, "ttl": outer["ttl"] - 1}


# --- opening ------------------------------------------------------------------------------

def open_(recipient_secret_z85: str, outer, sender_public_lookup: Lookup,
          max_frame: int = DEFAULT_MAX_FRAME_BYTES) -> dict:
    """The inner dict of a body sealed to us, or `BadSeal(kind)` (kinds: see `BadSeal`).

    ``sender_public_lookup(node_id)`` gives the Z85 CURVE key we hold for that node, or None."""
    check_shape(outer)
    secret = _secret(recipient_secret_z85)
    return _open(_own_id(secret), outer, sender_public_lookup,
                 lambda key: _na.crypto_box_beforenm(z85_decode(key), secret), max_frame)


def _open(own_id: str, outer: dict, sender_public_lookup: Lookup, pair_key: Callable[[str], bytes],
          max_frame: int) -> dict:
    """`open_` once our id is known (``outer`` has passed `check_shape`); ``pair_key(key)`` gives the
    pair key with the sender's (checked) Z85 key.  The checks run cheapest first: no X25519 for
    an envelope refused on its ids, size or encoding."""
    origin, destination = outer["from"], outer["to"]
    if destination != own_id:
        raise BadSeal("not_for_us")
    if len(outer["box"]) > _limit(max_frame) or len(outer["nonce"]) > 4 * NONCE_BYTES:
        raise BadSeal("too_large")
    nonce, box = _unb64(outer["nonce"], "nonce"), _unb64(outer["box"], "box")
    if len(nonce) != NONCE_BYTES:
        raise BadSeal("malformed", "nonce")
    if len(box) < MAC_BYTES:
        raise BadSeal("malformed", "box")
    key = sender_public_lookup(origin)
    if key is None:
        raise BadSeal("unknown_sender")
    if not valid_key(key) or node_id_for(key) != origin:
        raise BadSeal("key_mismatch", "the key held for the origin id is not that id's")
    try:
        plaintext = _na.crypto_box_open_afternm(box, nonce, pair_key(key))
    except (CryptoError, ValueError, TypeError):  # a forged box, or a key with no pair key (low order)
        raise BadSeal("bad_box") from None
    try:
        sealed = orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        raise BadSeal("bad_inner", "not JSON") from None
    if type(sealed) is not dict or set(sealed) != {"sv", "from", "to", "msg"}:
        raise BadSeal("bad_inner", "fields")
    if sealed["sv"] != outer["sv"] or sealed["from"] != origin or sealed["to"] != destination:
        raise BadSeal("bad_binding", "the sealed ids are not the envelope's")
    if type(sealed["msg"]) is not dict:
        raise BadSeal("bad_inner", "msg")
    return sealed["msg"]


# --- a node's sealer: keys derived once, pair keys cached -----------------------------------

PAIR_CACHE = 256  # pair keys held: the busy peers of a node (32 bytes each, plus the dict's)


class Sealer:
    """`seal` and `open_` for one node's keypair, without their X25519 cost per call.

    The module functions derive our public key and id from the secret (one X25519) and the
    pair key with the peer (another) on every call: ~70 µs.  A node seals and opens with one
    keypair all its life, to a few busy peers, so this derives its id once and keeps the pair
    keys of the last `PAIR_CACHE` peers (least recently used goes first): a short message then
    costs the symmetric part, a few µs.  The cache is keyed by the peer's Z85 public key, not
    its id, so a peer whose key changes gets a new pair key, never the old one.  Same wire
    format and checks as the module functions (their tests' vectors hold for both)."""

    def __init__(self, secret_z85: str, public_z85: Optional[str] = None, cache_size: int = PAIR_CACHE):
        self._secret = _secret(secret_z85)
        self.node_id = _own_id(self._secret, public_z85)  # checks public_z85 is the secret's
        self._pairs: dict[str, bytes] = {}
        self._cache_size = max(1, cache_size)

    def pair_key(self, public_z85: str) -> bytes:
        """The ``crypto_box_beforenm`` key with that peer (``ValueError``/``CryptoError`` for a bad key)."""
        pairs = self._pairs
        shared = pairs.pop(public_z85, None)
        if shared is None:
            shared = _na.crypto_box_beforenm(_public(public_z85), self._secret)
            if len(pairs) >= self._cache_size:
                del pairs[next(iter(pairs))]  # dicts keep insertion order: the first is the least recent
        pairs[public_z85] = shared  # (re)inserted last: the most recent
        return shared

    def seal(self, recipient_public_z85: str, inner: dict, rng, ttl: int = DEFAULT_TTL,
             max_frame: int = DEFAULT_MAX_FRAME_BYTES) -> dict:
        """As the module's `seal`, from this node."""
        if type(inner) is not dict:
            raise ValueError("the inner message is a dict")
        if type(ttl) is not int or not 0 <= ttl <= MAX_TTL:
            raise ValueError(f"ttl is an int in 0..{MAX_TTL}")
        _public(recipient_public_z85)  # ValueError now, not after the plaintext is built
        return _seal(self.node_id, recipient_public_z85, lambda: self.pair_key(recipient_public_z85), inner, rng,
                     ttl, max_frame)

    def open_(self, outer, sender_public_lookup: Lookup, max_frame: int = DEFAULT_MAX_FRAME_BYTES) -> dict:
        """As the module's `open_`, to this node."""
        check_shape(outer)
        return _open(self.node_id, outer, sender_public_lookup, self.pair_key, max_frame)
