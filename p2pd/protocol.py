"""The p2pd wire codec: JSON envelopes in, validated `Message` objects out.

How this works
--------------
Every peer frame is one UTF-8 JSON object (the envelope) with the fields
``v, id, type, sender_id, sender_name, timestamp, data, target_id``.  This
module turns bytes into a `Message` and back, and nothing else: it never
touches a socket or a clock (timestamps are passed in), so it is tested with
plain bytes.  Anything that does not match docs/PROTOCOL.md raises
`ProtocolError` whose ``kind`` is the counter the node bumps ("not_json",
"oversized", "bad_field", "unknown_type", "version"), so that bad input can
be dropped, counted and logged without ever reaching the node's logic.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any, Protocol

import orjson

from .escape import NAME_FORBIDDEN_CLASS

PROTOCOL_VERSION = 3  # 2: the overlay (VIEW, TREE, ROUTED, FACTS); 3: groups (SHOUT, records' groups); docs/PROTOCOL.md 1

JOIN = "JOIN"
LEAVE = "LEAVE"
MESSAGE = "MESSAGE"
BROADCAST = "BROADCAST"
PEERS = "PEERS"
PING = "PING"
PONG = "PONG"
ACK = "ACK"
FETCH = "FETCH"
# The overlay (protocol version 2, docs/SCALE.md): each carries data.kind or a body its component checks.
VIEW = "VIEW"  # HyParView membership views (views.py): data {"kind": one of VIEW_KINDS, ...}
TREE = "TREE"  # Plumtree broadcast (tree.py): data {"kind": one of TREE_KINDS, ...}
ROUTED = "ROUTED"  # a sealed body for a node we hold no link to, hop by hop (relay.py, sealed.py)
FACTS = "FACTS"  # signed node records and accusations (roster.py, records.py): data {"facts": [...], "have"?: [...], "want"?: [...]}
SHOUT = "SHOUT"  # a group message on its way to the group's members, hop by hop (shouts.py)
TYPES = frozenset({JOIN, LEAVE, MESSAGE, BROADCAST, PEERS, PING, PONG, ACK, FETCH, VIEW, TREE, ROUTED, FACTS, SHOUT})
VIEW_KINDS = frozenset({"JOIN", "FORWARD_JOIN", "NEIGHBOR", "NEIGHBOR_REPLY", "DISCONNECT", "SHUFFLE", "SHUFFLE_REPLY"})
TREE_KINDS = frozenset({"GOSSIP", "IHAVE", "GRAFT", "PRUNE"})
MAX_FACTS = 64  # records and accusations in one FACTS (a record is about 400 bytes of JSON)
MAX_HAVE = 2048  # [id, incarnation, rank] entries in one FACTS "have" (about 50 bytes each), ids in one "want"
MAX_SEQ = 2**53  # sequence numbers stay exact in every JSON implementation

DEFAULT_MAX_FRAME_BYTES = 256 * 1024
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "*", ""})  # a listen address that names no host: "use the address you see"
MAX_ID_LEN = 64
MAX_NAME_LEN = 64
MAX_TEXT_LEN = 64 * 1024
MAX_PEERS_LISTED = 1024
MAX_BATCH = 256  # envelopes in one ZeroMQ message, to a peer that announced "batch"
MAX_GROUP_FIELD = 256  # a MESSAGE's or FETCH's "group": an open group's name (64 characters) or "~" + a private group's id

Z85_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_KEY_RE = re.compile("^[" + re.escape(Z85_CHARS) + "]{40}\\Z")
_ID_RE = re.compile(r"^[0-9A-Za-z_.:-]{1,64}\Z")
# Names: 1-64 characters, none a control (C0, DEL, C1), format (bidi overrides and marks, zero-width
# characters ...) or line/paragraph separator character: see escape.py.
_NAME_RE = re.compile("^[^" + NAME_FORBIDDEN_CLASS + "]{1,64}\\Z")
# ISO 8601 date and time with a zone, as utc_timestamp writes it (2026-11-25T11:44:14.123Z) or
# with other precision (none to nanoseconds) or an offset (+01:00, +0100, -05).  ASCII digits only.
_TS_RE = re.compile(
    r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)"
    r"(?:[.,][0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3])(?::?[0-5][0-9])?)\Z")
# A host name (RFC 1123): dot-separated labels of letters, digits and inner hyphens, 1-63 each,
# at most 253 in all (one trailing dot allowed).  IP addresses are checked with `ipaddress`.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"^(?=.{{1,253}}\.?\Z){_LABEL}(?:\.{_LABEL})*\.?\Z")
_SCOPE_RE = re.compile(r"^[0-9A-Za-z_.-]{1,64}\Z")  # an IPv6 zone (fe80::1%eth0)


class ProtocolError(ValueError):
    """A frame that does not follow the protocol; ``kind`` names the counter."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class PeerAddress:
    """Where a peer can be reached: its ROUTER port and PUB port on ``addr``.

    ``addr`` is ``None`` when the peer does not know its own reachable address
    (it is bound to all interfaces and has no ``--advertise``); receivers then
    use the address they see the connection coming from.
    """

    addr: str | None
    port: int
    pub_port: int

    def router_endpoint(self, host: str | None = None) -> str:
        return tcp_endpoint(host or self.addr or "127.0.0.1", self.port)

    def pub_endpoint(self, host: str | None = None) -> str:
        return tcp_endpoint(host or self.addr or "127.0.0.1", self.pub_port)


