"""Signed node records: what each node says about itself, and signed accusations (issue 15).

Used by the overlay (overlay.py, through identity.py): every node signs its record, and
checks every record and accusation it takes.  PyNaCl (libsodium) costs the daemon about
4.5 MiB of RSS; SHA-512 comes from CPython's builtin module (digest.py), not OpenSSL.

How this works
--------------
**One key, two uses.**  A node's identity stays its CURVE (X25519) keypair and its node id
stays ``sha256(Z85 public key text)[:32]`` (``trust.node_id_for``).  X25519 keys cannot sign,
so the node signs with the *Edwards form of the same secret*: with ``s`` the 32 raw bytes of
the CURVE secret key and ``a = clamp(s)`` (RFC 7748: clear bits 0-2, clear bit 255, set bit
254; X25519 and libsodium's ``crypto_scalarmult_ed25519_base`` clamp alike), the Ed25519
verify key is ``A = a·B`` on the Edwards curve.  Its Montgomery form is exactly the CURVE
public key ``a·B_mont``, so anyone can check the binding with libsodium's audited
``crypto_sign_ed25519_pk_to_curve25519(A) == curve public key``.

**Why this binding and not another.**  A verify key merely *derived* from the secret (say,
Ed25519 seed = hash of the X25519 secret) cannot be tied to the node id by a third party:
anyone could pair a victim's CURVE key (hence its id) with an Ed25519 key of their own and
sign records "for" the victim.  Two sound fixes: (1) make the node id a hash of both keys (a
new id for every node, and every place that computes an id from the CURVE key alone, ZAP and
intake included, would need the verify key first), or (2) make the verify key a function of
the CURVE key, as here.  With (2) the ids, pins and allowlists stay as they are.  The only
keys mapping to the CURVE key are ``A`` and ``-A`` (the map drops the sign of x); signing for
either needs ``±a``, i.e. the victim's secret.  libsodium's verification also refuses
small-order and non-canonical keys.  Using one scalar for X25519 and Ed25519 is the XEdDSA
construction Signal uses (libsodium's docs prefer separate keys; the joint security of the
two uses of one scalar is what XEdDSA relies on); every signature here is domain-separated (``DOMAIN_*`` below) so it
can never be taken for any other signed statement.

**Signing** is standard Ed25519 (RFC 8032 5.1.6) from a scalar instead of a seed, since a
CURVE secret has no seed: ``prefix = SHA-512(b"p2pd-ed25519-prefix-v1" || s)[:32]``,
``r = SHA-512(prefix || M) mod L``, ``R = r·B``, ``k = SHA-512(R || A || M) mod L``,
``S = r + k·a mod L``, signature ``R || S``.  Every curve and scalar operation is a libsodium
call (its constant-time scalar arithmetic and base-point multiplication; SHA-512 is CPython's builtin one, digest.py, which keeps OpenSSL out of the daemon),
and a verifier needs nothing but standard Ed25519 verification; the tests check it gives
RFC 8032's own test-vector signature byte for byte when given that vector's scalar and
prefix, and libsodium's ``crypto_sign_open`` checks every signature.

**A node record** (`NodeRecord`) is the node's own signed statement: id, name, CURVE key,
verify key, addresses (``host:port``, several when multi-homed), incarnation and status.  Only
the node signs it, so only it can set its name, addresses, incarnation, or say ``alive`` or
``left``; a self-signed ``suspect`` or ``dead`` is refused.

**An accusation** (`Accusation`) is what a third party may say: "node X, at incarnation i, is
suspect / dead", signed by the accuser (who carries its own CURVE and verify key, bound the
same way).  It changes nothing else, and it only counts against the incarnation it names.

**Precedence** (`newer(a, b)`: does fact ``a`` supersede fact ``b`` about the same node), SWIM
style: the higher incarnation wins; at equal incarnation alive < suspect < dead < left.  An
accusation never names an incarnation above the node's own latest record (third parties
cannot raise it: `newer` refuses that), so a live node refutes a suspicion or a false death by
signing a record at a higher incarnation.  Whether an accuser must itself be a known member, and how many accusations a suspicion
needs, is the caller's policy.  ``left`` is final for its incarnation: no
accusation and no ``alive`` at that incarnation overrides it; only the node itself, at a
higher incarnation, comes back (a restart).  Equal facts are not newer (keep the first).

**Canonical bytes** (what is signed; explicit so a third party can implement it): the
domain string, then each field in order.  ``str``: 2-byte big-endian length, then its UTF-8
bytes; ``key``: the 32 raw bytes; ``u64``: 8 bytes big-endian; ``list``: 2-byte big-endian
count, then each item as ``str``.

* record:     ``b"p2pd-record-v2\\x00"``, str id (32 lowercase hex), str name, str CURVE key
  (40 chars Z85), key verify key, list addresses, u64 incarnation, str status, u64 PUB port,
  list links (the node's active neighbours' ids, at most 16), u64 bseq, u64 boldest, str bepoch
  (its broadcast numbers when it signed: latest, oldest it can replay, and their store epoch),
  list groups (the groups it is in: an open group's name, or ``~<group id>:<member tag>`` for
  a private one, groupkeys.py; at most 32, 2,048 UTF-8 bytes in all).
* accusation: ``b"p2pd-accusation-v1\\x00"``, str accuser id, str accuser CURVE key, key
  accuser verify key, str subject id, u64 incarnation, str status.

**On the wire** (`encode` / `decode`) a record is a dict: ``{"id", "name", "key" (Z85),
"vk" (hex), "addrs" (list), "inc", "status", "pub", "links" (list), "bseq", "boldest", "bepoch", "groups" (list),
"sig" (hex)}``; an accusation:
``{"by", "by_key", "by_vk", "id", "inc", "status", "sig"}``.  `decode` checks the shape and
raises `BadRecord("malformed")`; `verify` checks the binding and the signature.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, replace
from typing import Union

from nacl import bindings as _na
from nacl.exceptions import BadSignatureError, CryptoError

from .digest import sha512

from .groups import MAX_GROUPS, check_group_name
from .protocol import MAX_NAME_LEN, Z85_CHARS, valid_key, valid_name
from .trust import node_id_for

DOMAIN_RECORD = b"p2pd-record-v2\x00"  # v2: the groups list (protocol 3)
DOMAIN_ACCUSATION = b"p2pd-accusation-v1\x00"
PREFIX_DOMAIN = b"p2pd-ed25519-prefix-v1"

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"
RANK = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3}
SELF_STATUSES = frozenset({ALIVE, LEFT})  # what a node may say of itself
ACCUSATIONS = frozenset({SUSPECT, DEAD})  # what another node may say of it

MAX_ADDRESSES = 8
MAX_LINKS = 16  # neighbours a record may list (the active view is 8 by default)
MAX_ADDRESS_LEN = 255
MAX_GROUP_BYTES = 2048  # the groups list's UTF-8 bytes: a FACTS frame of 48 records stays far below the frame limit
_PRIVATE_RE = re.compile(r"^~[0-9a-f]{32}:[0-9a-f]{32}\Z")  # ~<group id>:<member tag> (groupkeys.py)
MAX_INCARNATION = 2**63 - 1
_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}\Z")
_HEX128_RE = re.compile(r"^[0-9a-f]{128}\Z")
_EPOCH_RE = re.compile(r"^[0-9A-Za-z_.:-]{1,64}\Z")  # a store epoch: an id string (protocol.py)


class BadRecord(ValueError):
    """A record or accusation that must not be believed; ``kind`` names why (a counter name)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


