"""``replay`` (one draft per view for a whole batch) against ``replay_each``
(the public folds, one call per entry and view): the same views, byte for
byte, on legal logs, on logs full of duplicates, stale redeliveries and
illegal events, and from any start."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eventcore.events import TaskClaimed, TaskProgress, TaskStarted, TaskSucceeded
from projections.folds import fold_queue
from projections.replay import Views, replay, replay_each
from tests.test_fold_laws import Log, _encoded, laws, logs
from tests.test_folds import M, claimed, submitted


def _same(a: Views, b: Views) -> None:
    assert a == b
    assert _encoded(a) == _encoded(b)  # dicts in the same (key) order too


@laws
@given(logs(), st.data())
def test_batch_equals_per_entry_folds(log: Log, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(log)))
    start = replay_each(log[:k])
    _same(replay(log[k:], start), replay_each(log[k:], start))


@laws
@given(logs(), st.data())
def test_batch_equals_per_entry_folds_on_a_messy_log(log: Log, data: st.DataObject) -> None:
    """Entries drawn from a log with repeats, in any order: duplicates, entries
    older than ones already applied, events illegal where they land (a claim
    before the submission, an end after the end)."""
    messy = data.draw(st.lists(st.sampled_from(log), max_size=2 * len(log))) if log else []
    k = data.draw(st.integers(0, len(messy)))
    _same(replay(messy), replay_each(messy))
    start = replay_each(messy[:k])
    _same(replay(messy[k:], start), replay_each(messy[k:], start))


@laws
@given(logs(), st.data())
def test_batches_equal_one_fold(log: Log, data: st.DataObject) -> None:
    """A projector folds batch after batch, each starting from the last one's views."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(log)), max_size=4)))
    views = Views()
    for a, b in zip([0, *cuts], [*cuts, len(log)]):
        views = replay(log[a:b], views)
    _same(views, replay_each(log))


def test_oldest_waiting_is_found_again_when_the_oldest_leaves() -> None:
    """The queue keeps ``oldest_waiting_at`` as a running minimum; when the
    task that held it is claimed, the next oldest waiting task takes over."""
    log = [
        ("p0", "1-0", submitted("t1", at=M)),
        ("p0", "2-0", submitted("t3", at=M + 2)),
        ("p0", "3-0", submitted("t2", at=M + 1)),  # an id out of order in waiting_since
        ("p0", "4-0", claimed()),
    ]
    for fold in (replay, replay_each):
        queue = fold(log).queues["gpu"]
        assert queue.oldest_waiting_at == M + 1
        assert list(queue.waiting_since) == ["t2", "t3"]
    one = replay(log[:3]).queues["gpu"]
    assert fold_queue(one, "p0", "4-0", claimed(), replay(log[:3]).tasks["t1"]) == queue


def test_a_batch_writes_what_the_last_entry_left() -> None:
    """Many events of one task in a batch: one view, as the per-entry folds leave it."""
    log = [
        ("p0", "1-0", submitted()),
        ("p0", "2-0", claimed()),
        ("p0", "3-0", TaskStarted(task_id="t1", node="n1", attempt=1, at=M + 2)),
        *(
            ("p0", f"{4 + i}-0", TaskProgress(task_id="t1", attempt=1, progress=i / 10, at=M + 3))
            for i in range(5)
        ),
        ("p0", "9-0", TaskSucceeded(task_id="t1", node="n1", attempt=1, at=M + 4)),
        ("p0", "9-0", TaskClaimed(task_id="t1", node="n2", attempt=2, deliveries=2, entry_id="x")),
    ]
    views = replay(log)
    _same(views, replay_each(log))
    assert views.nodes["n1"].running == () and views.nodes["n1"].processed == 1
    assert views.stats.durations.count == 1 and views.stats.p50 is not None
