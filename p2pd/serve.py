"""Running a node in this process: the part of `p2pd start` that both `--foreground` and the
detached daemon go through, and the detached daemon's own entry point.

How this works
--------------
`p2pd start` (p2pd/cli.py, click) parses and checks the options, then either runs the node
here (`--foreground`) or starts a detached child and waits until it answers.  The child is
``python -OO -m p2pd.serve SPEC``: SPEC is JSON with the home, the config file and the
command line's overrides, already checked by the parent.  It does not import click or the
CLI at all: an idle daemon keeps every module it imported in memory for good, and the CLI's
share was 3.3 MiB of a daemon's 28 (measured with ``python -OO``; the issue's goal is 30 MiB
in a 200-node network).  ``-OO`` drops docstrings too (0.8 MiB): help texts are the parent's.

Errors come back as (exit code, one-line message): the caller prints them its own way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from . import exitcodes
from .config import load_file
from .home import ControlChoiceError, Home, control_transport
from .settings import ConfigError, Settings, build


def settings_reader(home: Home, config_path: str | None, overrides: dict) -> Callable[[], Settings]:
    """The settings as they would be read now: the config file (HOME/p2pd.toml when none is
    given, if it exists) under the command line's overrides.  Called again at each SIGHUP: a
    HOME/p2pd.toml written after the start counts too."""
    def current() -> Settings:
        cfg_file = config_path if config_path else (home.config_file if home.config_file.exists() else None)
        return build(load_file(cfg_file) if cfg_file else {}, overrides)

    return current


def disk_full(home: Home) -> str | None:
    """Why a start failed when the home's file system is full: the daemon could not even say
    so itself (its log and startup.err are on that disk too)."""
    from p2pctl.client import DISK_FULL_BYTES, free_bytes

    free = free_bytes(home.path)
    if free is None or free >= DISK_FULL_BYTES:
        return None
    return f"the disk holding {home.path} is full ({free} bytes free): p2pd cannot write its store and log there; free some space and start it again"


def remove_new_home(made: Path | None) -> None:
    """A start that failed leaves no half-made home: remove the directories it created (only
    those: a home that existed before is never touched).  The error was printed already."""
    if made is not None:
        import shutil

        shutil.rmtree(made, ignore_errors=True)


def serve(home: Home, settings: Settings, read_settings: Callable[[], Settings], *, fresh_store: bool,
          log_to_stderr: bool, made: Path | None = None) -> tuple[int, str | None]:
    """Run the node until it stops: (exit code, None), or (exit code, the one-line reason) when
    it could not start (another daemon on this home or port: CONFLICT; else FAILED)."""
    from .daemon import AlreadyRunning, run_foreground

    try:
        return run_foreground(home, settings, log_to_stderr=log_to_stderr, read_settings=read_settings,
                              fresh_store=fresh_store), None
    except AlreadyRunning as e:
        return exitcodes.CONFLICT, str(e)
    except Exception as e:  # StartupError and friends: one line, no traceback
        conflict = "already in use" in str(e)
        message = str(e) if conflict else disk_full(home) or str(e)
        remove_new_home(made)
        return (exitcodes.CONFLICT if conflict else exitcodes.FAILED), message


def spec(home: Home, config_path: str | None, overrides: dict, fresh_store: bool) -> str:
    """The detached child's argument (see the module's docstring)."""
    return json.dumps({"home": str(home.path), "config": config_path, "overrides": overrides, "fresh_store": fresh_store})


def main(argv: list[str] | None = None) -> int:
    """``python -m p2pd.serve SPEC``: the detached daemon.  Its stderr is the home's
    startup.err, which the waiting `p2pd start` reads when the child exits early."""
    args = sys.argv[1:] if argv is None else argv
    try:
        s = json.loads(args[0])
        home = Home(Path(s["home"]))
        read = settings_reader(home, s.get("config"), dict(s["overrides"]))
    except (IndexError, ValueError, KeyError, TypeError) as e:
        print(f"p2pd: python -m p2pd.serve takes one JSON argument, as `p2pd start` writes it ({e}); start nodes with p2pd start",
              file=sys.stderr)
        return exitcodes.USAGE
    try:
        control_transport(ipc_available=True)
        settings = read()
    except (ConfigError, ControlChoiceError) as e:
        print(f"p2pd: {e}", file=sys.stderr)
        return exitcodes.USAGE
    code, message = serve(home, settings, read, fresh_store=bool(s.get("fresh_store")), log_to_stderr=False)
    if message:
        print(f"p2pd: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
