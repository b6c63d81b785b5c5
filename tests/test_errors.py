"""The error-code table (p2pd/errors.py) against the code that emits and maps codes, and the docs.

A code the daemon sends must be in `ErrorCode` (else the client maps it to no particular exit
code and no document explains it), every code in it must be documented in docs/PROTOCOL.md
9.3 with the exit code the table gives it, and the exit codes the README lists must be the
ones `p2pd.exitcodes` defines.  The source is read with `ast`, so that a bare string slipped
into a reply or a comparison fails here even on a path no other test walks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from p2pd import exitcodes
from p2pd.control import BadRequest
from p2pd.errors import WIRE_CODES, ErrorCode, exit_code_for
from p2pd.replies import err as _err
from p2pctl.client import ClientError, DaemonNotRunning, DaemonTimeout, DiskFull, PermissionDenied, RequestFailed, UsageError

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "p2pd").rglob("*.py"), *(ROOT / "p2pctl").rglob("*.py")])  # subpackages too (p2pd/commands)

# The exit codes clients saw before the table existed (p2pctl/client.py mapped them by
# string): the table must keep every one of them, since scripts depend on exit codes.
EXIT_BEFORE = {"timeout": 4, "unreachable": 4, "expired": 4, "bad_token": 5,
               "not_running": 3, "disk_full": 3, "permission_denied": 5, "usage": 2, "error": 1}

# Calls that carry an error code, and the position of the code among their arguments.
CODE_ARG = {"_err": 1, "BadRequest": 0, "_fail": 2, "RequestFailed": 0, "refusal": 2}


def section(text: str, heading: str) -> str:
    m = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#)", text, re.S | re.M)
    assert m, f"no section {heading!r}"
    return m.group(1)


def protocol_93() -> tuple[dict[str, int], dict[str, int]]:
    """(code -> exit code) from 9.3's table, and from the paragraph after it that lists the
    client's own codes as `` `code` (...; exit N) ``."""
    text = section((ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8"), "9.3 Error codes")
    table = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| `([a-z_]+)` \|.*\| (\d) \|$", text, re.M)}
    after = text[text.rindex("\n|"):]
    client = {}
    for m in re.finditer(r"`([a-z_]+)` \(([^)]*)\)", after):
        ex = re.search(r"exit (\d)", m.group(2))
        assert ex, f"9.3 names client code {m.group(1)!r} without its exit code"
        client[m.group(1)] = int(ex.group(1))
    return table, client


def test_protocol_93_table_is_the_wire_codes_with_their_exit_codes():
    table, _ = protocol_93()
    assert table == {c.value: c.exit_code for c in WIRE_CODES}


CLIENT_EXCEPTIONS = (ClientError, DaemonNotRunning, DiskFull, PermissionDenied, DaemonTimeout, UsageError)


def test_protocol_93_lists_the_client_codes_with_their_exit_codes():
    """The paragraph lists the codes of the client's own exceptions (``timeout`` among them,
    a wire code too), and every code only the client reports is one of those."""
    _, client = protocol_93()
    assert client == {cls.code.value: cls.exit_code for cls in CLIENT_EXCEPTIONS}
    assert {c.value for c in ErrorCode if not c.wire} <= set(client)


def test_readme_exit_codes_are_exitcodes_py():
    text = section((ROOT / "README.md").read_text(encoding="utf-8"), "Exit codes")
    listed = {int(n) for n in re.findall(r"^\| (\d+) \|", text, re.M)}
    defined = {v for k, v in vars(exitcodes).items() if k.isupper()}
    assert listed == defined
    assert {c.exit_code for c in ErrorCode} <= defined


def test_every_code_has_a_meaning_and_a_known_exit_code():
    defined = {v for k, v in vars(exitcodes).items() if k.isupper()}
    for c in ErrorCode:
        assert c.meaning and "\n" not in c.meaning, c
        assert c.exit_code in defined and c.exit_code != exitcodes.OK, c


def test_exit_codes_are_unchanged():
    for code, exit_code in EXIT_BEFORE.items():
        assert exit_code_for(code) == exit_code, code
    for c in ErrorCode:  # every other code meant "failed", as any code the client did not single out did
        assert c.exit_code == EXIT_BEFORE.get(c.value, exitcodes.FAILED), c


def test_client_exceptions_take_their_exit_codes_from_the_table():
    for cls in CLIENT_EXCEPTIONS:
        assert cls.exit_code == ErrorCode(cls.code).exit_code, cls
        assert cls("x").exit_code == cls.exit_code
    for c in ErrorCode:
        e = RequestFailed(c.value, "m")  # as read off the wire: a plain string
        assert e.code == c and e.exit_code == c.exit_code
    assert RequestFailed("a_newer_daemons_code", "m").exit_code == exitcodes.FAILED


def test_replies_carry_the_plain_string():
    reply = _err(7, ErrorCode.NOT_LINKED, "why")
    assert reply == {"req": 7, "ok": False, "code": "not_linked", "error": "why"}
    assert type(reply["code"]) is str  # what a JSON encoder sees is the documented string
    with pytest.raises(ValueError):
        _err(7, "no_such_code", "why")
    with pytest.raises(AssertionError):
        _err(7, ErrorCode.NOT_RUNNING, "the client's own code is never sent")


def _code_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Bare strings where an error code goes: the code argument of a reply or exception, a
    ``"code": ...`` dict entry, or a comparison with something's ``.code``."""
    found = []

    def strings(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [s for e in node.elts for s in strings(e)]
        return []

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            pos = CODE_ARG.get(name)
            args = node.args[pos:pos + 1] if pos is not None else []
            args += [k.value for k in node.keywords if k.arg == "code"]
            found += [(node.lineno, s) for a in args for s in strings(a)]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, s) for k, v in zip(node.keys, node.values)
                      if isinstance(k, ast.Constant) and k.value == "code" for s in strings(v)]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "code" for s in sides):
                found += [(node.lineno, s) for side in sides for s in strings(side)]
        elif isinstance(node, ast.ClassDef):  # code = "..." in an exception class
            for stmt in node.body:
                if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
                    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                    if any(isinstance(t, ast.Name) and t.id == "code" for t in targets):
                        found += [(stmt.lineno, s) for s in strings(stmt.value)]
    return found


