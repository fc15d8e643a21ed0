"""The views of the whole log from the views of its shards
(:mod:`projections.merge`): merging each shard's fold of its own stream(s)
gives, byte for byte, the fold of the whole log in any interleaving, on
random legal logs spread over the partitions (node events, task events that
name nodes, moves between queues, retries, failures) and on messy ones
(duplicates, stale redeliveries, illegal events); and the edge cases of each
merge."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventcore.events import (
    Capabilities,
    ErrorInfo,
    Event,
    NodeHeartbeat,
    NodeStarted,
    TaskFailed,
    TaskRerouted,
    TaskRetryScheduled,
    TaskStarted,
    TaskSucceeded,
)
from eventcore.ids import partition_of
from eventcore.keys import Keys
from projections.merge import merge_nodes, merge_queue, merge_stats, merge_views
from projections.replay import Views, replay
from projections.stats import WINDOW_MINUTES, minute_of
from projections.views import Counts, NodeState, NodeView, QueueView
from tests.test_fold_laws import NODES, _node_events, interleavings, laws, lifecycles
from tests.test_folds import M, claimed, submitted
from tests.viewkit import canonical

Entries = list[tuple[str, str, Event]]
_replace = msgspec.structs.replace

# Task ids by the partition they fall in, for each partition count drawn.
_COUNTS = (1, 2, 3, 5)
_POOL = {
    count: {
        p: [f"t{n}" for n in range(200) if partition_of(f"t{n}", count) == p] for p in range(count)
    }
    for count in _COUNTS
}


def _mix(draw: Any, old: list[Any], new: list[Any]) -> list[Any]:
    """``new`` mixed into ``old``, each keeping its own order."""
    picks = draw(st.permutations([0] * len(old) + [1] * len(new)))
    a, b = iter(old), iter(new)
    return [next(b) if pick else next(a) for pick in picks]


@st.composite
def sharded(draw: Any) -> tuple[Keys, dict[str, list[tuple[str, Event]]]]:
    """A deployment's keys and, per stream (every partition's log and the node
    stream, named as :class:`~eventcore.keys.Keys` names them), its entries
    ``(id, event)`` in order. Each task lives in the partition
    :func:`~eventcore.ids.partition_of` gives it."""
    count = draw(st.sampled_from(_COUNTS))
    keys = Keys("m", count)
    out: dict[str, list[Event]] = {keys.events(p): [] for p in keys.all_partitions()}
    used: set[str] = set()
    for _ in range(draw(st.integers(1, 7))):
        p = draw(st.integers(0, count - 1))
        task_id = draw(st.sampled_from(_POOL[count][p]).filter(lambda t: t not in used))
        used.add(task_id)
        stream = keys.events(partition_of(task_id, count))
        out[stream] = _mix(draw, out[stream], draw(lifecycles(task_id)))
    nodes: list[Event] = []
    for node in sorted(draw(st.sets(st.sampled_from(NODES), max_size=3))):
        nodes = _mix(draw, nodes, _node_events(draw, node))
    out[keys.nodes()] = nodes
    numbered: dict[str, list[tuple[str, Event]]] = {}
    for name, events in out.items():
        ms, seq = draw(st.integers(1, 5)), 0
        numbered[name] = []
        for event in events:
            if draw(st.integers(0, 2)):  # a later millisecond, or the same one
                ms, seq = ms + 1, 0
            numbered[name].append((f"{ms}-{seq}", event))
            seq += 1
    return keys, numbered


def _shards(keys: Keys, per_stream: dict[str, list[tuple[str, Event]]]) -> dict[str, Entries]:
    """Each view shard's entries: its own stream(s), in their order."""
    return {
        shard: [
            (stream, entry_id, event)
            for stream in keys.shard_streams(shard)
            for entry_id, event in per_stream.get(stream, [])
        ]
        for shard in keys.view_shards()
    }


def _merged(keys: Keys, folds: dict[str, Views]) -> Views:
    told = folds["n"]
    return merge_views(told, [folds[s] for s in keys.view_shards() if s != "n"])


