"""Groups: ``join``, ``leave``, ``groups``, ``shout`` and ``invite`` (issue 16).

How this works
--------------
Each checks its arguments here and hands the work to the node's `shouts.Groups`, which owns
the groups this node is in, their keys and the directory of members; a refusal there is a
`shouts.GroupError` with its code and a line that names the fix, answered as is.  A group is
named as people see it (one leading ``#`` is dropped, as the chat writes rooms); the names
are checked by `groups.check_group_name`, the same rule p2pctl applies before sending.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ErrorCode
from ..groups import MAX_GROUP_NAME, check_group_name, normalize_group
from ..shouts import GroupError
from .base import BadRequest, Call, Command, arg_since, target, texts_arg


def group_arg(args: dict, key: str = "group") -> str:
    """A group's name as people see it (one leading ``#`` dropped), checked."""
    value = args.get(key)
    if not isinstance(value, str):
        raise BadRequest(ErrorCode.BAD_REQUEST, f"argument {key!r} must be a group name (1-{MAX_GROUP_NAME} characters)")
    name = normalize_group(value)
    problem = check_group_name(name)
    if problem is not None:
        raise BadRequest(ErrorCode.BAD_REQUEST, problem)
    return name


def _refused(e: GroupError) -> BadRequest:
    return BadRequest(e.code, e.error)


@dataclass(frozen=True)
class JoinArgs:
    group: str
    private: bool
    since: float | None


class Join(Command):
    name = "join"
    summary = "join a group (private: make or join one whose shouts only its key holders read); since: also fetch its past shouts"

    def parse(self, node, args: dict) -> JoinArgs:
        private = args.get("private", False)
        if not isinstance(private, bool):
            raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'private' must be true or false")
        return JoinArgs(group_arg(args), private, arg_since(args))

    def run(self, call: Call, a: JoinArgs) -> list:
        try:
            result, acts = call.node.groups.join(call.now, a.group, a.private, a.since)
        except GroupError as e:
            raise _refused(e) from None
        return acts + [call.reply(result)]


class Leave(Command):
    name = "leave"
    summary = "leave a group (a private one's key is forgotten: back in only by a new invitation)"

    def parse(self, node, args: dict) -> str:
        return group_arg(args)

    def run(self, call: Call, group: str) -> list:
        try:
            return [call.reply(call.node.groups.leave(call.now, group))]
        except GroupError as e:
            raise _refused(e) from None


class Groups(Command):
    name = "groups"
    summary = "every group this node knows of, its members, and whether this node is in it"

    def run(self, call: Call, parsed) -> list:
        return [call.reply({"groups": call.node.groups.describe()})]


@dataclass(frozen=True)
class ShoutArgs:
    group: str
    texts: list
    batch: bool  # given as ``texts``: the reply lists ``ids``


class Shout(Command):
    name = "shout"
    summary = "store texts for every other member of a group and send them; each member stores each once, in order"

    def parse(self, node, args: dict) -> ShoutArgs:
        return ShoutArgs(group_arg(args), texts_arg(node, args), "texts" in args)

    def run(self, call: Call, a: ShoutArgs) -> list:
        try:
            result, acts = call.node.groups.shout(call.now, a.group, a.texts)
        except GroupError as e:
            raise _refused(e) from None
        if a.batch and "id" in result:
            result = {"ids": [result.pop("id")], **result}
        return acts + [call.reply(result)]


@dataclass(frozen=True)
class InviteArgs:
    group: str
    peer_id: str
    peer_name: str


class Invite(Command):
    name = "invite"
    summary = "send a private group's key to a node (durably, end to end); it joins with join GROUP --private"

    def parse(self, node, args: dict) -> InviteArgs:
        group = group_arg(args)
        peer_id, peer_name = target(node, args)
        if peer_id == node.id:
            raise BadRequest(ErrorCode.BAD_REQUEST, "this node holds the key already: invite another node")
        return InviteArgs(group, peer_id, peer_name)

    def run(self, call: Call, a: InviteArgs) -> list:
        try:
            acts = call.node.groups.invite(call.now, a.group, a.peer_id)
        except GroupError as e:
            raise _refused(e) from None
        status = "sent" if call.node.groups.reach(a.peer_id) else "queued"  # durable either way: the outbox resends it
        return acts + [call.reply({"group": a.group, "peer": a.peer_name, "peer_id": a.peer_id, "status": status})]