@dataclass(slots=True)
class Message:
    type: str
    id: str
    sender_id: str
    sender_name: str
    timestamp: str
    data: dict = field(default_factory=dict)
    target_id: str | None = None
    v: int = PROTOCOL_VERSION

    @property
    def text(self) -> str | None:
        return self.data.get("text") if self.type in (MESSAGE, BROADCAST) else None

    def to_dict(self) -> dict:
        return {
            "v": self.v,
            "id": self.id,
            "type": self.type,
            "sender_id": self.sender_id,
            "sender_name": self.sender_name,
            "timestamp": self.timestamp,
            "data": self.data,
            "target_id": self.target_id,
        }


def host_port(host: str, port: int) -> str:
    """``host:port`` as shown and pinned; an IPv6 literal in brackets (``[::1]:5000``), so that
    the port cannot be read as part of the address."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def tcp_endpoint(host: str, port: int) -> str:
    """A ZeroMQ tcp endpoint; IPv6 literals need brackets."""
    return f"tcp://{host_port(host, port)}"


class RandomBits(Protocol):
    """Where message ids' random part comes from: `random.Random` fits.  Given by the caller
    (the daemon seeds one from os.urandom, the simulator from its seed), so the codec draws
    no randomness of its own and a simulated run can be replayed."""

    def getrandbits(self, k: int) -> int: ...


def new_message_id(epoch_s: float, rng: RandomBits) -> str:
    """32 hex digits: 48 bits of milliseconds since 1970, then 80 random bits.

    Unique without coordination between nodes, like a UUIDv7: ids a node
    makes one after another sort together, so the store's unique index on
    ids grows at its end instead of touching a random page per insert.
    """
    ms = int(epoch_s * 1000) & 0xFFFFFFFFFFFF
    return f"{ms:012x}{rng.getrandbits(80):020x}"


_ts_last = [-1, "", -1, ""]  # the last millisecond and its text; the last second and its text


def utc_timestamp(epoch_s: float) -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-11-25T11:44:14.123Z``.

    The last result is kept: a batch of messages made in the same
    millisecond formats the time once; and the last second's date and time,
    so that another millisecond of it only adds its digits."""
    ms = int(epoch_s * 1000)
    last = _ts_last
    if ms != last[0]:
        secs, milli = divmod(ms, 1000)
        if secs != last[2]:
            last[2], last[3] = secs, datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        last[0], last[1] = ms, f"{last[3]}.{milli:03d}Z"
    return last[1]


def make(
    type_: str,
    sender_id: str,
    sender_name: str,
    epoch_s: float,
    data: dict | None = None,
    target_id: str | None = None,
    msg_id: str | None = None,
    rng: RandomBits | None = None,
) -> Message:
    """A message from us; its id is ``msg_id``, or a new one drawn from ``rng`` (one is needed)."""
    if msg_id is None:
        if rng is None:
            raise TypeError("make() needs a msg_id or an rng to draw one from")
        msg_id = new_message_id(epoch_s, rng)
    return Message(type_, msg_id, sender_id, sender_name, utc_timestamp(epoch_s), data or {}, target_id)


