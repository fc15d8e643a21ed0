"""What the history API and ``eventcore history`` ask of the SQL store.

:func:`find_tasks`: tasks newest first (by ``submitted_at``, then id), by
status, kind, queue, node, a time range on ``submitted_at`` and a piece of
error text, a page at a time with an opaque cursor that stays right while
new tasks arrive. The error text is matched literally (``%`` and ``_`` are
no wildcards) after the database's ``lower()`` on both sides: any case for
ASCII letters everywhere, for other letters where the database's locale
knows them (not SQLite's, not PostgreSQL's ``C``), and text as shown always.
Filter text is read as the rows keep it: a NUL as U+FFFD
(:mod:`history.rows`).

:func:`task_stats`: per time bucket (minute, hour or day, on UTC
boundaries), kind and queue: tasks submitted (by ``submitted_at``), tasks
that ended (by ``finished_at``) and how (``failed`` counts failures, hard
timeouts and dead letters; a cancellation is nobody's failure), the failure
rate, and the 50th/95th/99th percentiles of the duration of those that ran.
Percentiles are interpolated between the two nearest durations, as
PostgreSQL's ``percentile_cont`` does: PostgreSQL computes them itself,
SQLite's durations are read in order and computed here, and both give the
same figures.

A tenant's token sees only its tenant's rows (``tenant`` argument).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

import msgspec
import sqlalchemy as sa

from history.database import Database
from history.rows import clean
from history.schema import tasks

__all__ = [
    "BUCKETS",
    "FAILED",
    "BadQuery",
    "Page",
    "TaskFilter",
    "decode_cursor",
    "encode_cursor",
    "find_tasks",
    "percentile",
    "task_stats",
]

BUCKETS = {"minute": 60, "hour": 3_600, "day": 86_400}
FAILED = ("failed", "timed_out", "dead_lettered")
ENDED = ("succeeded", "cancelled", *FAILED)
QUANTILES = (0.5, 0.95, 0.99)
MAX_LIMIT = 1_000
COLUMNS = [c for c in tasks.columns if c.name not in ("view", "last_entry_id")]


class BadQuery(ValueError):
    """A query value that cannot be used; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TaskFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which tasks: every field left at its default matches every task."""

    tenant: str | None = None
    status: tuple[str, ...] = ()
    kind: str | None = None
    queue: str | None = None
    node: str | None = None
    since: float | None = None
    until: float | None = None
    error: str | None = None


class Page(msgspec.Struct, frozen=True):
    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(submitted_at: float | None, task_id: str) -> str:
    raw = msgspec.json.encode([submitted_at or 0.0, task_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, task_id = msgspec.json.decode(raw, type=tuple[float, str])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise BadQuery("cursor", "not a cursor this API gave out") from None
    if "\x00" in task_id:  # no task id has one, and PostgreSQL refuses it
        raise BadQuery("cursor", "not a cursor this API gave out")
    return at, task_id


def _like(text: str) -> str:
    """A LIKE pattern for ``text`` anywhere, its wildcards escaped with ``/``."""
    for char in "/%_":
        text = text.replace(char, "/" + char)
    return f"%{text}%"


def _where(f: TaskFilter, time_column: Any) -> list[Any]:
    out: list[Any] = []
    if f.tenant is not None:
        out.append(tasks.c.tenant == clean(f.tenant))
    if f.status:
        out.append(tasks.c.status.in_([clean(s) for s in f.status]))
    if f.kind is not None:
        out.append(tasks.c.kind == clean(f.kind))
    if f.queue is not None:
        out.append(tasks.c.queue == clean(f.queue))
    if f.node is not None:
        out.append(tasks.c.node == clean(f.node))
    if f.since is not None:
        out.append(time_column >= f.since)
    if f.until is not None:
        out.append(time_column < f.until)
    if f.error:
        # Python's lower() knows more letters than the database's: lowered
        # there, an "É" would not match the unchanged "É" of the row.
        pattern = sa.func.lower(sa.literal(_like(clean(f.error) or "")))
        out.append(sa.func.lower(tasks.c.error).like(pattern, escape="/"))
    return out


def find_tasks(db: Database, f: TaskFilter, *, limit: int = 50, cursor: str | None = None) -> Page:
    """One page of tasks, newest first (see the module docstring)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery("limit", f"must be between 1 and {MAX_LIMIT}")
    at = sa.func.coalesce(tasks.c.submitted_at, 0.0)
    q = sa.select(*COLUMNS).where(*_where(f, tasks.c.submitted_at))
    if cursor:
        c_at, c_id = decode_cursor(cursor)
        q = q.where(sa.or_(at < c_at, sa.and_(at == c_at, tasks.c.task_id < c_id)))
    q = q.order_by(at.desc(), tasks.c.task_id.desc()).limit(limit + 1)
    with db.begin() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q)]
    for row in rows:
        if isinstance(row["params"], str):
            row["params"] = msgspec.json.decode(row["params"])
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1]["submitted_at"], rows[-1]["task_id"]) if more else None
    return Page(rows, nxt)


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of sorted values, interpolated (``percentile_cont``)."""
    if not ordered:
        return None
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _bucket(column: Any, width: int, sqlite: bool) -> Any:
    """The start of the bucket a time falls in. SQLite's cast truncates,
    which for the positive times here is a floor (its ``floor`` is not always
    built in); PostgreSQL's cast rounds, so it floors."""
    whole = column / width if sqlite else sa.func.floor(column / width)
    return sa.cast(whole, sa.BigInteger) * width


