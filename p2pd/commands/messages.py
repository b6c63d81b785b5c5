"""Messages: ``send``, ``broadcast``, ``inbox``, ``read``, ``history``, ``outbox`` and ``watch``.

How this works
--------------
``send`` resolves its peer (a member of the table, or one of the address book: a message may
wait for a peer that is offline) and hands the texts to `Messaging.send`, which stores and
numbers them and answers the client: at once (``queued``), or when the peer's ACK comes
(``delivered``) or the wait runs out.  ``broadcast`` numbers, stores and publishes at once.
The others read the store through the node.  ``watch`` registers the client for the event
stream (docs/PROTOCOL.md 9.4) and first replays what was stored after the cursor it gives.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import protocol as P
from ..actions import ToClient
from ..errors import ErrorCode
from ..messaging import EVENTS
from .base import BadRequest, Call, Command, arg_cursor, arg_num, arg_since, target, texts_arg

REPLAY_MAX = 10_000  # stored messages a returning watcher is sent at most (`watch since`); the rest: `inbox`, `history`


@dataclass(frozen=True)
class SendArgs:
    peer_id: str
    peer_name: str
    texts: list
    ids: list | None
    wait_s: float
    require: bool


class Send(Command):
    name = "send"
    summary = "store direct messages for a peer and send them; answered queued, or delivered once acknowledged"

    def parse(self, node, args: dict) -> SendArgs:
        peer_id, peer_name = target(node, args)
        texts = texts_arg(node, args)
        ids = args.get("ids", [args["id"]] if "id" in args else None)
        if ids is not None and (not isinstance(ids, list) or len(ids) != len(texts) or not all(P.valid_node_id(i) for i in ids)
                                or len(set(ids)) != len(ids)):
            raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'ids' must be distinct message ids (1-64 of [0-9A-Za-z_.:-]), one per text")
        wait_s = arg_num(args, "wait_s", 0.0, 0.0, 86400 * 30)
        return SendArgs(peer_id, peer_name, texts, ids, wait_s, args.get("require", False) is True)

    def run(self, call: Call, a: SendArgs) -> list:
        node = call.node
        before = node.stats["messages_out"]
        acts = node.msgs.send(call.now, a.peer_id, a.peer_name, a.texts, call.client, call.req, a.wait_s, a.require, a.ids)
        if (peer := node.table.get(a.peer_id)) is not None:  # counted as info's messages_out is
            peer.msgs_out += node.stats["messages_out"] - before
        return acts


@dataclass(frozen=True)
class BroadcastArgs:
    texts: list
    batch: bool  # given as ``texts``: the reply lists ``ids``, else one ``id``


class Broadcast(Command):
    name = "broadcast"
    summary = "number, store and publish texts to every subscribed peer"

    def parse(self, node, args: dict) -> BroadcastArgs:
        return BroadcastArgs(texts_arg(node, args), "texts" in args)

    def run(self, call: Call, a: BroadcastArgs) -> list:
        node = call.node
        acts, ids = node.msgs.broadcast(call.now, a.texts)
        alive = node.table.alive()
        reach = sum(1 for p in alive if p.subscribed)
        result = {"ids": ids} if a.batch else {"id": ids[0]}
        return acts + [call.reply({**result, "status": "sent", "subscribers": reach, "linked": len(alive)})]


def group_filter(node, args: dict) -> str | None:
    """``group``: only that group's shouts (its wire name, shouts.Groups.find), or None: all."""
    if args.get("group") is None:
        return None
    from .groups import group_arg  # groups.py imports this module's neighbours, not this one

    return node.groups.find(group_arg(args))


@dataclass(frozen=True)
class InboxArgs:
    limit: int  # 0: the node's inbox_size
    unread: bool
    group: str | None = None


class Inbox(Command):
    name = "inbox"
    summary = "the newest received messages, oldest first; only the unread ones on request"

    def parse(self, node, args: dict) -> InboxArgs:
        limit = int(arg_num(args, "limit", 0, 0, 10**9))
        unread = args.get("unread", False)
        if not isinstance(unread, bool):
            raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'unread' must be true or false")
        return InboxArgs(limit, unread, group_filter(node, args))

    def run(self, call: Call, a: InboxArgs) -> list:
        node = call.node
        return [call.reply(node.msgs.inbox(a.limit or node.settings.inbox_size, a.unread, group=a.group))]


class Read(Command):
    name = "read"
    summary = "move the read mark forward to a cursor (the chat marks what it has shown)"

    def parse(self, node, args: dict) -> int:
        return arg_cursor(args, "upto")

    def run(self, call: Call, upto: int) -> list:
        msgs = call.node.msgs
        mark = msgs.mark_read(upto)
        return [call.reply({"read_upto": mark, "unread": msgs.unread_count()})]


@dataclass(frozen=True)
class HistoryArgs:
    limit: int
    peer_id: str | None
    since: float | None
    group: str | None = None


class History(Command):
    name = "history"
    summary = "the stored conversation, sent and received, oldest first; with one peer, or since a time"

    def parse(self, node, args: dict) -> HistoryArgs:
        limit = int(arg_num(args, "limit", 100, 0, 10**9))
        peer_id = None
        if args.get("peer") is not None:
            peer_id, _ = target(node, args, hint="")
        return HistoryArgs(limit, peer_id, arg_since(args), group_filter(node, args))

    def run(self, call: Call, a: HistoryArgs) -> list:
        node = call.node
        rows = node.label_rows(node.store.history(peer_id=a.peer_id, since=a.since, limit=a.limit, group=a.group))
        for row in rows:
            row["group"] = node.groups.label(row.get("group"))
        return [call.reply(rows)]


@dataclass(frozen=True)
class OutboxArgs:
    statuses: tuple
    limit: int


class Outbox(Command):
    name = "outbox"
    summary = "direct messages not delivered yet (pending) or given up (expired); delivered ones on request"

    def parse(self, node, args: dict) -> OutboxArgs:
        statuses = ("pending", "expired", "delivered") if args.get("all") is True else ("pending", "expired")
        return OutboxArgs(statuses, int(arg_num(args, "limit", 1000, 1, 10**9)))

    def run(self, call: Call, a: OutboxArgs) -> list:
        return [call.reply(call.node.msgs.outbox(a.statuses, a.limit))]


class Watch(Command):
    """Stream events to the client from now on.  With ``since`` (the cursor of the last message
    it saw, from an earlier watch), the messages stored after it come first, as the events they
    were (``replay: true``): a watcher that lost the daemon for a while (a stop and a start)
    misses nothing that was stored meanwhile.  The reply's ``cursor`` is the newest now."""

    name = "watch"
    summary = "stream events (messages, joins, leaves, losses) to this client; replay from a cursor first; group: only that group's"

    def parse(self, node, args: dict) -> tuple[int | None, str | None]:
        since = None if args.get("since") is None else arg_cursor(args, "since")
        return since, group_filter(node, args)

    def run(self, call: Call, parsed: tuple[int | None, str | None]) -> list:
        since, group = parsed
        node = call.node
        shown = node.groups.label(group)
        node.watch(call.client, shown)
        acts = [call.reply({"watching": True, "id": node.id, "name": node.name, "cursor": node.store.last_cursor})]
        if since is not None:
            time = P.utc_timestamp(node.epoch(call.now))
            for e in node.msgs.entries(node.store.messages_after(since, limit=REPLAY_MAX, group=group)):
                kind = EVENTS.get(e["type"], "message")
                acts.append(ToClient(call.client, {"event": kind, "time": time, "message": e, "replay": True}))
        return acts
