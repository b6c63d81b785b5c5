"""Shell completion (click's) and --version for both programs."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import P2PCTL, P2PD


def run(cmd: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **env})


@pytest.mark.slow  # runs p2pd/p2pctl processes
@pytest.mark.parametrize("prog, cmd", [("p2pctl", P2PCTL), ("p2pd", P2PD)])
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(prog, cmd, shell):
    proc = run(cmd, **{f"_{prog.upper()}_COMPLETE": f"{shell}_source"})
    assert proc.returncode == 0 and f"_{prog.upper()}_COMPLETE" in proc.stdout, proc.stderr


@pytest.mark.slow  # runs p2pd/p2pctl processes
def test_completion_of_commands_and_options():
    """What bash asks for when the user types `p2pctl lo<TAB>` and `p2pctl logs --f<TAB>`."""
    words = run(P2PCTL, _P2PCTL_COMPLETE="bash_complete", COMP_WORDS="p2pctl lo", COMP_CWORD="1").stdout
    assert "logs" in words
    opts = run(P2PCTL, _P2PCTL_COMPLETE="bash_complete", COMP_WORDS="p2pctl logs --f", COMP_CWORD="2").stdout
    assert "--follow" in opts
    starts = run(P2PD, _P2PD_COMPLETE="bash_complete", COMP_WORDS="p2pd st", COMP_CWORD="1").stdout
    assert "start" in starts and "stop" in starts and "status" in starts


@pytest.mark.slow  # runs p2pd/p2pctl processes
@pytest.mark.parametrize("prog, cmd", [("p2pctl", P2PCTL), ("p2pd", P2PD)])
def test_version(prog, cmd):
    from p2pd import __version__

    proc = run([*cmd, "--version"])
    assert proc.returncode == 0 and proc.stdout.strip() == f"{prog}, version {__version__}"
