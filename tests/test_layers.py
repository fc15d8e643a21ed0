"""The direction of imports (DESIGN.md): ``web``, ``workers`` and
``projections`` import ``eventcore``; ``web`` may import ``projections``;
nothing else crosses between packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "eventcore": {"eventcore"},
    "workers": {"eventcore", "workers"},
    "projections": {"eventcore", "projections"},
    "web": {"eventcore", "projections", "web"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {(a.name.split(".")[0], node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add((node.module.split(".")[0], node.lineno))
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_go_one_way(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name, line in imported_packages(path)
        if name in ALLOWED and name not in ALLOWED[package]
    ]
    assert not wrong, "\n".join(wrong)
