"""Remote text made safe to show: control and format characters escaped visibly.

How this works
--------------
Anything a peer sends (names, message texts, addresses, timestamps, ids) can
reach a terminal (`p2pctl inbox`, `watch`, `chat` ...) or the daemon's log.  A
raw ESC there can clear the screen or retitle the terminal, a CR or a newline
can forge another line, and bidi overrides (U+202E ...) can reorder what is
read.  So every place that shows such text passes it through `line` (one-line
fields: every unsafe character escaped, newlines too) or `text` (a message
text: newlines kept as line breaks, each continuation line indented so that it
cannot pass for a line of its own).  Escapes look like Python's: ``\\x1b``,
``\\u202e``, ``\\U000e0001``; a backslash already in the text is left alone
(so a literal ``\\x1b`` typed by a peer looks like an escape, but is inert).

Unsafe, here: C0 and C1 controls and DEL (Unicode category Cc), format
characters (Cf: bidi embeddings, overrides, isolates and marks, zero-width
spaces, BOM, invisible operators ...), the line and paragraph separators
(Zl, Zp) and lone surrogates (Cs).  Two Cf ranges are kept in message texts
because emoji and several scripts need them and they move nothing:
ZERO WIDTH NON-JOINER/JOINER (U+200C, U+200D) and the tag characters of flag
sequences (U+E0020-U+E007F).  `NAME_FORBIDDEN` (used by the codec) refuses all
of Cc, Cf, Zl and Zp in names, with no exception.

Pure, no imports beyond ``re``: both p2pd (codec, log formatter) and p2pctl
(rendering) use it.  The ranges are Unicode 14's (Python 3.11);
tests/test_escape.py checks them against the running Python's unicodedata.
"""

from __future__ import annotations

import re

# Cc, Cf, Zl, Zp (Unicode 14.0, plus the unassigned U+2065 inside the invisible-operator block).
_FORMAT = (
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)
_CONTROL = "\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff"

# Names (the codec, `--name`): none of these at all.  A character-class body, for the codec's pattern.
NAME_FORBIDDEN_CLASS = _CONTROL + _FORMAT
NAME_FORBIDDEN = re.compile("[" + NAME_FORBIDDEN_CLASS + "]")
# One-line fields: all of them escaped.
_UNSAFE_LINE = NAME_FORBIDDEN
# Message texts: ZWNJ/ZWJ and emoji tags kept, newlines handled by `text`.
_UNSAFE_TEXT = re.compile("[" + _CONTROL + _FORMAT.replace("\u200b-\u200f", "\u200b\u200e\u200f").replace(
    "\U000e0020-\U000e007f", "") + "]")

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _esc(m: re.Match) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    cp = ord(c)
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def line(s) -> str:
    """One line: every control, format or separator character escaped (newlines as ``\\n``).
    Anything not a string is shown as its ``str()``."""
    if type(s) is not str:
        s = str(s)
    if _UNSAFE_LINE.search(s) is None:
        return s
    return _UNSAFE_LINE.sub(_esc, s)


def text(s, indent: str = "    ") -> str:
    """A message text: line breaks kept, each continuation line starting with ``indent``; every
    other unsafe character escaped (CR as ``\\r``, ESC as ``\\x1b`` ...).  A tab is kept (it only
    moves right)."""
    if type(s) is not str:
        s = str(s)
    if _UNSAFE_TEXT.search(s) is None:
        return s
    return ("\n" + indent).join(_UNSAFE_TEXT.sub(_esc_text, part) for part in s.split("\n"))


def _esc_text(m: re.Match) -> str:
    return "\t" if m.group() == "\t" else _esc(m)


def is_clean_name(s: str) -> bool:
    """No control, format or separator character (the rule for node names)."""
    return NAME_FORBIDDEN.search(s) is None
