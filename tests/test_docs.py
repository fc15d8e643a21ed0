"""The documents name files that exist.

``docs/architecture.md`` and ``README.md`` point readers at code by path
(``eventcore/log/eventlog.py``, ``workers/slots.py``). When a module moves,
a stale path sends the reader nowhere; this test fails instead, naming the
document, the line and the path.

Only backticked paths are checked, and only those that start with one of the
repository's top directories and end in ``.py``, ``.lua``, ``.md`` or
``.toml``: the rest of a backticked span (key patterns, URLs, commands) is
not a file path.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("docs/architecture.md", "README.md")
TOPS = ("eventcore", "workers", "projections", "web", "tests", "bench", "scripts", "docs")
SPAN = re.compile(r"`([^`\n]+)`")
PATH = re.compile(rf"(?<![\w./-])(?:{'|'.join(TOPS)})/[\w./-]*?\.(?:py|lua|md|toml)(?![\w/-])")


def named_paths(text: str) -> list[tuple[int, str]]:
    """(line number, path) of every repository path named in a backticked span."""
    return [
        (number, match.group(0))
        for number, line in enumerate(text.splitlines(), 1)
        for span in SPAN.findall(line)
        for match in PATH.finditer(span)
    ]


def test_named_paths_finds_paths_in_code_spans_only() -> None:
    text = (
        "See `eventcore/log/eventlog.py` and `workers/slots.py`, the call "
        "`python bench/replay.py --quick`, not eventcore/keys.py outside a span,\n"
        "nor `ec:{pN}:events`, `bench/*.py`, `/v1/tasks` or `nodes.py` alone."
    )
    assert named_paths(text) == [
        (1, "eventcore/log/eventlog.py"),
        (1, "workers/slots.py"),
        (1, "bench/replay.py"),
    ]


@pytest.mark.parametrize("doc", DOCS)
def test_named_files_exist(doc: str) -> None:
    found = named_paths((ROOT / doc).read_text())
    assert found, f"{doc} names no repository file: is the pattern still right?"
    missing = [f"{doc}:{line}: {path}" for line, path in found if not (ROOT / path).is_file()]
    assert not missing, "the document names files that do not exist:\n" + "\n".join(missing)
