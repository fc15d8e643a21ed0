"""The projection folds on hand-written lifecycles, field by field."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventcore.events import (
    Capabilities,
    ErrorInfo,
    Event,
    NodeHeartbeat,
    NodeLost,
    NodePaused,
    NodeResumed,
    NodeStarted,
    NodeStopped,
    Priority,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskResultStale,
    TaskRetryScheduled,
    TaskSpec,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
)
from eventcore.ids import stream_id_key
from eventcore.transitions import TaskStatus
from projections.folds import fold_queue, fold_task, id_rank, is_new, queue_of
from projections.nodes import fold_node
from projections.replay import Views, replay
from projections.stats import (
    BUCKETS,
    bucket_of,
    fold_stats,
    histogram_add,
    histogram_merge,
    minute_of,
    percentile,
)
from projections.views import (
    DurationHistogram,
    HistoryItem,
    NodeView,
    QueueView,
    StatsView,
    TaskView,
)

T = 1_700_000_000.0  # a minute boundary: 1_700_000_000 % 60 == 20, so use T - 20
M = T - 20
CAPS = Capabilities(cpu_cores=8, memory_mb=16_000, handlers=("inpaint",))
BOOM = ErrorInfo(type="RuntimeError", message="boom", traceback="Traceback ...", retryable=True)


def submitted(task_id: str = "t1", at: float = M, **spec: object) -> TaskSubmitted:
    fields = {"kind": "inpaint", "queue": "gpu", "params": {"prompt": "cat"}, **spec}
    return TaskSubmitted(task_id=task_id, spec=TaskSpec(**fields), at=at)  # type: ignore[arg-type]


def claimed(node: str = "n1", attempt: int = 1, deliveries: int = 1, at: float = M + 1):
    return TaskClaimed(
        task_id="t1", node=node, attempt=attempt, deliveries=deliveries, entry_id="5-0", at=at
    )


def log_of(*events: Event, stream: str = "p0") -> list[tuple[str, str, Event]]:
    return [(stream, f"{i + 1}-0", e) for i, e in enumerate(events)]


HAPPY = (
    submitted(priority=Priority.HIGH, tenant="acme", model="lama"),
    claimed(),
    TaskStarted(task_id="t1", node="n1", attempt=1, at=M + 2),
    TaskProgress(task_id="t1", attempt=1, progress=0.4, message="denoise", at=M + 3),
    TaskProgress(task_id="t1", attempt=1, progress=0.8, warning="soft timeout", at=M + 4),
    TaskSucceeded(task_id="t1", node="n1", attempt=1, result={"ok": True}, at=M + 6.5),
)


def test_happy_path_task_view() -> None:
    view = replay(log_of(*HAPPY)).tasks["t1"]
    assert view.status is TaskStatus.SUCCEEDED
    assert (view.kind, view.queue, view.priority, view.tenant, view.model) == (
        "inpaint",
        "gpu",
        Priority.HIGH,
        "acme",
        "lama",
    )
    assert view.params_summary == {"prompt": "cat"}
    assert (view.node, view.attempt, view.deliveries) == ("n1", 1, 1)
    assert (view.progress, view.progress_message) == (1.0, "denoise")
    assert (view.submitted_at, view.started_at, view.finished_at) == (M, M + 2, M + 6.5)
    assert view.duration == 4.5
    assert view.result == {"ok": True} and view.error is None
    assert view.warnings == ("soft timeout",)
    assert view.illegal == () and view.last_event_id == "6-0"
    # the two progress reports in a row collapse to the latest one
    assert [h.type for h in view.history] == [
        "task.submitted",
        "task.claimed",
        "task.started",
        "task.progress",
        "task.succeeded",
    ]
    assert view.history[1] == HistoryItem(
        id="2-0", type="task.claimed", at=M + 1, summary="claimed by n1 (attempt 1, delivery 1)"
    )


def test_happy_path_queue_node_and_stats() -> None:
    views = [replay(log_of(*HAPPY[:n])) for n in range(1, len(HAPPY) + 1)]
    waiting = [(v.queues["gpu"].waiting, v.queues["gpu"].in_flight) for v in views]
    assert waiting == [(1, 0), (0, 1), (0, 1), (0, 1), (0, 1), (0, 0)]
    assert views[0].queues["gpu"].oldest_waiting_at == M
    assert views[1].queues["gpu"].oldest_waiting_at is None
    assert [v.nodes["n1"].running for v in views[1:]] == [("t1",)] * 4 + [()]
    end = views[-1]
    assert end.queues["gpu"] == QueueView(
        queue="gpu", submitted=1, succeeded=1, waiting_since={}, last_ids={"p0": "6-0"}
    )
    node = end.nodes["n1"]
    assert (node.state, node.processed, node.failed) == ("unknown", 1, 0)
    stats = end.stats
    assert (stats.totals.submitted, stats.totals.succeeded, stats.success_rate) == (1, 1, 1.0)
    assert stats.p50 == stats.p99 == pytest.approx(4.5, rel=0.07)
    assert stats.per_minute[minute_of(M)].succeeded == 1
    assert end.stats_by[("gpu", "inpaint")].totals == stats.totals


def test_retry_then_fail() -> None:
    events = (
        submitted(),
        claimed(),
        TaskStarted(task_id="t1", node="n1", attempt=1, at=M + 2),
        TaskProgress(task_id="t1", attempt=1, progress=0.5, at=M + 3),
        TaskRetryScheduled(task_id="t1", attempt=2, run_at=M + 10, delay=6, error=BOOM, at=M + 4),
    )
    mid = replay(log_of(*events))
    view = mid.tasks["t1"]
    assert view.status is TaskStatus.RETRYING
    assert (view.attempt, view.retry_at, view.error, view.progress) == (2, M + 10, BOOM, 0.0)
    assert (mid.queues["gpu"].waiting, mid.queues["gpu"].oldest_waiting_at) == (1, M)
    assert mid.nodes["n1"].running == ()
    final_error = ErrorInfo(type="ValueError", message="bad input", retryable=False)
    events += (
        claimed(node="n2", attempt=2, deliveries=2, at=M + 11),
        TaskStarted(task_id="t1", node="n2", attempt=2, at=M + 12),
        TaskProgress(task_id="t1", attempt=1, progress=0.9, at=M + 12.5),  # late, old attempt
        TaskFailed(task_id="t1", node="n2", attempt=2, error=final_error, at=M + 14),
    )
    end = replay(log_of(*events))
    view = end.tasks["t1"]
    assert view.status is TaskStatus.FAILED
    assert (view.node, view.attempt, view.deliveries) == ("n2", 2, 2)
    assert (view.retry_at, view.progress, view.error) == (None, 0.0, final_error)
    assert (view.started_at, view.duration) == (M + 12, 2.0)
    assert end.nodes["n2"].processed == end.nodes["n2"].failed == 1
    assert end.nodes["n1"].processed == 0
    assert end.queues["gpu"].failed == 1 and end.stats.success_rate == 0.0


def test_dead_letter() -> None:
    events = (
        submitted(),
        claimed(deliveries=1),
        claimed(node="n2", deliveries=2, at=M + 30),  # n1 died; n2 reclaimed
        TaskDeadLettered(task_id="t1", deliveries=3, reason="max deliveries", at=M + 60),
    )
    end = replay(log_of(*events))
    view = end.tasks["t1"]
    assert view.status is TaskStatus.DEAD_LETTERED
    assert (view.deliveries, view.dead_letter_reason, view.duration) == (3, "max deliveries", None)
    assert end.nodes["n1"].running == end.nodes["n2"].running == ()
    assert end.queues["gpu"].dead_lettered == 1 and end.stats.totals.dead_lettered == 1
    assert end.stats.durations.count == 0  # never started: no duration


def test_cancel_while_queued() -> None:
    events = (
        submitted(),
        TaskCancelRequested(task_id="t1", reason="changed my mind", by="alice", at=M + 1),
        TaskCancelled(task_id="t1", at=M + 2),
    )
    end = replay(log_of(*events))
    view = end.tasks["t1"]
    assert view.status is TaskStatus.CANCELLED
    assert view.cancel_requested and view.cancel_reason == "changed my mind"
    assert (view.finished_at, view.duration) == (M + 2, None)
    queue = end.queues["gpu"]
    assert (queue.waiting, queue.cancelled, queue.oldest_waiting_at) == (0, 1, None)
    assert end.stats.success_rate is None  # a cancellation judges nothing


def test_illegal_events_are_flagged_not_raised() -> None:
    orphan = fold_task(None, "1-0", TaskSucceeded(task_id="t9", node="n1", attempt=1, at=M))
    assert orphan.status is None
    assert orphan.illegal == ("event task.succeeded in status none at id 1-0",)
    assert queue_of(TaskSucceeded(task_id="t9", node="n1", attempt=1), orphan) is None

    log = log_of(
        *HAPPY,
        TaskFailed(task_id="t1", node="n2", attempt=1, error=BOOM, at=M + 9),
        TaskResultStale(
            task_id="t1", node="n2", attempt=1, outcome="failed", reason="lease", at=M + 9
        ),
    )
    end = replay(log)
    view = end.tasks["t1"]
    assert view.status is TaskStatus.SUCCEEDED and view.error is None
    assert view.illegal == ("event task.failed in status succeeded at id 7-0",)
    assert view.history[-2].summary.startswith("illegal: failed on n2")
    assert view.stale_results == 1
    assert end.queues["gpu"].failed == 0 and end.stats.totals.failed == 0
    assert end.nodes["n2"].processed == 0


def test_entries_already_applied_are_skipped() -> None:
    assert stream_id_key("10-0") > stream_id_key("9-5") and stream_id_key("1700") == (1700, 0)
    assert is_new("", "0-1") and not is_new("10-0", "9-9") and not is_new("10-0", "10-0")
    view = fold_task(None, "10-0", submitted())
    assert fold_task(view, "9-0", claimed()) is view
    queue = fold_queue(None, "p0", "10-0", submitted(), None)
    assert queue is not None
    assert fold_queue(queue, "p0", "10-0", submitted(), None) is queue
    # another stream has its own ids: "5-0" of p1 is new
    other = fold_queue(queue, "p1", "5-0", submitted("t2"), None)
    assert other is not None and other.submitted == 2
    assert other.last_ids == {"p0": "10-0", "p1": "5-0"}


_IDS = st.builds(
    lambda ms, seq: f"{ms}-{seq}", st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)
)


@given(_IDS, _IDS)
def test_id_rank_orders_like_id_key(a: str, b: str) -> None:
    assert (id_rank(a) < id_rank(b)) == (stream_id_key(a) < stream_id_key(b))
    assert (id_rank(a) == id_rank(b)) == (stream_id_key(a) == stream_id_key(b))
    assert id_rank("1700") == id_rank("1700-0")


def test_params_summary_stays_small() -> None:
    params = {
        "prompt": "x" * 500,
        "size": [512, 512],
        "image": b"\x89PNG" * 1000,
        "nested": {"a": [1, 2]},
        "many": list(range(100)),
        **{f"k{i}": i for i in range(40)},
    }
    summary = fold_task(None, "1-0", submitted(params=params)).params_summary
    assert summary["prompt"] == "x" * 200 + "… (500 chars)"
    assert summary["size"] == [512, 512]
    assert summary["image"] == "<4000 bytes>"
    assert summary["nested"] == "<dict of 1>" and summary["many"] == "<list of 100>"
    assert len(summary) == 33 and summary["…"] == "13 more keys"


def test_node_lifecycle() -> None:
    events = [
        NodeStarted(node="g1", capabilities=CAPS, queues=("gpu",), concurrency=2, host="h", at=M),
        NodeHeartbeat(node="g1", running=("t1",), free_slots=1, load=0.5, warm_models=("lama",)),
        NodePaused(node="g1", by="ops", at=M + 20),
        NodeHeartbeat(node="g1", free_slots=2, at=M + 25),
        NodeLost(node="g1", last_seen=M + 25, noticed_by="g2", at=M + 60),
    ]
    events[1] = msgspec.structs.replace(events[1], at=M + 10)
    view = None
    states = []
    for i, event in enumerate(events):
        view = fold_node(view, "nodes", f"{i + 1}-0", event)  # type: ignore[arg-type]
        states.append(view.state)
    assert states == ["online", "online", "paused", "paused", "lost"]
    assert view is not None
    assert (view.capabilities, view.queues, view.concurrency, view.host) == (
        CAPS,
        ("gpu",),
        2,
        "h",
    )
    assert (view.last_heartbeat, view.free_slots, view.heartbeat_running) == (M + 25, 2, ())
    assert (view.state_since, view.state_reason) == (M + 60, "noticed by g2")
    assert view.last_ids == {"nodes": "5-0"}
    back = fold_node(view, "nodes", "6-0", NodeHeartbeat(node="g1", at=M + 70))
    assert back.state == "online"  # alive after all
    stopped = fold_node(back, "nodes", "7-0", NodeStopped(node="g1", at=M + 80))
    resumed = fold_node(stopped, "nodes", "8-0", NodeResumed(node="g1", at=M + 81))
    assert resumed.state == "stopped"


def test_histogram_is_bounded_and_mergeable() -> None:
    assert bucket_of(0.0) == 0 and bucket_of(float("nan")) == 0
    assert bucket_of(1e9) == BUCKETS - 1 and BUCKETS < 140
    a = b = DurationHistogram()
    for d in (0.01, 0.02, 0.5):
        a = histogram_add(a, d)
    for d in (2.0, 3600.5):
        b = histogram_add(b, d)
    both = histogram_merge(a, b)
    assert both.count == 5 and percentile(DurationHistogram(), 0.5) is None
    assert percentile(both, 0.5) == pytest.approx(0.5, rel=0.07)
    assert percentile(both, 0.99) == 3600.0
    assert percentile(both, 0.2) == pytest.approx(0.01, rel=0.07)


def test_per_minute_buckets_keep_24h_of_event_time() -> None:
    day = 86_400
    log = log_of(submitted("t1", at=M), submitted("t2", at=M + day - 60))
    stats = replay(log).stats
    assert sorted(stats.per_minute) == [minute_of(M), minute_of(M + day - 60)]
    log += [("p0", "3-0", submitted("t3", at=M + day))]
    stats = replay(log).stats
    assert sorted(stats.per_minute) == [minute_of(M + day - 60), minute_of(M + day)]
    assert stats.totals.submitted == 3 and stats.newest_at == M + day
    # an event older than the window counts in the totals only
    stats = fold_stats(stats, "p1", "1-0", submitted("t4", at=M), None)
    assert stats.totals.submitted == 4 and len(stats.per_minute) == 2


def test_window_moves_on_across_batches() -> None:
    """A view built by one batch keeps minutes that a later batch, newer by a
    day, must drop: the window is cut again when that batch's view is built."""
    day = 86_400
    first = replay(log_of(submitted("t1", at=M)))
    later = replay([("p0", "2-0", submitted("t2", at=M + day))], first)
    assert sorted(later.stats.per_minute) == [minute_of(M + day)]
    assert later.stats.totals.submitted == 2
    scoped = later.stats_by[("gpu", "inpaint")]
    assert sorted(scoped.per_minute) == [minute_of(M + day)] and scoped.newest_at == M + day