def encode(msg: Message) -> bytes:
    """One JSON encode per message: compact UTF-8 (orjson; see docs/PERFORMANCE.md for why)."""
    return orjson.dumps(msg.to_dict())


# --------------------------------------------------------------------------
# decoding and validation


# Strings that passed a pattern check before.  A busy link repeats the same
# sender_id, sender_name, target_id and epoch in every frame, and PEERS the
# same ids, names, hosts and keys in every round of gossip: checking each once
# saves a regex match per field per frame.  Bounded: cleared when full.  Only
# ever a shortcut to "valid": whatever is not in a set gets the full check.
_GOOD: dict[re.Pattern, set] = {_ID_RE: set(), _NAME_RE: set()}
_GOOD_MAX = 4096
_GOOD_IDS = _GOOD[_ID_RE]  # node ids, epochs
_GOOD_NAMES = _GOOD[_NAME_RE]
_GOOD_HOSTS: set = set()
_GOOD_TIMES: set = set()  # timestamps: a node's frames of one millisecond share one


def _matches(val: str, pattern: re.Pattern) -> bool:
    good = _GOOD.get(pattern)
    if good is None:
        good = _GOOD[pattern] = set()
    if val in good:
        return True
    if not pattern.match(val):
        return False
    if len(good) >= _GOOD_MAX:
        good.clear()
    good.add(val)
    return True


def _req_str(obj: dict, key: str, pattern: re.Pattern | None = None, max_len: int = MAX_ID_LEN, cache: bool = False) -> str:
    val = obj.get(key)
    if type(val) is not str:
        raise ProtocolError("bad_field", f"field {key!r} must be a string")
    if len(val) > max_len:
        raise ProtocolError("bad_field", f"field {key!r} longer than {max_len}")
    if pattern is not None and not (_matches(val, pattern) if cache else pattern.match(val)):
        raise ProtocolError("bad_field", f"field {key!r} has invalid characters")
    return val


def _port(val: Any, key: str) -> int:
    if not isinstance(val, int) or isinstance(val, bool) or not 1 <= val <= 65535:
        raise ProtocolError("bad_field", f"{key!r} must be a port number 1-65535")
    return val


def valid_host(val) -> bool:
    """An IPv4 or IPv6 address (IPv6 optionally in brackets, with a zone) or an RFC 1123 host name
    whose last label is not all digits (``999.1.1.1`` is neither).  Good answers are remembered:
    JOIN and PEERS repeat the same few addresses."""
    if type(val) is not str:
        return False
    if val in _GOOD_HOSTS:
        return True
    if not 0 < len(val) <= 255 or not val.isascii():
        return False
    if _HOST_RE.match(val) and not val.rstrip(".").rpartition(".")[2].isdigit():
        ok = True
    else:
        ip = val[1:-1] if val.startswith("[") and val.endswith("]") else val
        if "%" in ip:
            ip, _, scope = ip.partition("%")
            if not _SCOPE_RE.match(scope):
                return False
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return False
        ok = ip == val or ":" in ip  # brackets only around IPv6
    if ok:
        if len(_GOOD_HOSTS) >= _GOOD_MAX:
            _GOOD_HOSTS.clear()
        _GOOD_HOSTS.add(val)
    return ok


def _opt_addr(val: Any) -> str | None:
    if val is None or val == "*":  # "*": ZeroMQ's wildcard, like 0.0.0.0 (docs/PROTOCOL.md 5.2)
        return val
    if not valid_host(val):
        raise ProtocolError("bad_field", "'addr' must be an IP address or a host name (RFC 1123), \"*\" or null")
    return val


def parse_address(obj: Any) -> PeerAddress:
    if not isinstance(obj, dict):
        raise ProtocolError("bad_field", "address must be an object")
    return PeerAddress(_opt_addr(obj.get("addr")), _port(obj.get("port"), "port"), _port(obj.get("pub_port"), "pub_port"))


def _opt_seq(data: dict, key: str, lo: int = 0) -> None:
    """Sequence fields are optional (simple peers may omit them) but typed when present."""
    val = data.get(key)
    if val is not None and (not isinstance(val, int) or isinstance(val, bool) or not lo <= val <= MAX_SEQ):
        raise ProtocolError("bad_field", f"data.{key} must be an integer {lo}..2^53")


