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
"""

from __future__ import annotations

import json

from . import protocol as P
from .actions import Shutdown, ToClient
from .membership import ALIVE, AmbiguousPeer, UnknownPeer
from .node import Node, _err, _ok
from .settings import ConfigError, parse_host_port

MAX_REQUEST_BYTES = 1024 * 1024
COMMANDS = ("status", "info", "peers", "connect", "disconnect", "send", "broadcast", "ping", "inbox", "watch", "stop")


class BadRequest(ValueError):
    def __init__(self, code: str, error: str):
        super().__init__(error)
        self.code = code
        self.error = error


def _arg_str(args: dict, key: str, max_len: int = 256) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v:
        raise BadRequest("bad_request", f"argument {key!r} must be a non-empty string")
    if len(v) > max_len:
        raise BadRequest("bad_request", f"argument {key!r} is longer than {max_len} characters")
    return v


def _arg_num(args: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = args.get(key, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadRequest("bad_request", f"argument {key!r} must be a number from {lo} to {hi}")
    return v


def _resolve(node: Node, args: dict, need_alive: bool = True):
    query = _arg_str(args, "peer")
    try:
        peer = node.table.resolve(query)
    except AmbiguousPeer as e:
        raise BadRequest("ambiguous", str(e)) from None
    except UnknownPeer as e:
        raise BadRequest("unknown_peer", f"{e}; `p2pctl peers` lists the peers") from None
    if need_alive and peer.state != ALIVE:
        raise BadRequest("not_linked", f"peer {peer.name} ({peer.id[:12]}) is {peer.state}, not linked; it is retried in the background")
    return peer


def handle(node: Node, now: float, client: bytes, raw: bytes, extra_status: dict) -> list:
    req = None
    try:
        if len(raw) > MAX_REQUEST_BYTES:
            raise BadRequest("bad_request", f"request larger than {MAX_REQUEST_BYTES} bytes")
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
            raise BadRequest("bad_request", "request is not JSON") from None
        if not isinstance(obj, dict):
            raise BadRequest("bad_request", "request must be a JSON object")
        req = obj.get("req")
        if not isinstance(req, (int, str, type(None))) or isinstance(req, bool):
            req = None
        cmd = obj.get("cmd")
        args = obj.get("args", {})
        if not isinstance(args, dict):
            raise BadRequest("bad_request", "'args' must be an object")
        if cmd not in COMMANDS:
            raise BadRequest("unknown_command", f"unknown command {str(cmd)[:32]!r}; known: {', '.join(COMMANDS)}")
        return _dispatch(node, now, client, req, cmd, args, extra_status)
    except BadRequest as e:
        if e.code in ("bad_request", "unknown_command"):
            node.drop(now, "bad_control", e.error, "control socket")
        return [ToClient(client, _err(req, e.code, e.error))]


def _dispatch(node: Node, now: float, client: bytes, req, cmd: str, args: dict, extra_status: dict) -> list:
    if cmd == "status":
        return [ToClient(client, _ok(req, {**extra_status, "id": node.id, "name": node.name, "uptime_s": round(now - node.started, 3)}))]
    if cmd == "info":
        return [ToClient(client, _ok(req, {**node.info(now), **extra_status}))]
    if cmd == "peers":
        return [ToClient(client, _ok(req, [p.describe(now) for p in node.table.all()]))]
    if cmd == "connect":
        try:
            host, port = parse_host_port(f"{_arg_str(args, 'host')}:{args.get('port')}")
        except ConfigError as e:
            raise BadRequest("bad_request", str(e)) from None
        wait_s = _arg_num(args, "wait_s", 5.0, 0.1, 3600)
        return node.connect(now, P.tcp_endpoint(host, port), wait_s, client, req)
    if cmd == "disconnect":
        peer = _resolve(node, args, need_alive=False)
        acts = node.disconnect(now, peer)
        return acts + [ToClient(client, _ok(req, {"peer": peer.describe(now)}))]
    if cmd == "send":
        peer = _resolve(node, args)
        text = _arg_str(args, "text", P.MAX_TEXT_LEN)
        acts, msg = node.send_text(now, peer, text)
        return acts + [ToClient(client, _ok(req, {"id": msg.id, "peer": peer.name, "peer_id": peer.id, "status": "sent"}))]
    if cmd == "broadcast":
        text = _arg_str(args, "text", P.MAX_TEXT_LEN)
        acts, msg = node.broadcast(now, text)
        reach = [p.name for p in node.table.alive() if p.subscribed]
        return acts + [ToClient(client, _ok(req, {"id": msg.id, "status": "sent", "subscribers": len(reach)}))]
    if cmd == "ping":
        peer = _resolve(node, args)
        wait_s = _arg_num(args, "wait_s", 5.0, 0.01, 600)
        return node.ping(now, peer, wait_s, client, req)
    if cmd == "inbox":
        limit = int(_arg_num(args, "limit", 0, 0, 10**9))
        items = list(node.inbox)
        return [ToClient(client, _ok(req, items[-limit:] if limit else items))]
    if cmd == "watch":
        node.watchers.add(client)
        return [ToClient(client, _ok(req, {"watching": True, "id": node.id, "name": node.name}))]
    if cmd == "stop":
        return [ToClient(client, _ok(req, {"stopping": True}))] + node.leave(now)
    raise BadRequest("unknown_command", cmd)  # pragma: no cover - COMMANDS checked above


__all__ = ["handle", "COMMANDS", "Shutdown"]
