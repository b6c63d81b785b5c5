"""Group keys: the pure crypto core of private groups (issue 16, "Private groups").

How this works
--------------
A private group is a name plus a 32-byte secret key shared by its members (`GroupKey`).  The
node that creates it draws the key (`new_group_key`, the random bytes passed in); members
hand it on to the nodes they invite inside an end-to-end sealed direct message
(`invite_payload` / `accept_invite`; sealed.py does the sealing).  Everything here is
derived from that key with keyed BLAKE2b or sealed with it using XSalsa20-Poly1305
(libsodium's ``crypto_secretbox``), so knowing the key is what being a member means.

**The group's id.**  On the wire and in records a private group never appears by name:
`group_id` is BLAKE2b-128 keyed with the group key over a fixed domain string, as 32 hex
characters.  It does not depend on the name, so knowing or guessing the name does not give
it; two groups that share a name but not a key have different ids.  It is stable for one key
and changes with it: a new key (a higher ``epoch``, after a member is removed) gives a new
id, so a removed member cannot even pick out the group's later traffic.

**Membership tags.**  A node's signed record lists, for each private group it is in,
`member_tag(gk, node_id, incarnation)` instead of the name: BLAKE2b-128 keyed with the group
key (another personalisation than the id's) over the node id and its incarnation.  A key
holder checks a tag with `is_member_tag` (constant-time compare) against the id and
incarnation of the record that lists it, so it learns who is in the group.  Without the key
a tag is 16 random-looking bytes: it tells neither the group nor whether two nodes share a
group, a node cannot make one that verifies (for itself or for any other id), and copying a
member's tag into another record fails because the tag is bound to the member's id.  The
tag changes with the incarnation, so a non-member cannot link one incarnation's tags to the
next.  What a non-member does see is how many tags a record lists (how many private groups
the node is in).

**Shouts.**  `seal_shout` encrypts a shout's text with ``crypto_secretbox`` under the group
key.  Secretbox has no associated data, so the plaintext starts with a header: a version
byte and BLAKE2b-128 of (group id, epoch, seq, sender id); `open_shout` recomputes it from
what the caller expects and refuses a box whose header differs (``bad_binding``).  A relay or
a member that moves a ciphertext to another sender, seq or group therefore gets it refused.
The nonce is synthesised, as in sealed.py: ``BLAKE2b-192(key = BLAKE2b-256(key = group key,
person = "p2pd-shout-nonce"), data = nonce24 || plaintext)``, so a weak or seeded random
source (the simulator's) cannot make two different shouts share a nonce (the plaintext
holds the sender id and seq); it only makes equal shouts give equal ciphertexts.  The output
is canonical base64 (RFC 4648, padded) of ``nonce || box``, like sealed.py's wire fields.

**Threat model.**
- A *member* (holds the key) reads every shout of its epoch, sends shouts, recognises the
  other members' tags and can invite anyone.  It cannot make a shout open as another
  sender's *for the key's other holders to detect*: every member holds the same key, so
  the box proves "a member sealed this", not which one.  The sender id is bound in, but a
  member can seal under any sender id it likes; who sent a shout is vouched for by the
  signed envelope that carries it, not by this module.
- A *removed member* keeps the old key: it can still read every shout sealed under it,
  including ones it fetches or is relayed later, and still recognise old-epoch tags.  Once
  the remaining members switch to a new key (new random bytes, a higher epoch) it can read
  nothing new, cannot recognise the new id or tags, and its shouts no longer open.  Nothing
  can take back what it already read; shouts sent before the new key reaches everyone are
  readable to it.
- A *relay* (forwards shouts but holds no key) sees the group id, the sender, the seq, the
  sizes and the timing; not the name, not the text.  Any change it makes to a ciphertext,
  or moving it to another sender, seq or group, makes `open_shout` fail.  It can drop or
  replay a shout: replays are caught by the direct messages' numbering (shouts.py), not here.
- A *non-member* is a relay that also reads records: it sees opaque tags, cannot forge or
  transplant one, cannot tell which group a tag is for, and cannot link tags across
  incarnations.

Pure, sans-I/O: no clock, no randomness of its own (the caller passes random bytes), no I/O.
Every refusal is `GroupKeyError(kind)`, never an exception from libsodium.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from nacl import bindings as _na
from nacl.exceptions import CryptoError

from .digest import blake2b
from .groups import check_group_name
from .protocol import MAX_SEQ, MAX_TEXT_LEN, valid_key, valid_node_id
from .records import z85_decode, z85_encode

KEY_BYTES = 32
NONCE_BYTES = 24
MAC_BYTES = 16
TAG_BYTES = 16
ID_BYTES = 16
BINDING_BYTES = 16
SHOUT_VERSION = 1
KEY_VERSION = 1
INVITE_KIND = "group_invite"
HEADER_BYTES = 1 + BINDING_BYTES
# the longest sealed shout: MAX_TEXT_LEN characters of 4 UTF-8 bytes each, as base64
MAX_SEALED_CHARS = 4 * -(-(NONCE_BYTES + MAC_BYTES + HEADER_BYTES + 4 * MAX_TEXT_LEN) // 3)
MIN_SEALED_BYTES = NONCE_BYTES + MAC_BYTES + HEADER_BYTES

ID_PERSON = b"p2pd-group-id"
ID_DOMAIN = b"p2pd private group id v1"
TAG_PERSON = b"p2pd-member-tag"
AD_PERSON = b"p2pd-shout-ad"
NONCE_PERSON = b"p2pd-shout-nonce"

KEY_FIELDS = frozenset({"v", "group", "key", "epoch"})
INVITE_FIELDS = KEY_FIELDS | {"kind"}


class GroupKeyError(ValueError):
    """A group key, tag or sealed shout that must not be believed (or cannot be made);
    ``kind`` names why.

    Kinds: ``malformed`` (a type, length, encoding or range is wrong), ``too_large``,
    ``bad_box`` (does not open: forged, altered, truncated or another key), ``bad_binding``
    (opens, but was sealed for another group, epoch, sender or seq), ``bad_text`` (opens, but
    is not what `seal_shout` makes)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


