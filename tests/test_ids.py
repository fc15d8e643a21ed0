"""Task ids: time-ordered, unique, and mapped to partitions stably."""

from __future__ import annotations

import time
import uuid

from hypothesis import given
from hypothesis import strategies as st

from eventcore.ids import (
    id_time_ms,
    is_task_id,
    new_task_id,
    partition_of,
    task_id_in_partition,
)


def test_ids_are_uuid7_and_sort_in_creation_order() -> None:
    ids = [new_task_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(uuid.UUID(i).version == 7 and is_task_id(i) for i in ids[:10])


def test_ids_keep_order_when_the_clock_steps_back() -> None:
    a = new_task_id(now_ms=int(time.time() * 1000) + 10_000)
    b = new_task_id(now_ms=int(time.time() * 1000))
    assert b > a


def test_creation_time_is_readable() -> None:
    before = int(time.time() * 1000)
    t = id_time_ms(new_task_id())
    assert before - 1 <= t <= int(time.time() * 1000) + 10_001  # the step-back test may lead


def test_partition_mapping_is_stable_across_processes() -> None:
    # crc32 values are fixed by the algorithm: these must never change, or
    # existing tasks would be looked for in the wrong partition.
    assert partition_of("0190a8a0-0000-7000-8000-000000000001", 8) == 2
    assert partition_of("0190a8a0-0000-7000-8000-000000000002", 8) == 0
    assert partition_of("anything", 1) == 0


@given(st.integers(1, 64), st.data())
def test_task_id_in_partition_lands_there(partitions: int, data: st.DataObject) -> None:
    p = data.draw(st.integers(0, partitions - 1))
    assert partition_of(task_id_in_partition(p, partitions), partitions) == p


def test_is_task_id_rejects_other_text() -> None:
    assert not is_task_id("not-an-id")
    assert not is_task_id(str(uuid.uuid4()))
    assert not is_task_id(new_task_id().upper())
