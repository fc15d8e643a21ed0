"""The views as they were at a point in the past (a time or an entry id, see
:mod:`projections.points`): the fold of every entry up to that point.

- **One task**: its history (:meth:`EventLog.history`), the events with ids
  up to the point, folded. When the start of the history was trimmed, the
  fold starts from the task's view in the latest snapshot instead, which is
  possible only for points at or after the snapshot's watermark.
- **Nodes, queues, stats**: every log stream read up to the point. From the
  latest snapshot when the point is at or after its watermark on every
  stream (only the task views the later entries touch are loaded); otherwise
  from the first entry, which the log still has only if it was never trimmed.

A point the log can no longer answer for is an error that says from when on
it can.
"""

from __future__ import annotations

from collections.abc import Callable

from eventcore.errors import EventcoreError
from eventcore.events import TaskSubmitted
from eventcore.ids import is_task_id, stream_id_key
from eventcore.log import EventLog
from projections.points import Point, id_lt, log_streams
from projections.replay import Views, replay
from projections.snapshot import SnapshotHead, latest_head, task_views
from projections.tools import log_after
from projections.trim import trim_marks
from projections.views import TaskView

__all__ = ["task_as_of", "views_as_of"]


async def views_as_of(
    log: EventLog, point: Point, *, progress: Callable[[int], None] | None = None
) -> Views:
    """The node, queue and stats views as of ``point``.

    ``tasks`` of the result holds the tasks folded: every task when folding
    from the first entry, only those changed after the snapshot's watermark
    when starting from a snapshot (use :func:`task_as_of` for one task).
    """
    end = point.end_id
    head = await latest_head(log)
    streams = log_streams(log.keys)
    if head is not None and all(not id_lt(end, head.watermark.get(s, "0-0")) for s in streams):
        entries = await log_after(log, head.watermark, end=end, progress=progress)
        touched = list(
            dict.fromkeys(e.event.task_id for e in entries if hasattr(e.event, "task_id"))
        )
        tasks = await task_views(log, log.keys.snapshot(head.id), touched)
        return replay(entries, start=head.views(tasks))
    if await trim_marks(log):
        raise EventcoreError(
            f"cannot show the views as of {point.describe()}: the log before it was "
            f"trimmed{_answerable(head)}"
        )
    return replay(await log_after(log, {}, end=end, progress=progress))


async def task_as_of(log: EventLog, task_id: str, point: Point) -> TaskView:
    """The view of one task as of ``point``."""
    if not is_task_id(task_id):
        raise EventcoreError(f"no task {task_id!r}: task ids are UUIDv7s")
    entries = await log.history(task_id)
    end = point.end_id
    if entries and isinstance(entries[0].event, TaskSubmitted):
        # The whole history is there: a trim removes a prefix of the stream,
        # and a task's history starts with its submission.
        start = Views()
        use = [e for e in entries if stream_id_key(e.id) <= stream_id_key(end)]
    else:
        head = await latest_head(log)
        stream = log.keys.events(log.keys.partition(task_id))
        snapped = await task_views(log, log.keys.snapshot(head.id), [task_id]) if head else {}
        if not entries and not snapped:
            raise EventcoreError(f"no task {task_id} in the log")
        mark = head.watermark.get(stream) if head is not None else None
        if mark is None or id_lt(end, mark):
            raise EventcoreError(
                f"cannot show task {task_id} as of {point.describe()}: the start of its "
                f"history was trimmed{_answerable(head, stream)}"
            )
        start = Views(tasks=snapped)
        use = [
            e for e in entries if id_lt(mark, e.id) and stream_id_key(e.id) <= stream_id_key(end)
        ]
    view = replay(use, start=start).tasks.get(task_id)
    if view is None:
        raise EventcoreError(
            f"task {task_id} did not exist yet as of {point.describe()} "
            f"(its first event is {entries[0].id})"
        )
    return view


def _answerable(head: SnapshotHead | None, stream: str | None = None) -> str:
    """From when on the log can still answer: the snapshot's watermark."""
    if head is None or not head.watermark:
        return ""
    marks = [head.watermark[stream]] if stream in head.watermark else head.watermark.values()
    latest = max(marks, key=stream_id_key)
    when = Point(latest, entry_id=latest)
    return f"; it can answer from snapshot {head.id}'s watermark on (--at {when.describe()})"