# --- keys ---------------------------------------------------------------------------------

_Z85_VALUE = {c: i for i, c in enumerate(Z85_CHARS)}


def z85_decode(text: str) -> bytes:
    """ZeroMQ's Z85 (RFC 32) text to bytes: 5 characters -> 4 bytes, big-endian."""
    if len(text) % 5:
        raise ValueError("Z85 text must be a multiple of 5 characters")
    out = bytearray()
    for i in range(0, len(text), 5):
        value = 0
        for c in text[i:i + 5]:
            value = value * 85 + _Z85_VALUE[c]
        if value >= 2**32:
            raise ValueError("Z85 group out of range")
        out += value.to_bytes(4, "big")
    return bytes(out)


def _clamp(s: bytes) -> bytes:
    a = bytearray(s)
    a[0] &= 248
    a[31] &= 127
    a[31] |= 64
    return bytes(a)


@dataclass(frozen=True)
class Signer:
    """A node's signing identity, derived from its CURVE secret key (see the module doc)."""

    curve_key: str        # Z85 public key: what the node id is the hash of
    verify_key: bytes     # 32 bytes: the Edwards form of the same key
    _scalar: bytes        # a mod L, 32 bytes little-endian
    _prefix: bytes        # the nonce key

    @classmethod
    def from_curve_secret(cls, secret_z85: str) -> "Signer":
        s = z85_decode(secret_z85)
        if len(s) != 32:
            raise ValueError("a CURVE secret key is 32 bytes (40 characters of Z85)")
        curve_pub = _na.crypto_scalarmult_base(s)
        verify_key = _na.crypto_scalarmult_ed25519_base(s)  # clamps s as X25519 does
        scalar = _na.crypto_core_ed25519_scalar_reduce(_clamp(s) + bytes(32))
        prefix = sha512(PREFIX_DOMAIN + s).digest()[:32]
        return cls(z85_encode(curve_pub), verify_key, scalar, prefix)

    @property
    def node_id(self) -> str:
        return node_id_for(self.curve_key)

    def sign(self, message: bytes) -> bytes:
        return _ed25519_sign(self._scalar, self._prefix, self.verify_key, message)