def _same(merged: Views, whole: Views) -> None:
    assert canonical(merged) == canonical(whole)
    assert merged == whole


@laws
@given(sharded(), st.data())
def test_merged_shard_folds_equal_the_whole_fold(
    case: tuple[Keys, dict[str, list[tuple[str, Event]]]], data: st.DataObject
) -> None:
    keys, per_stream = case
    whole = replay(data.draw(interleavings(per_stream)))
    folds = {shard: replay(entries) for shard, entries in _shards(keys, per_stream).items()}
    _same(_merged(keys, folds), whole)


@laws
@given(sharded(), st.data())
def test_shards_folded_batch_by_batch_merge_to_the_whole_fold(
    case: tuple[Keys, dict[str, list[tuple[str, Event]]]], data: st.DataObject
) -> None:
    """A shard's projector folds batch after batch from its stored views."""
    keys, per_stream = case
    folds = {}
    for shard, entries in _shards(keys, per_stream).items():
        cuts = sorted(data.draw(st.lists(st.integers(0, len(entries)), max_size=3)))
        views = Views()
        for a, b in zip([0, *cuts], [*cuts, len(entries)]):
            views = replay(entries[a:b], views)
        folds[shard] = views
    _same(_merged(keys, folds), replay(data.draw(interleavings(per_stream))))


@laws
@given(sharded(), st.data())
def test_merge_holds_on_messy_streams(
    case: tuple[Keys, dict[str, list[tuple[str, Event]]]], data: st.DataObject
) -> None:
    """Each stream's entries drawn with repeats and in any order: duplicates,
    entries older than ones already applied, events illegal where they land."""
    keys, per_stream = case
    messy = {
        stream: data.draw(st.lists(st.sampled_from(entries), max_size=2 * len(entries)))
        if entries
        else []
        for stream, entries in per_stream.items()
    }
    folds = {shard: replay(entries) for shard, entries in _shards(keys, messy).items()}
    _same(_merged(keys, folds), replay(data.draw(interleavings(messy))))


# -- the example the property rests on, spelled out ----------------------------

KEYS3 = Keys("m", 3)


def _in(p: int) -> str:
    return _POOL[3][p][0]


def _story() -> dict[str, list[tuple[str, Event]]]:
    """Tasks in each of three partitions: one succeeds on n1, one is retried
    and claimed again by n2, one is moved to another queue, one fails on n1;
    n1 announces itself, n2 only appears in task events."""
    a, b, c, d = _in(0), _in(1), _in(2), _POOL[3][2][1]
    fail = ErrorInfo(type="ValueError", message="bad", retryable=True)
    nodes = _node_events_fixed()
    return {
        KEYS3.events(0): [
            ("1-0", submitted(a, at=M)),
            ("2-0", _replace(claimed("n1", at=M + 1), task_id=a)),
            ("3-0", TaskStarted(task_id=a, node="n1", attempt=1, at=M + 2)),
            ("4-0", TaskSucceeded(task_id=a, node="n1", attempt=1, result=1, at=M + 3)),
        ],
        KEYS3.events(1): [
            ("1-0", submitted(b, at=M + 10)),
            ("2-0", _replace(claimed("n1", at=M + 11), task_id=b)),
            ("3-0", TaskStarted(task_id=b, node="n1", attempt=1, at=M + 12)),
            ("4-0", TaskRetryScheduled(task_id=b, attempt=2, run_at=M + 14, delay=1, at=M + 13)),
            ("5-0", _replace(claimed("n2", attempt=2, deliveries=2, at=M + 15), task_id=b)),
        ],
        KEYS3.events(2): [
            ("1-0", submitted(c, at=M + 20)),
            ("2-0", TaskRerouted(task_id=c, from_queue="gpu", to_queue="cpu", at=M + 21)),
            ("3-0", submitted(d, at=M + 30)),
            ("4-0", _replace(claimed("n1", at=M + 31), task_id=d)),
            ("5-0", TaskStarted(task_id=d, node="n1", attempt=1, at=M + 32)),
            ("6-0", TaskFailed(task_id=d, node="n1", attempt=1, error=fail, at=M + 33)),
        ],
        KEYS3.nodes(): nodes,
    }


