"""Replies to control requests, as every component that answers a client builds them.

A reply is ``{"req": ..., "ok": true, "result": ...}`` or ``{"req": ..., "ok": false, "code":
..., "error": ...}`` (docs/PROTOCOL.md 9.3).  Here rather than in the node so that the
components that answer a client themselves (a connect the dialer finishes, a send messaging
settles, a ping the heartbeat times) need nothing from the node to do it.
"""

from __future__ import annotations

from .errors import ErrorCode


def ok(req, result) -> dict:
    return {"req": req, "ok": True, "result": result}


def err(req, code: ErrorCode, error: str) -> dict:
    """A failed request's reply.  ``code`` must be an `ErrorCode` the daemon sends (a wire
    code): the reply carries its plain string, so the wire format is the bare code as
    documented in docs/PROTOCOL.md 9.3, and a code missing from the table fails here, in
    the tests, rather than reaching a client that maps it to no particular exit code."""
    code = ErrorCode(code)
    assert code.wire, f"{code} is a client-side code, never sent by the daemon"
    return {"req": req, "ok": False, "code": code.value, "error": error}
