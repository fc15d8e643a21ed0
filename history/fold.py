"""One batch of log entries as the rows it writes: pure, no database.

:func:`fold_entries` takes entries of the partition streams and the node
stream, the views they start from and the tracking positions, and gives the
:class:`~history.store.Batch` to write and the views after it. Task views
fold with :func:`projections.folds.fold_task`, node views with
:func:`projections.nodes.fold_node` over the node stream alone (``nodes``
holds what a node said of itself; what the task log says of nodes is in
``tasks`` and ``task_events``). An entry at or below a stream's position is
skipped, so a batch read twice writes nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from eventcore.events import NodeEvent, TaskEvent
from history.rows import node_event_row, node_row, task_event_row, task_row
from history.store import Batch
from projections.folds import fold_task, id_rank
from projections.nodes import fold_node
from projections.views import NodeView, TaskView

__all__ = ["fold_entries", "needed"]

Item = tuple[str, str, Any]  # (stream, entry id, event)


def needed(items: Iterable[Item], node_stream: str) -> tuple[set[str], set[str]]:
    """The task ids and node names whose views a batch folds onto."""
    task_ids: set[str] = set()
    names: set[str] = set()
    for stream, _, event in items:
        if stream == node_stream:
            names.add(event.node)
        else:
            task_ids.add(event.task_id)
    return task_ids, names


def fold_entries(
    items: Iterable[Item],
    *,
    node_stream: str,
    positions: Mapping[str, str],
    task_views: dict[str, TaskView],
    node_views: dict[str, NodeView],
) -> Batch:
    """Fold ``items`` (each stream's entries in id order) onto the views, in
    place, and return the rows and tracking moves to write. ``task_views``
    holds the view of every task of ``items`` that has a row: a task it
    lacks is new to the table (``Batch.new_tasks``)."""
    batch = Batch()
    last: dict[str, str] = {}
    applied: dict[str, int] = {}
    floor = {s: id_rank(i) for s, i in positions.items() if i}
    changed_tasks: set[str] = set()
    changed_nodes: set[str] = set()
    for stream, entry_id, event in items:
        rank = id_rank(entry_id)
        if rank <= floor.get(stream, -1):
            continue
        floor[stream] = rank
        last[stream] = entry_id
        applied[stream] = applied.get(stream, 0) + 1
        if event is None:  # an entry no decoder reads: tracked, not written
            continue
        if stream == node_stream:
            node: NodeEvent = event
            view = fold_node(node_views.get(node.node), stream, entry_id, node)
            node_views[node.node] = view
            changed_nodes.add(node.node)
            batch.node_events.append(node_event_row(stream, entry_id, node))
        else:
            task: TaskEvent = event
            before = task_views.get(task.task_id)
            if before is None:
                batch.new_tasks.add(task.task_id)
            task_views[task.task_id] = fold_task(before, entry_id, task)
            changed_tasks.add(task.task_id)
            batch.task_events.append(task_event_row(stream, entry_id, task))
    batch.tasks = {t: task_row(task_views[t]) for t in sorted(changed_tasks)}
    batch.nodes = {n: node_row(node_views[n]) for n in sorted(changed_nodes)}
    for stream, entry_id in last.items():
        batch.moves[stream] = (positions.get(stream), entry_id, applied[stream])
    return batch
