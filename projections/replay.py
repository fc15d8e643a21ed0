"""The reference fold of a whole log into every view.

:func:`replay` is what the tests check the folds' laws against and what
``replay verify`` will compare live views with. It routes each entry exactly
as a runner should: a task event goes to its task, to its queue
(:func:`~projections.folds.queue_of`), to the nodes it touches
(:func:`~projections.folds.nodes_of`), to the global stats and to its
``(queue, kind)`` stats (:func:`~projections.stats.scope_of`), every one of
them given the task view from *before* the entry. Node events go to their
node; control events touch no view.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import msgspec

from eventcore.codec import Entry
from eventcore.events import NODE_EVENT_TYPES, TASK_EVENT_TYPES, Event, NodeEvent, TaskEvent
from projections.folds import fold_node, fold_node_task, fold_queue, fold_task, nodes_of
from projections.stats import fold_stats, scope_of
from projections.views import NodeView, QueueView, StatsView, TaskView

__all__ = ["Views", "replay"]


class Views(msgspec.Struct, frozen=True, kw_only=True):
    """Every view of one log. ``stats_by`` is keyed by ``(queue, kind)``."""

    tasks: dict[str, TaskView] = {}
    nodes: dict[str, NodeView] = {}
    queues: dict[str, QueueView] = {}
    stats: StatsView = StatsView()
    stats_by: dict[tuple[str, str], StatsView] = {}


def replay(
    entries: Iterable[Entry[Event] | tuple[str, str, Event]], start: Views | None = None
) -> Views:
    """Fold ``entries`` (``(stream, id, event)`` triples or decoded
    :class:`~eventcore.codec.Entry` objects, in log order per stream) into the
    views, starting from ``start`` (default: nothing). Entries already applied
    to ``start`` are skipped, like any fold does.
    """
    start = start if start is not None else Views()
    # Local dicts mutated in place: the caller's ``start`` is never touched.
    tasks = dict(start.tasks)
    nodes = dict(start.nodes)
    queues = dict(start.queues)
    stats = start.stats
    stats_by = dict(start.stats_by)
    for item in entries:
        if isinstance(item, Entry):
            stream, entry_id, raw = item.stream, item.id, item.event
        else:
            stream, entry_id, raw = item
        if isinstance(raw, NODE_EVENT_TYPES):
            node_event = cast(NodeEvent, raw)
            nodes[node_event.node] = fold_node(
                nodes.get(node_event.node), stream, entry_id, node_event
            )
            continue
        if not isinstance(raw, TASK_EVENT_TYPES):
            continue  # control events feed no view
        event = cast(TaskEvent, raw)
        before = tasks.get(event.task_id)
        tasks[event.task_id] = fold_task(before, entry_id, event)
        for node in nodes_of(event, before):
            nodes[node] = fold_node_task(
                nodes.get(node), stream, entry_id, event, before, node=node
            )
        scope = scope_of(event, before)
        if scope is not None:
            queue = fold_queue(queues.get(scope[0]), stream, entry_id, event, before)
            if queue is not None:
                queues[scope[0]] = queue
            stats_by[scope] = fold_stats(
                stats_by.get(scope), stream, entry_id, event, before, scope=scope
            )
        stats = fold_stats(stats, stream, entry_id, event, before)
    return Views(tasks=tasks, nodes=nodes, queues=queues, stats=stats, stats_by=stats_by)
