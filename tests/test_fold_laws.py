"""Laws of the projection folds, on random *legal* logs.

A log is made by walking :data:`eventcore.transitions.TRANSITIONS` from
``None`` for a few tasks (fields as a worker would write them), plus a node
stream, interleaved in a random order that keeps each stream's own order.
"""

from __future__ import annotations

import collections
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventcore.events import (
    Capabilities,
    ErrorInfo,
    Event,
    NodeDraining,
    NodeHeartbeat,
    NodeLost,
    NodePaused,
    NodeResumed,
    NodeStarted,
    NodeStopped,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskProgress,
    TaskRerouted,
    TaskResultStale,
    TaskRetryScheduled,
    TaskScheduled,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
    TaskTimedOut,
)
from eventcore.transitions import TERMINAL, TRANSITIONS, TaskStatus, is_legal, next_status
from projections.folds import HELD, fold_task
from projections.replay import Views, replay

NODES = ("n1", "n2", "n3")
QUEUES = ("cpu", "gpu")
KINDS = ("echo", "inpaint")
T0 = 1_700_000_000.0
DAY = 86_400.0

Log = list[tuple[str, str, Event]]
_TERMINAL_TAGS = {
    t.type_name()
    for t in (TaskSucceeded, TaskFailed, TaskCancelled, TaskTimedOut, TaskDeadLettered)
}
_replace = msgspec.structs.replace


def _make(draw: Any, event_type: type, task_id: str, at: float, s: dict[str, Any]) -> TaskEvent:
    """One event of ``event_type`` with the fields a worker would write; ``s``
    is the walk's state (attempt, deliveries, node, progress)."""
    node = s["node"]
    if event_type is TaskSubmitted:
        spec = TaskSpec(
            kind=draw(st.sampled_from(KINDS)),
            queue=draw(st.sampled_from(QUEUES)),
            params={"prompt": draw(st.text(max_size=5)), "steps": draw(st.integers(1, 50))},
        )
        s["queue"] = spec.queue
        return TaskSubmitted(task_id=task_id, spec=spec, routed=True, at=at)
    if event_type is TaskRerouted:
        old, s["queue"] = s.get("queue", QUEUES[0]), draw(st.sampled_from(QUEUES))
        return TaskRerouted(task_id=task_id, from_queue=old, to_queue=s["queue"], at=at)
    if event_type is TaskScheduled:
        return TaskScheduled(task_id=task_id, run_at=at + 5, at=at)
    if event_type is TaskClaimed:
        s["node"] = node = draw(st.sampled_from(NODES))
        s["deliveries"] += 1
        s["progress"] = 0.0
        return TaskClaimed(
            task_id=task_id,
            node=node,
            attempt=s["attempt"],
            deliveries=s["deliveries"],
            entry_id="1-0",
            at=at,
        )
    if event_type is TaskStarted:
        return TaskStarted(task_id=task_id, node=node, attempt=s["attempt"], at=at)
    if event_type is TaskProgress:
        s["progress"] = draw(st.floats(s["progress"], 1.0))
        warning = draw(st.sampled_from([None, None, "soft timeout"]))
        return TaskProgress(
            task_id=task_id, attempt=s["attempt"], progress=s["progress"], warning=warning, at=at
        )
    if event_type is TaskSucceeded:
        return TaskSucceeded(task_id=task_id, node=node, attempt=s["attempt"], result=1, at=at)
    if event_type is TaskFailed:
        error = ErrorInfo(type="ValueError", message="bad", retryable=False)
        return TaskFailed(task_id=task_id, node=node, attempt=s["attempt"], error=error, at=at)
    if event_type is TaskTimedOut:
        return TaskTimedOut(task_id=task_id, node=node, attempt=s["attempt"], timeout=9, at=at)
    if event_type is TaskRetryScheduled:
        s["attempt"] += 1
        return TaskRetryScheduled(
            task_id=task_id, attempt=s["attempt"], run_at=at + 1, delay=1, at=at
        )
    if event_type is TaskCancelled:
        return TaskCancelled(task_id=task_id, node=node, reason="user", at=at)
    if event_type is TaskDeadLettered:
        return TaskDeadLettered(
            task_id=task_id, deliveries=s["deliveries"], reason="too many", node=node, at=at
        )
    if event_type is TaskCancelRequested:
        return TaskCancelRequested(task_id=task_id, reason="user", at=at)
    assert event_type is TaskResultStale
    return TaskResultStale(
        task_id=task_id,
        node=draw(st.sampled_from(NODES)),
        attempt=1,
        outcome="succeeded",
        reason="lease lost",
        at=at,
    )