def task_stats(db: Database, f: TaskFilter, *, bucket: str = "hour") -> list[dict[str, Any]]:
    """Rows per (bucket start, kind, queue), oldest first (see the module
    docstring); ``since`` / ``until`` bound both the submissions and the ends
    counted."""
    width = BUCKETS.get(bucket)
    if width is None:
        raise BadQuery("bucket", f"must be one of {', '.join(BUCKETS)}")
    out: dict[tuple[int, str, str], dict[str, Any]] = {}

    def row(start: int, kind: str, queue: str) -> dict[str, Any]:
        key = (int(start), kind, queue)
        if key not in out:
            out[key] = {
                "start": int(start),
                "kind": kind,
                "queue": queue,
                "submitted": 0,
                "ended": 0,
                "succeeded": 0,
                "failed": 0,
                "cancelled": 0,
                "failure_rate": None,
                "p50": None,
                "p95": None,
                "p99": None,
            }
        return out[key]

    sub_b = _bucket(tasks.c.submitted_at, width, db.sqlite).label("b")
    end_b = _bucket(tasks.c.finished_at, width, db.sqlite).label("b")
    submitted = (
        sa.select(sub_b, tasks.c.kind, tasks.c.queue, sa.func.count())
        .where(tasks.c.submitted_at.is_not(None), *_where(f, tasks.c.submitted_at))
        .group_by(sub_b, tasks.c.kind, tasks.c.queue)
    )
    ended_where = [tasks.c.finished_at.is_not(None), tasks.c.status.in_(ENDED)]
    ended_where += _where(f, tasks.c.finished_at)
    ended = (
        sa.select(end_b, tasks.c.kind, tasks.c.queue, tasks.c.status, sa.func.count())
        .where(*ended_where)
        .group_by(end_b, tasks.c.kind, tasks.c.queue, tasks.c.status)
    )
    ran = [*ended_where, tasks.c.duration_s.is_not(None)]
    with db.begin() as conn:
        for start, kind, queue, n in conn.execute(submitted):
            row(start, kind, queue)["submitted"] += n
        for start, kind, queue, status, n in conn.execute(ended):
            r = row(start, kind, queue)
            r["ended"] += n
            r["failed" if status in FAILED else status] += n
        if db.sqlite:
            _sqlite_quantiles(conn, end_b, ran, row)
        else:
            _postgres_quantiles(conn, end_b, ran, row)
    for r in out.values():
        judged = r["succeeded"] + r["failed"]
        r["failure_rate"] = r["failed"] / judged if judged else None
    return [out[k] for k in sorted(out)]


def _postgres_quantiles(conn: sa.Connection, end_b: Any, where: list[Any], row: Any) -> None:
    cols = [sa.func.percentile_cont(q).within_group(tasks.c.duration_s.asc()) for q in QUANTILES]
    q = (
        sa.select(end_b, tasks.c.kind, tasks.c.queue, *cols)
        .where(*where)
        .group_by(end_b, tasks.c.kind, tasks.c.queue)
    )
    for start, kind, queue, *values in conn.execute(q):
        r = row(start, kind, queue)
        r["p50"], r["p95"], r["p99"] = values


def _sqlite_quantiles(conn: sa.Connection, end_b: Any, where: list[Any], row: Any) -> None:
    q = (
        sa.select(end_b, tasks.c.kind, tasks.c.queue, tasks.c.duration_s)
        .where(*where)
        .order_by(end_b, tasks.c.kind, tasks.c.queue, tasks.c.duration_s)
    )
    group: tuple[Any, ...] | None = None
    values: list[float] = []

    def flush() -> None:
        if group is not None and values:
            r = row(*group)
            r["p50"], r["p95"], r["p99"] = (percentile(values, x) for x in QUANTILES)

    for start, kind, queue, duration in conn.execute(q):
        if (start, kind, queue) != group:
            flush()
            group, values = (start, kind, queue), []
        values.append(duration)
    flush()
