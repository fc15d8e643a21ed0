"""Many projector processes sharing the view shards.

Every ``eventcore project`` process runs a :class:`ProjectorPool`. Each
registers itself in ``keys.projectors()`` (name -> expiry, renewed every
third of the lease time), counts the live ones, and holds its fair share of
the partitions' shards: ``ceil(partitions / live projectors)``; the node
shard, light beside them (heartbeats and node events only), goes to whoever
finds it free. It takes free shards with their lease
(:class:`~projections.leases.ShardLease`) up to that share, runs a
:class:`~projections.runner.Projector` for each shard it holds, renews their
leases, and gives shards back (after the batch in hand, releasing the lease
at once) when more projectors join. It looks twice a second (or every third
of the lease time, if shorter), so a projector that joins gets its share
within about a second. A shard whose holder dies is free once its lease lapses, and
the next look of any projector with room takes it over, adopting what the
dead one left pending; a holder that was only paused writes nothing when it
wakes (the write checks the lease) and lets the shard go.

So each shard is folded by exactly one projector at a time, and adding a
process adds folding capacity (up to one process per shard).

Every ``retention.sweep_every`` seconds each holder also takes the retired
finished tasks out of its shards, and the node shard's holder takes the
scheduled snapshot and trim when it is due (:mod:`projections.retention`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import zlib
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventcore.codec import text
from eventcore.errors import EventcoreError
from eventcore.keys import NODE_SHARD
from eventcore.log import EventLog
from projections.leases import DEFAULT_LEASE_MS, ShardLease
from projections.retention import Retention, expire_views, retire_log
from projections.runner import Projector
from projections.scripts import ViewScripts
from projections.store import LeaseLost, ShardStore, ViewStore, current_views

__all__ = ["ProjectorPool", "fair_share", "lease_holders"]

logger = logging.getLogger(__name__)


def fair_share(shards: int, projectors: int) -> int:
    """How many of ``shards`` partitions' shards one of ``projectors`` live
    projectors holds at most."""
    return math.ceil(shards / max(1, projectors))


class _Held:
    """A shard this process holds: its lease and the task folding it.
    ``leaving``: asked to stop (given back, or its lease lost); the lease is
    released once the task has ended, so no batch is written after."""

    def __init__(self, lease: ShardLease, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.lease = lease
        self.task = task
        self.stop = stop
        self.leaving = False

    def leave(self) -> None:
        self.leaving = True
        self.stop.set()


class ProjectorPool:
    """This process's part of the projectors: see the module's notes.

    ``views``: the view namespace to fold (None: the one in use, following
    rebuilds). ``on_take`` is awaited with a shard's store before its
    projector starts (the CLI seeds empty views from a snapshot there)."""

    def __init__(
        self,
        log: EventLog,
        *,
        views: str | None = None,
        name: str | None = None,
        batch: int = 1000,
        lease_ms: int = DEFAULT_LEASE_MS,
        block_ms: int = 1000,
        on_take: object = None,
        retention: Retention | None = None,
        clock: Any = time.time,
    ) -> None:
        self.log = log
        self.views = views
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.lease_ms = lease_ms
        self.block_ms = block_ms
        self.on_take = on_take
        self.retention = retention or Retention()
        self.clock = clock
        self.expired = 0
        self.log_turns = 0
        self.scripts = ViewScripts(log.redis)
        self.held: dict[str, _Held] = {}
        self.shards = log.keys.view_shards()
        # Where this process starts looking for free shards: spread, so that
        # projectors starting together do not all race for the first one.
        start = zlib.crc32(self.name.encode()) % len(self.shards)
        self._order = self.shards[start:] + self.shards[:start]
        self.applied = 0
        self.parked = 0
        self.takeovers = 0

    async def _live_projectors(self) -> int:
        """Register this process (until now + the lease time) and count the
        live ones, forgetting the expired."""
        key = self.log.keys.projectors()
        now = int(time.time() * 1000)
        await self.log.redis.hset(key, self.name, now + self.lease_ms)
        seen = await self.log.redis.hgetall(key)
        gone = [k for k, v in seen.items() if int(v) < now]
        if gone:
            await self.log.redis.hdel(key, *gone)
        return len(seen) - len(gone)

    async def _views_now(self) -> str:
        return self.views if self.views is not None else await current_views(self.log)

    def _start(self, lease: ShardLease) -> _Held:
        stop = asyncio.Event()
        projector = Projector(
            self.log,
            ViewStore(self.log, lease.ns),
            batch=self.batch,
            consumer=self.name,
            follow_pointer=self.views is None,
            lease=lease,
        )

        async def fold() -> None:
            try:
                if self.on_take is not None:
                    await self.on_take(projector.store.shard(lease.shard))  # type: ignore[operator]
                await projector.run(stop, block_ms=self.block_ms)
            finally:
                self.applied += projector.applied
                self.parked += projector.parked
                with contextlib.suppress(RedisError):
                    await lease.release()  # free for another at once, not at the next look

        task = asyncio.create_task(fold(), name=f"projector-shard-{lease.shard}")
        return _Held(lease, task, stop)

    async def _ended(self, shard: str, held: _Held) -> None:
        """A shard's projector ended: give its lease back, say why."""
        self.held.pop(shard)
        exc = held.task.exception() if not held.task.cancelled() else None
        if isinstance(exc, LeaseLost):
            logger.warning("projector %s: shard %s lost: %s", self.name, shard, exc)
        elif exc is not None:
            logger.error("projector %s: shard %s stopped: %r", self.name, shard, exc)
        else:
            logger.info("projector %s: let shard %s go", self.name, shard)
        with contextlib.suppress(RedisError):
            await held.lease.release()

    async def renew(self) -> None:
        """Renew the lease of every shard held (leaving ones too: they may
        still write until their projector has ended); one that lapsed is
        left (its next write would be refused anyway)."""
        for shard, held in list(self.held.items()):
            if not await held.lease.renew() and not held.leaving:
                logger.warning("projector %s: lease on shard %s lapsed", self.name, shard)
                held.leave()

    async def balance(self) -> None:
        """One look: forget shards whose projector ended, give back the
        partitions' shards over the fair share, take free ones up to it, and
        the node shard if it is free."""
        partitions = len(self.shards) - 1
        share = fair_share(partitions, await self._live_projectors())
        for shard, held in list(self.held.items()):
            if held.task.done():
                await self._ended(shard, held)
        staying = [s for s, h in self.held.items() if not h.leaving and s != NODE_SHARD]
        for shard in staying[share:]:
            self.held[shard].leave()

        def room(shard: str) -> bool:
            if shard in self.held:
                return False
            if shard == NODE_SHARD:
                return True
            return sum(1 for s in self.held if s != NODE_SHARD) < share

        wanted = [shard for shard in self._order if room(shard)]
        if not wanted:
            return
        ns = await self._views_now()
        for shard in wanted:
            if not room(shard):
                continue
            lease = ShardLease(
                self.log, shard, ns, holder=self.name, ttl_ms=self.lease_ms, scripts=self.scripts
            )
            if await lease.take():
                logger.info("projector %s: took shard %s of views %r", self.name, shard, ns)
                self.takeovers += 1
                self.held[shard] = self._start(lease)

    async def sweep(self) -> None:
        """One retention pass (:mod:`projections.retention`): take the retired
        tasks out of each partition shard held, and, holding the node shard,
        take this period's snapshot-and-trim turn if no projector has."""
        r = self.retention
        if r.views > 0:
            cutoff = self.clock() - r.views
            for shard, held in list(self.held.items()):
                if shard == NODE_SHARD or held.leaving or held.task.done():
                    continue
                store = ShardStore(self.log, held.lease.ns, shard, scripts=self.scripts)
                try:
                    n = await expire_views(
                        self.log, store, token=held.lease.token, cutoff=cutoff, scripts=self.scripts
                    )
                except LeaseLost:
                    continue  # the renewal notices and lets the shard go
                if n:
                    self.expired += n
                    logger.info(
                        "projector %s: %d finished tasks left shard %s", self.name, n, shard
                    )
        node = self.held.get(NODE_SHARD)
        if r.log <= 0 or r.snapshot_every <= 0 or node is None or node.leaving:
            return
        turn = self.log.keys.log_retention_turn()
        if not await self.log.redis.set(turn, self.name, nx=True, px=int(r.snapshot_every * 1000)):
            return
        self.log_turns += 1
        try:
            done = await retire_log(self.log, retention=r, clock=self.clock)
        except (EventcoreError, ResponseError) as exc:
            logger.warning("projector %s: scheduled snapshot and trim: %s", self.name, exc)
            return
        if done is None:
            return  # nothing in the log is that old yet
        trimmed = sum(s.trimmed for s in done.trim.streams)
        logger.info(
            "projector %s: snapshot %s (%d finished tasks left out), %d log entries trimmed",
            self.name,
            done.snapshot,
            done.retired,
            trimmed,
        )

    async def _every(self, stop: asyncio.Event, step: Any, what: str, seconds: float) -> None:
        """``await step()`` every ``seconds`` until ``stop`` is set; Redis
        being away is logged and tried again."""
        while not stop.is_set():
            try:
                await step()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("projector %s: %s: %s; retrying", self.name, what, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """Renew the leases every third of their time and balance as often,
        until ``stop`` is set; then stop every shard's projector and give the
        leases back."""
        closing = asyncio.Event()  # the renewals go on until every projector has ended
        renewing = asyncio.create_task(
            self._every(closing, self.renew, "renewing", self.lease_ms / 3000),
            name="projector-leases",
        )
        sweeping = asyncio.create_task(
            self._every(stop, self.sweep, "retention", self.retention.sweep_every),
            name="projector-retention",
        )
        try:
            await self._every(stop, self.balance, "balancing", min(0.5, self.lease_ms / 3000))
        finally:
            await sweeping
            for held in self.held.values():
                held.leave()
            await asyncio.gather(*(h.task for h in self.held.values()), return_exceptions=True)
            closing.set()
            await renewing
            for shard, held in list(self.held.items()):
                await self._ended(shard, held)
            with contextlib.suppress(RedisError):
                await self.log.redis.hdel(self.log.keys.projectors(), self.name)

    def holding(self) -> list[str]:
        """The shards held now, in order."""
        return sorted(self.held)


async def lease_holders(log: EventLog, view_ns: str) -> dict[str, str | None]:
    """Who holds each shard of ``view_ns`` now (None: nobody)."""
    async with log.redis.pipeline(transaction=False) as pipe:
        for shard in log.keys.view_shards():
            pipe.get(log.keys.view_lease(shard, view_ns))
        replies = await pipe.execute()
    return {
        shard: None if raw is None else text(raw)
        for shard, raw in zip(log.keys.view_shards(), replies)
    }
