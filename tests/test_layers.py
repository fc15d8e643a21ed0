"""The direction of imports (DESIGN.md): ``web``, ``workers``,
``projections`` and ``history`` import ``eventcore``; ``history`` (the SQL
projection) may import ``projections``, whose folds it uses; ``web`` may
import ``projections`` and ``history``; nothing else crosses between
packages. The command line
(``eventcore.cli``) is the one part of ``eventcore`` that imports the roles,
to add their commands, and nothing imports it. Within a package, modules
import one another without circles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROLES = {"eventcore", "workers", "projections", "history", "web"}
ALLOWED = {
    "eventcore": {"eventcore"},
    "eventcore.cli": ROLES | {"eventcore.cli"},
    "workers": {"eventcore", "workers"},
    "projections": {"eventcore", "projections"},
    "history": {"eventcore", "projections", "history"},
    "web": {"eventcore", "projections", "history", "web"},
}


def layer_of(module: str) -> str:
    """The layer a module belongs to: its top-level package, but
    ``eventcore.cli`` and what is under it is a layer of its own."""
    if module == "eventcore.cli" or module.startswith("eventcore.cli."):
        return "eventcore.cli"
    return module.split(".")[0]


def imported_layers(path: Path) -> set[tuple[str, int]]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {(layer_of(a.name), node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from eventcore import cli`` names the module in the alias.
            out |= {(layer_of(f"{node.module}.{a.name}"), node.lineno) for a in node.names}
    return out


def files_of(layer: str) -> list[Path]:
    top = ROOT / layer.replace(".", "/")
    paths = sorted(top.rglob("*.py"))
    if layer == "eventcore":
        paths = [p for p in paths if "cli" not in p.relative_to(top).parts[:1]]
    return paths


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_go_one_way(layer: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in files_of(layer)
        for name, line in imported_layers(path)
        if name in ALLOWED and name not in ALLOWED[layer]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_command_line_is_a_layer_of_its_own() -> None:
    assert layer_of("eventcore.cli.main") == "eventcore.cli"
    assert layer_of("eventcore.cli") == "eventcore.cli"
    assert layer_of("eventcore.client") == "eventcore"
    assert "eventcore/cli/main.py" not in {str(p.relative_to(ROOT)) for p in files_of("eventcore")}
    # The command line imports every role, so a role that imported it would be a circle.
    roles = {name for name, _ in imported_layers(ROOT / "eventcore/cli/main.py")}
    assert {"workers", "projections", "web"} <= roles


def test_only_the_parser_imports_the_roles() -> None:
    """The command line's own commands (``system``, ``tasks``) need only
    ``eventcore``; a command that needs a role's code lives in that role's
    ``cli`` module, and ``main`` alone imports those to build the parser."""
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / "eventcore/cli").glob("*.py"))
        if path.name != "main.py"
        for name, line in imported_layers(path)
        if name in ROLES - {"eventcore"}
    ]
    assert not wrong, "\n".join(wrong)


# -- no import circles within a package ------------------------------------------------


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, wherever the
    import statement is (top level, in a function, in a ``try``, under ``if
    TYPE_CHECKING:``: a circle there still ties the modules together).
    ``from p import name`` counts as importing
    ``p.name`` when that is a module, else ``p``."""
    paths = sorted((root / package).rglob("*.py"))
    files = {}
    for path in paths:
        parts = list(path.relative_to(root).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package ``level - 1`` above this one
                    base = here[: len(here) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                targets = [
                    f"{source}.{a.name}" if f"{source}.{a.name}" in files else source
                    for a in node.names
                ]
            for target in targets:
                while target and target not in files:  # a name defined in a module
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or None when there is none."""
    finished: set[str] = set()
    path: list[str] = []

    def visit(mod: str) -> list[str] | None:
        if mod in path:
            return [*path[path.index(mod) :], mod]
        if mod in finished:
            return None
        path.append(mod)
        for nxt in sorted(graph.get(mod, ())):
            if (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        finished.add(mod)
        return None

    for mod in sorted(graph):
        if (cycle := visit(mod)) is not None:
            return cycle
    return None


@pytest.mark.parametrize("package", sorted(ROLES))
def test_no_import_cycles_within_a_package(package: str) -> None:
    """Regression: ``web.app`` imported the route modules, which imported
    ``web.app`` back for the shared state; only an import deferred into
    ``create_app`` kept that circle from failing at start-up."""
    cycle = find_cycle(import_graph(ROOT, package))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_counts_imports_in_functions_and_under_type_checking(
    tmp_path: Path,
) -> None:
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from p.b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("import json\n")
    assert find_cycle(import_graph(tmp_path, "p")) is None
    (pkg / "c.py").write_text("import p.a\n")
    assert find_cycle(import_graph(tmp_path, "p")) == ["p.a", "p.b", "p.c", "p.a"]
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p import a\n"
    )
    assert find_cycle(import_graph(tmp_path, "p")) == ["p.a", "p.b", "p.c", "p.a"]
