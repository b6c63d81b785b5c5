"""The process's signals, turned into flags the event loop reads between turns.

A signal handler must not touch ZeroMQ sockets or the node (the loop owns them and may be
in the middle of a turn), so it only sets a flag: SIGTERM and SIGINT ask for a graceful
leave (LEAVE to every peer, not a crash: serf #56), SIGHUP for a reload of the config file.
"""

from __future__ import annotations

import signal

_stop_flag = False


def stop_requested() -> bool:
    return _stop_flag


_reload_flag = False


def reload_requested() -> bool:
    """True once per SIGHUP."""
    global _reload_flag
    asked, _reload_flag = _reload_flag, False
    return asked


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT mean a graceful leave, not a crash (serf #56); SIGHUP a reload."""

    def handler(signum, frame):
        global _stop_flag
        _stop_flag = True

    def hup(signum, frame):
        global _reload_flag
        _reload_flag = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if hasattr(signal, "SIGHUP"):  # not on Windows
        signal.signal(signal.SIGHUP, hup)
