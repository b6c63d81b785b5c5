"""Every error code p2pd and p2pctl can report, with its exit code and what it means.

Why one module
--------------
A failed control request is answered ``{"ok": false, "code": "<code>", "error": ...}``
(docs/PROTOCOL.md 9.3) and `p2pctl` turns the code into its exit status.  When the codes
were bare strings in the daemon and a second set of strings in the client chose the exit
codes, a new code could be emitted that the client mapped to nothing in particular, and the
documentation could list codes that no longer existed.  Here each code is declared once,
with its exit code and a one-line meaning; the daemon emits only members of `ErrorCode`,
the client maps a code to an exit code only through `exit_code_for`, and
tests/test_errors.py checks the code base and docs/PROTOCOL.md 9.3 against this table.

`ErrorCode` is a `StrEnum`: a member *is* its string (``ErrorCode.TIMEOUT == "timeout"``,
``str()`` and f-strings give the bare value), so the wire format is the same strings as
before, and a code read off the wire is compared with members directly.

Two kinds of codes: those the daemon puts in a reply (``wire=True``, the table of 9.3),
and those only the client library reports about its own failures to reach the daemon
(``wire=False``: not running, permission denied, ...; the paragraph after that table).
``timeout`` is both: the daemon's (no PONG, not acknowledged in time) and the client's
(the daemon did not answer); both mean exit code 4.
"""

from __future__ import annotations

from enum import StrEnum

from . import exitcodes


class ErrorCode(StrEnum):
    """A failure's code: ``ErrorCode.X.exit_code``, ``.meaning`` (one line), ``.wire``
    (True when the daemon sends it in a reply; False for the client's own failures)."""

    exit_code: int
    meaning: str
    wire: bool

    def __new__(cls, value: str, exit_code: int, meaning: str, wire: bool = True):
        member = str.__new__(cls, value)
        member._value_ = value
        member.exit_code = exit_code
        member.meaning = meaning
        member.wire = wire
        return member

    # Sent by the daemon (docs/PROTOCOL.md 9.3, the table).
    BAD_REQUEST = "bad_request", exitcodes.FAILED, "malformed request or argument"
    UNKNOWN_COMMAND = "unknown_command", exitcodes.FAILED, "`cmd` is not one of the control commands"
    BAD_TOKEN = "bad_token", exitcodes.PERMISSION, "TCP control only: the request has no token, or not this daemon's"
    UNKNOWN_PEER = "unknown_peer", exitcodes.FAILED, "no peer (or authorized key, or pin) by that id, name or prefix"
    AMBIGUOUS = "ambiguous", exitcodes.FAILED, "the name or prefix matches several peers"
    NOT_LINKED = "not_linked", exitcodes.FAILED, "the peer is known but not alive (linking or lost)"
    TOO_LARGE = "too_large", exitcodes.FAILED, "a text is too long, or too large for one frame once encoded"
    UNREACHABLE = "unreachable", exitcodes.TIMEOUT, "connect: no answer (JOIN, or key from the key port) in time"
    REFUSED = "refused", exitcodes.FAILED, "connect: the connection was refused at once: nothing listens there"
    KEY_CHANGED = "key_changed", exitcodes.FAILED, "connect: the peer's key differs from the one pinned"
    NOT_AUTHORIZED = "not_authorized", exitcodes.FAILED, "connect: allowlist mode, and the peer's key is not in authorized_keys"
    TIMEOUT = "timeout", exitcodes.TIMEOUT, "no PONG, or no acknowledgement, in time (client: the daemon did not answer in time)"
    SELF = "self", exitcodes.FAILED, "connect: the address is this node's own"
    EXPIRED = "expired", exitcodes.TIMEOUT, "the request was read after its deadline and not carried out"
    BAD_FILE = "bad_file", exitcodes.FAILED, "authorized_keys or known_peers cannot be read"
    NOT_MEMBER = "not_member", exitcodes.FAILED, "the node is not in that group (join it first)"
    INTERNAL = "internal", exitcodes.FAILED, "the handler failed (a bug, or the store failed); it may be partly done"

    # Reported by the client library only (docs/PROTOCOL.md 9.3, after the table).
    NOT_RUNNING = "not_running", exitcodes.NOT_RUNNING, "the daemon is not running (no control socket, or a stale one)", False
    DISK_FULL = "disk_full", exitcodes.NOT_RUNNING, "not running, and the home's file system is full", False
    PERMISSION_DENIED = "permission_denied", exitcodes.PERMISSION, "the control socket, home or token is not ours to use", False
    USAGE = "usage", exitcodes.USAGE, "bad client configuration (P2PD_CONTROL)", False
    ERROR = "error", exitcodes.FAILED, "any other failure (also a reply that carries no code)", False


def exit_code_for(code: str) -> int:
    """The exit code for a failure's ``code``: the table's, or 1 (failed) for a code this
    version does not know (a newer daemon's), which is what any failure means at least."""
    try:
        return ErrorCode(code).exit_code
    except ValueError:
        return exitcodes.FAILED


WIRE_CODES = frozenset(c for c in ErrorCode if c.wire)  # what a daemon's reply may carry