# Leans the walk towards the happy path, which is otherwise rare.
_WEIGHT = {TaskClaimed: 4, TaskStarted: 6, TaskProgress: 2, TaskSucceeded: 5, TaskRetryScheduled: 2}


@st.composite
def lifecycles(draw: Any, task_id: str) -> list[TaskEvent]:
    """A legal event sequence for one task, walking the transition table from None."""
    at = T0 + draw(st.floats(0, 2 * DAY))
    state: dict[str, Any] = {"attempt": 1, "deliveries": 0, "node": None, "progress": 0.0}
    status: TaskStatus | None = None
    events: list[TaskEvent] = []
    for _ in range(draw(st.integers(1, 14))):
        if status in TERMINAL and events[-1].type_name() == TaskResultStale.type_name():
            break
        choices = [
            t
            for t in sorted(TRANSITIONS[status], key=lambda t: t.type_name())
            for _ in range(_WEIGHT.get(t, 1))
        ]
        event_type = draw(st.sampled_from(choices))
        at += draw(st.floats(0.0005, 120.0))
        event = _make(draw, event_type, task_id, at, state)
        status = next_status(status, event)
        events.append(event)
    return events


def _node_events(draw: Any, node: str) -> list[Event]:
    at = T0 + draw(st.floats(0, DAY))
    caps = Capabilities(cpu_cores=4, memory_mb=1024)
    out: list[Event] = [NodeStarted(node=node, capabilities=caps, queues=QUEUES, at=at)]
    makers = [
        lambda at: NodeHeartbeat(node=node, load=0.5, free_slots=1, at=at),
        lambda at: NodePaused(node=node, by="op", at=at),
        lambda at: NodeResumed(node=node, by="op", at=at),
        lambda at: NodeDraining(node=node, reason="sigterm", at=at),
        lambda at: NodeStopped(node=node, at=at),
        lambda at: NodeLost(node=node, last_seen=at - 30, noticed_by="n9", at=at),
    ]
    for make in draw(st.lists(st.sampled_from(makers), max_size=5)):
        at += draw(st.floats(1, 60))
        out.append(make(at))
    return out


@st.composite
def streams(draw: Any, partitions: int = 2) -> dict[str, list[tuple[str, Event]]]:
    """Per stream, its entries ``(id, event)`` in order: task partitions ``p*``
    and the node stream ``nodes``."""
    out: dict[str, list[tuple[str, Event]]] = {f"p{i}": [] for i in range(partitions)}
    for n in range(draw(st.integers(1, 4))):
        part = f"p{draw(st.integers(0, partitions - 1))}"
        events = draw(lifecycles(f"t{n}"))
        # the task's events go in order, mixed with the partition's others
        mixed = draw(st.permutations([0] * len(out[part]) + [1] * len(events)))
        old, new = iter(out[part]), iter(events)
        out[part] = [next(new) if pick else next(old) for pick in mixed]  # type: ignore[misc]
    out["nodes"] = []
    for node in draw(st.sets(st.sampled_from(NODES), max_size=2)):
        out["nodes"] += _node_events(draw, node)
    ms = 1000
    numbered: dict[str, list[tuple[str, Event]]] = {}
    for name, events in out.items():
        numbered[name] = []
        for event in events:
            ms += draw(st.integers(0, 1))
            numbered[name].append((f"{ms}-{len(numbered[name])}", event))
    return numbered


