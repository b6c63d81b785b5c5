"""Keys: ``trust`` (authorized_keys, the allowlist) and ``known`` (pinned keys, known_peers).

How this works
--------------
Both commands are about files in the node's home, and the node does no file I/O.  So the
arguments are checked here, and what needs a file becomes an effect the edge performs
(p2pd/trustfiles.py, from the transport): every ``trust`` request is an `EditAuthorizedKeys`
(even ``list`` reads the file again, so that hand edits apply), ``known forget`` a
`ForgetPin`.  The edge then updates the node's `Trust` and answers with the result built
by `allowlist_result` or `pins_result` below, so that a reply has one shape wherever it is
made.  ``known list`` needs no file (the node holds its pins) and is answered here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import protocol as P
from ..actions import EditAuthorizedKeys, ForgetPin
from ..errors import ErrorCode
from ..trust import Trust, node_id_for
from .base import BadRequest, Call, Command, arg_str

MAX_COMMENT = 200


def allowlist_result(trust: Trust, entries: list[tuple[str, str, str]]) -> dict:
    """``trust``'s result: the allowlist mode and authorized_keys' ``entries`` ((address, key, comment))."""
    return {"allowlist": trust.allowlist_mode, "keys": [{"key": k, "id": node_id_for(k), "comment": c} for _, k, c in entries]}


def pins_result(trust: Trust) -> list[dict]:
    """``known``'s result: the pinned keys, sorted by address."""
    return [{"address": a, "key": k, "id": node_id_for(k)} for a, k in sorted(trust.pins.items())]


@dataclass(frozen=True)
class TrustArgs:
    action: str  # "list", "add" or "remove"
    key: str = ""  # add
    comment: str = ""  # add
    match: str = ""  # remove


class AuthorizedKeys(Command):
    name = "trust"
    summary = "list, add or remove authorized keys (the allowlist); applied to new connections at once"

    def parse(self, node, args: dict) -> TrustArgs:
        action = args.get("action", "list")
        if action == "add":
            key = args.get("key")
            if not P.valid_key(key):
                raise BadRequest(ErrorCode.BAD_REQUEST, "give a 40-character Z85 public key (the `public_key` of `p2pctl info` on that node)")
            comment = args.get("comment") or ""
            if not isinstance(comment, str) or "\n" in comment or len(comment) > MAX_COMMENT:
                raise BadRequest(ErrorCode.BAD_REQUEST, f"the comment must be one line of at most {MAX_COMMENT} characters")
            return TrustArgs("add", key=key, comment=comment)
        if action == "remove":
            return TrustArgs("remove", match=arg_str(args, "match"))
        if action != "list":
            raise BadRequest(ErrorCode.BAD_REQUEST, "action must be list, add or remove")
        return TrustArgs("list")

    def run(self, call: Call, a: TrustArgs) -> list:
        return [EditAuthorizedKeys(a.action, call.client, call.req, key=a.key, comment=a.comment, match=a.match)]


class KnownPeers(Command):
    name = "known"
    summary = "list the pinned peer keys (known_peers), or forget the pin of an address, key or node id"

    def parse(self, node, args: dict) -> str | None:
        """The ``match`` to forget, or None to list."""
        action = args.get("action", "list")
        if action == "forget":
            return arg_str(args, "match")
        if action != "list":
            raise BadRequest(ErrorCode.BAD_REQUEST, "action must be list or forget")
        return None

    def run(self, call: Call, match: str | None) -> list:
        if match is None:
            return [call.reply(pins_result(call.node.trust))]
        return [ForgetPin(match, call.client, call.req)]
