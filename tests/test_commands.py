"""The control commands are one table (p2pd/commands), and everything that names them agrees
with it: each command has its parser and handler, a client side in p2pctl (p2pctl/commands.py)
unless p2pctl sends it another way (`DAEMON_ONLY`), a row in docs/PROTOCOL.md 9.2, and a place
in `p2pctl --help` where it has a command there.  A command added to the table without the rest
fails here, and so does a p2pctl command or a documented one the daemon does not know."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
from click.testing import CliRunner

from p2pd import control
from p2pd.commands import COMMANDS, TABLE, Command
from p2pctl.cli import main
from p2pctl.commands import CLI_COMMANDS, DAEMON_ONLY, CliCommand

from memnet import CLI, linked_alice

ROOT = Path(__file__).resolve().parent.parent

# p2pctl commands that send no single control request of their own: they are cli.py's alone.
LOCAL = {"watch", "stop", "logs", "chat"}


def test_every_command_has_a_name_summary_parser_and_handler():
    assert COMMANDS == tuple(TABLE) and len(set(COMMANDS)) == len(COMMANDS)
    for name, c in TABLE.items():
        assert isinstance(c, Command) and c.name == name
        assert c.summary and "\n" not in c.summary, name
        assert type(c).run is not Command.run, f"{name} has no handler"
        assert callable(c.parse)


def test_a_command_that_takes_no_arguments_parses_any_and_the_rest_check_theirs():
    """``parse`` is the parser: commands with arguments refuse bad ones before anything runs."""
    takes_none = {name for name, c in TABLE.items() if type(c).parse is Command.parse}
    assert takes_none == {"status", "info", "peers", "stop", "groups"}


def test_the_unknown_command_error_lists_the_table():
    alice = linked_alice()
    acts = control.handle(alice, 1.0, CLI, json.dumps({"req": 1, "cmd": "fly"}).encode(), {})
    assert acts[0].payload["error"] == f"unknown command 'fly'; known: {', '.join(COMMANDS)}"
    assert control.COMMANDS is COMMANDS


def test_every_command_has_a_client_side_or_says_how_it_is_sent():
    sent_by_cli = {c.cmd for c in CLI_COMMANDS.values()}
    assert sent_by_cli <= set(TABLE), sent_by_cli - set(TABLE)
    assert set(DAEMON_ONLY) <= set(TABLE)
    assert not sent_by_cli & set(DAEMON_ONLY), "a command with a p2pctl command object is not daemon-only"
    assert sent_by_cli | set(DAEMON_ONLY) == set(TABLE), set(TABLE) - sent_by_cli - set(DAEMON_ONLY)
    for name, c in CLI_COMMANDS.items():
        assert isinstance(c, CliCommand) and c.name == name
        assert type(c).text is not CliCommand.text, f"p2pctl {name} has no renderer"


def _cli_tree(group: click.Group, prefix: str = "") -> set[str]:
    names = set()
    for name, cmd in group.commands.items():
        names |= _cli_tree(cmd, f"{prefix}{name} ") if isinstance(cmd, click.Group) else {f"{prefix}{name}"}
    return names


def test_every_p2pctl_command_has_its_command_object_and_shows_in_help():
    tree = _cli_tree(main)
    assert tree - LOCAL == set(CLI_COMMANDS), "a p2pctl command that sends a request has no object in p2pctl/commands.py"
    runner = CliRunner()
    listed = runner.invoke(main, ["--help"]).output.split("Commands:\n", 1)[1]
    shown = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert {name.split()[0] for name in CLI_COMMANDS} | LOCAL == shown
    for group in {name.split()[0] for name in CLI_COMMANDS if " " in name}:
        sub = runner.invoke(main, [group, "--help"]).output.split("Commands:\n", 1)[1]
        assert {line.split()[0] for line in sub.splitlines() if line.strip()} == {n.split()[1] for n in CLI_COMMANDS if n.startswith(group + " ")}


def test_every_command_is_documented_in_protocol_9_2():
    text = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    section = re.search(r"^### 9\.2 Commands\n(.*?)(?=^### )", text, re.S | re.M).group(1)
    header = "| `cmd` | `args` | `result` |\n"
    table = section[section.index(header) + len(header):].split("\n\n", 1)[0]  # not the counters' table after it
    rows = re.findall(r"^\| `([a-z_]+)` \|", table, re.M)
    assert sorted(rows) == sorted(TABLE) and len(rows) == len(set(rows))
