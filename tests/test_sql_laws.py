"""Laws of the SQL history's fold (:mod:`history.fold`) written through
:class:`~history.store.HistoryStore`, on SQLite and PostgreSQL.

Random logs over several partitions and the node stream (``sharded`` of
tests/test_merge.py), clean ones and messy ones (an event appended twice, a
stale redelivery, an event illegal where it lands, an entry no decoder
reads), are folded batch after batch as the SQL projector does: cut
anywhere, a batch now and then read again from an earlier point (as after a
crash before the commit), and between batches the in-memory state kept,
dropped whole (a restarted projector reads the positions and views back from
the tables) or partly (its cache forgot some tasks). Whatever the cuts, the
tables end as the fold of the whole log says:

- ``tasks``: one row per task, equal to ``task_row`` of the task view
  :func:`projections.replay.replay` folds from the whole log, its ``view``
  column that view;
- ``task_events`` / ``node_events``: exactly one row per decodable entry;
- ``nodes``: the fold of the node stream alone;
- ``tracking``: each stream's last entry and how many entries it applied.

``EVENTCORE_TEST_FUZZ_EXAMPLES`` sets the number of examples (default 40:
every example writes to a real database).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventcore.events import Event
from eventcore.keys import Keys
from history.database import Database, migrate
from history.fold import Item, fold_entries, needed
from history.rows import json_text, node_event_row, task_event_row, view_of_task
from history.schema import node_events, nodes, task_events, tasks, tracking
from history.store import HistoryStore
from projections.replay import replay
from projections.views import NodeView, TaskView
from tests.sqlkit import expected_nodes, expected_tasks, table
from tests.test_fold_laws import interleavings
from tests.test_merge import sharded

PerStream = dict[str, list[tuple[str, Event | None]]]

EXAMPLES = int(os.environ.get("EVENTCORE_TEST_FUZZ_EXAMPLES", "40"))
sql_laws = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # The database is the test's (one per test, emptied for each example).
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def store(sql_db: Database) -> Iterator[HistoryStore]:
    migrate(sql_db)
    yield HistoryStore(sql_db)


# -- logs -----------------------------------------------------------------------------


def _numbered(draw: Any, events: list[Event | None]) -> list[tuple[str, Event | None]]:
    """``events`` with rising stream ids, some in the same millisecond."""
    ms, seq = draw(st.integers(1, 5)), 0
    out = []
    for event in events:
        if draw(st.integers(0, 2)):
            ms, seq = ms + 1, 0
        out.append((f"{ms}-{seq}", event))
        seq += 1
    return out


@st.composite
def messy(draw: Any, per_stream: dict[str, list[tuple[str, Event]]]) -> PerStream:
    """Each stream's events drawn again with repeats and in any order, a few
    entries no decoder reads (``None``) put in, and numbered afresh: ids still
    rise, as Redis gives them, but the events are duplicates, stale and
    illegal where they land."""
    out: PerStream = {}
    for stream, entries in per_stream.items():
        events: list[Event | None] = [e for _, e in entries]
        drawn = draw(st.lists(st.sampled_from(events), max_size=2 * len(events))) if events else []
        for _ in range(draw(st.integers(0, 2))):
            drawn.insert(draw(st.integers(0, len(drawn))), None)
        out[stream] = _numbered(draw, drawn)
    return out


# -- the SQL projector's side, without Redis --------------------------------------------


class Writer:
    """What the SQL projector keeps between batches (positions, cached views)
    and how it writes one: load the views it lacks from the tables, fold,
    write in one transaction (as :meth:`history.follower.SqlProjector.apply`)."""

    def __init__(self, store: HistoryStore, node_stream: str) -> None:
        self.store = store
        self.node_stream = node_stream
        self.restart()

    def restart(self) -> None:
        """A new process: positions from the tracking rows, no views in memory."""
        self.positions = self.store.positions()
        self.tasks: dict[str, TaskView] = {}
        self.nodes: dict[str, NodeView] = {}

    def forget(self, task_ids: list[str], names: list[str]) -> None:
        for task_id in task_ids:
            self.tasks.pop(task_id, None)
        for name in names:
            self.nodes.pop(name, None)

    def apply(self, items: list[Item]) -> None:
        task_ids, names = needed((i for i in items if i[2] is not None), self.node_stream)
        self.tasks.update(self.store.task_views(t for t in task_ids if t not in self.tasks))
        self.nodes.update(self.store.node_views(n for n in names if n not in self.nodes))
        batch = fold_entries(
            items,
            node_stream=self.node_stream,
            positions=self.positions,
            task_views=self.tasks,
            node_views=self.nodes,
        )
        self.store.write(batch)
        for stream, (_, last, _) in batch.moves.items():
            self.positions[stream] = last


def write_in_batches(
    store: HistoryStore, node_stream: str, log: list[Item], data: st.DataObject
) -> None:
    """Fold ``log`` into the tables in batches cut where ``data`` says."""
    store.clear()
    writer = Writer(store, node_stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(log)), max_size=6), label="cuts"))
    start = 0
    for end in [*cuts, len(log)]:
        # Read again from up to ``start`` entries back: the fold skips them.
        back = data.draw(st.one_of(st.just(0), st.integers(0, start)), label="re-read")
        writer.apply(log[start - back : end])
        start = end
        between = data.draw(st.sampled_from(["keep", "restart", "forget"]), label="then")
        if between == "restart":
            writer.restart()
        elif between == "forget":
            writer.forget(
                data.draw(st.lists(st.sampled_from(sorted(writer.tasks) or [""])), label="tasks"),
                data.draw(st.lists(st.sampled_from(sorted(writer.nodes) or [""])), label="nodes"),
            )


# -- what the tables must hold -----------------------------------------------------------


def _by_entry(db: Database, t: sa.Table) -> dict[tuple[str, str], dict[str, Any]]:
    """Every row of an event table by (stream, entry id), ``event`` parsed."""
    with db.begin() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(t))]
    return {(r["stream"], r["entry_id"]): _parsed(r) for r in rows}


def _parsed(row: dict[str, Any]) -> dict[str, Any]:
    event = row["event"]
    return {**row, "event": msgspec.json.decode(event) if isinstance(event, str) else event}


def check_tables(store: HistoryStore, node_stream: str, per_stream: PerStream) -> None:
    db = store.db
    log = [(s, i, e) for s, entries in per_stream.items() for i, e in entries if e is not None]
    whole = replay(log)
    rows = table(db, tasks, "task_id")
    assert rows == expected_tasks(whole)
    for task_id, view in whole.tasks.items():
        # The view the next batch folds onto (NUL-free, see history.rows).
        assert view_of_task(rows[task_id]["view"]) == view_of_task(json_text(view))

    told = replay([entry for entry in log if entry[0] == node_stream])
    assert table(db, nodes, "node") == expected_nodes(told)

    want_tasks = {(s, i): task_event_row(s, i, e) for s, i, e in log if s != node_stream}
    want_nodes = {(s, i): node_event_row(s, i, e) for s, i, e in log if s == node_stream}
    counts = store.counts()
    assert (counts["task_events"], counts["node_events"]) == (len(want_tasks), len(want_nodes))
    assert _by_entry(db, task_events) == {k: _parsed(r) for k, r in want_tasks.items()}
    assert _by_entry(db, node_events) == {k: _parsed(r) for k, r in want_nodes.items()}

    with db.begin() as conn:
        tracked = {r.stream: (r.last_id, r.applied) for r in conn.execute(sa.select(tracking))}
    assert tracked == {
        stream: (entries[-1][0], len(entries)) for stream, entries in per_stream.items() if entries
    }


# -- the laws ------------------------------------------------------------------------------


@sql_laws
@given(case=sharded(), data=st.data())
def test_batches_of_a_log_write_the_fold_of_the_whole_log(
    store: HistoryStore, case: tuple[Keys, dict[str, list[tuple[str, Event]]]], data: st.DataObject
) -> None:
    keys, per_stream = case
    log = data.draw(interleavings(per_stream), label="log")
    write_in_batches(store, keys.nodes(), log, data)
    check_tables(store, keys.nodes(), dict(per_stream))


@sql_laws
@given(case=sharded(), data=st.data())
def test_messy_logs_too(
    store: HistoryStore, case: tuple[Keys, dict[str, list[tuple[str, Event]]]], data: st.DataObject
) -> None:
    keys, clean = case
    per_stream = data.draw(messy(clean), label="messy")
    log = data.draw(interleavings(per_stream), label="log")
    write_in_batches(store, keys.nodes(), log, data)
    check_tables(store, keys.nodes(), per_stream)