def test_percentiles_follow_the_histogram() -> None:
    """p50/p95/p99 are read once per built view, from the whole histogram."""
    log = []
    for i, seconds in enumerate((0.01, 0.02, 0.5, 2.0, 3600.5)):
        task, n = f"t{i}", 10 * i
        log += [
            ("p0", f"{n + 1}-0", submitted(task)),
            ("p0", f"{n + 2}-0", msgspec.structs.replace(claimed(), task_id=task)),
            ("p0", f"{n + 3}-0", TaskStarted(task_id=task, node="n1", attempt=1, at=M)),
            ("p0", f"{n + 4}-0", TaskSucceeded(task_id=task, node="n1", attempt=1, at=M + seconds)),
        ]
    stats = replay(log).stats
    assert stats.durations.count == 5
    assert (stats.p50, stats.p95, stats.p99) == tuple(
        percentile(stats.durations, q) for q in (0.5, 0.95, 0.99)
    )
    assert stats.p50 == pytest.approx(0.5, rel=0.07) and stats.p99 == 3600.0


def test_views_encode_and_decode() -> None:
    views = replay(
        [
            *log_of(*HAPPY),
            ("nodes", "1-0", NodeStarted(node="n1", capabilities=CAPS, at=M)),
            ("p1", "1-0", submitted("t2", queue="cpu")),
        ]
    )
    for value, tp in [
        (views.tasks["t1"], TaskView),
        (views.nodes["n1"], NodeView),
        (views.queues["cpu"], QueueView),
        (views.stats, StatsView),
    ]:
        for enc, dec in [(msgspec.json, msgspec.json), (msgspec.msgpack, msgspec.msgpack)]:
            assert dec.decode(enc.encode(value), type=tp) == value
    assert replay([]) == Views()


