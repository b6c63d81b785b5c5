"""No import cycles in p2pd/ and p2pctl/, except the one still to be refactored (issue 14).

A cycle means two modules cannot be understood, tested or replaced apart, and it is easy to
hide: a function-local import runs late enough not to fail.  So the graph here is read with
`ast` from every import statement, function-local ones included (those under
``if TYPE_CHECKING:`` would count too: there are none), and its strongly connected
components are compared with `ALLOWED_CYCLES`, exactly: a new cycle fails, and so does the
removal of the allowed one, so that its entry is deleted with it and it cannot come back.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("p2pd", "p2pctl")

# node ↔ dialer/messaging: Dialer and Messaging hold a back-reference to the node and import
# its reply helpers inside functions.  To go when the node core is split into components
# that return effects (issue 14, "One owner per concern, no back-references").
ALLOWED_CYCLES = [{"p2pd.node", "p2pd.dialer", "p2pd.messaging"}]


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):  # subpackages too (p2pd/commands)
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if path.stem == "__init__" else parts)] = path
    return found


def imports_of(name: str, tree: ast.AST, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that ``name`` imports anywhere in ``tree``.  ``from pkg import x``
    is an edge to ``pkg.x`` when that is a module, else to the package itself."""
    package = name if known[name].stem == "__init__" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{node.module}" if node.module else parent
            for a in node.names:
                if f"{base}.{a.name}" in known:
                    out.add(f"{base}.{a.name}")
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports_of(name, ast.parse(path.read_text(encoding="utf-8")), known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_but_the_allowed_one():
    found = sorted(cycles(graph()), key=sorted)
    new = [sorted(c) for c in found if c not in ALLOWED_CYCLES]
    gone = [sorted(c) for c in ALLOWED_CYCLES if c not in found]
    assert not new, f"import cycles: {new}; move the shared piece to the module it belongs to"
    assert not gone, f"allowed cycle {gone} is gone (or changed): update ALLOWED_CYCLES in {Path(__file__).name}"


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """A cycle made by each form of import (plain, from-relative, from-package, and
    function-local) is found: the test above could otherwise pass by not seeing one."""
    pkg = tmp_path / "p2pd"
    pkg.mkdir()
    (tmp_path / "p2pctl").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    (pkg / "c.py").write_text("import p2pd.d\n")
    (pkg / "d.py").write_text("from p2pd import c\n")
    (pkg / "e.py").write_text("from .a import y\n")  # imports into a cycle, is not part of one
    (pkg / "sub").mkdir()  # a subpackage (as p2pd/commands), reaching up with ".."
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "g.py").write_text("from ..h import z\n")
    (pkg / "h.py").write_text("from .sub import g\n")
    (tmp_path / "p2pctl" / "__init__.py").write_text("from .cli import main\n")
    (tmp_path / "p2pctl" / "cli.py").write_text("from p2pctl import Thing\n")
    assert sorted(map(sorted, cycles(graph(tmp_path)))) == [["p2pctl", "p2pctl.cli"], ["p2pd.a", "p2pd.b"], ["p2pd.c", "p2pd.d"],
                                                  ["p2pd.h", "p2pd.sub.g"]]


def test_home_keys_and_client_daemon_are_apart():
    """The two cycles undone in issue 14, named so that their return says what came back."""
    edges = graph()
    assert "p2pd.keys" not in edges["p2pd.home"]
    assert "p2pd.daemon" not in edges["p2pctl.client"]
