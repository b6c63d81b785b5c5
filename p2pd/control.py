"""The control API: JSON requests from `p2pctl` over the local IPC socket.

How this works
--------------
A client sends one frame ``{"req": <any>, "cmd": "<name>", "args": {...}}``
and gets back ``{"req": <same>, "ok": true, "result": ...}`` or
``{"req": <same>, "ok": false, "code": "<code>", "error": "<one line>"}``.
``watch`` is answered once and then streams ``{"event": ...}`` frames to the
same client until it goes away.  This module is the framing: the size, the
JSON, the token, the deadline, and the error replies.  The command itself is
looked up in `p2pd.commands.TABLE`, one object per command, which checks its
``args`` (``parse``) and carries it out (``run``).  A bad request gets an error
reply, never a crash.  Pure: the node and the time are passed in.

Over loopback TCP (where ``ipc://`` is missing, or ``P2PD_CONTROL=tcp``) every
request must also carry ``"token"``, the daemon's secret from ``control.token``;
the transport passes it in, and a missing or wrong one is refused as ``bad_token``.

A request may carry ``"deadline"``, a UNIX time: read after it, the request is
refused as ``expired`` and nothing of it is done.  A client that gave up on a
request (and told its user so) can then trust that it is never carried out
later, by a daemon that was stopped (SIGSTOP), overloaded, or restarted while
the request waited in a socket (see `check_deadline`).  Every request gets a
reply: one whose handler raises gets ``internal`` (the exception is logged once).
"""

from __future__ import annotations

import logging

import orjson

from .actions import Shutdown
from .commands import COMMANDS, TABLE, BadRequest, Call
from .commands.base import internal_error, refusal
from .errors import ErrorCode
from .node import Node

log = logging.getLogger("p2pd.control")

MAX_REQUEST_BYTES = 1024 * 1024


def _check_token(obj: dict, token: str) -> None:
    given = obj.get("token")
    if not isinstance(given, str) or not given:
        raise BadRequest(ErrorCode.BAD_TOKEN, "bad control token: none given; over TCP every request must carry the token from the home's control.token")
    import hmac  # only over TCP control: hmac pulls in OpenSSL (~4 MiB of RSS) via hashlib

    if not hmac.compare_digest(given.encode(), token.encode()):
        raise BadRequest(ErrorCode.BAD_TOKEN, "bad control token: it is not this daemon's (each start writes a new control.token)")


def check_deadline(obj: dict, wall: float) -> None:
    """Refuse a request read after its ``deadline`` (a UNIX time, set by the client from its timeout).

    The wall clock, not a monotonic one: the client and the daemon are two processes, and
    only the wall clock is one clock for both (a monotonic clock's origin is not defined across
    processes).  Both run on the same host (ipc, or TCP on loopback only), so no skew between
    machines enters; only a step of the system clock during the request's few seconds could
    misjudge one: a request refused too early gets this error reply (and can be sent again),
    one accepted late is what happened before deadlines existed.
    """
    deadline = obj.get("deadline")
    if deadline is None:
        return  # older clients, and hand-written requests, send none
    if not isinstance(deadline, (int, float)) or isinstance(deadline, bool) or not 0 < deadline < 1e11:
        raise BadRequest(ErrorCode.BAD_REQUEST, "'deadline' must be a UNIX time in seconds")
    if wall > deadline:
        raise BadRequest(ErrorCode.EXPIRED, f"request read {wall - deadline:.3f}s after its deadline, so it was not carried out "
                                            "(the client had given up); p2pd was busy, stopped or restarting: send it again, or raise --timeout")


def handle(node: Node, now: float, client: bytes, raw: bytes, extra_status: dict, token: str | None = None,
           wall: float | None = None) -> list:
    """One request; ``token``: the secret every request must carry (TCP control), None over ipc;
    ``wall``: the UNIX time it was read, for its deadline (None: no deadline is checked)."""
    req = None
    cmd = None
    try:
        if len(raw) > MAX_REQUEST_BYTES:
            raise BadRequest(ErrorCode.BAD_REQUEST, f"request larger than {MAX_REQUEST_BYTES} bytes")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:  # also invalid UTF-8, lone surrogates, nesting deeper than 1024
            raise BadRequest(ErrorCode.BAD_REQUEST, "request is not JSON") from None
        if not isinstance(obj, dict):
            raise BadRequest(ErrorCode.BAD_REQUEST, "request must be a JSON object")
        req = obj.get("req")
        if not isinstance(req, (int, str, type(None))) or isinstance(req, bool):
            req = None
        if token is not None:
            _check_token(obj, token)
        cmd = obj.get("cmd")
        args = obj.get("args", {})
        if not isinstance(args, dict):
            raise BadRequest(ErrorCode.BAD_REQUEST, "'args' must be an object")
        command = TABLE.get(cmd) if isinstance(cmd, str) else None
        if command is None:
            raise BadRequest(ErrorCode.UNKNOWN_COMMAND, f"unknown command {str(cmd)[:32]!r}; known: {', '.join(COMMANDS)}")
        if wall is not None:
            check_deadline(obj, wall)
        return command.run(Call(node, now, client, req, extra_status), command.parse(node, args))
    except BadRequest as e:
        if e.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_COMMAND, ErrorCode.BAD_TOKEN):
            node.drop(now, "bad_control", e.error, "control socket")
        elif e.code == ErrorCode.EXPIRED:
            node.drop(now, "expired_control", e.error, "control socket")
        return [refusal(client, req, e.code, e.error)]
    except Exception as e:  # a bug, or a store that fails under us: the client still gets an answer
        # Logged here, once, with the traceback; the loop's own catch-all never sees it.
        log.exception("internal error while handling control request %r; answered with an error, still serving", cmd)
        return [refusal(client, req, ErrorCode.INTERNAL, internal_error(cmd, e, extra_status.get("log_file")))]


def wrong_frame_count(node: Node, now: float, frames: list[bytes]) -> list:
    """A control message of other than one frame (after the ROUTER's routing id): an error
    reply, not silence, so that a client written from the docs (a REQ socket, say, whose
    empty delimiter adds a frame) learns why it gets nothing done.  ``req`` is taken from the
    first frame when that is a JSON object, so the client can match the reply."""
    client, body = frames[0], frames[1:]
    req = None
    for frame in body[:8]:
        if len(frame) > MAX_REQUEST_BYTES:
            continue
        try:
            obj = orjson.loads(frame)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("req"), (int, str)) and not isinstance(obj.get("req"), bool):
            req = obj["req"]
            break
    error = f"a control request is exactly one frame, this message had {len(body)}; use a DEALER socket (not REQ), one JSON frame per request"
    node.drop(now, "bad_control", error, "control socket")
    return [refusal(client, req, ErrorCode.BAD_REQUEST, error)]


__all__ = ["handle", "wrong_frame_count", "check_deadline", "COMMANDS", "MAX_REQUEST_BYTES", "BadRequest", "Shutdown"]
