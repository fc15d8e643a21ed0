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

The fold is written as a draft (:class:`StatsDraft`, see
:mod:`projections.folds`): counts, per-minute buckets and histogram buckets
change in place, and the window is cut, the buckets sorted and the
percentiles read once, when the view is built. Cutting the window at the end
gives the same buckets as cutting it at every event, because it only ever
moves forward: a minute an event missed is one the window has left for good.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from eventcore.events import TaskEvent, TaskRerouted, TaskSubmitted
from eventcore.transitions import TERMINAL
from projections.folds import Seen, TaskChange, by_key, change_of, id_rank, queues_of
from projections.views import Counts, DurationHistogram, StatsView, TaskView

__all__ = [
    "BUCKETS",
    "WINDOW_MINUTES",
    "StatsDraft",
    "Tally",
    "bucket_of",
    "bucket_upper",
    "bucket_value",
    "fold_stats",
    "histogram_add",
    "histogram_merge",
    "minute_of",
    "percentile",
    "percentiles",
    "scope_of",
    "scopes_of",
    "tally_of",
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
_QUANTILES = (0.50, 0.95, 0.99)


# -- durations ----------------------------------------------------------------


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a duration in seconds."""
    if not seconds >= LOW:  # also catches NaN
        return 0
    if seconds >= HIGH:
        return BUCKETS - 1
    return min(_LOG_BUCKETS, 1 + int(math.log10(seconds / LOW) * STEPS_PER_DECADE))


def bucket_upper(index: int) -> float:
    """The upper edge of a histogram bucket, in seconds (inf for the last)."""
    if index <= 0:
        return LOW
    if index >= BUCKETS - 1:
        return math.inf
    return min(HIGH, LOW * _RATIO**index)


def bucket_value(index: int) -> float:
    """The duration a bucket stands for (the geometric middle of its edges)."""
    if index <= 0:
        return LOW
    if index >= BUCKETS - 1:
        return HIGH
    lower = LOW * _RATIO ** (index - 1)
    return min(HIGH, lower * math.sqrt(_RATIO))


def histogram_add(h: DurationHistogram, seconds: float) -> DurationHistogram:
    """``h`` with one more duration."""
    i = bucket_of(seconds)
    if i in h.buckets:
        buckets = {**h.buckets, i: h.buckets[i] + 1}  # same keys, same order
    else:
        buckets = by_key({**h.buckets, i: 1})
    return DurationHistogram(buckets=buckets, count=h.count + 1)


def histogram_merge(a: DurationHistogram, b: DurationHistogram) -> DurationHistogram:
    """The histogram of both sets of durations."""
    buckets = dict(a.buckets)
    for i, n in b.buckets.items():
        buckets[i] = buckets.get(i, 0) + n
    return DurationHistogram(buckets=by_key(buckets), count=a.count + b.count)


def percentile(h: DurationHistogram, q: float) -> float | None:
    """The ``q``-quantile (0 < q <= 1) in seconds, ``None`` for an empty histogram."""
    return _percentiles(h, (q,))[0]


def percentiles(h: DurationHistogram) -> tuple[float | None, float | None, float | None]:
    """The 50th, 95th and 99th percentiles a stats view shows."""
    p50, p95, p99 = _percentiles(h, _QUANTILES)
    return p50, p95, p99


def _percentiles(h: DurationHistogram, qs: tuple[float, ...]) -> list[float | None]:
    """Several quantiles (ascending) in one pass over the buckets."""
    if h.count == 0:
        return [None] * len(qs)
    ranks = [max(1, math.ceil(q * h.count)) for q in qs]
    out: list[float | None] = []
    seen = 0
    for i in sorted(h.buckets):
        seen += h.buckets[i]
        while len(out) < len(ranks) and seen >= ranks[len(out)]:
            out.append(bucket_value(i))
        if len(out) == len(ranks):
            return out
    # unreachable when count matches the buckets
    return out + [bucket_value(max(h.buckets))] * (len(ranks) - len(out))


# -- counts -------------------------------------------------------------------


def minute_of(at: float) -> int:
    """The start of the minute ``at`` falls in, in epoch seconds."""
    return int(at // 60) * 60


def _success_rate(c: Counts) -> float | None:
    judged = c.succeeded + c.failed + c.timed_out + c.dead_lettered
    return c.succeeded / judged if judged else None


def _window(
    per_minute: dict[int, Counts], touched: dict[int, Counts], oldest: int
) -> dict[int, Counts]:
    """``per_minute`` (in key order) updated with ``touched``, without the
    minutes before ``oldest``, in key order."""
    if per_minute and next(iter(per_minute)) < oldest:
        out = {m: c for m, c in per_minute.items() if m >= oldest}
    else:
        out = dict(per_minute) if touched else per_minute
    last = next(reversed(out), None)
    ordered = True
    for minute, counts in touched.items():
        if minute < oldest:
            continue
        if minute not in out:
            if last is not None and minute < last:
                ordered = False
            else:
                last = minute
        out[minute] = counts
    return out if ordered else by_key(out)


# -- the fold -----------------------------------------------------------------


def scope_of(event: TaskEvent, task_before: TaskView | None) -> tuple[str, str] | None:
    """The ``(queue, kind)`` whose stats ``event`` touches, or ``None``."""
    if task_before is not None and task_before.queue:
        return task_before.queue, task_before.kind
    if type(event) is TaskSubmitted:
        return event.spec.queue, event.spec.kind
    return None


def scopes_of(event: TaskEvent, task_before: TaskView | None) -> tuple[tuple[str, str], ...]:
    """Every ``(queue, kind)`` stats view ``event`` touches: :func:`scope_of`,
    and for a ``TaskRerouted`` the scope of the queue the task moves to. A
    move counts nothing in either, but the second one records the entry as
    seen: the task's earlier entries, if folded again, then name a scope that
    has already seen a later entry of their stream and are skipped there."""
    scope = scope_of(event, task_before)
    if scope is None:
        return ()
    if type(event) is TaskRerouted and len(queues_of(event, task_before)) == 2:
        return (scope, (event.to_queue, scope[1]))
    return (scope,)


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
    if view.queue is not None and (view.queue, view.kind) not in scopes_of(event, task_before):
        return view
    draft = StatsDraft(view)
    draft.apply(stream, id_rank(entry_id), entry_id, tally_of(change_of(event, task_before)))
    return draft.view()


_FIELDS = ("submitted", *sorted(s.value for s in TERMINAL))
_TERMINAL_FIELD = {s: s.value for s in TERMINAL}


class Tally(msgspec.Struct, frozen=True, gc=False):
    """What one legal task event adds to a stats view, worked out once for
    the global view and its scope's: its time (``newest_at``), the count it
    bumps (``"submitted"``, a terminal status, or ``None``) and the histogram
    bucket of the task's duration (an end after a start)."""

    at: float
    field: str | None
    bucket: int | None


def tally_of(change: TaskChange) -> Tally | None:
    """The :class:`Tally` of a task event; ``None`` if it is illegal, which only
    marks its entry seen. Counted once per task: the submission and the first
    terminal status."""
    event, task, before, after = change.event, change.task, change.before, change.after
    if after is None:
        return None
    if type(event) is TaskSubmitted:  # event types are final: see projections.nodes
        return Tally(event.at, "submitted", None)
    if after not in TERMINAL or before in TERMINAL:
        return Tally(event.at, None, None)
    started = task.started_at if task is not None else None
    bucket = None if started is None else bucket_of(max(0.0, event.at - started))
    return Tally(event.at, _TERMINAL_FIELD[after], bucket)


class StatsDraft:
    """A stats view being folded (see the module's notes): totals and the
    touched minutes as plain counts, the histogram buckets in a dict of their
    own; window, sorting, success rate and percentiles in :meth:`view`.

    It takes the events of its scope only: the caller routes them
    (:func:`scope_of`)."""

    __slots__ = (
        "_legal",
        "_own",
        "base",
        "buckets",
        "count",
        "minutes",
        "newest",
        "seen",
        "totals",
    )

    def __init__(self, view: StatsView) -> None:
        self.base = view
        self.seen = Seen(view.last_ids)
        self.newest = view.newest_at
        self.totals: dict[str, int] | None = None  # set by the first counted event
        self.minutes: dict[int, dict[str, int]] = {}
        self.buckets = view.durations.buckets
        self.count = view.durations.count
        self._own = self._legal = False

    def apply(self, stream: str, key: int, entry_id: str, tally: Tally | None) -> None:
        """Fold one entry of ``stream`` (``key`` is its :func:`~projections.folds.id_rank`)."""
        if not self.seen.advance(stream, key, entry_id) or tally is None:
            return
        at, field, bucket = tally.at, tally.field, tally.bucket
        self._legal = True
        self.newest = at if self.newest is None else max(self.newest, at)
        if field is None:
            return
        totals = self.totals
        if totals is None:
            totals = self.totals = msgspec.structs.asdict(self.base.totals)
        totals[field] += 1
        minute = minute_of(at)
        counts = self.minutes.get(minute)
        if counts is None:
            old = self.base.per_minute.get(minute)
            counts = self.minutes[minute] = (
                msgspec.structs.asdict(old) if old is not None else dict.fromkeys(_FIELDS, 0)
            )
        counts[field] += 1
        if bucket is not None:
            if not self._own:
                self.buckets, self._own = dict(self.buckets), True
            self.buckets[bucket] = self.buckets.get(bucket, 0) + 1
            self.count += 1

    def view(self) -> StatsView:
        """The view with every entry folded so far."""
        base = self.base
        changes: dict[str, Any] = {}
        if self.seen.changed:
            changes["last_ids"] = self.seen.result()
        if self._legal and self.newest is not None:
            newest = changes["newest_at"] = self.newest
            oldest = minute_of(newest) - (WINDOW_MINUTES - 1) * 60
            touched = {m: Counts(**c) for m, c in self.minutes.items()}
            changes["per_minute"] = _window(base.per_minute, touched, oldest)
        if self.totals is not None:
            totals = changes["totals"] = Counts(**self.totals)
            changes["success_rate"] = _success_rate(totals)
        if self._own:
            durations = DurationHistogram(buckets=by_key(self.buckets), count=self.count)
            p50, p95, p99 = _percentiles(durations, _QUANTILES)
            changes.update(durations=durations, p50=p50, p95=p95, p99=p99)
        return _replace(base, **changes) if changes else base