def _node_events_fixed() -> list[tuple[str, Event]]:
    caps = Capabilities(cpu_cores=4, memory_mb=1024)
    return [
        ("1-0", NodeStarted(node="n1", capabilities=caps, queues=("gpu",), at=M - 5)),
        ("2-0", NodeHeartbeat(node="n1", load=0.5, free_slots=1, at=M + 4)),
    ]


def test_a_story_over_three_partitions_merges_to_the_whole_fold() -> None:
    per_stream = _story()
    folds = {shard: replay(entries) for shard, entries in _shards(KEYS3, per_stream).items()}
    merged = _merged(KEYS3, folds)
    whole = replay([(s, i, e) for s, entries in per_stream.items() for i, e in entries])
    _same(merged, whole)
    gpu = merged.queues["gpu"]
    counts = (gpu.submitted, gpu.succeeded, gpu.failed, gpu.in_flight, gpu.moved_out)
    assert counts == (4, 1, 1, 1, 1)
    assert merged.queues["cpu"].moved_in == 1 and merged.queues["cpu"].waiting == 1
    n1, n2 = merged.nodes["n1"], merged.nodes["n2"]
    assert (n1.state, n1.processed, n1.failed, n1.running) == (NodeState.ONLINE, 2, 1, ())
    assert (n2.state, n2.running) == (NodeState.UNKNOWN, (_in(1),))
    assert merged.stats.totals == Counts(submitted=4, succeeded=1, failed=1)
    assert set(n1.last_ids) == {KEYS3.events(p) for p in range(3)} | {KEYS3.nodes()}


# -- merge_queue ---------------------------------------------------------------


def test_one_queue_part_is_returned_unchanged() -> None:
    part = replay([(KEYS3.events(0), "1-0", submitted(_in(0)))]).queues["gpu"]
    assert merge_queue([part]) is part


def test_queue_parts_add_and_the_oldest_wait_is_the_least() -> None:
    a = QueueView(
        queue="q",
        submitted=2,
        waiting=1,
        succeeded=1,
        waiting_since={"t9": 50.0},
        oldest_waiting_at=50.0,
        last_ids={"p1": "3-0"},
    )
    b = QueueView(
        queue="q",
        submitted=3,
        waiting=2,
        in_flight=1,
        waiting_since={"t1": 70.0, "t5": 40.0},
        oldest_waiting_at=40.0,
        last_ids={"p0": "9-1"},
    )
    c = QueueView(queue="q", last_ids={"p2": "1-0"})  # a part with nothing waiting
    out = merge_queue([a, b, c])
    assert (out.submitted, out.waiting, out.in_flight, out.succeeded) == (5, 3, 1, 1)
    assert out.waiting_since == {"t1": 70.0, "t5": 40.0, "t9": 50.0}
    assert list(out.waiting_since) == ["t1", "t5", "t9"]  # key order, as views keep dicts
    assert out.oldest_waiting_at == 40.0
    assert list(out.last_ids) == ["p0", "p1", "p2"]
    none_waiting = merge_queue([c, _replace(c, last_ids={"p3": "2-0"})])
    assert none_waiting.oldest_waiting_at is None and none_waiting.waiting_since == {}


# -- merge_stats ---------------------------------------------------------------


def test_one_stats_part_is_returned_unchanged() -> None:
    part = replay([(KEYS3.events(0), "1-0", submitted(_in(0)))]).stats
    assert merge_stats([part]) is part


def test_per_minute_window_is_cut_at_the_newest_time_of_all_parts() -> None:
    t = 1_700_000_000.0
    later = t + 2 * 3600  # two hours after the first part's newest time
    first = [
        (KEYS3.events(0), f"{i + 1}-0", submitted(f"a{i}", at=t - i * 1800)) for i in range(48)
    ]
    second = [(KEYS3.events(1), "1-0", submitted("b0", at=later))]
    a, b = replay(first).stats, replay(second).stats
    # The first part keeps 24 h up to its own newest time, which reach
    # further back than 24 h up to the newest time of both.
    assert len(a.per_minute) == 48
    oldest = minute_of(later) - (WINDOW_MINUTES - 1) * 60
    assert sum(m < oldest for m in a.per_minute) == 4
    out = merge_stats([a, b])
    assert out.newest_at == later
    assert sorted(out.per_minute) == sorted(
        m for m in [*a.per_minute, *b.per_minute] if m >= oldest
    )
    assert out.per_minute == replay(first + second).stats.per_minute
    assert out.totals.submitted == 49  # the totals keep what the window dropped
    assert list(out.per_minute) == sorted(out.per_minute)
    assert merge_stats([b, a]) == out