def test_sorted_encoding_does_not_depend_on_stream_order() -> None:
    """Dicts in views are kept in key order, so equal views encode to equal bytes."""
    a = log_of(submitted("t1"), stream="p0")
    b = log_of(submitted("t2", at=M - 5), stream="p1")
    one, two = replay(a + b), replay(b + a)
    assert one == two
    assert len(one.queues["gpu"].waiting_since) == 2
    for view_one, view_two in [(one.queues["gpu"], two.queues["gpu"]), (one.stats, two.stats)]:
        assert msgspec.msgpack.encode(view_one) == msgspec.msgpack.encode(view_two)


# -- moves between queues ------------------------------------------------------------


def test_a_move_takes_a_waiting_task_from_one_queue_to_the_other() -> None:
    from eventcore.events import TaskRerouted, TaskSpec, TaskSubmitted, TaskSucceeded
    from projections.replay import replay_each

    spec = TaskSpec(kind="inpaint", queue="gpu-high")
    log = [
        ("p0", "1-0", TaskSubmitted(task_id="t", spec=spec, routed=True, at=T)),
        ("p0", "2-0", TaskRerouted(task_id="t", from_queue="gpu-high", to_queue="cpu", at=T + 1)),
    ]
    moved = replay(log)
    task = moved.tasks["t"]
    assert task.queue == "cpu" and task.status is TaskStatus.QUEUED
    assert task.history[-1].summary == "moved from gpu-high to cpu"
    gpu, cpu = moved.queues["gpu-high"], moved.queues["cpu"]
    assert (gpu.submitted, gpu.waiting, gpu.moved_out, gpu.waiting_since) == (1, 0, 1, {})
    assert (cpu.submitted, cpu.waiting, cpu.moved_in, cpu.waiting_since) == (0, 1, 1, {"t": T})
    assert gpu.oldest_waiting_at is None and cpu.oldest_waiting_at == T
    assert moved.stats.totals.submitted == 1  # a move is no new submission
    assert moved.stats_by["gpu-high", "inpaint"].totals.submitted == 1
    assert moved.stats_by["cpu", "inpaint"].totals.submitted == 0
    # The rest of the task's life counts where it now is.
    log += [
        ("p0", "3-0", TaskClaimed(task_id="t", node="n", attempt=1, deliveries=1, entry_id="x")),
        ("p0", "4-0", TaskStarted(task_id="t", node="n", attempt=1)),
        ("p0", "5-0", TaskSucceeded(task_id="t", node="n", attempt=1)),
    ]
    end = replay(log)
    assert end.queues["cpu"].succeeded == 1 and end.queues["gpu-high"].succeeded == 0
    assert end.stats_by["cpu", "inpaint"].totals.succeeded == 1
    # The batch fold, the per-entry fold, and folding twice all agree.
    assert replay_each(log) == end
    assert replay(log, start=replay(log[:2])) == end
    assert replay(log + log) == end


def test_a_move_of_a_claimed_task_is_flagged_and_moves_nothing() -> None:
    from eventcore.events import TaskRerouted, TaskSpec, TaskSubmitted

    spec = TaskSpec(kind="inpaint", queue="gpu-high")
    log = [
        ("p0", "1-0", TaskSubmitted(task_id="t", spec=spec, routed=True, at=T)),
        ("p0", "2-0", TaskClaimed(task_id="t", node="n", attempt=1, deliveries=1, entry_id="x")),
        ("p0", "3-0", TaskRerouted(task_id="t", from_queue="gpu-high", to_queue="cpu")),
    ]
    views = replay(log)
    assert views.tasks["t"].queue == "gpu-high" and views.tasks["t"].illegal
    assert "cpu" not in views.queues and views.queues["gpu-high"].moved_out == 0
