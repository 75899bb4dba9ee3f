"""The package's layers, read from its imports with ``ast``: every import goes down the layers (or stays
in its own), and the modules' top-level imports have no cycle. README's Development section draws the map."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support import ROOT

PACKAGE = ROOT / "rapl"
# Bottom to top. A module may import its own layer and those below it, never one above.
LAYERS = (
    ("foundation", ("rapl.settings", "rapl.errors", "rapl.catalog", "rapl.logs")),
    ("transcript", ("rapl.transcript",)),
    ("audio", ("rapl.audio",)),
    ("backends", ("rapl.backends",)),
    ("core", ("rapl.core",)),
    ("http", ("rapl.http",)),
    ("entry points", ("rapl", "rapl.__main__", "rapl.cli", "rapl.check")),
)


def layer_of(module: str) -> int:
    """The index in LAYERS of ``module`` (a package's name stands for its __init__)."""
    for index, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or (p != "rapl" and module.startswith(p + ".")) for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and README's map)")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = ["rapl", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports(module: str, source: str, known: set[str], top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, module) for each RAPL module ``source`` imports; ``top_level_only``: what runs at import time
    (not inside functions, not under ``if TYPE_CHECKING:``)."""
    package = module if f"{module}.__init__" in known or module == "rapl" else module.rsplit(".", 1)[0]
    tree = ast.parse(source)
    nodes = _top_level(tree) if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "rapl":
                target = node.module
            else:
                continue
            for alias in node.names:
                named = f"{target}.{alias.name}"
                found.append((node.lineno, named if named in known else target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "rapl"]
    return found


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """The statements that run when the module is imported (into if/try blocks, not into defs)."""
    todo, out = list(tree.body), []
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                     *(s for h in getattr(node, "handlers", []) for s in h.body)]
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(node)
    return out


def upward(root: Path = PACKAGE) -> list[str]:
    """Every import, anywhere in a module (functions included), of a layer above the module's."""
    found = modules(root)
    known = set(found) | {f"{m}.__init__" for m, p in found.items() if p.name == "__init__.py"}
    wrong = []
    for module, path in found.items():
        for line, target in imports(module, path.read_text(encoding="utf-8"), known):
            if target in found and layer_of(target) > layer_of(module):
                wrong.append(f"{path.relative_to(root.parent)}:{line}: {module} ({LAYERS[layer_of(module)][0]}) "
                             f"imports {target} ({LAYERS[layer_of(target)][0]})")
    return wrong


def cycles(root: Path = PACKAGE) -> list[list[str]]:
    """Cycles among the modules' import-time imports (each cycle once)."""
    found = modules(root)
    known = set(found) | {f"{m}.__init__" for m, p in found.items() if p.name == "__init__.py"}
    graph = {m: {t for _, t in imports(m, p.read_text(encoding="utf-8"), known, top_level_only=True)
                 if t in found and t != m} for m, p in found.items()}
    seen: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = path[path.index(node):]
            if set(cycle) not in [set(c) for c in out]:
                out.append(cycle + [node])
            return
        if node in seen:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        seen.add(node)

    for module in sorted(graph):
        visit(module, [])
    return out


def test_every_module_is_in_a_layer_and_imports_only_go_down() -> None:
    assert upward() == []


def test_no_import_cycle() -> None:
    assert cycles() == []


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """The two checks on a package made to break them: an upward import inside a function, and a cycle."""
    fake = tmp_path / "rapl"
    for name, text in {"__init__.py": "", "settings.py": "from .transcript import formats\n",
                       "transcript/__init__.py": "", "transcript/formats.py": "from ..settings import X\n",
                       "core/__init__.py": "", "core/worker.py": "def f():\n    from ..http import api\n",
                       "http/__init__.py": "", "http/api.py": ""}.items():
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_text(text)
    assert any("rapl.core.worker (core) imports rapl.http.api (http)" in w for w in upward(fake))
    assert any("rapl.settings (foundation) imports rapl.transcript.formats" in w for w in upward(fake))
    assert [set(c) for c in cycles(fake)] == [{"rapl.settings", "rapl.transcript.formats"}]


@pytest.mark.parametrize("package", ["http", "core", "audio", "transcript", "backends"])
def test_each_package_says_what_it_owns_and_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text(encoding="utf-8")))
    assert doc and "import" in doc, package
