"""Reading the daemon's log for `p2pctl logs`: the last N lines, then new ones as they come.

The daemon's log is rotated by renaming (logrotate, or by hand) and reopened by
the daemon (it watches its file), so following means: read what is appended,
and when the path names a new file (another inode, or a shorter one), start on
that one from its beginning.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Iterator

POLL_S = 0.2


def last_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of ``path`` (none if it does not exist), without reading it all into memory."""
    if n <= 0:
        return []
    try:
        with open(path, "rb") as f:
            return [line.decode("utf-8", "replace").rstrip("\n") for line in deque(f, maxlen=n)]
    except FileNotFoundError:
        return []


def follow_lines(path: Path, poll_s: float = POLL_S, stop=lambda: False) -> Iterator[str]:
    """Lines appended to ``path`` from now on, across rotations, until ``stop()`` is true."""
    f = None
    ident = None
    partial = b""
    from_start = not path.exists()  # a log that appears later is read from its first line
    try:
        while not stop():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if st is not None and (f is None or (st.st_dev, st.st_ino) != ident or st.st_size < f.tell()):
                if f is not None:  # rotated or truncated: what is left of the old file first
                    partial += f.read()
                    f.close()
                new_file = f is not None or from_start
                f = open(path, "rb")
                ident = (st.st_dev, st.st_ino)
                if not new_file:
                    f.seek(0, os.SEEK_END)  # a fresh follow starts at the end (last_lines printed the rest)
            chunk = f.read() if f is not None else b""
            if chunk:
                partial += chunk
                *done, partial = partial.split(b"\n")
                for line in done:
                    yield line.decode("utf-8", "replace")
            else:
                time.sleep(poll_s)  # a file has no "readable" event that works everywhere: poll it
    finally:
        if f is not None:
            f.close()
