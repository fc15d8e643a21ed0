"""Stats: throughput per minute, success rate and duration percentiles, as a
pure fold, globally and per queue and task kind.

Durations go into fixed log-spaced buckets: bucket 0 holds everything under
1 ms, buckets ``1..N`` split 1 ms to 1 h into steps of ``10 ** (1/20)``
(about 12 %), and the last bucket holds everything from 1 h up. The edges are
constants, so histograms are bounded (at most ``N + 2`` buckets), merge by
adding counts, and do not depend on the order durations arrive in. A
percentile is read as the geometric middle of its bucket (at most ~6 % off),
1 ms for the underflow bucket and 1 h for the overflow one.

The per-minute buckets cover the 24 hours up to the newest event time the
view has folded, so they depend only on the events, never on the wall clock:
an event whose minute has already left the window is not counted there (it
still counts in the totals).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from eventcore.events import TaskEvent, TaskSubmitted
from eventcore.transitions import TERMINAL
from projections.folds import by_key, is_new, step
from projections.views import Counts, DurationHistogram, StatsView, TaskView

__all__ = [
    "BUCKETS",
    "WINDOW_MINUTES",
    "bucket_of",
    "fold_stats",
    "histogram_add",
    "histogram_merge",
    "minute_of",
    "percentile",
    "scope_of",
]

LOW = 0.001
HIGH = 3600.0
STEPS_PER_DECADE = 20
_RATIO = 10 ** (1 / STEPS_PER_DECADE)
_LOG_BUCKETS = math.ceil(math.log10(HIGH / LOW) * STEPS_PER_DECADE)
BUCKETS = _LOG_BUCKETS + 2
"""Number of duration buckets: underflow, the log-spaced ones, overflow."""
WINDOW_MINUTES = 24 * 60

_replace = msgspec.structs.replace


# -- durations ----------------------------------------------------------------


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a duration in seconds."""
    if not seconds >= LOW:  # also catches NaN
        return 0
    if seconds >= HIGH:
        return BUCKETS - 1
    return min(_LOG_BUCKETS, 1 + int(math.log10(seconds / LOW) * STEPS_PER_DECADE))


def _bucket_value(index: int) -> float:
    if index <= 0:
        return LOW
    if index >= BUCKETS - 1:
        return HIGH
    lower = LOW * _RATIO ** (index - 1)
    return min(HIGH, lower * math.sqrt(_RATIO))


def histogram_add(h: DurationHistogram, seconds: float) -> DurationHistogram:
    """``h`` with one more duration."""
    i = bucket_of(seconds)
    buckets = by_key({**h.buckets, i: h.buckets.get(i, 0) + 1})
    return DurationHistogram(buckets=buckets, count=h.count + 1)


def histogram_merge(a: DurationHistogram, b: DurationHistogram) -> DurationHistogram:
    """The histogram of both sets of durations."""
    buckets = dict(a.buckets)
    for i, n in b.buckets.items():
        buckets[i] = buckets.get(i, 0) + n
    return DurationHistogram(buckets=by_key(buckets), count=a.count + b.count)


def percentile(h: DurationHistogram, q: float) -> float | None:
    """The ``q``-quantile (0 < q <= 1) in seconds, ``None`` for an empty histogram."""
    if h.count == 0:
        return None
    rank = max(1, math.ceil(q * h.count))
    seen = 0
    for i in sorted(h.buckets):
        seen += h.buckets[i]
        if seen >= rank:
            return _bucket_value(i)
    return _bucket_value(max(h.buckets))  # unreachable when count matches the buckets


# -- counts -------------------------------------------------------------------


def minute_of(at: float) -> int:
    """The start of the minute ``at`` falls in, in epoch seconds."""
    return int(at // 60) * 60


def _bump(counts: Counts, field: str) -> Counts:
    return _replace(counts, **{field: getattr(counts, field) + 1})


def _success_rate(c: Counts) -> float | None:
    judged = c.succeeded + c.failed + c.timed_out + c.dead_lettered
    return c.succeeded / judged if judged else None


# -- the fold -----------------------------------------------------------------


def scope_of(event: TaskEvent, task_before: TaskView | None) -> tuple[str, str] | None:
    """The ``(queue, kind)`` whose stats ``event`` touches, or ``None``."""
    if task_before is not None and task_before.queue:
        return task_before.queue, task_before.kind
    if isinstance(event, TaskSubmitted):
        return event.spec.queue, event.spec.kind
    return None


def fold_stats(
    view: StatsView | None,
    stream: str,
    entry_id: str,
    event: TaskEvent,
    task_before: TaskView | None,
    *,
    scope: tuple[str, str] | None = None,
) -> StatsView:
    """Apply one task event to a stats view (see :mod:`projections.folds` for
    ``stream``, ``entry_id`` and ``task_before``).

    ``view=None`` starts the global view, or the view of ``scope`` (queue,
    kind) if given. A scoped view ignores events of other scopes
    (:func:`scope_of`). Only legal events count, and only once per task: a
    submission, and the first terminal status.
    """
    if view is None:
        view = StatsView() if scope is None else StatsView(queue=scope[0], kind=scope[1])
    elif not is_new(view.last_ids.get(stream), entry_id):
        return view
    if view.queue is not None and scope_of(event, task_before) != (view.queue, view.kind):
        return view
    before = task_before.status if task_before is not None else None
    after, legal = step(before, event)
    changes: dict[str, Any] = {"last_ids": by_key({**view.last_ids, stream: entry_id})}
    if not legal:
        return _replace(view, **changes)
    if isinstance(event, TaskSubmitted):
        field = "submitted"
    elif after is not None and after in TERMINAL and before not in TERMINAL:
        field = after.value
    else:
        field = None

    newest = event.at if view.newest_at is None else max(view.newest_at, event.at)
    oldest_minute = minute_of(newest) - (WINDOW_MINUTES - 1) * 60
    per_minute = {m: c for m, c in view.per_minute.items() if m >= oldest_minute}
    changes.update(newest_at=newest, per_minute=per_minute)
    if field is None:
        return _replace(view, **changes)

    totals = _bump(view.totals, field)
    minute = minute_of(event.at)
    if minute >= oldest_minute:
        per_minute[minute] = _bump(per_minute.get(minute, Counts()), field)
        changes["per_minute"] = by_key(per_minute)
    changes.update(totals=totals, success_rate=_success_rate(totals))
    started = task_before.started_at if task_before is not None else None
    if field != "submitted" and started is not None:
        durations = histogram_add(view.durations, max(0.0, event.at - started))
        changes.update(
            durations=durations,
            p50=percentile(durations, 0.50),
            p95=percentile(durations, 0.95),
            p99=percentile(durations, 0.99),
        )
    return _replace(view, **changes)