def _opt_id(data: dict, key: str) -> None:
    """An optional id-like field (an epoch): a string of the id pattern when present."""
    val = data.get(key)
    if val is not None and not (type(val) is str and _matches(val, _ID_RE)):
        raise ProtocolError("bad_field", f"data.{key} must be an id string")


def _opt_group(data: dict) -> None:
    """An optional ``group``: a string of at most MAX_GROUP_FIELD characters when present (whether
    it names a group this node is in is the receiver's question, shouts.py)."""
    val = data.get("group")
    if val is not None and not (type(val) is str and 0 < len(val) <= MAX_GROUP_FIELD):
        raise ProtocolError("bad_field", f"data.group must be a group name of 1-{MAX_GROUP_FIELD} characters")


def _check_data(type_: str, data: dict, target_id: str | None) -> None:
    _opt_id(data, "epoch")
    if type_ in (JOIN, PING, PONG):
        _opt_seq(data, "bseq")
        _opt_seq(data, "boldest")
    if type_ == MESSAGE:
        _opt_seq(data, "seq", 1)
        _opt_seq(data, "base", 1)
        if (data.get("seq") is None) != (data.get("base") is None):
            raise ProtocolError("bad_field", "MESSAGE needs both data.seq and data.base, or neither")
        if data.get("seq") is not None and data["base"] > data["seq"]:
            raise ProtocolError("bad_field", "MESSAGE data.base is above data.seq")
        _opt_group(data)
        if not isinstance(data.get("invite", False), bool):
            raise ProtocolError("bad_field", "MESSAGE 'invite' must be true or false")
    elif type_ == BROADCAST:
        _opt_seq(data, "bseq", 1)
    elif type_ == ACK:
        if data.get("upto") is None:
            raise ProtocolError("bad_field", "ACK needs data.upto")
        _opt_seq(data, "upto")
        if not isinstance(data.get("gap", False), bool):
            raise ProtocolError("bad_field", "ACK 'gap' must be true or false")
        if target_id is None:
            raise ProtocolError("bad_field", "ACK needs a target_id")
    elif type_ == FETCH:
        _opt_group(data)
        since = data.get("since")
        if since is not None:
            if not isinstance(since, (int, float)) or isinstance(since, bool) or not 0 <= since < 1e11:
                raise ProtocolError("bad_field", "FETCH data.since must be a UNIX time in seconds")
        else:
            for key in ("from", "to"):
                if data.get(key) is None:
                    raise ProtocolError("bad_field", "FETCH needs data.from and data.to, or data.since")
                _opt_seq(data, key, 1)
            if data["to"] < data["from"]:
                raise ProtocolError("bad_field", "FETCH data.to is below data.from")
    if type_ == JOIN:
        parse_address(data)
        _opt_key(data)
        reply_to = data.get("reply_to")
        if reply_to is not None and not (isinstance(reply_to, str) and _ID_RE.match(reply_to)):
            raise ProtocolError("bad_field", "JOIN 'reply_to' must be a message id or null")
        if not all(isinstance(data.get(flag, False), bool) for flag in ("batch", "again", "rid_suffix", "digest")):
            raise ProtocolError("bad_field", "JOIN 'batch', 'again', 'rid_suffix' and 'digest' must be true or false")
        boot = data.get("boot")
        if boot is not None and not (isinstance(boot, str) and _ID_RE.match(boot)):
            raise ProtocolError("bad_field", "JOIN 'boot' must be an id string")
        for seq, epoch in (("got", "got_epoch"), ("bgot", "bgot_epoch")):  # how far the sender received our numbering
            _opt_seq(data, seq)
            _opt_id(data, epoch)
            if (data.get(seq) is None) != (data.get(epoch) is None):
                raise ProtocolError("bad_field", f"JOIN needs both data.{seq} and data.{epoch}, or neither")
    elif type_ in (MESSAGE, BROADCAST):
        text = data.get("text")
        if not isinstance(text, str):
            raise ProtocolError("bad_field", f"{type_} needs data.text as a string")
        if len(text) > MAX_TEXT_LEN:
            raise ProtocolError("bad_field", f"{type_} text longer than {MAX_TEXT_LEN} characters")
        if type_ == MESSAGE and target_id is None:
            raise ProtocolError("bad_field", "MESSAGE needs a target_id")
    elif type_ == PEERS:
        peers = data.get("peers")
        if not isinstance(peers, list) or len(peers) > MAX_PEERS_LISTED:
            raise ProtocolError("bad_field", f"PEERS needs data.peers as a list of at most {MAX_PEERS_LISTED}")
        _check_peers(peers)
    elif type_ == SHOUT:
        if type(data.get("g")) is not str or type(data.get("fwd")) is not list or type(data.get("ttl")) is not int:
            raise ProtocolError("bad_field", "SHOUT needs data.g, data.fwd (a list) and data.ttl (shouts.py checks the rest)")
    elif type_ in (VIEW, TREE):
        kinds = VIEW_KINDS if type_ == VIEW else TREE_KINDS
        kind = data.get("kind")
        if type(kind) is not str or kind not in kinds:  # a list or dict is not even hashable
            raise ProtocolError("bad_field", f"{type_} needs data.kind, one of {', '.join(sorted(kinds))}")
    elif type_ == ROUTED:
        for key in ("from", "to"):
            if not (type(data.get(key)) is str and _matches(data[key], _ID_RE)):
                raise ProtocolError("bad_field", f"ROUTED needs data.{key} as a node id")
        ttl = data.get("ttl")
        if type(ttl) is not int or not 0 <= ttl <= 64:
            raise ProtocolError("bad_field", "ROUTED needs data.ttl, an integer 0..64")
    elif type_ == FACTS:
        facts = data.get("facts")
        if type(facts) is not list or len(facts) > MAX_FACTS or not all(type(f) is dict for f in facts):
            raise ProtocolError("bad_field", f"FACTS needs data.facts as a list of at most {MAX_FACTS} objects")
        have = data.get("have")
        if have is not None:
            if type(have) is not list or len(have) > MAX_HAVE or not all(_have_entry(e) for e in have):
                raise ProtocolError("bad_field", f"FACTS data.have must be a list of at most {MAX_HAVE} [node id, incarnation, rank 0-3]")
        want = data.get("want")
        if want is not None and (type(want) is not list or len(want) > MAX_HAVE
                                 or not all(type(i) is str and _matches(i, _ID_RE) for i in want)):
            raise ProtocolError("bad_field", f"FACTS data.want must be a list of at most {MAX_HAVE} node ids")
    elif type_ == PONG:
        ping_id = data.get("ping_id")
        if not (isinstance(ping_id, str) and _ID_RE.match(ping_id)):
            raise ProtocolError("bad_field", "PONG needs data.ping_id")


