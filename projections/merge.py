"""The views of the whole log from the views of its shards.

Each view shard folds its own streams only (a partition's log, or the node
stream: see :meth:`eventcore.keys.Keys.view_shards`), so a queue, stats or
node view exists in parts, one per shard that saw events for it. Every part
is the fold of a disjoint set of tasks (all of a task's events are in one
partition), which makes the parts add up:

- a queue view: counts add, the waiting sets join (task ids are disjoint),
  the oldest wait is the least of the joined set;
- a stats view: totals, per-minute counts and duration buckets add; the
  per-minute window is cut again at the newest time of all parts (each part
  kept at least that window); rate and percentiles are read again;
- a node view: what the node stream says comes from the node shard's part,
  the task side (``running``, ``processed``, ``failed``) adds up over the
  partitions' parts.

``last_ids`` join (each stream is folded by one shard). The result equals
:func:`projections.replay.replay` of the whole log (the tests check it on
random logs), whatever order the shards' streams were folded in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from projections.folds import by_key
from projections.replay import Views
from projections.stats import WINDOW_MINUTES, histogram_merge, minute_of, percentiles
from projections.views import Counts, DurationHistogram, NodeView, QueueView, StatsView

__all__ = ["merge_nodes", "merge_queue", "merge_stats", "merge_views"]

_replace = msgspec.structs.replace
_QUEUE_COUNTS = (
    "submitted",
    "waiting",
    "in_flight",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "dead_lettered",
    "moved_in",
    "moved_out",
)
_COUNTS = tuple(Counts.__struct_fields__)


def _ids(parts: Iterable[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in parts:
        out.update(part.last_ids)
    return by_key(out)


def merge_queue(parts: Sequence[QueueView]) -> QueueView:
    """One queue's view from its parts."""
    if len(parts) == 1:
        return parts[0]
    waiting: dict[str, float] = {}
    for part in parts:
        waiting.update(part.waiting_since)
    waiting = by_key(waiting)
    counts = {f: sum(getattr(p, f) for p in parts) for f in _QUEUE_COUNTS}
    return _replace(
        parts[0],
        **counts,
        waiting_since=waiting,
        oldest_waiting_at=min(waiting.values(), default=None),
        last_ids=_ids(parts),
    )


def _add_counts(items: Iterable[Counts]) -> Counts:
    total = dict.fromkeys(_COUNTS, 0)
    for c in items:
        for f in _COUNTS:
            total[f] += getattr(c, f)
    return Counts(**total)


def merge_stats(parts: Sequence[StatsView]) -> StatsView:
    """One stats scope's view from its parts."""
    if len(parts) == 1:
        return parts[0]
    newest = max((p.newest_at for p in parts if p.newest_at is not None), default=None)
    minutes: dict[int, list[Counts]] = {}
    for part in parts:
        for minute, counts in part.per_minute.items():
            minutes.setdefault(minute, []).append(counts)
    per_minute: dict[int, Counts] = {}
    if newest is not None:
        oldest = minute_of(newest) - (WINDOW_MINUTES - 1) * 60
        per_minute = {m: _add_counts(c) for m, c in sorted(minutes.items()) if m >= oldest}
    totals = _add_counts(p.totals for p in parts)
    durations = DurationHistogram()
    for part in parts:
        durations = histogram_merge(durations, part.durations)
    p50, p95, p99 = percentiles(durations)
    judged = totals.succeeded + totals.failed + totals.timed_out + totals.dead_lettered
    return _replace(
        parts[0],
        totals=totals,
        success_rate=totals.succeeded / judged if judged else None,
        durations=durations,
        p50=p50,
        p95=p95,
        p99=p99,
        per_minute=per_minute,
        newest_at=newest,
        last_ids=_ids(parts),
    )


def merge_nodes(
    told: dict[str, NodeView], parts: Sequence[dict[str, NodeView]]
) -> dict[str, NodeView]:
    """Node views from what the node stream told (``told``, the node shard's
    views) and the partitions' task-side parts."""
    names = set(told)
    for part in parts:
        names.update(part)
    out: dict[str, NodeView] = {}
    for name in sorted(names):
        base = told.get(name)
        sides = [part[name] for part in parts if name in part]
        if not sides:
            out[name] = base  # type: ignore[assignment]
            continue
        if base is None and len(sides) == 1:
            out[name] = sides[0]
            continue
        running = sorted({t for side in sides for t in side.running})
        out[name] = _replace(
            base if base is not None else sides[0],
            running=tuple(running),
            processed=sum(s.processed for s in sides),
            failed=sum(s.failed for s in sides),
            last_ids=_ids([*sides, *([base] if base is not None else [])]),
        )
    return out


def merge_views(told: Views, parts: Sequence[Views]) -> Views:
    """The views of the whole log from the node shard's views (``told``) and
    the partitions' shards' views (``parts``)."""
    tasks: dict[str, Any] = {}
    for part in parts:
        tasks.update(part.tasks)
    queues: dict[str, list[QueueView]] = {}
    scoped: dict[tuple[str, str], list[StatsView]] = {}
    for part in [told, *parts]:
        for name, queue in part.queues.items():
            queues.setdefault(name, []).append(queue)
        for scope, stats in part.stats_by.items():
            scoped.setdefault(scope, []).append(stats)
    overall = [p.stats for p in (told, *parts) if p.stats != StatsView()]
    return Views(
        tasks=tasks,
        nodes=merge_nodes(told.nodes, [p.nodes for p in parts]),
        queues={q: merge_queue(v) for q, v in sorted(queues.items())},
        stats=merge_stats(overall) if overall else StatsView(),
        stats_by={s: merge_stats(v) for s, v in sorted(scoped.items())},
    )
