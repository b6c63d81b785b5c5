"""The control commands, one object each, in one table.

How this works
--------------
Each command is a `Command` (base.py) in the module of its group: the node as a whole
(status.py), peers (peers.py), messages (messages.py), groups (groups.py), keys (trust.py).  It owns its name, a
one-line summary, the check of its arguments (``parse``, raising `BadRequest` with an
`ErrorCode`) and its handler (``run``, returning effects).  `TABLE` maps each name to its
command; `COMMANDS`, the unknown-command error (control.py) and the tests that hold the
commands to docs/PROTOCOL.md 9.2 and to p2pctl (tests/test_commands.py) all read it, so a
command added here is known everywhere at once.

control.py keeps the framing around them: size, JSON, token, deadline and error replies.
The client side of each command (the request p2pctl sends, how it prints the reply) is
p2pctl/commands.py.
"""

from __future__ import annotations

from .base import BadRequest, Call, Command
from .groups import Groups, Invite, Join, Leave, Shout
from .messages import Broadcast, History, Inbox, Outbox, Read, Send, Watch
from .peers import Connect, Disconnect, Peers, Ping
from .status import Info, Status, Stop
from .trust import AuthorizedKeys, KnownPeers

# The one table.  Its order is the order `unknown_command` lists the names in (the order they were added).
TABLE: dict[str, Command] = {c.name: c for c in (
    Status(), Info(), Peers(), Connect(), Disconnect(), Send(), Broadcast(), Ping(), Inbox(), History(), Outbox(), Watch(),
    Stop(), AuthorizedKeys(), KnownPeers(), Read(), Join(), Leave(), Groups(), Shout(), Invite(),
)}
COMMANDS: tuple[str, ...] = tuple(TABLE)

__all__ = ["TABLE", "COMMANDS", "BadRequest", "Call", "Command"]
