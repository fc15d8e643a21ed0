"""``eventcore sql``: the SQL projector, following the log into the tables.

It reads every partition's task log and the node stream with plain
``XREAD`` from the positions in the ``tracking`` table (the database, not
Redis, says how far it got), folds each batch (:mod:`history.fold`) and
writes it in one transaction (:mod:`history.store`). After each commit it
moves its consumer group ``sql`` on every stream to the same position: the
group reads nothing, but ``events trim`` never trims below a group's
position, so the log keeps every entry the SQL store has not written yet.

Task views of recent tasks are kept in memory (up to ``cache`` of them, the
least recently touched dropped first) and read back from the ``tasks`` rows
otherwise. Anything uncertain empties that cache and reads the positions
again: a failed transaction, a lost race with another writer.

The database going away (PostgreSQL restarting, a network cut) is waited
out: the batch is tried again, every second at first, then up to every 15 s,
logged once per outage, with Redis and every other role unaffected; so is
a database that does not answer yet when it starts (:meth:`SqlProjector.start`).
A URL, a permission or a schema that cannot work stops it with one line.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventcore.codec import text
from eventcore.errors import DecodeError
from eventcore.keys import SQL_GROUP
from eventcore.log import EventLog, spread
from eventcore.log.groups import ensure_group
from history.database import Database, SqlUnavailable, migrate
from history.fold import Item, fold_entries, needed
from history.store import Batch, HistoryStore, TrackingConflict
from projections.points import log_streams
from projections.views import NodeView, TaskView

__all__ = ["GROUP", "SqlProjector"]

logger = logging.getLogger("eventcore.sql")

GROUP = SQL_GROUP
START = "0-0"
RETRY_FIRST = 1.0
RETRY_CAP = 15.0


class SqlProjector:
    """Follows the log into one database. ``await step()`` applies one batch;
    ``await run(stop)`` loops until ``stop`` is set."""

    def __init__(
        self,
        log: EventLog,
        db: Database,
        *,
        batch: int = 5_000,
        cache: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.db = db
        self.store = HistoryStore(db)
        self.batch = batch
        self.cache_size = cache
        self.clock = clock
        self.streams = log_streams(log.keys)
        self.node_stream = log.keys.nodes()
        self.positions: dict[str, str] = {}
        self._tracked: set[str] = set()
        self._tasks: OrderedDict[str, TaskView] = OrderedDict()
        self._nodes: dict[str, NodeView] = {}
        self._codecs = {s: log.codec_of(s) for s in self.streams}
        self._published: dict[str, str] = {}
        self.applied = 0
        self.skipped = 0
        self._outage = _Outage(clock)
        self._ready = False

    async def setup(self) -> None:
        """Bring the schema up to date and read the positions."""
        await asyncio.to_thread(migrate, self.db)
        await self.reload()
        self._ready = True

    @property
    def tracked(self) -> set[str]:
        """The streams the database has a tracking row for."""
        return self._tracked

    async def reload(self) -> None:
        """Read the positions from the tracking rows; forget cached views."""
        tracked = await asyncio.to_thread(self.store.positions)
        self._tracked = set(tracked)
        self.positions = {s: tracked.get(s, START) for s in self.streams}
        self._tasks.clear()
        self._nodes.clear()

    # -- one batch ------------------------------------------------------------------

    async def read(self, block_ms: int | None) -> list[Item]:
        """The next entries after the positions (each stream in id order);
        an entry no decoder reads comes as ``None`` (the Redis projector
        parks it; here it is skipped and counted)."""
        reply = await spread.xread(self.log.redis, self.positions, count=self.batch, block=block_ms)
        items: list[Item] = []
        for stream_b, raw in reply:
            stream = text(stream_b)
            for eid, fields in raw:
                entry_id = text(eid)
                try:
                    event = self._codecs[stream].decode_fields(stream, entry_id, fields).event
                except DecodeError as exc:
                    self.skipped += 1
                    logger.error("sql: skipped %s", exc)
                    event = None
                items.append((stream, entry_id, event))
        return items

    async def step(self, block_ms: int | None = None) -> int:
        """Read, fold and write one batch; the number of entries read."""
        if not self._ready:
            await self.setup()
        items = await self.read(block_ms)
        if not items:
            return 0
        await self.apply(items)
        return len(items)

    async def apply(self, items: list[Item]) -> None:
        """Fold ``items`` onto the views and write them in one transaction."""
        task_ids, names = needed((i for i in items if i[2] is not None), self.node_stream)
        await self._load(task_ids, names)
        tasks = {t: self._tasks[t] for t in task_ids if t in self._tasks}
        nodes = {n: self._nodes[n] for n in names if n in self._nodes}
        positions = {s: p for s, p in self.positions.items() if s in self._tracked}
        batch = fold_entries(
            items,
            node_stream=self.node_stream,
            positions=positions,
            task_views=tasks,
            node_views=nodes,
        )
        try:
            await asyncio.to_thread(self.store.write, batch)
        except BaseException:
            self._tasks.clear()
            self._nodes.clear()
            raise
        self._commit(batch, tasks, nodes)

    async def _load(self, task_ids: set[str], names: set[str]) -> None:
        missing = [t for t in task_ids if t not in self._tasks]
        if missing:
            self._tasks.update(await asyncio.to_thread(self.store.task_views, missing))
        lost = [n for n in names if n not in self._nodes]
        if lost:
            self._nodes.update(await asyncio.to_thread(self.store.node_views, lost))

    def _commit(self, batch: Batch, tasks: dict[str, TaskView], nodes: dict[str, NodeView]) -> None:
        for stream, (_, last, n) in batch.moves.items():
            self.positions[stream] = last
            self._tracked.add(stream)
            self.applied += n
        cache = self._tasks
        for task_id, view in tasks.items():
            cache[task_id] = view
            cache.move_to_end(task_id)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)
        self._nodes.update(nodes)

    async def publish(self) -> None:
        """Move the ``sql`` group of each stream to the position written, so
        trimming keeps what the SQL store has not read."""
        moved = {s: p for s, p in self.positions.items() if self._published.get(s) != p}
        for stream, position in moved.items():
            if await ensure_group(self.log.redis, stream, GROUP, position):
                self._published[stream] = position
                continue
            await self.log.redis.xgroup_setid(stream, GROUP, position)
            self._published[stream] = position

    # -- the loop -------------------------------------------------------------------

    async def start(
        self, stop: asyncio.Event, prepare: Callable[[], Awaitable[None]] | None = None
    ) -> bool:
        """Set up (or run ``prepare``, which does) once the database answers,
        waiting for it as :meth:`run` does; False if ``stop`` came first."""
        while not stop.is_set():
            try:
                await (prepare() if prepare is not None else self.setup())
            except SqlUnavailable as exc:
                self._ready = False
                await _wait(stop, self._outage.down(exc))
                continue
            self._outage.up()
            return True
        return False

    async def run(self, stop: asyncio.Event, block_ms: int = 1000) -> None:
        """Apply batches until ``stop`` is set, waiting out outages of the
        database and of Redis (see the module docstring)."""
        while not stop.is_set():
            try:
                await self.step(block_ms)
                await self.publish()
            except SqlUnavailable as exc:
                self._ready = False
                await _wait(stop, self._outage.down(exc))
                continue
            except TrackingConflict as exc:
                # The next step reads the positions again (inside the loop, so
                # the database going away then is waited out like any outage),
                # after a short random pause so two writers fall out of step.
                logger.warning("sql: %s; reading the positions again", exc)
                self._ready = False
                await _wait(stop, random.uniform(0.0, 0.25))
                continue
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("sql: Redis: %s; retrying in 1s", exc)
                await _wait(stop, RETRY_FIRST)
                continue
            except ResponseError as exc:
                logger.warning("sql: Redis: %s; retrying in 1s", exc)
                await _wait(stop, RETRY_FIRST)
                continue
            self._outage.up()

    @property
    def outages(self) -> int:
        """How many times the database stopped answering."""
        return self._outage.count


class _Outage:
    """The database not answering, as the SQL projector waits it out: logged
    once when it begins and once when it ends, tried again every second at
    first, then less and less often, up to every ``RETRY_CAP`` seconds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.since: float | None = None
        self.delay = RETRY_FIRST
        self.count = 0

    def down(self, exc: SqlUnavailable) -> float:
        """Note a failed try; the seconds to wait before the next."""
        if self.since is None:
            self.since = self.clock()
            self.count += 1
            logger.warning("sql: %s; waiting for it", exc)
        delay, self.delay = self.delay, min(RETRY_CAP, self.delay * 2)
        return delay

    def up(self) -> None:
        """Note a try that worked."""
        if self.since is not None:
            logger.warning("sql: the database answers again after %.1fs", self.clock() - self.since)
            self.since = None
        self.delay = RETRY_FIRST


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
