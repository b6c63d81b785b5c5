"""The node as a whole: ``status``, ``info`` and ``stop``.

How this works
--------------
``status`` and ``info`` answer at once from the node's counters and what the daemon adds
(``call.extra_status``: pid, home, log file, endpoints, inbound connections); ``stop`` answers,
then returns the node's leave (LEAVE to each peer, then `Shutdown` for the loop).
"""

from __future__ import annotations

from .base import Call, Command


class Status(Command):
    name = "status"
    summary = "is the daemon running: its id, name, uptime, unread count and endpoints"

    def run(self, call: Call, parsed) -> list:
        node = call.node
        return [call.reply({**call.extra_status, "id": node.id, "name": node.name, "uptime_s": round(call.now - node.started, 3),
                            "unread": node.msgs.unread_count(), "read_upto": node.msgs.read_upto()})]


class Info(Command):
    name = "info"
    summary = "everything in status, plus the node's address, peers, traffic, security and bad input dropped"

    def run(self, call: Call, parsed) -> list:
        return [call.reply({**call.node.info(call.now), **call.extra_status})]


class Stop(Command):
    name = "stop"
    summary = "leave every peer and stop the daemon"

    def run(self, call: Call, parsed) -> list:
        return [call.reply({"stopping": True})] + call.node.leave(call.now)
