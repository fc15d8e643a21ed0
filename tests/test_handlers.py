"""The handler registry: built-ins, module:attr specs, reload."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from workers.context import Cancelled, TaskContext
from workers.handlers import HandlerLoadError, Registry
from workers.handlers.registry import load_spec


def test_builtins_are_there() -> None:
    r = Registry(entry_points=False)
    assert {"noop", "sleep", "fail", "crash"} <= set(r.names())
    assert r.get("noop").cheap and not r.get("sleep").cheap


def test_module_attr_spec_and_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = tmp_path / "my_handlers.py"
    mod.write_text(
        textwrap.dedent("""
        from workers.handlers import handler

        @handler("double", cheap=True)
        def double(ctx):
            return ctx.params["n"] * 2
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    r = Registry(["my_handlers"], entry_points=False)
    ctx = TaskContext(task_id="t", kind="double", params={"n": 4})
    assert r.get("double").fn(ctx) == 8
    mod.write_text(mod.read_text().replace("* 2", "* 3").replace('"double"', '"triple"'))
    r.reload()
    assert r.get("triple") is not None
    sys.modules.pop("my_handlers", None)


def test_bad_specs_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "not_handlers.py").write_text("thing = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HandlerLoadError, match="cannot import"):
        load_spec("no_such_module_xyz:thing")
    with pytest.raises(HandlerLoadError, match="no attribute"):
        load_spec("workers.handlers.diagnostic:nothing_here")
    with pytest.raises(HandlerLoadError, match="not a handler"):
        Registry(["not_handlers:thing"], entry_points=False)
    sys.modules.pop("not_handlers", None)


def test_context_flags_and_progress() -> None:
    seen = []
    cancelled = [False]
    ctx = TaskContext(
        task_id="t",
        kind="k",
        params={},
        progress_sink=lambda f, m: seen.append((f, m)),
        cancel_flag=lambda: cancelled[0],
    )
    ctx.progress(1.7, "over")  # clamped
    ctx.progress(-1)
    assert seen == [(1.0, "over"), (0.0, "")]
    ctx.check_cancelled()
    cancelled[0] = True
    assert ctx.cancelled
    with pytest.raises(Cancelled):
        ctx.check_cancelled()