def test_no_error_code_is_a_bare_string_in_the_code():
    bare = [f"{p.relative_to(ROOT)}:{line}: {s!r}" for p in SOURCES if p.name != "errors.py"
            for line, s in _code_literals(ast.parse(p.read_text(encoding="utf-8")))]
    assert not bare, "use an ErrorCode member (p2pd/errors.py), not a string:\n" + "\n".join(bare)


def test_the_scan_sees_bare_codes():
    """The scan above must catch each form it looks for, or it proves nothing."""
    src = '''
_err(req, "timeout", "x")
self._fail(client, req, "refused", "x")
refusal(act.client, act.req, "bad_file", "x")
raise BadRequest("bad_request", "x")
RequestFailed(code="zzz", message="m")
{"req": 1, "code": "internal"}
if e.code in ("expired", "bad_token"): pass
class E(Exception):
    code = "usage"
'''
    assert sorted(s for _, s in _code_literals(ast.parse(src))) == sorted(
        ["timeout", "refused", "bad_file", "bad_request", "zzz", "internal", "expired", "bad_token", "usage"])
    assert _code_literals(ast.parse('_err(req, ErrorCode.TIMEOUT, "x"); reply.get("code", ErrorCode.ERROR)')) == []


def _members_used(paths) -> set[str]:
    used = set()
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ErrorCode":
                used.add(node.attr)
    return used


def test_every_member_named_in_the_code_exists():
    unknown = _members_used(SOURCES) - set(ErrorCode.__members__)
    assert not unknown, f"ErrorCode has no {sorted(unknown)}"


def test_every_wire_code_is_emitted_somewhere():
    """A wire code nothing in p2pd sends is a stale row of 9.3: remove it from both."""
    used = _members_used([p for p in SOURCES if p.relative_to(ROOT).parts[0] == "p2pd" and p.name != "errors.py"])
    assert {c.name for c in WIRE_CODES} <= used, sorted({c.name for c in WIRE_CODES} - used)


def test_bad_request_takes_a_member():
    assert BadRequest(ErrorCode.TOO_LARGE, "x").code is ErrorCode.TOO_LARGE
