"""Peers: ``peers``, ``connect``, ``disconnect`` and ``ping``.

How this works
--------------
``peers`` and ``disconnect`` answer at once.  ``connect`` and ``ping`` are answered later by
the node (`Dialer.connect` when the peer's JOIN comes back or the dial fails, the PONG or its
timeout for a ping), so their `run` returns only what starts them.  The daemon resolves no
host names (that would block its loop): ``connect`` takes the addresses the client resolved
``host`` to in ``addrs``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import protocol as P
from ..errors import ErrorCode
from ..membership import Peer
from ..settings import ConfigError, parse_host_port
from .base import BadRequest, Call, Command, arg_num, arg_since, arg_str, is_ip_literal, member

MAX_ADDRS = 16


class Peers(Command):
    name = "peers"
    summary = "every node in the network: state, linked or how many hops away, address, last seen, round trip"

    def run(self, call: Call, parsed) -> list:
        return [call.reply(call.node.overlay.members(call.now))]


@dataclass(frozen=True)
class ConnectArgs:
    host: str
    port: int
    wait_s: float
    key: str | None
    since: float | None
    addrs: tuple[str, ...]


class Connect(Command):
    name = "connect"
    summary = "link to the peer at host:port, pinning its key on first use; answered once it has answered"

    def parse(self, node, args: dict) -> ConnectArgs:
        try:
            host, port = parse_host_port(f"{arg_str(args, 'host')}:{args.get('port')}")
        except ConfigError as e:
            raise BadRequest(ErrorCode.BAD_REQUEST, str(e)) from None
        wait_s = arg_num(args, "wait_s", 5.0, 0.1, 3600)
        key = args.get("key")
        if key is not None and not P.valid_key(key):
            raise BadRequest(ErrorCode.BAD_REQUEST, "argument 'key' must be a 40-character Z85 public key")
        return ConnectArgs(host, port, wait_s, key, arg_since(args), _addrs(args))

    def run(self, call: Call, a: ConnectArgs) -> list:
        return call.node.connect(call.now, a.host, a.port, a.wait_s, call.client, call.req, a.since, a.key, a.addrs)


def _addrs(args: dict) -> tuple[str, ...]:
    """``addrs``: the IP addresses the client resolved ``host`` to (optional; the daemon resolves nothing)."""
    v = args.get("addrs")
    if v is None:
        return ()
    if not isinstance(v, list) or len(v) > MAX_ADDRS or not all(isinstance(a, str) and is_ip_literal(a) for a in v):
        raise BadRequest(ErrorCode.BAD_REQUEST, f"argument 'addrs' must be a list of at most {MAX_ADDRS} IP addresses")
    return tuple(v)


class Disconnect(Command):
    name = "disconnect"
    summary = "send the peer LEAVE and forget it; its queued messages stay in the outbox"

    def parse(self, node, args: dict) -> Peer:
        return member(node, args, need_alive=False)

    def run(self, call: Call, peer: Peer) -> list:
        acts = call.node.disconnect(call.now, peer)
        return acts + [call.reply({"peer": peer.describe(call.now)})]


@dataclass(frozen=True)
class PingArgs:
    peer: Peer
    wait_s: float


class Ping(Command):
    name = "ping"
    summary = "measure the round trip to a linked peer; answered when its PONG comes"

    def parse(self, node, args: dict) -> PingArgs:
        peer = member(node, args)
        return PingArgs(peer, arg_num(args, "wait_s", 5.0, 0.01, 600))

    def run(self, call: Call, a: PingArgs) -> list:
        return call.node.ping(call.now, a.peer, a.wait_s, call.client, call.req)
