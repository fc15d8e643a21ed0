"""Routing a task to a queue (pure: no Redis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventcore.config import DEFAULT_QUEUES, QueueConfig
from eventcore.errors import EventcoreError
from eventcore.routing import RoutingError, accepts, route

INPAINT = QueueConfig(name="inpaint", kinds=("inpaint",), models=("lama", "mat"))
UPSCALE = QueueConfig(name="upscale", kinds=("upscale",))
ANY = QueueConfig(name="any")
QUEUES = (INPAINT, UPSCALE, ANY)


def test_explicit_queue_wins_over_backlog() -> None:
    backlog = {"cpu-light": 0, "gpu-high": 1_000}
    assert route("inpaint", None, "gpu-high", DEFAULT_QUEUES, backlog) == "gpu-high"


def test_explicit_queue_ignores_the_model_list() -> None:
    # `models` is what the queue's workers must have, not all they have.
    assert route("inpaint", "sd", "inpaint", QUEUES, {}) == "inpaint"


def test_unknown_explicit_queue_lists_the_declared_ones() -> None:
    with pytest.raises(RoutingError) as e:
        route("inpaint", None, "gpu-huge", DEFAULT_QUEUES, {})
    message = str(e.value)
    assert "'gpu-huge'" in message
    assert "gpu-high, gpu-low, cpu-heavy, cpu-light" in message


def test_explicit_queue_refuses_a_kind_it_does_not_take() -> None:
    with pytest.raises(RoutingError, match="'upscale' does not accept kind 'inpaint'"):
        route("inpaint", None, "upscale", QUEUES, {})


def test_least_backlog_wins() -> None:
    backlog = {"gpu-high": 7, "gpu-low": 3, "cpu-heavy": 5, "cpu-light": 4}
    assert route("inpaint", None, None, DEFAULT_QUEUES, backlog) == "gpu-low"


def test_ties_go_to_the_queue_declared_first() -> None:
    assert route("inpaint", None, None, DEFAULT_QUEUES, {}) == "gpu-high"
    backlog = {"gpu-high": 2, "gpu-low": 1, "cpu-heavy": 1, "cpu-light": 1}
    assert route("inpaint", None, None, DEFAULT_QUEUES, backlog) == "gpu-low"


def test_default_queues_send_other_kinds_to_cpu_light() -> None:
    backlog = {"gpu-high": 0, "gpu-low": 0, "cpu-heavy": 0, "cpu-light": 50}
    assert route("resize", None, None, DEFAULT_QUEUES, backlog) == "cpu-light"


def test_a_queue_missing_from_the_backlog_counts_as_empty() -> None:
    backlog = {"gpu-high": 1, "gpu-low": 1, "cpu-heavy": 1}
    assert route("resize", None, None, DEFAULT_QUEUES, backlog) == "cpu-light"


def test_kinds_filter_queues() -> None:
    busy_any = {"any": 100, "inpaint": 5, "upscale": 0}
    assert route("inpaint", None, None, QUEUES, busy_any) == "inpaint"
    assert route("upscale", None, None, QUEUES, busy_any) == "upscale"
    # A kind no queue lists falls to the catch-all, however busy.
    assert route("resize", None, None, QUEUES, busy_any) == "any"


def test_models_filter_queues() -> None:
    backlog = {"any": 100}
    assert route("inpaint", "lama", None, QUEUES, backlog) == "inpaint"
    # The inpaint queue does not list "sd", so only the catch-all remains.
    assert route("inpaint", "sd", None, QUEUES, backlog) == "any"


def test_no_eligible_queue_names_the_kind_and_model() -> None:
    strict = (INPAINT, UPSCALE)
    with pytest.raises(RoutingError) as e:
        route("inpaint", "sd", None, strict, {})
    message = str(e.value)
    assert "kind 'inpaint' with model 'sd'" in message
    assert "inpaint (kinds: inpaint; models: lama, mat)" in message
    assert isinstance(e.value, EventcoreError)
    with pytest.raises(RoutingError, match="no queue accepts kind 'resize'; declared: none"):
        route("resize", None, None, (), {})


def test_accepts() -> None:
    assert accepts(ANY, "whatever", "whichever")
    assert accepts(INPAINT, "inpaint")
    assert accepts(INPAINT, "inpaint", "mat")
    assert not accepts(INPAINT, "inpaint", "sd")
    assert not accepts(INPAINT, "upscale")


# -- properties -------------------------------------------------------------------

KINDS = ["inpaint", "upscale", "resize"]
MODELS = ["lama", "mat", "sd"]


def subset(items: list[str]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(items), unique=True, max_size=len(items)).map(tuple)


@st.composite
def queue_sets(draw: st.DrawFn) -> tuple[QueueConfig, ...]:
    names = draw(st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=6))
    return tuple(
        QueueConfig(name=name, kinds=draw(subset(KINDS)), models=draw(subset(MODELS)))
        for name in names
    )


backlogs = st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 5))


@given(queue_sets(), backlogs, st.sampled_from(KINDS), st.none() | st.sampled_from(MODELS))
def test_chosen_queue_is_eligible_with_least_backlog(
    queues: tuple[QueueConfig, ...], backlog: dict[str, int], kind: str, model: str | None
) -> None:
    eligible = [q for q in queues if accepts(q, kind, model)]
    if not eligible:
        with pytest.raises(RoutingError):
            route(kind, model, None, queues, backlog)
        return
    chosen = route(kind, model, None, queues, backlog)
    assert chosen in {q.name for q in eligible}
    least = min(backlog.get(q.name, 0) for q in eligible)
    assert backlog.get(chosen, 0) == least
    # ...and among the least loaded, the one declared first.
    assert chosen == next(q.name for q in eligible if backlog.get(q.name, 0) == least)


@given(queue_sets(), backlogs, st.sampled_from(KINDS), st.sampled_from("abcdefghz"))
def test_explicit_queue_is_taken_or_refused_never_replaced(
    queues: tuple[QueueConfig, ...], backlog: dict[str, int], kind: str, name: str
) -> None:
    declared = {q.name: q for q in queues}
    if name in declared and (not declared[name].kinds or kind in declared[name].kinds):
        assert route(kind, None, name, queues, backlog) == name
    else:
        with pytest.raises(RoutingError):
            route(kind, None, name, queues, backlog)


async def test_backlog_counts_waiting_and_running_entries(r, namespace) -> None:
    from eventcore import groups
    from eventcore.events import TaskSpec
    from eventcore.keys import Keys
    from eventcore.log import EventLog, Submission
    from eventcore.routing import backlog

    log = EventLog(r, Keys(namespace, partitions=2))
    await log.submit_many(
        [Submission(spec=TaskSpec(kind="k", queue="a", priority=p)) for p in ("high", "low")] * 3
    )
    await log.submit(TaskSpec(kind="k", queue="b"))
    taken = await log.submit(TaskSpec(kind="k", queue="b"))
    stream = log.keys.work(log.keys.partition(taken.task_id), "b", "normal")
    await groups.ensure_group(r, stream, "workers")
    await groups.read_group(r, "workers", "c", [stream], count=5)  # running still counts
    assert await backlog(log, ["a", "b", "c"]) == {"a": 6, "b": 2, "c": 0}


def test_queues_live_workers_read_come_first() -> None:
    backlog = {"gpu-high": 0, "gpu-low": 0, "cpu-heavy": 0, "cpu-light": 40}
    assert route("inpaint", None, None, DEFAULT_QUEUES, backlog) == "gpu-high"
    served = {"cpu-light"}
    assert route("inpaint", None, None, DEFAULT_QUEUES, backlog, served=served) == "cpu-light"
    # a served queue that does not take the kind changes nothing
    assert route("inpaint", None, None, QUEUES, {}, served={"upscale"}) == "inpaint"