@st.composite
def interleavings(draw: Any, per_stream: dict[str, list[tuple[str, Event]]]) -> Log:
    """The streams merged in a random order that keeps each stream's order."""
    names = [name for name, entries in per_stream.items() for _ in entries]
    order = draw(st.permutations(names))
    iters = {name: iter(entries) for name, entries in per_stream.items()}
    log: Log = []
    for name in order:
        entry_id, event = next(iters[name])
        log.append((name, entry_id, event))
    return log


@st.composite
def logs(draw: Any) -> Log:
    return draw(interleavings(draw(streams())))


def _without_ids(views: Views) -> Views:
    """The views with every entry id blanked: for logs whose ids differ."""
    return _replace(
        views,
        tasks={
            k: _replace(v, last_event_id="", history=tuple(_replace(h, id="") for h in v.history))
            for k, v in views.tasks.items()
        },
        nodes={k: _replace(v, last_ids={}) for k, v in views.nodes.items()},
        queues={k: _replace(v, last_ids={}) for k, v in views.queues.items()},
        stats=_replace(views.stats, last_ids={}),
        stats_by={k: _replace(v, last_ids={}) for k, v in views.stats_by.items()},
    )


def _encoded(views: Views) -> dict[object, bytes]:
    """Every view's MessagePack bytes, by (kind of view, key)."""
    out: dict[object, bytes] = {("stats", None): msgspec.msgpack.encode(views.stats)}
    for name in ("tasks", "nodes", "queues", "stats_by"):
        for key, view in getattr(views, name).items():
            out[name, key] = msgspec.msgpack.encode(view)
    return out


def _tasks(log: Log) -> dict[str, list[TaskEvent]]:
    out: dict[str, list[TaskEvent]] = collections.defaultdict(list)
    for _, _, event in log:
        if hasattr(event, "task_id"):
            out[event.task_id].append(event)  # type: ignore[attr-defined]
    return out


laws = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@laws
@given(logs(), st.data())
def test_fold_of_concatenation_continues_fold(log: Log, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(log)))
    assert replay(log[k:], replay(log[:k])) == replay(log)


@laws
@given(logs())
def test_replaying_twice_changes_nothing(log: Log) -> None:
    once = replay(log)
    assert replay(log + log) == once
    assert replay(log, once) == once
    doubled = [entry for entry in log for _ in range(2)]
    assert replay(doubled) == once


@laws
@given(logs(), st.data())
def test_crash_and_redelivery_changes_nothing(log: Log, data: st.DataObject) -> None:
    """A runner that dies after applying up to ``k`` and restarts from ``j <= k``."""
    k = data.draw(st.integers(0, len(log)))
    j = data.draw(st.integers(0, k))
    assert replay(log[:k] + log[j:]) == replay(log)


@laws
@given(streams(), st.data())
def test_streams_commute(per_stream: dict[str, list[tuple[str, Event]]], data: st.DataObject):
    """Partitions and the node stream are independent: any merge order, same views."""
    a = replay(data.draw(interleavings(per_stream)))
    b = replay(data.draw(interleavings(per_stream)))
    assert a == b
    assert _encoded(a) == _encoded(b)  # same bytes too, for ``replay verify``


@laws
@given(st.data())
def test_tasks_commute_within_a_stream(data: st.DataObject) -> None:
    """Two orders of the same tasks' events in one stream (so different ids)."""
    lives = [data.draw(lifecycles(f"t{n}")) for n in range(data.draw(st.integers(2, 4)))]
    logs_ = []
    for _ in range(2):
        names = [n for n, events in enumerate(lives) for _ in events]
        order = data.draw(st.permutations(names))
        iters = [iter(events) for events in lives]
        logs_.append([("p0", f"{i + 1}-0", next(iters[n])) for i, n in enumerate(order)])
    assert _without_ids(replay(logs_[0])) == _without_ids(replay(logs_[1]))


