"""The worker's slots, without Redis: what "free slots" and "room" count,
and who is woken when they change."""

from __future__ import annotations

import asyncio

from eventcore.log.groups import WorkEntry
from workers.slots import Slots


def entry(n: int) -> WorkEntry:
    return WorkEntry("s", f"{n}-0", f"t{n}", attempt=1, spec=b"")


def slots(size: int = 2, prefetch: int = 1) -> tuple[Slots, list[WorkEntry]]:
    dispatched: list[WorkEntry] = []
    return Slots(size, prefetch, dispatch=dispatched.append, cancel_grace=0.1), dispatched


def test_free_slots_leave_out_the_prefetch_and_room_counts_it() -> None:
    s, _ = slots(size=2, prefetch=1)
    assert (s.inflight, s.free, s.room) == (0, 2, 3)
    for n in range(3):
        s.take(entry(n))
    assert (s.inflight, s.free, s.room) == (3, 0, 0)
    s.release([entry(0)])
    assert (s.inflight, s.free, s.room) == (2, 0, 1)
    s.release([entry(1), entry(2), entry(1)])  # released twice: counted once
    assert (s.inflight, s.free, s.room) == (0, 2, 3)


def test_resize_below_what_is_held_leaves_no_room() -> None:
    s, _ = slots(size=4, prefetch=1)
    for n in range(4):
        s.take(entry(n))
    s.resize(1)
    assert (s.size, s.free) == (1, 0) and s.room <= 0


def test_dispatch_is_the_callback_handed_in() -> None:
    s, dispatched = slots()
    e = entry(7)
    s.dispatch(e)
    assert dispatched == [e]


async def test_release_resume_and_resize_wake_the_claim_loop() -> None:
    s, _ = slots()
    for wake in (lambda: s.release([]), s.resume, lambda: s.resize(3), s.drain):
        waiter = asyncio.create_task(s.wait_for_room())
        await asyncio.sleep(0)  # let it start waiting
        assert not waiter.done()
        wake()
        await asyncio.wait_for(waiter, 1)


async def test_drain_ends_the_wait_for_a_child() -> None:
    s, _ = slots(size=0)  # no child free: every run waits
    waiter = asyncio.create_task(s.wait_for_child(entry(1)))
    await asyncio.sleep(0)
    assert list(s.waiting) == ["t1"] and not waiter.done()
    s.drain()
    assert await asyncio.wait_for(waiter, 1) is False
    assert s.waiting == {}