def test_stats_parts_add_totals_rates_and_percentiles() -> None:
    p0 = KEYS3.events(0)
    p1 = KEYS3.events(1)
    a = _in(0)
    b = _in(1)
    fail = ErrorInfo(type="E", message="m", retryable=False)
    left = [
        (p0, "1-0", submitted(a, at=M)),
        (p0, "2-0", _replace(claimed(at=M + 1), task_id=a)),
        (p0, "3-0", TaskStarted(task_id=a, node="n1", attempt=1, at=M + 1)),
        (p0, "4-0", TaskSucceeded(task_id=a, node="n1", attempt=1, result=1, at=M + 2)),
    ]
    right = [
        (p1, "1-0", submitted(b, at=M)),
        (p1, "2-0", _replace(claimed(at=M + 1), task_id=b)),
        (p1, "3-0", TaskStarted(task_id=b, node="n1", attempt=1, at=M + 1)),
        (p1, "4-0", TaskFailed(task_id=b, node="n1", attempt=1, error=fail, at=M + 300)),
    ]
    out = merge_stats([replay(left).stats, replay(right).stats])
    assert out.success_rate == 0.5
    assert out.durations.count == 2
    assert out == replay(left + right).stats


def test_no_stats_parts_merge_to_the_empty_view() -> None:
    assert merge_views(Views(), []) == Views()
    assert merge_views(Views(), [Views(), Views()]) == Views()
    assert canonical(merge_views(Views(), [Views()] * 3)) == canonical(replay([]))


# -- merge_nodes ---------------------------------------------------------------


def test_node_only_in_the_node_shard_is_kept_as_told() -> None:
    told = replay([(KEYS3.nodes(), i, e) for i, e in _node_events_fixed()]).nodes
    out = merge_nodes(told, [{}, {}, {}])
    assert out == told and out["n1"] is told["n1"]
    assert merge_nodes(told, []) == told


def test_node_only_in_task_parts_adds_its_task_sides() -> None:
    x = NodeView(node="n2", running=("t1",), processed=2, failed=1, last_ids={"p0": "4-0"})
    y = NodeView(node="n2", running=("t0", "t7"), processed=1, last_ids={"p2": "9-0"})
    assert merge_nodes({}, [{"n2": x}])["n2"] is x
    out = merge_nodes({}, [{"n2": x}, {}, {"n2": y}])["n2"]
    assert out.state is NodeState.UNKNOWN  # no node event said anything
    assert (out.running, out.processed, out.failed) == (("t0", "t1", "t7"), 3, 1)
    assert list(out.last_ids) == ["p0", "p2"]


def test_node_told_and_in_task_parts_takes_each_side_from_its_source() -> None:
    told = replay([(KEYS3.nodes(), i, e) for i, e in _node_events_fixed()]).nodes["n1"]
    side = NodeView(node="n1", running=("t3",), processed=4, failed=2, last_ids={"p1": "2-0"})
    out = merge_nodes({"n1": told}, [{"n1": side}])["n1"]
    assert out.state is told.state and out.load == told.load and out.queues == ("gpu",)
    assert (out.running, out.processed, out.failed) == (("t3",), 4, 2)
    assert set(out.last_ids) == {KEYS3.nodes(), "p1"}
    assert list(out.last_ids) == sorted(out.last_ids)


@pytest.mark.parametrize("count", _COUNTS)
def test_every_partition_has_task_ids_to_draw(count: int) -> None:
    assert all(len(ids) >= 5 for ids in _POOL[count].values())
