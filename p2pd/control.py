"""The control API: JSON requests from `p2pctl` over the local IPC socket.

How this works
--------------
A client sends one frame ``{"req": <any>, "cmd": "<name>", "args": {...}}``
and gets back ``{"req": <same>, "ok": true, "result": ...}`` or
``{"req": <same>, "ok": false, "code": "<code>", "error": "<one line>"}``.
``watch`` is answered once and then streams ``{"event": ...}`` frames to the
same client until it goes away.  Requests are validated here before they
reach the node; a bad request gets an error reply, never a crash.  Pure: the
node and the time are passed in.

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

import ipaddress
import logging
from pathlib import Path

import orjson

from . import protocol as P
from .actions import Shutdown, ToClient
from .errors import ErrorCode
from .membership import ALIVE, AmbiguousPeer, UnknownPeer
from .node import Node
from .replies import err as _err, ok as _ok
from .settings import ConfigError, parse_host_port

log = logging.getLogger("p2pd.control")

MAX_REQUEST_BYTES = 1024 * 1024
COMMANDS = ("status", "info", "peers", "connect", "disconnect", "send", "broadcast", "ping", "inbox", "history", "outbox", "watch", "stop",
            "trust", "known", "read")
REPLAY_MAX = 10_000  # stored messages a returning watcher is sent at most (`watch since`); the rest: `inbox`, `history`
MAX_BATCH = 10_000  # texts in one `send` request (the client library's send_many)
ENVELOPE_OVERHEAD = 1024  # bytes around the text in an encoded MESSAGE, generously


class BadRequest(ValueError):
    """A request refused before (or while) it is carried out: answered with ``code`` and the
    one-line ``error``.  The code is an `ErrorCode` so that no handler can invent one that
    the client and docs/PROTOCOL.md 9.3 do not know."""

    def __init__(self, code: ErrorCode, error: str):
        super().__init__(error)
        self.code = code
        self.error = error


def _arg_str(args: dict, key: str, max_len: int = 256) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v:
        raise BadRequest(ErrorCode.BAD_REQUEST, f"argument {key!r} must be a non-empty string")
    if len(v) > max_len:
        raise BadRequest(ErrorCode.BAD_REQUEST, f"argument {key!r} is longer than {max_len} characters")
    return v


def _arg_num(args: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = args.get(key, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadRequest(ErrorCode.BAD_REQUEST, f"argument {key!r} must be a number from {lo} to {hi}")
    return v


def _text(node: Node, value) -> str:
    """A message text that will fit in one frame at every receiver with our limits."""
    if not isinstance(value, str) or not value:
        raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'text' must be a non-empty string")
    if len(value) > P.MAX_TEXT_LEN:
        raise BadRequest(ErrorCode.TOO_LARGE, f"text is longer than {P.MAX_TEXT_LEN} characters")
    # Encoded, a character takes at most 6 bytes (a \uXXXX escape): only long texts need the exact size.
    if len(value) * 6 + ENVELOPE_OVERHEAD > node.settings.max_frame_bytes and \
            len(orjson.dumps(value)) + ENVELOPE_OVERHEAD > node.settings.max_frame_bytes:
        raise BadRequest(ErrorCode.TOO_LARGE, f"text does not fit in a {node.settings.max_frame_bytes}-byte frame once encoded")
    return value


def _texts(node: Node, args: dict) -> list[str]:
    """``texts`` (a batch, stored in one transaction) or one ``text``."""
    if "texts" not in args:
        return [_text(node, args.get("text"))]
    texts = args["texts"]
    if not isinstance(texts, list) or not 0 < len(texts) <= MAX_BATCH:
        raise BadRequest(ErrorCode.BAD_REQUEST, f"argument 'texts' must be a list of 1 to {MAX_BATCH} strings")
    return [_text(node, t) for t in texts]


def _since(args: dict) -> float | None:
    v = args.get("since")
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1e11:
        raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'since' must be a UNIX time in seconds")
    return float(v)


MAX_ADDRS = 16


def _addrs(args: dict) -> tuple[str, ...]:
    """``addrs``: the IP addresses the client resolved ``host`` to (optional; the daemon resolves nothing)."""
    v = args.get("addrs")
    if v is None:
        return ()
    if not isinstance(v, list) or len(v) > MAX_ADDRS or not all(isinstance(a, str) and _ip_literal(a) for a in v):
        raise BadRequest(ErrorCode.BAD_REQUEST, f"argument 'addrs' must be a list of at most {MAX_ADDRS} IP addresses")
    return tuple(v)


def _ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _resolve(node: Node, args: dict, need_alive: bool = True):
    query = _arg_str(args, "peer")
    try:
        peer = node.table.resolve(query)
    except AmbiguousPeer as e:
        raise BadRequest(ErrorCode.AMBIGUOUS, str(e)) from None
    except UnknownPeer as e:
        raise BadRequest(ErrorCode.UNKNOWN_PEER, f"{e}; `p2pctl peers` lists the peers") from None
    if need_alive and peer.state != ALIVE:
        raise BadRequest(ErrorCode.NOT_LINKED, f"peer {peer.name} ({peer.id[:12]}) is {peer.state}, not linked; it is retried in the background")
    return peer


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
        if cmd not in COMMANDS:
            raise BadRequest(ErrorCode.UNKNOWN_COMMAND, f"unknown command {str(cmd)[:32]!r}; known: {', '.join(COMMANDS)}")
        if wall is not None:
            check_deadline(obj, wall)
        return _dispatch(node, now, client, req, cmd, args, extra_status)
    except BadRequest as e:
        if e.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_COMMAND, ErrorCode.BAD_TOKEN):
            node.drop(now, "bad_control", e.error, "control socket")
        elif e.code == ErrorCode.EXPIRED:
            node.drop(now, "expired_control", e.error, "control socket")
        return [ToClient(client, _err(req, e.code, e.error))]
    except Exception as e:  # a bug, or a store that fails under us: the client still gets an answer
        # Logged here, once, with the traceback; the loop's own catch-all never sees it.
        log.exception("internal error while handling control request %r; answered with an error, still serving", cmd)
        where = extra_status.get("log_file") or "the daemon's log"
        return [ToClient(client, _err(req, ErrorCode.INTERNAL, f"internal error in p2pd while handling {str(cmd)[:32]!r} "
                                                              f"({type(e).__name__}: {str(e)[:200]}); it may be partly done; see {where}"))]


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
    return [ToClient(client, _err(req, ErrorCode.BAD_REQUEST, error))]


def _dispatch(node: Node, now: float, client: bytes, req, cmd: str, args: dict, extra_status: dict) -> list:
    if cmd == "status":
        return [ToClient(client, _ok(req, {**extra_status, "id": node.id, "name": node.name, "uptime_s": round(now - node.started, 3),
                                           "unread": node.msgs.unread_count(), "read_upto": node.msgs.read_upto()}))]
    if cmd == "info":
        return [ToClient(client, _ok(req, {**node.info(now), **extra_status}))]
    if cmd == "peers":
        return [ToClient(client, _ok(req, [p.describe(now) for p in node.table.members()]))]
    if cmd == "connect":
        try:
            host, port = parse_host_port(f"{_arg_str(args, 'host')}:{args.get('port')}")
        except ConfigError as e:
            raise BadRequest(ErrorCode.BAD_REQUEST, str(e)) from None
        wait_s = _arg_num(args, "wait_s", 5.0, 0.1, 3600)
        key = args.get("key")
        if key is not None and not P.valid_key(key):
            raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'key' must be a 40-character Z85 public key")
        return node.connect(now, host, port, wait_s, client, req, _since(args), key, _addrs(args))
    if cmd == "disconnect":
        peer = _resolve(node, args, need_alive=False)
        acts = node.disconnect(now, peer)
        return acts + [ToClient(client, _ok(req, {"peer": peer.describe(now)}))]
    if cmd == "send":
        query = _arg_str(args, "peer")
        try:
            peer_id, peer_name = node.resolve_target(query)
        except AmbiguousPeer as e:
            raise BadRequest(ErrorCode.AMBIGUOUS, str(e)) from None
        except UnknownPeer as e:
            raise BadRequest(ErrorCode.UNKNOWN_PEER, f"{e}; `p2pctl peers` lists the peers") from None
        texts = _texts(node, args)
        ids = args.get("ids", [args["id"]] if "id" in args else None)
        if ids is not None and (not isinstance(ids, list) or len(ids) != len(texts) or not all(P.valid_node_id(i) for i in ids)
                                or len(set(ids)) != len(ids)):
            raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'ids' must be distinct message ids (1-64 of [0-9A-Za-z_.:-]), one per text")
        wait_s = _arg_num(args, "wait_s", 0.0, 0.0, 86400 * 30)
        require = args.get("require", False) is True
        before = node.stats["messages_out"]
        acts = node.msgs.send(now, peer_id, peer_name, texts, client, req, wait_s, require, ids)
        if (peer := node.table.get(peer_id)) is not None:  # counted as info's messages_out is
            peer.msgs_out += node.stats["messages_out"] - before
        return acts
    if cmd == "broadcast":
        texts = _texts(node, args)
        acts, ids = node.msgs.broadcast(now, texts)
        alive = node.table.alive()
        reach = sum(1 for p in alive if p.subscribed)
        result = {"ids": ids} if "texts" in args else {"id": ids[0]}
        return acts + [ToClient(client, _ok(req, {**result, "status": "sent", "subscribers": reach, "linked": len(alive)}))]
    if cmd == "ping":
        peer = _resolve(node, args)
        wait_s = _arg_num(args, "wait_s", 5.0, 0.01, 600)
        return node.ping(now, peer, wait_s, client, req)
    if cmd == "inbox":
        limit = int(_arg_num(args, "limit", 0, 0, 10**9))
        unread = args.get("unread", False)
        if not isinstance(unread, bool):
            raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'unread' must be true or false")
        return [ToClient(client, _ok(req, node.msgs.inbox(limit or node.settings.inbox_size, unread)))]
    if cmd == "read":
        upto = args.get("upto")
        if not isinstance(upto, int) or isinstance(upto, bool) or upto < 0:
            raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'upto' must be a message cursor (an integer, 0 or more)")
        mark = node.msgs.mark_read(upto)
        return [ToClient(client, _ok(req, {"read_upto": mark, "unread": node.msgs.unread_count()}))]
    if cmd == "history":
        limit = int(_arg_num(args, "limit", 100, 0, 10**9))
        peer_id = None
        if args.get("peer") is not None:
            try:
                peer_id, _ = node.resolve_target(_arg_str(args, "peer"))
            except AmbiguousPeer as e:
                raise BadRequest(ErrorCode.AMBIGUOUS, str(e)) from None
            except UnknownPeer as e:
                raise BadRequest(ErrorCode.UNKNOWN_PEER, str(e)) from None
        rows = node.label_rows(node.store.history(peer_id=peer_id, since=_since(args), limit=limit))
        return [ToClient(client, _ok(req, rows))]
    if cmd == "outbox":
        statuses = ("pending", "expired", "delivered") if args.get("all") is True else ("pending", "expired")
        limit = int(_arg_num(args, "limit", 1000, 1, 10**9))
        return [ToClient(client, _ok(req, node.msgs.outbox(statuses, limit)))]
    if cmd == "watch":
        return _watch(node, now, client, req, args)
    if cmd in ("trust", "known"):
        from .keys import KeyError_

        try:
            result = (_trust if cmd == "trust" else _known)(node, args, extra_status)
        except KeyError_ as e:  # authorized_keys or known_peers edited into something unreadable
            raise BadRequest(ErrorCode.BAD_FILE, str(e)) from None
        return [ToClient(client, _ok(req, result))]
    if cmd == "stop":
        return [ToClient(client, _ok(req, {"stopping": True}))] + node.leave(now)
    raise BadRequest(ErrorCode.UNKNOWN_COMMAND, cmd)  # pragma: no cover - COMMANDS checked above


def _watch(node: Node, now: float, client: bytes, req, args: dict) -> list:
    """Stream events to ``client`` from now on.  With ``since`` (the cursor of the last message
    it saw, from an earlier watch), the messages stored after it come first, as the events they
    were (``replay: true``): a watcher that lost the daemon for a while (a stop and a start)
    misses nothing that was stored meanwhile.  The reply's ``cursor`` is the newest now."""
    since = args.get("since")
    if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
        raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'since' must be a message cursor (an integer, 0 or more)")
    node.watchers.add(client)
    acts = [ToClient(client, _ok(req, {"watching": True, "id": node.id, "name": node.name, "cursor": node.store.last_cursor}))]
    if since is not None:
        for e in node.msgs.entries(node.store.messages_after(since, limit=REPLAY_MAX)):
            kind = "message" if e["type"] == P.MESSAGE else "broadcast"
            acts.append(ToClient(client, {"event": kind, "time": P.utc_timestamp(node.epoch(now)), "message": e, "replay": True}))
    return acts