def z85_encode(data: bytes) -> str:
    out = []
    for i in range(0, len(data), 4):
        value = int.from_bytes(data[i:i + 4], "big")
        group = []
        for _ in range(5):
            value, digit = divmod(value, 85)
            group.append(Z85_CHARS[digit])
        out.append("".join(reversed(group)))
    return "".join(out)


def _ed25519_sign(scalar: bytes, prefix: bytes, verify_key: bytes, message: bytes) -> bytes:
    """RFC 8032 Ed25519 from the scalar ``a`` (reduced) and the nonce key ``prefix``."""
    r = _na.crypto_core_ed25519_scalar_reduce(sha512(prefix + message).digest())
    big_r = _na.crypto_scalarmult_ed25519_base_noclamp(r)
    k = _na.crypto_core_ed25519_scalar_reduce(sha512(big_r + verify_key + message).digest())
    s = _na.crypto_core_ed25519_scalar_add(r, _na.crypto_core_ed25519_scalar_mul(k, scalar))
    return big_r + s


def check_binding(node_id: str, curve_key: str, verify_key: bytes) -> None:
    """Raise `BadRecord` unless ``node_id`` is the CURVE key's and ``verify_key`` is its Edwards form."""
    if node_id_for(curve_key) != node_id:
        raise BadRecord("bad_id", "the node id is not the one its CURVE key gives")
    try:
        mont = _na.crypto_sign_ed25519_pk_to_curve25519(verify_key)
    except (CryptoError, ValueError, TypeError):
        raise BadRecord("bad_verify_key", "not a valid Ed25519 key") from None
    if mont != z85_decode(curve_key):
        raise BadRecord("bad_verify_key", "the verify key is not the CURVE key's Edwards form")


