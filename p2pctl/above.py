"""Lines printed above the chat's prompt, from any thread, with the terminal left raw.

How this works
--------------
prompt_toolkit's own way (`patch_stdout`) writes each line through `run_in_terminal`,
which puts the terminal in cooked mode for the write.  A key typed in that instant is
then echoed by the terminal itself, where the prompt was, and stays on the screen: the
prompt is drawn again after it ("w" + "alice> ...").  With a peer's lines arriving
while the person types, that happens often.

Here the terminal stays raw.  A line is written on the prompt's own event loop: the
prompt is erased, the line written where it was, and the prompt drawn again under it
(one redraw for a burst of lines).  A key typed meanwhile waits in the terminal until
the prompt reads it, as any key does.  When no prompt is showing (a command is
running), the line is written plainly.  One writer at a time, so lines stay whole and
in the order they were given.
"""

from __future__ import annotations

import asyncio
import sys
import threading


class _Line:
    """One line on its way: written exactly once, by the loop or, if the loop ends first, by its writer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.written = threading.Event()
        self._lock = threading.Lock()
        self._claimed = False

    def claim(self) -> bool:
        with self._lock:
            mine, self._claimed = not self._claimed, True
            return mine


class AbovePrompt:
    """Writes lines above a prompt_toolkit `Application` once `attach`-ed to it; plainly before."""

    def __init__(self, stdout=None) -> None:
        self._stdout = stdout or sys.stdout
        self._app = None
        self._lock = threading.Lock()

    def attach(self, app) -> None:
        """From now on, lines go above ``app``'s prompt whenever it is showing."""
        self._app = app

    def write(self, text: str) -> None:
        """Writes ``text`` and a newline, above the prompt if one is showing; returns once written."""
        app = self._app
        loop = app.loop if app is not None and app.is_running else None
        line = _Line(text + "\n")
        if loop is not None and _running_loop() is loop:  # on the prompt's own loop: already in turn
            self._above(app, line)
            return
        with self._lock:
            if loop is None:
                self._plain(line.text)
                return
            try:
                loop.call_soon_threadsafe(self._above, app, line)
            except RuntimeError:  # the loop closed meanwhile: the prompt is gone
                pass
            else:
                while not line.written.wait(0.05):
                    if loop.is_closed() or not app.is_running:
                        break
            if line.claim():  # the prompt ended before its loop got to the line
                self._plain(line.text)

    def _plain(self, text: str) -> None:
        self._stdout.write(text)
        self._stdout.flush()

    def _above(self, app, line: _Line) -> None:
        if not line.claim():
            return
        try:
            if not app.is_running:
                self._plain(line.text)
                return
            out = app.output
            app.renderer.erase()  # the prompt goes; the cursor is where it began
            out.enable_autowrap()
            out.write_raw(line.text)  # raw: the line is already escaped and coloured by render
            out.flush()
            app.renderer.request_absolute_cursor_position()  # the room below, for the completion menu
            app.invalidate()  # the prompt comes back under the line, with what was typed
        finally:
            line.written.set()


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
