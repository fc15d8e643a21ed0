"""What the history API asks of the SQL store (:mod:`history.queries`), on
SQLite and PostgreSQL: every filter of :func:`find_tasks` alone and together,
error text matched literally (``%``, ``_``, ``/`` and ``\\`` are no
wildcards) in any ASCII case, cursor paging that covers every task once in
order while new tasks arrive between pages, values refused with the field
named; and :func:`task_stats` per minute, hour and day, equal on both
databases and to a reference computed here (percentiles by
``numpy.percentile``, linear) on random rows."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventcore.events import ErrorInfo
from eventcore.transitions import TaskStatus
from history.database import Database, migrate, open_database
from history.queries import (
    BUCKETS,
    ENDED,
    FAILED,
    BadQuery,
    TaskFilter,
    find_tasks,
    task_stats,
)
from history.rows import task_row
from history.store import Batch, HistoryStore
from projections.views import TaskView

S = TaskStatus
T0 = 1_700_000_000.0


@pytest.fixture
def db(sql_db: Database) -> Database:
    migrate(sql_db)
    return sql_db


def view(task_id: str, **fields: Any) -> TaskView:
    error = fields.pop("error", None)
    if isinstance(error, str):
        kind, _, message = error.partition(": ")
        fields["error"] = ErrorInfo(type=kind, message=message, retryable=False)
    return TaskView(task_id=task_id, last_event_id="1-0", **fields)


def put(db: Database, *views: TaskView) -> None:
    """Write task rows as the SQL projector does (an upsert per task)."""
    HistoryStore(db).write(Batch(tasks={v.task_id: task_row(v) for v in views}))


def ids(db: Database, f: TaskFilter, **kw: Any) -> list[str]:
    return [r["task_id"] for r in find_tasks(db, f, **kw).items]


# -- filters ------------------------------------------------------------------------------

TASKS = [
    view("a", status=S.SUCCEEDED, kind="echo", queue="cpu", node="n1", tenant="acme"),
    view("b", status=S.FAILED, kind="inpaint", queue="gpu", node="n2", tenant="acme",
         error="ValueError: disk 100% full"),
    view("c", status=S.FAILED, kind="echo", queue="gpu", node="n1", tenant="other",
         error="KeyError: bad_value"),
    view("d", status=S.TIMED_OUT, kind="echo", queue="cpu", node="n2",
         error="TimeoutError: badXvalue after 1000 full"),
    view("e", status=S.QUEUED, kind="inpaint", queue="cpu", tenant="acme"),
    view("f", status=S.CANCELLED, kind="echo", queue="cpu", node="n1", tenant="other"),
    view("g", status=S.FAILED, kind="echo", queue="cpu", node="n1",
         error="OSError: C:\\tmp/x not found"),
    view("h", status=S.FAILED, kind="inpaint", queue="gpu", node="n2",
         error="RuntimeError: Échec du modèle"),
    view("i", status=S.DEAD_LETTERED, kind="echo", queue="gpu", node="n3", tenant="acme"),
]  # fmt: skip
# Submitted 10 s apart in that order; "j" has only a stray event (no submit).
TASKS = [msgspec.structs.replace(v, submitted_at=T0 + 10 * n) for n, v in enumerate(TASKS)]
TASKS.append(view("j", node="n1"))

CASES = [
    (TaskFilter(), "ihgfedcbaj"),
    (TaskFilter(status=("failed",)), "hgcb"),
    (TaskFilter(status=("failed", "timed_out", "dead_lettered")), "ihgdcb"),
    (TaskFilter(status=("running",)), ""),
    (TaskFilter(kind="inpaint"), "heb"),
    (TaskFilter(queue="gpu"), "ihcb"),
    (TaskFilter(node="n1"), "gfcaj"),
    (TaskFilter(since=T0 + 20), "ihgfedc"),
    (TaskFilter(until=T0 + 20), "ba"),
    (TaskFilter(since=T0 + 20, until=T0 + 50), "edc"),
    (TaskFilter(tenant="acme"), "ieba"),
    (TaskFilter(tenant=""), "hgdj"),
    (TaskFilter(error="100%"), "b"),  # not "1000 full"
    (TaskFilter(error="bad_v"), "c"),  # not "badXvalue"
    (TaskFilter(error="%"), "b"),
    (TaskFilter(error="_"), "c"),
    (TaskFilter(error="VALUEERROR: DISK"), "b"),
    (TaskFilter(error="error"), "hgdcb"),
    (TaskFilter(error="c:\\TMP/x"), "g"),
    (TaskFilter(error="Échec du modèle"), "h"),  # as shown, non-ASCII and all
    (TaskFilter(status=("failed",), kind="echo", tenant="other"), "c"),
    (TaskFilter(queue="cpu", node="n2", since=T0, until=T0 + 40), "d"),
]


def _name(f: TaskFilter) -> str:
    fields = msgspec.structs.asdict(f).items()
    return ",".join(f"{k}={v}" for k, v in fields if v not in (None, ())) or "all"


@pytest.mark.parametrize(("f", "want"), CASES, ids=[_name(c[0]) for c in CASES])
def test_find_tasks_filters(db: Database, f: TaskFilter, want: str) -> None:
    put(db, *TASKS)
    assert ids(db, f) == list(want)


def test_find_tasks_rows_carry_the_columns_and_parsed_params(db: Database) -> None:
    v = view("p", status=S.SUCCEEDED, params_summary={"prompt": "a cat", "steps": 3}, duration=1.5)
    put(db, v)
    (row,) = find_tasks(db, TaskFilter()).items
    want = task_row(v)
    assert row == {k: want[k] for k in row if k != "params"} | {"params": v.params_summary}
    assert "view" not in row


def test_a_nul_in_a_filter_matches_as_the_rows_keep_it(db: Database) -> None:
    """Rows keep a NUL as U+FFFD (PostgreSQL takes no NUL in text); a filter
    with one is read the same way, not sent to the database to be refused."""
    put(db, view("a", kind="x\x00y", error="E: bad\x00byte", submitted_at=T0))
    assert ids(db, TaskFilter(kind="x\x00y")) == ["a"]
    assert ids(db, TaskFilter(error="D\x00B")) == ["a"]
    assert ids(db, TaskFilter(tenant="\x00", queue="\x00", node="\x00", status=("\x00",))) == []


# -- paging -----------------------------------------------------------------------------


def _order(views: list[TaskView]) -> list[str]:
    """Newest first: by submitted_at (none counts as 0), then id, both descending."""
    keyed = sorted(views, key=lambda v: (v.submitted_at or 0.0, v.task_id), reverse=True)
    return [v.task_id for v in keyed]


def test_cursor_pages_cover_every_task_once_while_new_ones_arrive(db: Database) -> None:
    # Ties on submitted_at (5 a second), times with long fractions, and no time.
    first = [view(f"t{n:03}", submitted_at=T0 + n // 5 + n / 7) for n in range(40)]
    first += [view(f"t{n:03}", submitted_at=T0 + 3.0) for n in range(40, 47)]
    first += [view(f"u{n}") for n in range(3)]
    put(db, *first)
    seen: list[str] = []
    cursor = None
    newer = 0
    while True:
        page = find_tasks(db, TaskFilter(), limit=6, cursor=cursor)
        assert 0 < len(page.items) <= 6
        seen += [r["task_id"] for r in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        # New tasks between pages; one not yet listed changes status.
        put(db, view(f"n{newer}", submitted_at=T0 + 1_000 + newer))
        newer += 1
        later = [t for t in _order(first) if t not in seen]
        if later:
            put(db, view(later[0], status=S.RUNNING, submitted_at=_at(first, later[0])))
    assert newer > 5
    assert seen == _order(first)
    assert len(seen) == len(set(seen))


def _at(views: list[TaskView], task_id: str) -> float | None:
    return next(v.submitted_at for v in views if v.task_id == task_id)


def test_paging_a_filtered_list(db: Database) -> None:
    put(db, *[view(f"t{n:02}", status=S.FAILED if n % 3 else S.SUCCEEDED,
                   submitted_at=T0 + n // 2) for n in range(30)])  # fmt: skip
    f = TaskFilter(status=("failed",), since=T0 + 3)
    seen, cursor = [], None
    while True:
        page = find_tasks(db, f, limit=4, cursor=cursor)
        seen += [r["task_id"] for r in page.items]
        if (cursor := page.next_cursor) is None:
            break
    assert seen == ids(db, f, limit=1_000)
    assert seen == [f"t{n:02}" for n in reversed(range(6, 30)) if n % 3]


def test_a_last_full_page_has_no_next_cursor(db: Database) -> None:
    put(db, *[view(f"t{n}", submitted_at=T0 + n) for n in range(4)])
    assert find_tasks(db, TaskFilter(), limit=4).next_cursor is None
    page = find_tasks(db, TaskFilter(), limit=3)
    assert find_tasks(db, TaskFilter(), limit=3, cursor=page.next_cursor).next_cursor is None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_CURSORS = [
    "bad",
    "!!!",
    "é",
    _b64(b"[1]"),
    _b64(b'{"at": 1, "id": "x"}'),
    _b64(b'["x", "y"]'),
    _b64(b"\xff\xfe"),
    _b64(b'[1.0, "a\\u0000b"]'),  # no task id has a NUL
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_bad_cursor_is_refused_naming_it(db: Database, cursor: str) -> None:
    put(db, *TASKS)
    with pytest.raises(BadQuery) as caught:
        find_tasks(db, TaskFilter(), cursor=cursor)
    assert caught.value.field == "cursor"
    assert str(caught.value).startswith("cursor: ")


@pytest.mark.parametrize("limit", [0, -1, 1_001])
def test_a_bad_limit_is_refused_naming_it(db: Database, limit: int) -> None:
    with pytest.raises(BadQuery) as caught:
        find_tasks(db, TaskFilter(), limit=limit)
    assert caught.value.field == "limit"


def test_limits_at_the_bounds_are_taken(db: Database) -> None:
    put(db, *TASKS)
    assert len(find_tasks(db, TaskFilter(), limit=1).items) == 1
    assert len(find_tasks(db, TaskFilter(), limit=1_000).items) == len(TASKS)


def test_a_bad_bucket_is_refused_naming_it(db: Database) -> None:
    with pytest.raises(BadQuery) as caught:
        task_stats(db, TaskFilter(), bucket="week")
    assert caught.value.field == "bucket"


# -- stats ---------------------------------------------------------------------------------


def test_stats_of_a_known_hour(db: Database) -> None:
    """Four tasks of one kind and queue end in one hour: a success, a failure,
    a time-out, a cancellation (nobody's failure); one more is still queued."""
    hour = 1_700_002_800.0  # on an hour boundary
    ended = [
        (S.SUCCEEDED, 1.0),
        (S.FAILED, 2.0),
        (S.TIMED_OUT, 10.0),
        (S.CANCELLED, None),
    ]
    put(db, *[
        view(f"t{n}", status=s, kind="echo", queue="cpu", submitted_at=hour + n,
             finished_at=hour + 60 + n, duration=d)
        for n, (s, d) in enumerate(ended)
    ], view("q", status=S.QUEUED, kind="echo", queue="cpu",
            submitted_at=hour + 3_599.5))  # fmt: skip
    (row,) = task_stats(db, TaskFilter(), bucket="hour")
    assert row == {
        "start": int(hour),
        "kind": "echo",
        "queue": "cpu",
        "submitted": 5,
        "ended": 4,
        "succeeded": 1,
        "failed": 2,
        "cancelled": 1,
        "failure_rate": 2 / 3,
        "p50": 2.0,
        "p95": pytest.approx(2.0 + 8.0 * 0.9),
        "p99": pytest.approx(2.0 + 8.0 * 0.98),
    }
    minutes = task_stats(db, TaskFilter(), bucket="minute")
    assert [(r["start"] - int(hour), r["submitted"], r["ended"]) for r in minutes] == [
        (0, 4, 0),
        (60, 0, 4),
        (3_540, 1, 0),
    ]


KINDS = ("echo", "inpaint")
QUEUES = ("cpu", "gpu")
STATUSES = [None, *TaskStatus]
EXAMPLES = int(os.environ.get("EVENTCORE_TEST_FUZZ_EXAMPLES", "40"))


@st.composite
def task_views(draw: Any, n: int) -> TaskView:
    submitted = draw(st.one_of(st.none(), st.floats(T0, T0 + 3 * 86_400)))
    finished = draw(st.one_of(st.none(), st.floats(0, 7_200).map(lambda d: (submitted or T0) + d)))
    # A few durations repeat, so the percentiles meet ties.
    duration = draw(st.one_of(st.none(), st.sampled_from([0.0, 0.25, 3.0]), st.floats(0, 900)))
    return view(
        f"t{n}",
        status=draw(st.sampled_from(STATUSES)),
        kind=draw(st.sampled_from(KINDS)),
        queue=draw(st.sampled_from(QUEUES)),
        tenant=draw(st.sampled_from(("", "acme"))),
        submitted_at=submitted,
        finished_at=finished,
        duration=duration,
    )


@st.composite
def stats_filters(draw: Any) -> TaskFilter:
    since = draw(st.one_of(st.none(), st.floats(T0, T0 + 3 * 86_400)))
    return TaskFilter(
        tenant=draw(st.sampled_from((None, "", "acme"))),
        kind=draw(st.sampled_from((None, *KINDS))),
        queue=draw(st.sampled_from((None, *QUEUES))),
        since=since,
        until=draw(st.one_of(st.none(), st.floats(since or T0, T0 + 4 * 86_400))),
    )


@pytest.fixture
def both(tmp_path: Path, pg_url: str) -> Iterator[tuple[Database, Database]]:
    """A SQLite and a PostgreSQL database, migrated."""
    pair = (open_database(f"sqlite:///{tmp_path / 'h.sqlite3'}", writer=True),
            open_database(pg_url, writer=True))  # fmt: skip
    for d in pair:
        migrate(d)
    yield pair
    for d in pair:
        d.dispose()


def reference(views: list[TaskView], f: TaskFilter, width: int) -> dict[tuple[Any, ...], Any]:
    """:func:`task_stats` worked out here: counts by bucket, kind and queue,
    durations by ``numpy.percentile`` (linear interpolation)."""
    numpy = pytest.importorskip("numpy")
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    durations: dict[tuple[Any, ...], list[float]] = {}

    def row(at: float, v: TaskView) -> dict[str, Any]:
        # The bucket as both databases work it out: the quotient in double
        # precision, then its floor.
        key = (int(at / width) * width, v.kind, v.queue)
        return out.setdefault(key, dict.fromkeys(("submitted", "ended", "succeeded",
                                                  "failed", "cancelled"), 0))  # fmt: skip

    def chosen(v: TaskView, at: float | None) -> bool:
        return (
            at is not None
            and (f.tenant is None or v.tenant == f.tenant)
            and (f.kind is None or v.kind == f.kind)
            and (f.queue is None or v.queue == f.queue)
            and (f.since is None or at >= f.since)
            and (f.until is None or at < f.until)
        )

    for v in views:
        if chosen(v, v.submitted_at):
            row(v.submitted_at, v)["submitted"] += 1  # type: ignore[arg-type]
        status = v.status.value if v.status is not None else None
        if status in ENDED and chosen(v, v.finished_at):
            r = row(v.finished_at, v)  # type: ignore[arg-type]
            r["ended"] += 1
            r["failed" if status in FAILED else status] += 1  # type: ignore[index]
            if v.duration is not None:
                key = (int(v.finished_at / width) * width, v.kind, v.queue)  # type: ignore[operator]
                durations.setdefault(key, []).append(v.duration)
    for key, r in out.items():
        judged = r["succeeded"] + r["failed"]
        r["failure_rate"] = r["failed"] / judged if judged else None
        got = durations.get(key)
        p = numpy.percentile(got, [50, 95, 99], method="linear") if got else [None] * 3
        r["p50"], r["p95"], r["p99"] = (None if x is None else float(x) for x in p)
    return out


def _keyed(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {(r["start"], r["kind"], r["queue"]): {k: v for k, v in r.items()
            if k not in ("start", "kind", "queue")} for r in rows}  # fmt: skip


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    views=st.integers(0, 30).flatmap(lambda n: st.tuples(*(task_views(i) for i in range(n)))),
    f=stats_filters(),
    bucket=st.sampled_from(sorted(BUCKETS)),
)
def test_stats_agree_on_both_databases_and_with_a_reference(
    both: tuple[Database, Database],
    views: tuple[TaskView, ...],
    f: TaskFilter,
    bucket: str,
) -> None:
    results = []
    for d in both:
        store = HistoryStore(d)
        store.clear()
        if views:
            put(d, *views)
        results.append(task_stats(d, f, bucket=bucket))
    on_sqlite, on_postgres = results
    assert on_sqlite == on_postgres
    want = reference(list(views), f, BUCKETS[bucket])
    got = _keyed(on_postgres)
    assert got.keys() == want.keys()
    assert [r["start"] for r in on_postgres] == sorted(r["start"] for r in on_postgres)
    for key, row in got.items():
        for name in ("p50", "p95", "p99"):
            # numpy interpolates from the upper value above the midpoint: the
            # last bit may differ.
            want[key][name] = (
                None if want[key][name] is None else pytest.approx(want[key][name], rel=1e-12)
            )
        assert row == want[key], key
