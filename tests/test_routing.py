"""Routing a task to a queue (pure: no Redis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventcore.config import DEFAULT_QUEUES, QueueConfig
from eventcore.errors import EventcoreError
from eventcore.routing import RoutingError, accepts, demand, route
from tests.partitions import PARTITIONS

INPAINT = QueueConfig(name="inpaint", kinds=("inpaint",), models=("lama", "mat"))
UPSCALE = QueueConfig(name="upscale", kinds=("upscale",))
ANY = QueueConfig(name="any")
QUEUES = (INPAINT, UPSCALE, ANY)
ALL = {q.name for q in (*DEFAULT_QUEUES, *QUEUES)}  # every queue served


def test_explicit_queue_wins_over_backlog() -> None:
    backlog = {"cpu-light": 0, "gpu-high": 1_000}
    assert route("inpaint", None, "gpu-high", DEFAULT_QUEUES, backlog, served=ALL) == "gpu-high"


def test_explicit_queue_ignores_the_model_list() -> None:
    # `models` is what the queue's workers must have, not all they have.
    assert route("inpaint", "sd", "inpaint", QUEUES, {}, served=ALL) == "inpaint"


def test_unknown_explicit_queue_lists_the_declared_ones() -> None:
    with pytest.raises(RoutingError) as e:
        route("inpaint", None, "gpu-huge", DEFAULT_QUEUES, {}, served=ALL)
    message = str(e.value)
    assert "'gpu-huge'" in message
    assert "gpu-high, gpu-low, cpu-heavy, cpu-light" in message


def test_explicit_queue_refuses_a_kind_it_does_not_take() -> None:
    with pytest.raises(RoutingError, match="'upscale' does not accept kind 'inpaint'"):
        route("inpaint", None, "upscale", QUEUES, {}, served=ALL)


def test_least_backlog_wins() -> None:
    backlog = {"gpu-high": 7, "gpu-low": 3, "cpu-heavy": 5, "cpu-light": 4}
    assert route("inpaint", None, None, DEFAULT_QUEUES, backlog, served=ALL) == "gpu-low"


def test_ties_go_to_the_queue_declared_first() -> None:
    assert route("inpaint", None, None, DEFAULT_QUEUES, {}, served=ALL) == "gpu-high"
    backlog = {"gpu-high": 2, "gpu-low": 1, "cpu-heavy": 1, "cpu-light": 1}
    assert route("inpaint", None, None, DEFAULT_QUEUES, backlog, served=ALL) == "gpu-low"


def test_default_queues_send_other_kinds_to_cpu_light() -> None:
    backlog = {"gpu-high": 0, "gpu-low": 0, "cpu-heavy": 0, "cpu-light": 50}
    assert route("resize", None, None, DEFAULT_QUEUES, backlog, served=ALL) == "cpu-light"


def test_a_queue_missing_from_the_backlog_counts_as_empty() -> None:
    backlog = {"gpu-high": 1, "gpu-low": 1, "cpu-heavy": 1}
    assert route("resize", None, None, DEFAULT_QUEUES, backlog, served=ALL) == "cpu-light"


def test_kinds_filter_queues() -> None:
    busy_any = {"any": 100, "inpaint": 5, "upscale": 0}
    assert route("inpaint", None, None, QUEUES, busy_any, served=ALL) == "inpaint"
    assert route("upscale", None, None, QUEUES, busy_any, served=ALL) == "upscale"
    # A kind no queue lists falls to the catch-all, however busy.
    assert route("resize", None, None, QUEUES, busy_any, served=ALL) == "any"


def test_models_filter_queues() -> None:
    backlog = {"any": 100}
    assert route("inpaint", "lama", None, QUEUES, backlog, served=ALL) == "inpaint"
    # The inpaint queue does not list "sd", so only the catch-all remains.
    assert route("inpaint", "sd", None, QUEUES, backlog, served=ALL) == "any"


def test_no_eligible_queue_names_the_kind_and_model() -> None:
    strict = (INPAINT, UPSCALE)
    with pytest.raises(RoutingError) as e:
        route("inpaint", "sd", None, strict, {}, served=ALL)
    message = str(e.value)
    assert "kind 'inpaint' with model 'sd'" in message
    assert "inpaint (kinds: inpaint; models: lama, mat)" in message
    assert isinstance(e.value, EventcoreError)
    with pytest.raises(RoutingError, match="no queue accepts kind 'resize'; declared: none"):
        route("resize", None, None, (), {}, served=ALL)


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
served_sets = st.frozensets(st.sampled_from("abcdefgh"))


@given(queue_sets(), backlogs, st.sampled_from(KINDS), st.none() | st.sampled_from(MODELS))
def test_chosen_queue_is_eligible_with_least_backlog(
    queues: tuple[QueueConfig, ...], backlog: dict[str, int], kind: str, model: str | None
) -> None:
    served = {q.name for q in queues}
    eligible = [q for q in queues if accepts(q, kind, model)]
    if not eligible:
        with pytest.raises(RoutingError):
            route(kind, model, None, queues, backlog, served=served)
        return
    chosen = route(kind, model, None, queues, backlog, served=served)
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
        assert route(kind, None, name, queues, backlog, served=ALL) == name
    else:
        with pytest.raises(RoutingError):
            route(kind, None, name, queues, backlog, served=ALL)


async def test_backlog_counts_waiting_and_running_entries(r, namespace) -> None:
    from eventcore.events import TaskSpec
    from eventcore.keys import Keys
    from eventcore.log import EventLog, Submission, groups
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
    assert route("inpaint", None, None, DEFAULT_QUEUES, backlog, served=ALL) == "gpu-high"
    served = {"cpu-light"}
    assert route("inpaint", None, None, DEFAULT_QUEUES, backlog, served=served) == "cpu-light"
    # a served queue that does not take the kind changes nothing: the least
    # demanding eligible queue is chosen, as if no node were live
    assert route("inpaint", None, None, QUEUES, {}, served={"upscale"}) == "any"


# -- liveness: which queues live nodes read ------------------------------------------


def test_with_no_live_node_the_least_demanding_fitting_queue_wins() -> None:
    """Regression: with no node live yet (the first request after `eventcore
    up`), an inpaint went to gpu-high, the queue declared first, which a
    machine without a GPU never reads, and the request hung."""
    assert route("inpaint", None, None, DEFAULT_QUEUES, {}, served=()) == "cpu-light"
    assert route("upscale", None, None, DEFAULT_QUEUES, {}, served=()) == "cpu-light"
    # Backlog does not outweigh demand: cpu-light is still the one most machines read.
    busy = {"cpu-light": 100}
    assert route("inpaint", None, None, DEFAULT_QUEUES, busy, served=()) == "cpu-light"


def test_with_a_live_cpu_only_node_a_routed_inpaint_never_goes_to_a_gpu_queue() -> None:
    idle_gpus = {"gpu-high": 0, "gpu-low": 0, "cpu-heavy": 9, "cpu-light": 9}
    for served in ({"cpu-light"}, {"cpu-heavy"}, {"cpu-heavy", "cpu-light"}):
        chosen = route("inpaint", None, None, DEFAULT_QUEUES, idle_gpus, served=served)
        assert chosen in served


IMAGE = ("inpaint",)
GPU_BIG = QueueConfig(name="gpu-big", gpu=True, min_gpu_memory_mb=16_000, kinds=IMAGE)
GPU_SMALL = QueueConfig(name="gpu-small", min_gpu_memory_mb=2_000, kinds=IMAGE)
CPU_BIG = QueueConfig(name="cpu-big", min_cores=16, kinds=IMAGE)
CPU_MEM = QueueConfig(name="cpu-mem", min_cores=4, min_memory_mb=64_000, kinds=IMAGE)
CPU_4 = QueueConfig(name="cpu-4", min_cores=4, kinds=IMAGE)
MODELLED = QueueConfig(name="modelled", models=("lama",), kinds=IMAGE)
PLAIN = QueueConfig(name="plain", kinds=IMAGE)


@pytest.mark.parametrize(
    ("queues", "chosen"),
    [
        # no GPU before GPU, whatever the order of declaration
        ((GPU_BIG, GPU_SMALL, CPU_BIG), "cpu-big"),
        # a GPU memory minimum is a GPU requirement even with gpu = false
        ((GPU_SMALL, CPU_MEM), "cpu-mem"),
        # among GPU queues, less GPU memory first
        ((GPU_BIG, GPU_SMALL), "gpu-small"),
        # then fewer cores, then less memory
        ((CPU_BIG, CPU_MEM, CPU_4), "cpu-4"),
        ((CPU_MEM, CPU_4), "cpu-4"),
        # then fewer models
        ((MODELLED, PLAIN), "plain"),
        ((PLAIN, CPU_4, MODELLED), "plain"),
    ],
)
def test_least_demanding_rule_table(queues: tuple[QueueConfig, ...], chosen: str) -> None:
    assert route("inpaint", None, None, queues, {}, served=()) == chosen
    # Queues no live node reads are judged the same way.
    assert route("inpaint", None, None, queues, {}, served={"elsewhere"}) == chosen


def test_equally_demanding_unserved_queues_tie_on_backlog_then_order() -> None:
    a, b = QueueConfig(name="a"), QueueConfig(name="b")
    assert route("k", None, None, (a, b), {}, served=()) == "a"
    assert route("k", None, None, (a, b), {"a": 2, "b": 1}, served=()) == "b"


def test_a_pinned_queue_is_taken_even_when_nobody_serves_it() -> None:
    assert route("inpaint", None, "gpu-high", DEFAULT_QUEUES, {}, served=()) == "gpu-high"


@given(
    queue_sets(),
    backlogs,
    served_sets,
    st.sampled_from(KINDS),
    st.none() | st.sampled_from(MODELS),
)
def test_a_served_eligible_queue_is_always_preferred(
    queues: tuple[QueueConfig, ...],
    backlog: dict[str, int],
    served: frozenset[str],
    kind: str,
    model: str | None,
) -> None:
    eligible = [q for q in queues if accepts(q, kind, model)]
    if not eligible:
        return
    chosen = route(kind, model, None, queues, backlog, served=served)
    live = [q for q in eligible if q.name in served]
    if live:
        # never a queue nobody reads while a served one can take the task
        assert chosen in served
        least = min(backlog.get(q.name, 0) for q in live)
        assert chosen == next(q.name for q in live if backlog.get(q.name, 0) == least)
    else:
        by_demand = {q.name: demand(q) for q in eligible}
        assert by_demand[chosen] == min(by_demand.values())


@given(
    st.lists(
        st.builds(
            QueueConfig,
            name=st.sampled_from("abcdefgh"),
            gpu=st.booleans(),
            min_gpu_memory_mb=st.sampled_from([0, 2048, 8192]),
            min_cores=st.sampled_from([0, 4, 16]),
            min_memory_mb=st.sampled_from([0, 4096]),
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda q: q.name,
    )
)
def test_the_least_demanding_queue_needs_no_more_than_any_other(
    queues: list[QueueConfig],
) -> None:
    """Whatever a chosen queue requires, every other eligible queue requires
    at least as much on the first requirement where they differ."""
    chosen = next(q for q in queues if q.name == route("k", None, None, queues, {}, served=()))
    for q in queues:
        assert demand(chosen) <= demand(q)
        if demand(q) == demand(chosen):  # equals: the first declared
            assert queues.index(chosen) <= queues.index(q)


# -- the submit path, as `eventcore up` meets it -------------------------------------------


async def test_web_submit_before_any_worker_announced_goes_to_a_queue_any_machine_reads(
    redis_url, log, namespace
) -> None:
    """Regression (issue: the first request after start-up could hang): a
    routed inpaint sent before the worker's NodeStarted went to gpu-high,
    which a machine without a GPU never reads."""
    import msgspec

    from eventcore.config import Settings
    from eventcore.events import Capabilities, NodeStarted, TaskSubmitted
    from eventcore.nodes import append_node_event
    from tests.webkit import j, web_client

    settings = Settings(namespace=namespace, partitions=PARTITIONS)  # the default queues
    async with web_client(redis_url, settings) as c:
        routed = await c.post("/v1/tasks", json={"kind": "inpaint"})
        assert routed.status_code == 202, routed.text
        assert j(routed)["queue"] == "cpu-light"
        pinned = await c.post("/v1/tasks", json={"kind": "inpaint", "queue": "gpu-high"})
        assert j(pinned)["queue"] == "gpu-high"
        # A CPU-only node that reads cpu-heavy and cpu-light: never a gpu queue.
        caps = Capabilities(cpu_cores=8, memory_mb=16_000, handlers=("inpaint",))
        started = NodeStarted(
            node="cpu-1", capabilities=caps, queues=("cpu-heavy", "cpu-light"), concurrency=2
        )
        await append_node_event(log, started)
        c.app.state.web.node_facts = None  # forget the cached node facts
        for _ in range(4):
            r = await c.post("/v1/tasks", json={"kind": "inpaint"})
            assert j(r)["queue"] in ("cpu-heavy", "cpu-light"), r.text
    flags = {}
    for tid in (j(routed)["task_id"], j(pinned)["task_id"]):
        [sub] = [e.event for e in await log.history(tid) if isinstance(e.event, TaskSubmitted)]
        flags[sub.spec.queue] = sub.routed
    assert flags == {"cpu-light": True, "gpu-high": False}
    assert (
        msgspec.json.decode(
            b'{"task_id": "t", "spec": {"kind": "k", "queue": "q"}}', type=TaskSubmitted
        ).routed
        is False
    )
