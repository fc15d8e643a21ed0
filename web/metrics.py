"""``GET /metrics`` in the Prometheus text format.

The task, queue, node and duration figures are read from the views at scrape
time (the views are the truth; a counter kept in one web process would see
only its own requests). The web process's own counters (requests, SSE
clients) live in a registry per app.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from eventcore.transitions import TaskStatus
from projections.read import QueueHealth
from projections.stats import bucket_upper, bucket_value
from projections.views import NodeState, NodeView, QueueView, StatsView

__all__ = ["CONTENT_TYPE", "Metrics", "render_views"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Exported bucket bounds (seconds); each internal log-spaced bucket is
# counted under the first bound at or above its upper edge.
# The QueueView counts exported as eventcore_tasks_total{status=...}: the
# submissions and one per terminal status, in this (exported) order.
_QUEUE_COUNTS = (
    "submitted",
    *(
        s.value
        for s in (
            TaskStatus.SUCCEEDED,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.TIMED_OUT,
            TaskStatus.DEAD_LETTERED,
        )
    ),
)
LE = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class Metrics:
    """The web process's own metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "eventcore_http_requests",
            "HTTP requests answered, by route and status code",
            ["route", "code"],
            registry=self.registry,
        )
        self.sse_clients = Gauge(
            "eventcore_sse_clients", "SSE clients connected to this process", registry=self.registry
        )


class _Views(Collector):
    def __init__(
        self,
        queues: dict[str, QueueView],
        nodes: dict[str, NodeView],
        stats: dict[tuple[str, str], StatsView],
        now: float,
        heartbeat_timeout: float,
        health: Mapping[str, QueueHealth],
    ) -> None:
        self.queues, self.nodes, self.stats = queues, nodes, stats
        self.now, self.heartbeat_timeout = now, heartbeat_timeout
        self.health = health

    def collect(self) -> Iterator[Metric]:
        tasks = CounterMetricFamily(
            "eventcore_tasks",
            "Tasks submitted to a queue and how they ended",
            labels=["queue", "status"],
        )
        waiting = GaugeMetricFamily(
            "eventcore_queue_backlog",
            "Tasks waiting in the queue (queued, delayed, retrying)",
            labels=["queue"],
        )
        pending = GaugeMetricFamily(
            "eventcore_queue_in_flight", "Tasks claimed or running", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "eventcore_queue_oldest_waiting_seconds",
            "Age of the oldest waiting task",
            labels=["queue"],
        )
        for name, q in sorted(self.queues.items()):
            for count in _QUEUE_COUNTS:
                tasks.add_metric([name, count], getattr(q, count))
            waiting.add_metric([name], q.waiting)
            pending.add_metric([name], q.in_flight)
            age = 0.0 if q.oldest_waiting_at is None else max(0.0, self.now - q.oldest_waiting_at)
            oldest.add_metric([name], age)
        yield from (tasks, waiting, pending, oldest)
        consumers = GaugeMetricFamily(
            "eventcore_queue_consumers", "Live worker nodes that read the queue", labels=["queue"]
        )
        unserved = GaugeMetricFamily(
            "eventcore_queue_unserved",
            "Tasks waiting in a queue that no live worker node reads (0 when one does)",
            labels=["queue"],
        )
        for name, h in sorted(self.health.items()):
            consumers.add_metric([name], h.consumers)
            unserved.add_metric([name], h.stranded)
        yield from (consumers, unserved)
        online = GaugeMetricFamily("eventcore_nodes", "Worker nodes by state", labels=["state"])
        by_state: dict[str, int] = {}
        for n in self.nodes.values():
            state = n.state
            if state in (NodeState.ONLINE, NodeState.PAUSED, NodeState.DRAINING) and (
                n.last_heartbeat is None or self.now - n.last_heartbeat > self.heartbeat_timeout
            ):
                state = "silent"
            by_state[state] = by_state.get(state, 0) + 1
        for state, count in sorted(by_state.items()):
            online.add_metric([state], count)
        yield online
        hist = HistogramMetricFamily(
            "eventcore_task_duration_seconds",
            "Run time of finished tasks, by queue and kind",
            labels=["queue", "kind"],
        )
        for (queue, kind), s in sorted(self.stats.items()):
            counts = [0] * (len(LE) + 1)
            total = 0.0  # the views keep buckets, not sums: each counts at its middle
            for index, n in s.durations.buckets.items():
                edge = bucket_upper(int(index))
                total += n * bucket_value(int(index))
                slot = next((i for i, le in enumerate(LE) if edge <= le * 1.0001), len(LE))
                counts[slot] += n
            cumulative, running = [], 0
            for le, n in zip((*map(str, LE), "+Inf"), counts):
                running += n
                cumulative.append((le, running))
            hist.add_metric([queue, kind], cumulative, sum_value=total)
        yield hist


def render_views(
    metrics: Metrics,
    queues: dict[str, QueueView],
    nodes: dict[str, NodeView],
    stats: Iterable[tuple[tuple[str, str], StatsView]],
    heartbeat_timeout: float,
    health: Mapping[str, QueueHealth] | None = None,
) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        _Views(queues, nodes, dict(stats), time.time(), heartbeat_timeout, health or {})
    )
    return generate_latest(registry) + generate_latest(metrics.registry)
