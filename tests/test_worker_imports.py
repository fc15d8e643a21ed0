"""The modules of ``workers`` import each other without a cycle, and none
reaches for another's private names: the worker's loops share the
:class:`~workers.slots.Slots` object instead (issue #11, where the upkeep and
control modules imported the worker, and it imported them inside a function
to dodge the circle)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "workers"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(module, name or None, line) of every import of a ``workers`` module in
    ``path``: at the top, in functions, under ``TYPE_CHECKING`` alike."""
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in MODULES:  # `from workers import reroute`
                    out.append((sub, None, node.lineno))
                else:
                    out.append((node.module, a.name, node.lineno))
    return [(m, n, line) for m, n, line in out if m in MODULES]


GRAPH = {name: sorted({m for m, _, _ in imports(path)} - {name}) for name, path in MODULES.items()}


def test_workers_imports_have_no_cycle() -> None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for dep in GRAPH[name]:
            visit(dep, [*path, name])
        done.add(name)

    for name in GRAPH:
        visit(name, [])


def test_no_module_imports_another_modules_private_names() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name} from {module}"
        for path in MODULES.values()
        for module, name, line in imports(path)
        if name is not None and name.startswith("_")
    ]
    assert not wrong, "\n".join(wrong)


def test_the_loops_modules_do_not_import_the_worker() -> None:
    for name in ("workers.upkeep", "workers.commands", "workers.reroute", "workers.slots"):
        assert "workers.worker" not in GRAPH[name], name
