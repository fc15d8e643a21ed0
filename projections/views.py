"""The views the projections build: plain frozen structs, encodable with
msgspec JSON and MessagePack, and compared with ``==``.

A view never holds anything that cannot be rebuilt from the log. Views fed
from several streams (node, queue, stats) remember the last entry id applied
*per stream* in ``last_ids``; a task view is fed from its one partition stream
only and keeps a single ``last_event_id``. See :mod:`projections.folds`.

Every dict in a view (``last_ids``, ``waiting_since``, ``per_minute``, the
histogram buckets) is kept in key order by the folds, so equal views encode to
equal bytes whatever order the events of different streams came in: ``replay
verify`` can compare encodings.

Views are trees of immutable values built from decoded events, never part of
a reference cycle, so they are left out of the cyclic garbage collector
(``gc=False``): a replay holding a million task views would otherwise keep it
busy walking them.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from eventcore.events import Capabilities, ErrorInfo, Priority
from eventcore.transitions import TaskStatus

__all__ = [
    "Counts",
    "DurationHistogram",
    "HistoryItem",
    "NodeState",
    "NodeView",
    "QueueView",
    "StatsView",
    "TaskView",
]


class HistoryItem(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a task's timeline: the entry id, the event tag, its time and a
    short human summary (``"claimed by gpu-1 (attempt 2, delivery 1)"``)."""

    id: str
    type: str
    at: float
    summary: str = ""


class TaskView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A task's current state and timeline, folded from its events.

    ``status`` is ``None`` only for a task whose first event was not
    ``TaskSubmitted`` (a log trimmed without a snapshot, or a bug): such a view
    keeps the events in ``history`` and ``illegal`` and stays ``None`` until a
    ``TaskSubmitted`` arrives, because the status is only ever derived through
    :func:`eventcore.transitions.next_status`.

    ``started_at`` is the start of the latest attempt and ``duration`` is
    ``finished_at - started_at`` (``None`` when the task ended without
    starting). ``attempt`` and ``deliveries`` never decrease; ``progress``
    never decreases within an attempt and restarts at 0 for a retry.
    """

    task_id: str
    status: TaskStatus | None = None
    kind: str = ""
    queue: str = ""
    priority: Priority | None = None
    tenant: str = ""
    model: str | None = None
    params_summary: dict[str, Any] = {}
    node: str | None = None
    attempt: int = 0
    deliveries: int = 0
    progress: float = 0.0
    progress_message: str = ""
    submitted_at: float | None = None
    run_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    error: ErrorInfo | None = None
    result: Any = None
    result_ref: str | None = None
    cancel_requested: bool = False
    cancel_reason: str = ""
    stale_results: int = 0
    retry_at: float | None = None
    dead_letter_reason: str | None = None
    warnings: tuple[str, ...] = ()
    illegal: tuple[str, ...] = ()
    history: tuple[HistoryItem, ...] = ()
    last_event_id: str = ""


class NodeState(enum.StrEnum):
    """A node's state, derived by :func:`projections.nodes.fold_node` from its
    events. ``UNKNOWN``: the view was made by task events naming the node before
    any node event was seen (the node stream is read independently of the task
    streams)."""

    UNKNOWN = "unknown"
    ONLINE = "online"
    PAUSED = "paused"
    DRAINING = "draining"
    STOPPED = "stopped"
    LOST = "lost"


class NodeView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A worker node: its state, what it announced, its last heartbeat, and the
    tasks the task log says it holds.

    The fields come from two sources that never write the same field, so the
    view does not depend on how the node stream and the task streams interleave:

    - node events: ``state`` … ``warm_models`` and ``heartbeat_running`` (the
      running set as the node last reported it);
    - task events: ``running`` (tasks claimed or running on this node according
      to the log, sorted), ``processed`` (accepted terminal events naming this
      node) and ``failed`` (accepted ``TaskFailed`` / ``TaskTimedOut`` naming it).
    """

    node: str
    state: NodeState = NodeState.UNKNOWN
    state_since: float | None = None
    state_reason: str = ""
    capabilities: Capabilities | None = None
    queues: tuple[str, ...] = ()
    concurrency: int = 0
    host: str = ""
    pid: int | None = None
    version: str = ""
    started_at: float | None = None
    last_heartbeat: float | None = None
    load: float = 0.0
    free_slots: int = 0
    heartbeat_running: tuple[str, ...] = ()
    memory_free_mb: int | None = None
    gpu_memory_free_mb: tuple[int, ...] = ()
    warm_models: tuple[str, ...] = ()
    running: tuple[str, ...] = ()
    processed: int = 0
    failed: int = 0
    last_ids: dict[str, str] = {}


class QueueView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One queue's backlog and outcomes.

    Every count moves with a task's status change or a move between queues
    (``TaskRerouted``), so at any point ``submitted + moved_in == waiting +
    in_flight + succeeded + failed + cancelled + timed_out + dead_lettered +
    moved_out`` for tasks submitted in the folded log. ``waiting`` counts
    queued, scheduled and retrying tasks; ``in_flight`` claimed and running
    ones; ``moved_out`` / ``moved_in`` waiting tasks moved to / from another
    queue.

    ``waiting_since`` maps each waiting task id to its ``submitted_at``: the
    exact state needed to keep ``oldest_waiting_at`` right when any waiting
    task leaves. It is as large as the backlog; that is the price of an exact
    minimum under removals.
    """

    queue: str
    submitted: int = 0
    waiting: int = 0
    in_flight: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    dead_lettered: int = 0
    moved_in: int = 0
    moved_out: int = 0
    oldest_waiting_at: float | None = None
    waiting_since: dict[str, float] = {}
    last_ids: dict[str, str] = {}


class Counts(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Submissions and outcomes, by terminal status."""

    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    dead_lettered: int = 0


class DurationHistogram(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Task durations in fixed log-spaced buckets (see :mod:`projections.stats`).

    ``buckets`` maps a bucket index to its count (empty buckets absent). The
    bucket edges are constants, so two histograms merge by adding counts, and
    the same durations give the same histogram in any order.
    """

    buckets: dict[int, int] = {}
    count: int = 0


class StatsView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Throughput, success rate and durations: global (``queue`` and ``kind``
    ``None``) or for one queue and task kind.

    ``success_rate`` is succeeded / (succeeded + failed + timed_out +
    dead_lettered): a cancellation is nobody's failure. ``per_minute`` maps the
    start of a minute (epoch seconds, a multiple of 60) to what happened in it,
    for the 24 h up to ``newest_at``, the latest event time folded (never the
    wall clock). Percentiles are in seconds, read from ``durations``.
    """

    queue: str | None = None
    kind: str | None = None
    totals: Counts = Counts()
    success_rate: float | None = None
    durations: DurationHistogram = DurationHistogram()
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    per_minute: dict[int, Counts] = {}
    newest_at: float | None = None
    last_ids: dict[str, str] = {}
