"""The trust files' edits that `p2pctl trust` and `p2pctl known forget` ask for, done at the edge.

How this works
--------------
The node does no file I/O: its ``trust`` and ``known`` commands (p2pd/commands/trust.py)
check their arguments and return an `EditAuthorizedKeys` or a `ForgetPin` effect.  Whoever
performs effects with a home directory (the transport; tests/memnet.py when a test gives a
node a home) calls `perform`, which does the file's read-modify-write (keys.py), brings the
node's `Trust` in line with it (the allowlist is what authorized_keys lists after the edit;
a forgotten pin goes from memory too), and returns the reply for the client: the command's
result, ``unknown_peer`` when nothing matched, ``bad_file`` when the file cannot be read, or
``internal`` (logged with its traceback) when anything else fails, such as a full disk.  So
every request still gets exactly one reply, as if its handler had done the edit itself.
"""

from __future__ import annotations

import logging

from .actions import EditAuthorizedKeys, ForgetPin, ToClient
from .commands.base import internal_error, refusal, reply
from .commands.trust import allowlist_result, pins_result
from .errors import ErrorCode
from .home import Home
from .keys import KeyError_, authorized_keys, known_peers
from .trust import Trust

log = logging.getLogger("p2pd.control")


def perform(home: Home, trust: Trust, act: EditAuthorizedKeys | ForgetPin) -> ToClient:
    """Do the edit ``act`` asks for in ``home`` and apply it to ``trust``; the reply for its client."""
    cmd = "trust" if type(act) is EditAuthorizedKeys else "known"
    try:
        if type(act) is EditAuthorizedKeys:
            return _authorized_keys(home, trust, act)
        return _forget_pin(home, trust, act)
    except KeyError_ as e:  # authorized_keys or known_peers edited into something unreadable
        return refusal(act.client, act.req, ErrorCode.BAD_FILE, str(e))
    except Exception as e:  # a file that cannot be written (a full disk, permissions), or a bug
        log.exception("internal error while handling control request %r; answered with an error, still serving", cmd)
        return refusal(act.client, act.req, ErrorCode.INTERNAL, internal_error(cmd, e, str(home.log_file)))


def _authorized_keys(home: Home, trust: Trust, act: EditAuthorizedKeys) -> ToClient:
    """authorized_keys: list, add or remove; the allowlist takes effect at once."""
    kl = authorized_keys(home)
    if act.action == "add":
        kl.add(act.key, comment=act.comment)
    elif act.action == "remove" and not kl.remove(act.match):
        return refusal(act.client, act.req, ErrorCode.UNKNOWN_PEER,
                       f"no authorized key matches {act.match!r}; `p2pctl trust list` shows them")
    entries = kl.entries()
    trust.set_allowed({k for _, k, _ in entries})
    return reply(act.client, act.req, allowlist_result(trust, entries))


def _forget_pin(home: Home, trust: Trust, act: ForgetPin) -> ToClient:
    """known_peers: forget the pins of an address, a key or a node id, in the file and in memory."""
    pinned_address = act.match in trust.pins
    if not known_peers(home).remove(act.match) and not pinned_address:
        return refusal(act.client, act.req, ErrorCode.UNKNOWN_PEER, f"no pinned key for {act.match!r}; `p2pctl known list` shows them")
    trust.forget(act.match)
    return reply(act.client, act.req, pins_result(trust))