# --- the key ------------------------------------------------------------------------------

def _int_in(value, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi


@dataclass(frozen=True)
class GroupKey:
    """One private group's key at one epoch.  Validated on construction."""
    group: str
    key: bytes
    epoch: int = 0

    def __post_init__(self) -> None:
        reason = check_group_name(self.group)
        if reason is not None:
            raise GroupKeyError("malformed", f"group: {reason}")
        if type(self.key) is not bytes or len(self.key) != KEY_BYTES:
            raise GroupKeyError("malformed", f"a group key is {KEY_BYTES} bytes")
        if not _int_in(self.epoch, 0, MAX_SEQ):
            raise GroupKeyError("malformed", f"epoch is an int in 0..{MAX_SEQ}")

    def __repr__(self) -> str:  # never print the key (logs, tracebacks)
        return f"GroupKey(group={self.group!r}, epoch={self.epoch}, id={group_id(self)})"

    def encode(self) -> dict:
        """A JSON-able dict for the store: {"v": 1, "group", "key": 40 chars Z85, "epoch"}."""
        return {"v": KEY_VERSION, "group": self.group, "key": z85_encode(self.key), "epoch": self.epoch}

    @classmethod
    def decode(cls, data) -> GroupKey:
        """The inverse of `encode`; `GroupKeyError("malformed")` with a one-line reason."""
        return _decode(data, KEY_FIELDS)


def _decode(data, fields: frozenset) -> GroupKey:
    if type(data) is not dict or set(data) != fields:
        raise GroupKeyError("malformed", f"fields: expected {', '.join(sorted(fields))}")
    if not _int_in(data["v"], KEY_VERSION, KEY_VERSION):
        raise GroupKeyError("malformed", f"v: this node reads group keys of version {KEY_VERSION}")
    text = data["key"]
    if not valid_key(text):
        raise GroupKeyError("malformed", "key: 40 characters of Z85")
    try:
        raw = z85_decode(text)
    except (KeyError, ValueError):
        raise GroupKeyError("malformed", "key: not Z85") from None
    if z85_encode(raw) != text:
        raise GroupKeyError("malformed", "key: not canonical Z85")
    return GroupKey(data["group"], raw, data["epoch"])


def new_group_key(group: str, random32: bytes, epoch: int = 0) -> GroupKey:
    """A new group's key (or a group's next key, with a higher ``epoch``) from 32 random bytes
    the caller drew (os.urandom in a daemon).  They are the key as they are: pass bytes from a
    cryptographic source, never the simulator's seeded one outside tests."""
    if type(random32) is not bytes or len(random32) != KEY_BYTES:
        raise GroupKeyError("malformed", f"random32 is {KEY_BYTES} bytes")
    return GroupKey(group, random32, epoch)


# --- derived ids --------------------------------------------------------------------------

def _check_gk(gk) -> GroupKey:
    if not isinstance(gk, GroupKey):
        raise GroupKeyError("malformed", "not a GroupKey")
    return gk


def group_id(gk: GroupKey) -> str:
    """The group's opaque id (32 hex): the same for every holder of the key, and nothing a
    non-member can compute or turn back into the name.  A new key gives a new id."""
    key = _check_gk(gk).key
    return blake2b(ID_DOMAIN, key=key, person=ID_PERSON, digest_size=ID_BYTES).hexdigest()


def _id_bytes(node_id) -> bytes:
    if not valid_node_id(node_id):
        raise GroupKeyError("malformed", "node id: 1-64 characters of [0-9A-Za-z_.:-]")
    raw = node_id.encode("ascii")
    return bytes([len(raw)]) + raw


def _u64(value, name: str, lo: int = 0) -> bytes:
    if not _int_in(value, lo, MAX_SEQ):
        raise GroupKeyError("malformed", f"{name} is an int in {lo}..{MAX_SEQ}")
    return value.to_bytes(8, "big")


def _tag(gk: GroupKey, node_id: str, incarnation: int) -> bytes:
    data = _id_bytes(node_id) + _u64(incarnation, "incarnation")
    return blake2b(data, key=_check_gk(gk).key, person=TAG_PERSON, digest_size=TAG_BYTES).digest()


def member_tag(gk: GroupKey, node_id: str, incarnation: int) -> str:
    """What ``node_id``'s record at ``incarnation`` lists for this group: 32 hex."""
    return _tag(gk, node_id, incarnation).hex()


def is_member_tag(gk: GroupKey, node_id: str, incarnation: int, tag) -> bool:
    """Whether ``tag`` (from ``node_id``'s record at ``incarnation``) says it is in this group.
    False for anything that is not 32 lowercase hex; constant time in the tag's bytes."""
    want = _tag(gk, node_id, incarnation)
    if type(tag) is not str or len(tag) != 2 * TAG_BYTES or tag != tag.lower():
        return False
    try:
        given = bytes.fromhex(tag)
    except ValueError:
        return False
    return len(given) == TAG_BYTES and _na.sodium_memcmp(given, want)


# --- shouts -------------------------------------------------------------------------------

def _header(gk: GroupKey, sender_id: str, seq: int) -> bytes:
    ad = (group_id(gk).encode("ascii") + _u64(gk.epoch, "epoch") + _u64(seq, "seq", 1)
          + _id_bytes(sender_id))
    return bytes([SHOUT_VERSION]) + blake2b(ad, person=AD_PERSON, digest_size=BINDING_BYTES).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def seal_shout(gk: GroupKey, nonce24: bytes, sender_id: str, seq: int, text: str) -> str:
    """``text`` sealed for the group's members, as ``sender_id``'s shout number ``seq``
    (1..MAX_SEQ): base64 text.  ``nonce24`` is 24 random bytes from the caller; the nonce used
    is synthesised from them and the plaintext (see the module doc).  `GroupKeyError`:
    ``malformed`` (an argument), ``too_large`` (over MAX_TEXT_LEN characters)."""
    _check_gk(gk)
    if type(nonce24) is not bytes or len(nonce24) != NONCE_BYTES:
        raise GroupKeyError("malformed", f"nonce24 is {NONCE_BYTES} bytes")
    if type(text) is not str:
        raise GroupKeyError("malformed", "text is a str")
    if len(text) > MAX_TEXT_LEN:
        raise GroupKeyError("too_large", f"{len(text)} characters, shouts hold {MAX_TEXT_LEN}")
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise GroupKeyError("malformed", "text is not valid Unicode") from None
    plaintext = _header(gk, sender_id, seq) + body
    nonce_key = blake2b(key=gk.key, person=NONCE_PERSON, digest_size=32).digest()
    nonce = blake2b(nonce24 + plaintext, key=nonce_key, digest_size=NONCE_BYTES).digest()
    return _b64(nonce + _na.crypto_secretbox(plaintext, nonce, gk.key))


def open_shout(gk: GroupKey, sealed, sender_id: str, seq: int) -> str:
    """The text of a shout `seal_shout` made with this key for ``sender_id`` and ``seq``, or
    `GroupKeyError` (``malformed``, ``too_large``, ``bad_box``, ``bad_binding``, ``bad_text``).
    The checks run cheapest first: nothing is decrypted that is refused on its size."""
    _check_gk(gk)
    header = _header(gk, sender_id, seq)  # refuses a bad sender id or seq before the box
    if type(sealed) is not str or not sealed.isascii():
        raise GroupKeyError("malformed", "a sealed shout is base64 text")
    if len(sealed) > MAX_SEALED_CHARS:
        raise GroupKeyError("too_large", f"{len(sealed)} characters, at most {MAX_SEALED_CHARS}")
    try:
        raw = base64.b64decode(sealed, validate=True)
    except (binascii.Error, ValueError):
        raise GroupKeyError("malformed", "not base64") from None
    if _b64(raw) != sealed:  # one text per ciphertext: no relay-chosen variants
        raise GroupKeyError("malformed", "not canonical base64")
    if len(raw) < MIN_SEALED_BYTES:
        raise GroupKeyError("malformed", f"{len(raw)} bytes, a sealed shout has at least {MIN_SEALED_BYTES}")
    nonce, box = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
    try:
        plaintext = _na.crypto_secretbox_open(box, nonce, gk.key)
    except (CryptoError, ValueError, TypeError):
        raise GroupKeyError("bad_box") from None
    if len(plaintext) < HEADER_BYTES or plaintext[:1] != header[:1]:
        raise GroupKeyError("bad_text", "not a shout of this version")
    if plaintext[:HEADER_BYTES] != header:
        raise GroupKeyError("bad_binding", "sealed for another group, epoch, sender or seq")
    try:
        text = plaintext[HEADER_BYTES:].decode("utf-8")
    except UnicodeDecodeError:
        raise GroupKeyError("bad_text", "not UTF-8") from None
    if len(text) > MAX_TEXT_LEN:
        raise GroupKeyError("too_large", f"{len(text)} characters, shouts hold {MAX_TEXT_LEN}")
    return text


# --- invites ------------------------------------------------------------------------------

def invite_payload(gk: GroupKey) -> dict:
    """What an invite carries, inside an end-to-end sealed direct message (never in clear:
    it is the key): {"kind": "group_invite", "v", "group", "key", "epoch"}."""
    return {"kind": INVITE_KIND, **_check_gk(gk).encode()}


def accept_invite(payload) -> GroupKey:
    """The key an invite carries, validated; `GroupKeyError("malformed")` otherwise."""
    if type(payload) is dict and payload.get("kind") != INVITE_KIND:
        raise GroupKeyError("malformed", f"kind: not a {INVITE_KIND}")
    return _decode(payload, INVITE_FIELDS)