def _check_sig(verify_key: bytes, message: bytes, sig: bytes) -> None:
    if type(sig) is not bytes or len(sig) != 64:
        raise BadRecord("bad_signature", "a signature is 64 bytes")
    try:
        _na.crypto_sign_open(sig + message, verify_key)
    except (BadSignatureError, CryptoError, ValueError):
        raise BadRecord("bad_signature") from None


# --- canonical bytes ----------------------------------------------------------------------

def _str(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def _list(values: tuple[str, ...]) -> bytes:
    return struct.pack(">H", len(values)) + b"".join(_str(v) for v in values)


def _u64(value: int) -> bytes:
    return struct.pack(">Q", value)


# --- node records -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NodeRecord:
    node_id: str
    name: str
    curve_key: str
    verify_key: bytes
    addresses: tuple[str, ...]
    incarnation: int
    status: str
    signature: bytes = b""
    pub_port: int = 0  # the PUB port on every address (0: none listed)
    links: tuple[str, ...] = ()  # the node's active neighbours (routes.py builds the overlay graph from them)
    bseq: int = 0  # its latest broadcast number when it signed (a node that missed some fetches them)
    boldest: int = 0  # ... the oldest it can still replay
    bepoch: str = ""  # ... and the store epoch they belong to
    groups: tuple[str, ...] = ()  # the groups it is in: open names, and ~<group id>:<tag> for private ones

    def signed_bytes(self) -> bytes:
        return (DOMAIN_RECORD + _str(self.node_id) + _str(self.name) + _str(self.curve_key) + self.verify_key
                + _list(self.addresses) + _u64(self.incarnation) + _str(self.status)
                + _u64(self.pub_port) + _list(self.links) + _u64(self.bseq) + _u64(self.boldest) + _str(self.bepoch)
                + _list(self.groups))


@dataclass(frozen=True, slots=True)
class Accusation:
    accuser_id: str
    accuser_key: str
    accuser_verify_key: bytes
    node_id: str          # the subject
    incarnation: int      # the subject's incarnation it is about
    status: str           # suspect or dead
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        return (DOMAIN_ACCUSATION + _str(self.accuser_id) + _str(self.accuser_key) + self.accuser_verify_key
                + _str(self.node_id) + _u64(self.incarnation) + _str(self.status))


Fact = Union[NodeRecord, Accusation]


def _valid_address(addr) -> bool:
    if type(addr) is not str or not 0 < len(addr.encode("utf-8")) <= MAX_ADDRESS_LEN:
        return False
    host, sep, port = addr.rpartition(":")
    return bool(sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536)


def _check_fields(rec: NodeRecord) -> None:
    if not (type(rec.node_id) is str and _ID_RE.match(rec.node_id)):
        raise BadRecord("malformed", "id")
    if not (type(rec.name) is str and valid_name(rec.name) and len(rec.name) <= MAX_NAME_LEN):
        raise BadRecord("malformed", "name")
    if not valid_key(rec.curve_key):
        raise BadRecord("malformed", "key")
    if not (type(rec.verify_key) is bytes and len(rec.verify_key) == 32):
        raise BadRecord("malformed", "verify key")
    addrs = rec.addresses
    if (type(addrs) is not tuple or len(addrs) > MAX_ADDRESSES or len(set(addrs)) != len(addrs)
            or not all(_valid_address(a) for a in addrs)):
        raise BadRecord("malformed", "addresses")
    if not (type(rec.incarnation) is int and 0 <= rec.incarnation <= MAX_INCARNATION):
        raise BadRecord("malformed", "incarnation")
    if rec.status not in SELF_STATUSES:
        raise BadRecord("bad_status", "a node may only say of itself alive or left")
    if not (type(rec.pub_port) is int and 0 <= rec.pub_port < 65536):
        raise BadRecord("malformed", "pub_port")
    links = rec.links
    if (type(links) is not tuple or len(links) > MAX_LINKS or len(set(links)) != len(links)
            or not all(type(n) is str and _ID_RE.match(n) and n != rec.node_id for n in links)):
        raise BadRecord("malformed", "links")
    if not (type(rec.bseq) is int and type(rec.boldest) is int and 0 <= rec.boldest <= MAX_INCARNATION
            and 0 <= rec.bseq <= MAX_INCARNATION):
        raise BadRecord("malformed", "bseq")
    if not (type(rec.bepoch) is str and (rec.bepoch == "" or _EPOCH_RE.match(rec.bepoch))):
        raise BadRecord("malformed", "bepoch")
    if not valid_groups(rec.groups):
        raise BadRecord("malformed", "groups")


def valid_groups(groups) -> bool:
    """A record's groups list: a tuple of at most MAX_GROUPS distinct entries, each an open
    group's valid name or a private group's ``~<id>:<tag>``, MAX_GROUP_BYTES in all."""
    return (type(groups) is tuple and len(groups) <= MAX_GROUPS and len(set(groups)) == len(groups)
            and all(type(g) is str and (_PRIVATE_RE.match(g) if g.startswith("~") else check_group_name(g) is None) for g in groups)
            and sum(len(g.encode("utf-8")) for g in groups) <= MAX_GROUP_BYTES)


def sign(signer: Signer, name: str, addresses, incarnation: int, status: str = ALIVE, pub_port: int = 0,
         links=(), bseq: int = 0, boldest: int = 0, bepoch: str = "", groups=()) -> NodeRecord:
    """The node's own record, signed.  Raises `BadRecord` for fields `verify` would refuse."""
    rec = NodeRecord(signer.node_id, name, signer.curve_key, signer.verify_key, tuple(addresses), incarnation, status,
                     b"", pub_port, tuple(links), bseq, boldest, bepoch, tuple(groups))
    _check_fields(rec)
    return replace(rec, signature=signer.sign(rec.signed_bytes()))


def accuse(signer: Signer, node_id: str, incarnation: int, status: str) -> Accusation:
    """The signer's claim that ``node_id`` at ``incarnation`` is suspect or dead."""
    acc = Accusation(signer.node_id, signer.curve_key, signer.verify_key, node_id, incarnation, status)
    _check_accusation_fields(acc)
    return replace(acc, signature=signer.sign(acc.signed_bytes()))


def _check_accusation_fields(acc: Accusation) -> None:
    for value in (acc.accuser_id, acc.node_id):
        if not (type(value) is str and _ID_RE.match(value)):
            raise BadRecord("malformed", "id")
    if not valid_key(acc.accuser_key):
        raise BadRecord("malformed", "key")
    if not (type(acc.accuser_verify_key) is bytes and len(acc.accuser_verify_key) == 32):
        raise BadRecord("malformed", "verify key")
    if not (type(acc.incarnation) is int and 0 <= acc.incarnation <= MAX_INCARNATION):
        raise BadRecord("malformed", "incarnation")
    if acc.status not in ACCUSATIONS:
        raise BadRecord("bad_status", "an accusation says suspect or dead")
    if acc.accuser_id == acc.node_id:
        raise BadRecord("bad_status", "a node does not accuse itself (it says left)")


BOUND_MAX = 20_000  # key bindings remembered as checked (`verify`'s ``bound``), then forgotten all at once


def verify(fact: Fact, bound: set | None = None) -> None:
    """Return if the record (or accusation) is well formed, bound to its id and signed by it.

    ``bound``, if given, holds the (id, CURVE key, verify key) triples already found bound:
    a node's keys never change, and the binding check (a hash and a curve conversion) was
    half the cost of checking a record while a network repairs itself.  Verified triples are
    added; the set is emptied when it reaches BOUND_MAX."""
    if isinstance(fact, NodeRecord):
        _check_fields(fact)
        triple = (fact.node_id, fact.curve_key, fact.verify_key)
        sig_key = fact.verify_key
    elif isinstance(fact, Accusation):
        _check_accusation_fields(fact)
        triple = (fact.accuser_id, fact.accuser_key, fact.accuser_verify_key)
        sig_key = fact.accuser_verify_key
    else:
        raise BadRecord("malformed", "not a record")
    if bound is None or triple not in bound:
        check_binding(*triple)
    _check_sig(sig_key, fact.signed_bytes(), fact.signature)
    if bound is not None:
        if len(bound) >= BOUND_MAX:
            bound.clear()
        bound.add(triple)


# --- precedence ---------------------------------------------------------------------------

def newer(a: Fact, b: Fact) -> bool:
    """Does ``a`` supersede ``b`` (both verified, about the same node)?  See the module doc.

    ``b`` is what we hold; an accusation is only ever held beside the node's own record at
    the same incarnation, so an accusation naming a higher incarnation than ``b`` is refused
    (only the node raises its incarnation)."""
    if a.node_id != b.node_id:
        raise ValueError("facts about different nodes")
    if isinstance(a, Accusation) and a.incarnation > b.incarnation:
        return False
    if a.incarnation != b.incarnation:
        return a.incarnation > b.incarnation
    return RANK[a.status] > RANK[b.status]


# --- the wire -----------------------------------------------------------------------------

def encode(fact: Fact) -> dict:
    if isinstance(fact, NodeRecord):
        return {"id": fact.node_id, "name": fact.name, "key": fact.curve_key, "vk": fact.verify_key.hex(),
                "addrs": list(fact.addresses), "inc": fact.incarnation, "status": fact.status,
                "pub": fact.pub_port, "links": list(fact.links), "bseq": fact.bseq, "boldest": fact.boldest,
                "bepoch": fact.bepoch, "groups": list(fact.groups), "sig": fact.signature.hex()}
    return {"by": fact.accuser_id, "by_key": fact.accuser_key, "by_vk": fact.accuser_verify_key.hex(),
            "id": fact.node_id, "inc": fact.incarnation, "status": fact.status, "sig": fact.signature.hex()}


def _hex(obj: dict, field: str, pattern: re.Pattern) -> bytes:
    value = obj.get(field)
    if not (type(value) is str and pattern.match(value)):
        raise BadRecord("malformed", field)
    return bytes.fromhex(value)


def _field(obj: dict, field: str, kind: type):
    value = obj.get(field)
    if type(value) is not kind:
        raise BadRecord("malformed", field)
    return value


def decode(obj) -> Fact:
    """A record or accusation from its wire dict (shape checked; call `verify` to believe it)."""
    if type(obj) is not dict:
        raise BadRecord("malformed", "not an object")
    if "by" in obj:
        if set(obj) != {"by", "by_key", "by_vk", "id", "inc", "status", "sig"}:
            raise BadRecord("malformed", "fields")
        fact = Accusation(_field(obj, "by", str), _field(obj, "by_key", str), _hex(obj, "by_vk", _HEX64_RE),
                          _field(obj, "id", str), _field(obj, "inc", int), _field(obj, "status", str),
                          _hex(obj, "sig", _HEX128_RE))
        _check_accusation_fields(fact)
        return fact
    if set(obj) != {"id", "name", "key", "vk", "addrs", "inc", "status", "pub", "links", "bseq", "boldest", "bepoch", "groups", "sig"}:
        raise BadRecord("malformed", "fields")
    addrs = _field(obj, "addrs", list)
    rec = NodeRecord(_field(obj, "id", str), _field(obj, "name", str), _field(obj, "key", str), _hex(obj, "vk", _HEX64_RE),
                     tuple(addrs), _field(obj, "inc", int), _field(obj, "status", str), _hex(obj, "sig", _HEX128_RE),
                     _field(obj, "pub", int), tuple(_field(obj, "links", list)), _field(obj, "bseq", int),
                     _field(obj, "boldest", int), _field(obj, "bepoch", str), tuple(_field(obj, "groups", list)))
    _check_fields(rec)
    return rec