def _home(extra_status: dict):
    from .home import Home

    if "home" not in extra_status:
        raise BadRequest(ErrorCode.BAD_REQUEST, "this node has no home directory")
    return Home(Path(extra_status["home"]))


def _trust(node: Node, args: dict, extra_status: dict) -> dict:
    """authorized_keys: list, add or remove; the allowlist takes effect at once."""
    from .keys import authorized_keys, node_id_for

    action = args.get("action", "list")
    kl = authorized_keys(_home(extra_status))
    if action == "add":
        key = args.get("key")
        if not P.valid_key(key):
            raise BadRequest(ErrorCode.BAD_REQUEST, "give a 40-character Z85 public key (the `public_key` of `p2pctl info` on that node)")
        comment = args.get("comment") or ""
        if not isinstance(comment, str) or "\n" in comment or len(comment) > 200:
            raise BadRequest(ErrorCode.BAD_REQUEST, "the comment must be one line of at most 200 characters")
        kl.add(key, comment=comment)
    elif action == "remove":
        removed = kl.remove(_arg_str(args, "match"))
        if not removed:
            raise BadRequest(ErrorCode.UNKNOWN_PEER, f"no authorized key matches {args['match']!r}; `p2pctl trust list` shows them")
    elif action != "list":
        raise BadRequest(ErrorCode.BAD_REQUEST, "action must be list, add or remove")
    keys = kl.entries()
    node.trust.set_allowed({k for _, k, _ in keys})
    return {"allowlist": node.trust.allowlist_mode,
            "keys": [{"key": k, "id": node_id_for(k), "comment": c} for _, k, c in keys]}


def _known(node: Node, args: dict, extra_status: dict) -> dict:
    """known_peers (pinned keys): list, or forget an address."""
    from .keys import known_peers, node_id_for

    action = args.get("action", "list")
    kl = known_peers(_home(extra_status))
    if action == "forget":
        match = _arg_str(args, "match")
        if not kl.remove(match) and match not in node.trust.pins:
            raise BadRequest(ErrorCode.UNKNOWN_PEER, f"no pinned key for {match!r}; `p2pctl known list` shows them")
        for address, key in list(node.trust.pins.items()):
            if match in (address, key, node_id_for(key)):
                del node.trust.pins[address]
    elif action != "list":
        raise BadRequest(ErrorCode.BAD_REQUEST, "action must be list or forget")
    return [{"address": a, "key": k, "id": node_id_for(k)} for a, k in sorted(node.trust.pins.items())]


__all__ = ["handle", "wrong_frame_count", "COMMANDS", "Shutdown"]
