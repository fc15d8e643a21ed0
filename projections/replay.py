"""The fold of a log, whole or one batch of it, into every view.

:func:`replay` is what ``replay verify`` compares live views with and what the
projector folds each batch with. It routes each entry exactly as a runner
should: a task event goes to its task, to its queue
(:func:`~projections.folds.queues_of`: two for a move), to the nodes it touches
(:func:`~projections.nodes.nodes_of`), to the global stats and to its
``(queue, kind)`` stats (:func:`~projections.stats.scope_of`), every one of
them given the task view from *before* the entry. Node events go to their
node; control events touch no view.

:func:`replay_each` does that with the public folds, one call per entry and
view: it is the definition. :func:`replay` gives the same views, faster: it
keeps one draft per queue, node and stats view for the whole run (see
:mod:`projections.folds`), so the structures that grow with the work in
flight are changed in place and built into views once, and it parses each
entry id and works out each status change once. The tests check that the two
agree on random logs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import msgspec

from eventcore.codec import Entry
from eventcore.events import (
    NODE_EVENT_TYPES,
    TASK_EVENT_TYPES,
    Event,
    NodeEvent,
    TaskEvent,
    TaskRerouted,
)
from eventcore.transitions import TRANSITIONS
from projections.folds import (
    HELD,
    QueueDraft,
    TaskChange,
    apply_task,
    fold_queue,
    fold_task,
    id_rank,
    queues_of,
)
from projections.nodes import NodeDraft, event_node, fold_node, fold_node_task, nodes_of
from projections.stats import StatsDraft, fold_stats, scope_of, scopes_of, tally_of
from projections.views import NodeView, QueueView, StatsView, TaskView

__all__ = ["Views", "replay", "replay_each"]

Item = Entry[Event] | tuple[str, str, Event]
_NODE_TYPES = frozenset(NODE_EVENT_TYPES)
_TASK_TYPES = frozenset(TASK_EVENT_TYPES)


class Views(msgspec.Struct, frozen=True, kw_only=True):
    """Every view of one log. ``stats_by`` is keyed by ``(queue, kind)``."""

    tasks: dict[str, TaskView] = {}
    nodes: dict[str, NodeView] = {}
    queues: dict[str, QueueView] = {}
    stats: StatsView = StatsView()
    stats_by: dict[tuple[str, str], StatsView] = {}


def _unpack(item: Item) -> tuple[str, str, Event]:
    if isinstance(item, Entry):
        return item.stream, item.id, item.event
    return item


def replay(entries: Iterable[Item], start: Views | None = None) -> Views:
    """Fold ``entries`` (``(stream, id, event)`` triples or decoded
    :class:`~eventcore.codec.Entry` objects, in log order per stream) into the
    views, starting from ``start`` (default: nothing). Entries already applied
    to ``start`` are skipped, like any fold does. ``start`` is not changed.
    """
    start = start if start is not None else Views()
    tasks = dict(start.tasks)
    nodes = dict(start.nodes)
    queues = dict(start.queues)
    stats_by = dict(start.stats_by)
    # The last entry id applied to each task view folded here, parsed.
    task_keys: dict[str, int] = {}
    node_drafts: dict[str, NodeDraft] = {}
    queue_drafts: dict[str, QueueDraft] = {}
    scope_drafts: dict[tuple[str, str], StatsDraft] = {}
    stats = StatsDraft(start.stats)

    def node_draft(name: str) -> NodeDraft:
        draft = node_drafts.get(name)
        if draft is None:
            view = nodes.get(name)
            draft = node_drafts[name] = NodeDraft(view if view is not None else NodeView(node=name))
        return draft

    for item in entries:
        if isinstance(item, Entry):
            stream, entry_id, raw = item.stream, item.id, item.event
        else:
            stream, entry_id, raw = item
        event_type = type(raw)  # event types are final: an exact test, and a fast one
        if event_type in _NODE_TYPES:
            node_event = cast(NodeEvent, raw)
            name = node_event.node
            draft = node_drafts.pop(name, None)  # node events fold into a built view
            view = draft.view() if draft is not None else nodes.get(name)
            nodes[name] = fold_node(view, stream, entry_id, node_event)
            continue
        if event_type not in _TASK_TYPES:
            continue  # control events feed no view
        event = cast(TaskEvent, raw)
        key = id_rank(entry_id)
        task_id = event.task_id
        before = tasks.get(task_id)
        if before is None:
            status = None
            after = TRANSITIONS[None].get(event_type)
            tasks[task_id] = apply_task(TaskView(task_id=task_id), entry_id, event, after)
            task_keys[task_id] = key
        else:
            status = before.status
            after = TRANSITIONS[status].get(event_type)
            last = task_keys.get(task_id)
            if last is None:
                last = id_rank(before.last_event_id) if before.last_event_id else -1
            if key > last:
                tasks[task_id] = apply_task(before, entry_id, event, after)
                last = key
            task_keys[task_id] = last
        change = TaskChange(event, before, status, after)
        if after is not None:  # an illegal event touches no node (nodes_of)
            named = event_node(event)
            if named is not None:
                node_draft(named).apply(stream, key, entry_id, change)
            if before is not None and status in HELD:
                held = before.node
                if held is not None and held != named:
                    node_draft(held).apply(stream, key, entry_id, change)
        tally = tally_of(change)
        scope = scope_of(event, before)
        if scope is not None:
            # A move touches the queue it joins as well (queues_of, scopes_of).
            scopes = scopes_of(event, before) if event_type is TaskRerouted else (scope,)
            for name, kind in scopes:
                queue = queue_drafts.get(name)
                if queue is None:
                    view = queues.get(name)
                    queue = queue_drafts[name] = QueueDraft(
                        view if view is not None else QueueView(queue=name)
                    )
                queue.apply(stream, key, entry_id, change)
                scoped = scope_drafts.get((name, kind))
                if scoped is None:
                    view = stats_by.get((name, kind))
                    scoped = scope_drafts[name, kind] = StatsDraft(
                        view if view is not None else StatsView(queue=name, kind=kind)
                    )
                scoped.apply(stream, key, entry_id, tally)
        stats.apply(stream, key, entry_id, tally)

    nodes.update((name, draft.view()) for name, draft in node_drafts.items())
    queues.update((name, draft.view()) for name, draft in queue_drafts.items())
    stats_by.update((scope, draft.view()) for scope, draft in scope_drafts.items())
    return Views(tasks=tasks, nodes=nodes, queues=queues, stats=stats.view(), stats_by=stats_by)


def replay_each(entries: Iterable[Item], start: Views | None = None) -> Views:
    """:func:`replay` done with the public folds, one call per entry and view:
    slower, and the definition :func:`replay` is checked against."""
    start = start if start is not None else Views()
    tasks = dict(start.tasks)
    nodes = dict(start.nodes)
    queues = dict(start.queues)
    stats = start.stats
    stats_by = dict(start.stats_by)
    for item in entries:
        stream, entry_id, raw = _unpack(item)
        if isinstance(raw, NODE_EVENT_TYPES):
            node_event = cast(NodeEvent, raw)
            nodes[node_event.node] = fold_node(
                nodes.get(node_event.node), stream, entry_id, node_event
            )
            continue
        if not isinstance(raw, TASK_EVENT_TYPES):
            continue
        event = cast(TaskEvent, raw)
        before = tasks.get(event.task_id)
        tasks[event.task_id] = fold_task(before, entry_id, event)
        for node in nodes_of(event, before):
            nodes[node] = fold_node_task(
                nodes.get(node), stream, entry_id, event, before, node=node
            )
        for name in queues_of(event, before):
            queue = fold_queue(queues.get(name), stream, entry_id, event, before, queue=name)
            if queue is not None:
                queues[name] = queue
        for scope in scopes_of(event, before):
            stats_by[scope] = fold_stats(
                stats_by.get(scope), stream, entry_id, event, before, scope=scope
            )
        stats = fold_stats(stats, stream, entry_id, event, before)
    return Views(tasks=tasks, nodes=nodes, queues=queues, stats=stats, stats_by=stats_by)