def _have_entry(e) -> bool:
    """One entry of a FACTS "have": [node id, incarnation, rank of its status (records.RANK)]."""
    return (type(e) is list and len(e) == 3 and type(e[0]) is str and _matches(e[0], _ID_RE)
            and type(e[1]) is int and 0 <= e[1] <= MAX_SEQ and type(e[2]) is int and 0 <= e[2] <= 3)


_PEER_FIELDS = itemgetter("id", "name", "addr", "port", "pub_port", "key")
_GOOD_PEERS: set = set()  # PEERS entries that passed, as _PEER_FIELDS tuples (bounded as _GOOD)


def _check_peers(peers: list) -> None:
    """Each PEERS entry: ``id``, ``name``, an address, an optional ``key``.

    Gossip repeats the same entries round after round (a full mesh of n nodes decodes n - 1 of
    them per PEERS), so an entry whose fields are those of one that passed before passes at
    once; any other gets `_check_peer_entry`, which raises on the first bad field exactly as
    if there were no shortcut.  The ports' types are checked apart: ``true`` and ``5010.0``
    compare equal to ``1`` and ``5010``.  The strings, and None, equal only themselves."""
    good = _GOOD_PEERS
    for entry in peers:
        if type(entry) is dict:
            try:
                fields = _PEER_FIELDS(entry)
                if type(fields[3]) is int and type(fields[4]) is int and fields in good:
                    continue
            except (KeyError, TypeError):  # a field left out ("addr" and "key" may be), or one unhashable
                pass
        _check_peer_entry(entry)