@laws
@given(logs())
def test_views_agree_with_the_transition_table(log: Log) -> None:
    views = replay(log)
    tasks = _tasks(log)
    for task_id, events in tasks.items():
        expected = None
        for event in events:
            expected = next_status(expected, event)
        view = views.tasks[task_id]
        assert view.status is expected
        assert view.illegal == ()
    final = {t: v.status for t, v in views.tasks.items()}
    for queue in {v.queue for v in views.tasks.values()}:
        q = views.queues[queue]
        mine = [s for t, s in final.items() if views.tasks[t].queue == queue]
        # A move takes a waiting task from one queue's count to another's.
        assert q.submitted + q.moved_in - q.moved_out == len(mine)
        for status in TERMINAL:
            assert getattr(q, status.value) == mine.count(status)
        assert q.in_flight == sum(s in HELD for s in mine)
        assert (
            q.waiting
            == len(q.waiting_since)
            == len(mine) - q.in_flight - sum(s in TERMINAL for s in mine)
        )
        if q.waiting:
            assert q.oldest_waiting_at == min(
                v.submitted_at for v in views.tasks.values() if v.task_id in q.waiting_since
            )
    totals = views.stats.totals
    assert totals.submitted == len(tasks)
    for status in TERMINAL:
        assert getattr(totals, status.value) == list(final.values()).count(status)
    # A submission counts in the scope of the queue it was submitted to.
    by_scope = collections.Counter(
        (e.spec.queue, e.spec.kind)
        for events in tasks.values()
        for e in events
        if isinstance(e, TaskSubmitted)
    )
    submitted = {k: s.totals.submitted for k, s in views.stats_by.items() if s.totals.submitted}
    assert submitted == dict(by_scope)


@laws
@given(logs())
def test_node_running_sets_follow_the_tasks(log: Log) -> None:
    views = replay(log)
    for name, node in views.nodes.items():
        held = sorted(t for t, v in views.tasks.items() if v.status in HELD and v.node == name)
        assert list(node.running) == held
        ends = [
            e
            for events in _tasks(log).values()
            for e in events
            if getattr(e, "node", None) == name and e.type_name() in _TERMINAL_TAGS
        ]
        assert node.processed == len(ends)


@laws
@given(st.data())
def test_counts_never_go_back(data: st.DataObject) -> None:
    """Attempt and deliveries never decrease; progress not within an attempt."""
    view = None
    for i, event in enumerate(data.draw(lifecycles("t"))):
        new = fold_task(view, f"{i + 1}-0", event)
        if view is not None:
            assert new.attempt >= view.attempt
            assert new.deliveries >= view.deliveries
            if new.attempt == view.attempt:
                assert new.progress >= view.progress
        view = new


@laws
@given(st.data())
def test_illegal_events_are_flagged_and_change_nothing(data: st.DataObject) -> None:
    events = data.draw(lifecycles("t"))
    log: Log = [("p0", f"{i + 1}-0", e) for i, e in enumerate(events)]
    before = replay(log)
    status = before.tasks["t"].status
    wrong = [t for t in _TYPES if not is_legal(status, t)]
    event_type = data.draw(st.sampled_from(wrong))
    state = {"attempt": 1, "deliveries": 1, "node": "n1", "progress": 0.0}
    bad = _make(data.draw, event_type, "t", T0 + 3 * DAY, state)
    after = replay([*log, ("p0", f"{len(log) + 1}-0", bad)])
    view = after.tasks["t"]
    assert view.status is status
    assert view.illegal == (
        f"event {bad.type_name()} in status {status.value} at id {len(log) + 1}-0",
    )
    same = _replace(view, illegal=(), history=view.history[:-1], last_event_id="")
    assert same == _replace(before.tasks["t"], last_event_id="")
    assert _without_ids(_replace(after, tasks={})) == _without_ids(_replace(before, tasks={}))


_TYPES = sorted({t for row in TRANSITIONS.values() for t in row}, key=lambda t: t.type_name())
