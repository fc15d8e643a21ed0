"""The slots of one worker: which entries it holds, which run, and how many
more it may take.

The worker's loops share this one object instead of each other's state: the
claim and reclaim loops take entries as :attr:`Slots.room` allows and hand
them to :meth:`Slots.dispatch`; the settle queue gives them back with
:meth:`Slots.release`; the lease loop renews what :attr:`Slots.held` lists
and cancels through :meth:`Slots.cancel`; the heartbeat and the control
channel report :attr:`Slots.free`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from eventcore.log.groups import WorkEntry
from workers.running import Running

__all__ = ["Slots"]


class Slots:
    """The entries one worker holds, from claim until settle.

    A worker runs at most :attr:`size` tasks at once (its concurrency), one
    per *slot*. It may also hold up to :attr:`prefetch` entries beyond that,
    waiting for a slot, so a slot never idles for the round trips of the next
    claim (as Celery's prefetch). Every held entry, running, waiting or being
    settled, takes its share of these, and keeps its lease renewed.

    *Free slots* (:attr:`free`) means one thing throughout: the slots no
    held entry takes, ``max(0, size - inflight)``. It is what the heartbeat
    announces and a ping answers. The claim and reclaim loops take up to
    :attr:`room` entries: the free slots plus the prefetch still unused,
    ``size + prefetch - inflight``.

    ``dispatch`` is the worker's: it takes a claimed entry in hand (through
    :meth:`take`) and settles or starts it. ``cancel_grace`` is how long a
    cancelled task has to stop before its child process is killed.
    """

    def __init__(
        self,
        size: int,
        prefetch: int,
        *,
        dispatch: Callable[[WorkEntry], None],
        cancel_grace: float,
    ) -> None:
        self.size = size
        self.prefetch = prefetch
        self.dispatch = dispatch
        self.cancel_grace = cancel_grace
        self.paused = False  # no new entries are taken (the control channel's pause)
        self.draining = False  # no new entries are taken, ever again (stopping)
        # Every entry held, by stream and entry id (ids are unique per stream
        # only: two partitions hand out the same id in the same millisecond),
        # from its claim until its settle is written (or it is left for reclaim).
        self.held: dict[tuple[str, str], WorkEntry] = {}
        self.running: dict[str, Running] = {}  # by task id: in a child process
        self.waiting: dict[str, WorkEntry] = {}  # by task id: prefetched, waiting for a child
        self._room = asyncio.Event()
        self._child_free = asyncio.Event()

    # -- counts ------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        """Entries held: claimed and not yet settled (or left for reclaim)."""
        return len(self.held)

    @property
    def free(self) -> int:
        """Free slots: slots no held entry takes (see the class docstring)."""
        return max(0, self.size - self.inflight)

    @property
    def room(self) -> int:
        """How many more entries the claim and reclaim loops may take: the
        free slots plus the unused prefetch. Zero or less when full."""
        return self.size + self.prefetch - self.inflight

    # -- taking and giving back ------------------------------------------------------

    def take(self, entry: WorkEntry) -> None:
        """Hold a claimed entry: it takes a slot (or prefetch) until released."""
        self.held[entry.stream, entry.id] = entry

    def holds(self, entry: WorkEntry) -> bool:
        """Whether ``entry`` (the same stream and id) is held here."""
        return (entry.stream, entry.id) in self.held

    def release(self, entries: Iterable[WorkEntry]) -> None:
        """Give the slots of settled (or abandoned) entries back."""
        for entry in entries:
            self.held.pop((entry.stream, entry.id), None)
        self._room.set()

    def wake(self) -> None:
        """Let the claim loop look again (a slot came free, resumed, resized)."""
        self._room.set()

    async def wait_for_room(self) -> None:
        """Wait until :meth:`wake` is called next (the claim loop, when full or paused)."""
        self._room.clear()
        await self._room.wait()

    def pause(self) -> None:
        """Take no new entries until :meth:`resume`."""
        self.paused = True

    def resume(self) -> None:
        """Take new entries again."""
        self.paused = False
        self.wake()

    def resize(self, size: int) -> None:
        """Run at most ``size`` tasks at once from now on."""
        self.size = size
        self.wake()

    def drain(self) -> None:
        """Take no new entries, ever; wake whatever waits for room or a child."""
        self.draining = True
        self._room.set()
        self._child_free.set()

    # -- running in a child --------------------------------------------------------------

    async def wait_for_child(self, entry: WorkEntry) -> bool:
        """Wait until fewer than :attr:`size` tasks run; False if draining.
        Meanwhile the entry is listed in :attr:`waiting`."""
        if len(self.running) < self.size:
            return True
        self.waiting[entry.task_id] = entry
        try:
            while len(self.running) >= self.size and not self.draining:
                self._child_free.clear()
                await self._child_free.wait()
        finally:
            self.waiting.pop(entry.task_id, None)
        return not self.draining

    def started(self, run: Running) -> None:
        """Note a task started running in a child process."""
        self.running[run.entry.task_id] = run

    def ended(self, run: Running) -> None:
        """Note a task's child process is done with it: the next may start."""
        self.running.pop(run.entry.task_id, None)
        self._child_free.set()

    def cancel(self, task_id: str) -> bool:
        """Ask a running task to stop; kill it if it has not after the grace
        period. False if it does not run here."""
        run = self.running.get(task_id)
        if run is None:
            return False
        if not run.cancel_requested:
            run.cancel_requested = True
            run.slot.cancel.set()

            def hard_cancel() -> None:
                if self.running.get(task_id) is run:
                    run.cancel_killed = True
                    run.slot.kill()

            asyncio.get_running_loop().call_later(self.cancel_grace, hard_cancel)
        return True
