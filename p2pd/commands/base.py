"""What every control command is made of: `Command`, the `Call` it runs in, `BadRequest`, and the
argument checks several commands share.

How this works
--------------
A command is an object with a ``name``, a one-line ``summary`` and two steps.  ``parse(node,
args)`` turns the request's ``args`` (any JSON object a local client sent) into the typed
values the command needs, or raises `BadRequest` with an `ErrorCode`; peer arguments are
resolved against the node here, so that a request is refused for what is wrong with it in the
order the checks are written, before anything is done.  ``run(call, parsed)`` then does the
work through the node's public API and returns effects (`actions.py`), the reply to the client
among them (`Call.reply`), or none yet when the answer comes later (a ``connect`` that waits
for the peer, a ``send`` that waits for its ACK, a file edit done by the transport).

Both steps are pure: no file, socket or clock (``call.now`` is the node's monotonic time).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import orjson

from .. import protocol as P
from ..actions import ToClient
from ..errors import ErrorCode
from ..membership import ALIVE, AmbiguousPeer, Peer, UnknownPeer
from ..node import Node
from ..replies import err as _err, ok as _ok


class BadRequest(ValueError):
    """A request refused before (or while) it is carried out: answered with ``code`` and the
    one-line ``error``.  The code is an `ErrorCode` so that no handler can invent one that
    the client and docs/PROTOCOL.md 9.3 do not know."""

    def __init__(self, code: ErrorCode, error: str):
        super().__init__(error)
        self.code = code
        self.error = error


def reply(client: bytes, req, result) -> ToClient:
    """The success reply ``{"req", "ok": true, "result"}`` for ``client``."""
    return ToClient(client, _ok(req, result))


def refusal(client: bytes, req, code: ErrorCode, error: str) -> ToClient:
    """The error reply ``{"req", "ok": false, "code", "error"}`` for ``client``."""
    return ToClient(client, _err(req, code, error))


def internal_error(cmd, e: Exception, log_file: str | None) -> str:
    """The ``internal`` error's text for a request whose handler (or file edit) raised ``e``."""
    where = log_file or "the daemon's log"
    return (f"internal error in p2pd while handling {str(cmd)[:32]!r} ({type(e).__name__}: {str(e)[:200]}); "
            f"it may be partly done; see {where}")


@dataclass(frozen=True)
class Call:
    """One request being carried out: the node, its time, who asked (``client``, the control
    socket's routing id, and ``req``, echoed in the reply), and what the daemon adds to
    ``status`` and ``info`` (pid, home, endpoints: ``extra_status``)."""

    node: Node
    now: float
    client: bytes
    req: Any
    extra_status: dict

    def reply(self, result) -> ToClient:
        return reply(self.client, self.req, result)


class Command:
    """One control command.  Subclasses set ``name`` and ``summary`` and override `run`, and
    `parse` unless the command takes no arguments (then any ``args`` are ignored, as unknown
    arguments always are)."""

    name: str = ""
    summary: str = ""

    def parse(self, node: Node, args: dict) -> Any:
        """The checked, typed arguments; raises `BadRequest`."""
        return None

    def run(self, call: Call, parsed) -> list:
        """Carry the request out: the effects, the reply to ``call.client`` among them unless it comes later."""
        raise NotImplementedError(self.name)


# ---------------------------------------------------------------------------- shared argument checks


def arg_str(args: dict, key: str, max_len: int = 256) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v:
        raise BadRequest(ErrorCode.BAD_REQUEST, f"argument {key!r} must be a non-empty string")
    if len(v) > max_len:
        raise BadRequest(ErrorCode.BAD_REQUEST, f"argument {key!r} is longer than {max_len} characters")
    return v


def arg_num(args: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = args.get(key, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadRequest(ErrorCode.BAD_REQUEST, f"argument {key!r} must be a number from {lo} to {hi}")
    return v


def arg_since(args: dict) -> float | None:
    """``since``: a UNIX time in seconds, or None."""
    v = args.get("since")
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1e11:
        raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'since' must be a UNIX time in seconds")
    return float(v)


def arg_cursor(args: dict, key: str) -> int:
    """A message cursor (a row number of the store: an integer, 0 or more)."""
    v = args.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise BadRequest(ErrorCode.BAD_REQUEST, f"argument {key!r} must be a message cursor (an integer, 0 or more)")
    return v


def is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


ENVELOPE_OVERHEAD = 1024  # bytes around the text in an encoded MESSAGE, generously


def text_arg(node: Node, value) -> str:
    """A message text that will fit in one frame at every receiver with our limits."""
    if not isinstance(value, str) or not value:
        raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'text' must be a non-empty string")
    if len(value) > P.MAX_TEXT_LEN:
        raise BadRequest(ErrorCode.TOO_LARGE, f"text is longer than {P.MAX_TEXT_LEN} characters")
    # Encoded, a character takes at most 6 bytes (a \uXXXX escape): only long texts need the exact size.
    limit = node.settings.max_frame_bytes
    if len(value) * 6 + ENVELOPE_OVERHEAD > limit and len(orjson.dumps(value)) + ENVELOPE_OVERHEAD > limit:
        raise BadRequest(ErrorCode.TOO_LARGE, f"text does not fit in a {limit}-byte frame once encoded")
    return value


MAX_BATCH = 10_000  # texts in one `send` or `broadcast` request (the client library's send_many)


def texts_arg(node: Node, args: dict) -> list[str]:
    """``texts`` (a batch, stored in one transaction) or one ``text``."""
    if "texts" not in args:
        return [text_arg(node, args.get("text"))]
    texts = args["texts"]
    if not isinstance(texts, list) or not 0 < len(texts) <= MAX_BATCH:
        raise BadRequest(ErrorCode.BAD_REQUEST, f"argument 'texts' must be a list of 1 to {MAX_BATCH} strings")
    return [text_arg(node, t) for t in texts]


# ---------------------------------------------------------------------------- peers named in a request


def member(node: Node, args: dict, need_alive: bool = True) -> Peer:
    """``peer``: a peer in the node's table (a full id, a name or an id prefix); with
    ``need_alive``, one that is linked now."""
    query = arg_str(args, "peer")
    try:
        peer = node.table.resolve(query)
    except AmbiguousPeer as e:
        raise BadRequest(ErrorCode.AMBIGUOUS, str(e)) from None
    except UnknownPeer as e:
        raise BadRequest(ErrorCode.UNKNOWN_PEER, f"{e}; `p2pctl peers` lists the peers") from None
    if need_alive and peer.state != ALIVE:
        raise BadRequest(ErrorCode.NOT_LINKED, f"peer {peer.name} ({peer.id[:12]}) is {peer.state}, not linked; it is retried in the background")
    return peer


def target(node: Node, args: dict, hint: str = "; `p2pctl peers` lists the peers") -> tuple[str, str]:
    """``peer``: (id, name) of a node to send to or read about: a member of the table or one of
    the address book (offline, left or forgotten), as `Node.resolve_target` picks it."""
    query = arg_str(args, "peer")
    try:
        return node.resolve_target(query)
    except AmbiguousPeer as e:
        raise BadRequest(ErrorCode.AMBIGUOUS, str(e)) from None
    except UnknownPeer as e:
        raise BadRequest(ErrorCode.UNKNOWN_PEER, f"{e}{hint}") from None