def _check_peer_entry(entry: Any) -> None:
    """The full checks of one PEERS entry; one that passes is remembered (see `_check_peers`)."""
    if not isinstance(entry, dict):
        raise ProtocolError("bad_field", "PEERS entries must be objects")
    _req_str(entry, "id", _ID_RE, cache=True)
    _req_str(entry, "name", _NAME_RE, MAX_NAME_LEN, cache=True)
    parse_address(entry)
    _opt_key(entry)
    if type(entry) is dict:
        try:
            fields = _PEER_FIELDS(entry)
        except KeyError:  # "addr" or "key" left out: not the shape the shortcut knows
            return
        if len(_GOOD_PEERS) >= _GOOD_MAX:
            _GOOD_PEERS.clear()
        _GOOD_PEERS.add(fields)


def decode(raw: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Message:
    """Parse and validate one envelope; raise `ProtocolError` on anything off-spec.

    Unknown *extra* fields are ignored so that later minor versions can add
    fields without breaking older peers; a different ``v`` is refused.

    Every frame of a busy node comes through here, so the common case goes first: an
    envelope whose fields are of the right types and whose strings are ones checked before
    (see `_GOOD`), with a data object that `_FAST_DATA` finds valid for its type, is taken
    at once.  The shortcut only ever says "valid"; whatever it is unsure of gets the full
    checks in their order (`_decode_checked`, `_check_data`), so what is refused, and the
    reason given, are the same with it or without it.
    """
    if len(raw) > max_bytes:
        raise ProtocolError("oversized", f"frame of {len(raw)} bytes exceeds {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:  # also invalid UTF-8, NaN/Infinity, nesting deeper than 1024
        raise ProtocolError("not_json", "frame is not UTF-8 JSON") from None
    if type(obj) is dict:
        get = obj.get
        v, type_, msg_id, sender_id, sender_name = get("v"), get("type"), get("id"), get("sender_id"), get("sender_name")
        timestamp, target_id, data = get("timestamp"), get("target_id"), get("data")
        if (type(v) is int and v == PROTOCOL_VERSION and type(type_) is str and type_ in TYPES
                and type(msg_id) is str and _ID_MATCH(msg_id)
                and type(sender_id) is str and sender_id in _GOOD_IDS and type(sender_name) is str and sender_name in _GOOD_NAMES
                and type(timestamp) is str and timestamp in _GOOD_TIMES
                and (target_id is None or type(target_id) is str and target_id in _GOOD_IDS)
                and type(data) is dict):
            if not _FAST_DATA[type_](data, target_id):
                _check_data(type_, data, target_id)  # the envelope is valid: its data decides, as in _decode_checked
            return Message(type_, msg_id, sender_id, sender_name, timestamp, data, target_id, v)
    return _decode_checked(obj)


def version_refusal(v) -> str:
    """Why a frame of another protocol version is refused, naming both versions."""
    if type(v) is int and not isinstance(v, bool):
        return (f"peer speaks p2pd protocol version {v}, this node speaks version {PROTOCOL_VERSION}: "
                f"run the same p2pd release on both (version 2 added the overlay, version 3 groups; see docs/PROTOCOL.md)")
    return f"unsupported protocol version {str(v)[:16]!r} (this node speaks version {PROTOCOL_VERSION})"


def _decode_checked(obj: Any) -> Message:
    """The full checks of a parsed envelope, in order: the first one that fails raises."""
    if not isinstance(obj, dict):
        raise ProtocolError("not_json", "frame is JSON but not an object")
    v = obj.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError("version", version_refusal(v))
    type_ = obj.get("type")
    if not isinstance(type_, str) or type_ not in TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {str(type_)[:32]!r}")
    msg_id = _req_str(obj, "id", _ID_RE)
    sender_id = _req_str(obj, "sender_id", _ID_RE, cache=True)
    sender_name = _req_str(obj, "sender_name", _NAME_RE, MAX_NAME_LEN, cache=True)
    timestamp = obj.get("timestamp")
    if not (type(timestamp) is str and timestamp in _GOOD_TIMES):
        if type(timestamp) is not str or len(timestamp) > 40 or not _TS_RE.match(timestamp):
            raise ProtocolError("bad_field", "field 'timestamp' must be an ISO 8601 date and time with a zone, e.g. 2026-11-25T11:44:14.123Z")
        if len(_GOOD_TIMES) >= _GOOD_MAX:
            _GOOD_TIMES.clear()
        _GOOD_TIMES.add(timestamp)
    target_id = obj.get("target_id")
    if target_id is not None and not (type(target_id) is str and _matches(target_id, _ID_RE)):
        raise ProtocolError("bad_field", "field 'target_id' must be a node id or null")
    data = obj.get("data")
    if not isinstance(data, dict):
        raise ProtocolError("bad_field", "field 'data' must be an object")
    _check_data(type_, data, target_id)
    return Message(type_, msg_id, sender_id, sender_name, timestamp, data, target_id, v)


# The common data objects, checked at once (see `decode`): True only if `_check_data` would
# pass them; False if unsure (it then decides).
_ID_MATCH = _ID_RE.match


def _fast_epoch(data: dict) -> bool:
    epoch = data.get("epoch")
    return epoch is None or type(epoch) is str and epoch in _GOOD_IDS


def _fast_seq(val, lo: int = 0) -> bool:
    return val is None or type(val) is int and lo <= val <= MAX_SEQ


def _fast_beacon(data: dict, target_id) -> bool:  # PING (and the start of PONG): epoch, bseq, boldest
    return _fast_epoch(data) and _fast_seq(data.get("bseq")) and _fast_seq(data.get("boldest"))


def _fast_pong(data: dict, target_id) -> bool:
    ping_id = data.get("ping_id")
    return _fast_beacon(data, target_id) and type(ping_id) is str and _ID_MATCH(ping_id) is not None


def _fast_ack(data: dict, target_id) -> bool:
    upto, gap = data.get("upto"), data.get("gap", False)
    return (target_id is not None and _fast_epoch(data) and type(upto) is int and 0 <= upto <= MAX_SEQ
            and type(gap) is bool)


def _fast_message(data: dict, target_id) -> bool:
    seq, base, text = data.get("seq"), data.get("base"), data.get("text")
    return ("group" not in data and "invite" not in data and target_id is not None and type(text) is str and len(text) <= MAX_TEXT_LEN and _fast_epoch(data)
            and (seq is None and base is None or type(seq) is int and type(base) is int and 1 <= base <= seq <= MAX_SEQ))


def _fast_broadcast(data: dict, target_id) -> bool:
    text = data.get("text")
    return type(text) is str and len(text) <= MAX_TEXT_LEN and _fast_epoch(data) and _fast_seq(data.get("bseq"), 1)


def _fast_peers(data: dict, target_id) -> bool:
    peers = data.get("peers")
    if not (_fast_epoch(data) and type(peers) is list and len(peers) <= MAX_PEERS_LISTED):
        return False
    _check_peers(peers)  # the only check left: passes, or raises what _check_data would
    return True


def _unsure(data: dict, target_id) -> bool:
    return False


_FAST_DATA = {PING: _fast_beacon, PONG: _fast_pong, ACK: _fast_ack, MESSAGE: _fast_message, BROADCAST: _fast_broadcast,
              PEERS: _fast_peers, JOIN: _unsure, LEAVE: _unsure, FETCH: _unsure,
              VIEW: _unsure, TREE: _unsure, ROUTED: _unsure, FACTS: _unsure, SHOUT: _unsure}


def valid_key(value) -> bool:
    """A CURVE public key as 40 characters of Z85 text."""
    return isinstance(value, str) and bool(_KEY_RE.match(value))


def _opt_key(obj: dict) -> None:
    key = obj.get("key")
    if key is not None and not valid_key(key):
        raise ProtocolError("bad_field", "'key' must be a 40-character Z85 public key or null")


def valid_node_id(value: str) -> bool:
    return isinstance(value, str) and bool(_ID_RE.match(value))


def valid_name(value: str) -> bool:
    return isinstance(value, str) and bool(_NAME_RE.match(value))


def valid_timestamp(value) -> bool:
    """An envelope's ``timestamp``: ISO 8601 with a zone, at most 40 characters (as `decode` checks)."""
    return isinstance(value, str) and len(value) <= 40 and bool(_TS_RE.match(value))
