"""The package's layers import only downward, and no import closes a circle.

Every import of igcli's own modules is read, those inside functions too. A module may import its own layer and
any layer below it, never one above; ``LAYERS`` is the one statement of the order (top first).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "igcli"

# Top first: each layer may import itself and the layers after it.
LAYERS = (
    ("igcli.__main__", "igcli.cli", "igcli.api"),
    ("igcli.commands",),
    ("igcli.engines",),
    ("igcli.model",),
    ("igcli.features",),
    ("igcli.vision",),
    ("igcli.ort",),
    ("igcli.store",),
    ("igcli.errors", "igcli.util", "igcli"),
)


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (i, len(p))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def _imports() -> dict[str, set[str]]:
    """module -> the igcli modules it imports (``from igcli import x`` counts as igcli.x where that is a module)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("igcli")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("igcli"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if sub in modules else node.module)
        graph[name] = {m for m in found if m != name}
    return graph


def test_every_module_has_a_layer():
    for module in _imports():
        _layer(module)


def test_no_import_runs_up_a_layer():
    upward = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
              for m, deps in _imports().items() for d in sorted(deps) if _layer(d) < _layer(m)]
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_no_circle():
    graph = _imports()
    # a package imports its submodules to re-export them; the edge package -> child is not a dependency back up
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path):
    """The checks can fail: a store that imports a command runs up; two modules importing each other circle."""
    assert _layer("igcli.store") > _layer("igcli.commands.score")
    assert _layer("igcli.vision.decode") > _layer("igcli.features.images")
    assert _layer("igcli.engines.ray") < _layer("igcli.features.images")
