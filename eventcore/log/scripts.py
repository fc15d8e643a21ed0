"""The event log's Lua scripts and the typed wrappers every call goes through.

The scripts are in ``lua/log.lua``, one file split into sections by
``--- script: NAME`` lines; the section ``_shared`` (helper functions) is put
in front of every script. The projections keep their own scripts in
``projections/lua/views.lua``, loaded with :func:`load_library` and the same
``_shared`` section, so the helpers have one source. Scripts are called by SHA
(EVALSHA) and re-sent after a SCRIPT FLUSH or a server restart; redis-py does
that for both direct calls and pipelines.

Each method of :class:`Scripts` knows one script's KEYS and ARGV layout and
decodes its answer; it returns a :class:`Call`, awaited alone or run with
others in one round trip (:meth:`Scripts.run`). The callers:
:mod:`eventcore.log` (submit, append, settle, append_held, request_cancel,
release_due, reroute, node_event), :mod:`eventcore.nodes` (node_event through
the log, mark_lost) and :mod:`eventcore.log.groups` (claim, renew), which the
workers use for those two. Nothing else calls a log script.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Callable, Generator, Sequence
from importlib import resources
from typing import Any, Generic, NamedTuple, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript

from eventcore.codec import text
from eventcore.errors import ScriptArgumentError

__all__ = [
    "SCRIPT_NAMES",
    "Call",
    "Claimed",
    "ClaimedEntry",
    "HeldReply",
    "RerouteReply",
    "Scripts",
    "SettleItem",
    "SettleReply",
    "SubmitItem",
    "SubmitReply",
    "load_library",
    "load_sources",
    "raise_script_errors",
    "shared_helpers",
]

SCRIPT_NAMES = (
    "submit",
    "append",
    "settle",
    "append_held",
    "release_due",
    "request_cancel",
    "renew",
    "claim",
    "node_event",
    "mark_lost",
    "reroute",
)
_MARKER = re.compile(r"^--- script: (\w+)\s*$", re.MULTILINE)
T = TypeVar("T")


def _sections(package: str, path: str) -> dict[str, str]:
    source = resources.files(package).joinpath(path).read_text()
    parts = _MARKER.split(source)
    return {name: body.strip() + "\n" for name, body in zip(parts[1::2], parts[2::2])}


@functools.cache
def shared_helpers() -> str:
    """The ``_shared`` section of ``lua/log.lua``: helpers put in front
    of every script, the log's and the projections'."""
    return _sections("eventcore.log", "lua/log.lua").get("_shared", "")


def load_library(package: str, path: str, names: Sequence[str]) -> dict[str, str]:
    """The scripts of one Lua library file (``path`` inside ``package``), by
    name, each with the shared helpers in front. Raises if one of ``names``
    is missing or the file has a script not named."""
    sources = _sections(package, path)
    sources.pop("_shared", None)
    missing = set(names) - set(sources)
    if missing:
        raise RuntimeError(f"Lua library {package}/{path} lacks scripts: {sorted(missing)}")
    extra = set(sources) - set(names)
    if extra:
        raise RuntimeError(f"Lua library {package}/{path} has unknown scripts: {sorted(extra)}")
    shared = shared_helpers()
    return {name: shared + body for name, body in sources.items()}


@functools.cache
def load_sources() -> dict[str, str]:
    """The source of every log script, by name."""
    return load_library("eventcore.log", "lua/log.lua", SCRIPT_NAMES)


def raise_script_errors(replies: Sequence[Any]) -> None:
    """Raise the first error among pipeline replies: a script's refusal of its
    arguments (its message names eventcore) as :class:`ScriptArgumentError`,
    anything else as it came."""
    for reply in replies:
        if isinstance(reply, Exception):
            if "eventcore" in str(reply):
                raise ScriptArgumentError(str(reply)) from reply
            raise reply


# Scripts loaded on every master of a cluster (see Call.queue). A master that
# joins later, or a replica promoted with an empty script cache, answers
# NOSCRIPT to a pipelined call, raised to the caller like any other error;
# a call awaited alone reloads its script itself.
_LOADED_ON_CLUSTER: weakref.WeakSet[AsyncScript] = weakref.WeakSet()


class Call(Generic[T]):
    """One prepared script call. Await it to run it alone, pass several to
    :meth:`Scripts.run` for one round trip, or :meth:`queue` it on a pipeline
    of your own and :meth:`decode` its reply."""

    __slots__ = ("_args", "_decode", "_keys", "_script", "_translate")

    def __init__(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[Any],
        decode: Callable[[Any], T],
        *,
        translate_errors: bool = True,
    ) -> None:
        self._script = script
        self._keys = list(keys)
        self._args = list(args)
        self._decode = decode
        self._translate = translate_errors

    async def queue(self, pipe: Pipeline | ClusterPipeline) -> None:
        """Add the call to ``pipe``; its reply comes from ``pipe.execute()``."""
        if not isinstance(pipe, ClusterPipeline):
            await self._script(keys=self._keys, args=self._args, client=pipe)
            return
        # redis-py refuses script calls on a cluster pipeline, because it does
        # not load the scripts first as its single-server pipeline does. So the
        # script is loaded on every master once (SCRIPT LOAD goes to all of
        # them) and queued as a plain EVALSHA, which is routed by its keys.
        if self._script not in _LOADED_ON_CLUSTER:
            await self._script.registered_client.script_load(self._script.script)
            _LOADED_ON_CLUSTER.add(self._script)
        pipe.execute_command("EVALSHA", self._script.sha, len(self._keys), *self._keys, *self._args)

    def decode(self, reply: Any) -> T:
        """The typed result of this call's raw reply."""
        return self._decode(reply)

    def __await__(self) -> Generator[Any, None, T]:
        return self._alone().__await__()

    async def _alone(self) -> T:
        try:
            reply = await self._script(keys=self._keys, args=self._args)
        except Exception as exc:
            if self._translate:
                raise_script_errors([exc])
            raise
        return self._decode(reply)


class SubmitItem(NamedTuple):
    """One task of a submit call."""

    task_id: str
    submitted: bytes  # the encoded TaskSubmitted
    work: str  # the work stream key
    idempotency: str | None  # the idempotency key, None when there is none
    run_at_ms: int  # 0: now
    scheduled: bytes  # the encoded TaskScheduled when delayed, else b""
    item_head: bytes  # the delayed item's header when delayed, else b""


class SubmitReply(NamedTuple):
    created: bool
    event_id: str
    task_id: str  # the existing task when an idempotency key named one


class SettleItem(NamedTuple):
    """One held work entry to end (see the settle script)."""

    work: str  # the work stream key
    task_id: str
    entry_id: str
    action: str  # t (terminal) | r (retry) | d (dead letter)
    outcome: str  # the terminal event type, for t and d
    run_at_ms: int  # for r
    extra: str | bytes  # the item head for r, the reason for d
    events: Sequence[bytes]


class SettleReply(NamedTuple):
    ok: bool
    detail: str  # the last event id when ok, else why it was stale


class HeldReply(NamedTuple):
    written: bool
    event_ids: tuple[str, ...]
    not_held: str = ""


class RerouteReply(NamedTuple):
    moved: bool
    event_id: str = ""
    entry_id: str = ""
    why: str = ""


class ClaimedEntry(NamedTuple):
    stream_index: int  # index into the streams given
    id: Any  # the entry id as Redis answered it
    fields: dict[Any, Any]
    cancel: bool  # the task has a pending cancel request


class Claimed(NamedTuple):
    entries: list[ClaimedEntry]
    last_ids: list[str]  # newest id of every stream given ("0-0" if empty)


class Scripts:
    """The log's scripts, registered on one Redis client, as typed calls."""

    __slots__ = ("_scripts", "redis")

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._scripts = {
            name: redis.register_script(source) for name, source in load_sources().items()
        }

    async def run(self, calls: Sequence[Call[T]]) -> list[T]:
        """Run calls in a single pipeline round trip (one alone is sent as is);
        results in the order given."""
        if len(calls) == 1:
            return [await calls[0]]
        async with self.redis.pipeline(transaction=False) as pipe:
            for call in calls:
                await call.queue(pipe)
            replies = await pipe.execute(raise_on_error=False)
        raise_script_errors(replies)
        return [call.decode(reply) for call, reply in zip(calls, replies)]

    def raw(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Call[Any]:
        """A call with KEYS and ARGV given as they are, answered undecoded: for
        checking a script's own refusal of bad arguments."""
        return Call(self._scripts[name], keys, args, lambda reply: reply)

    def submit(
        self,
        *,
        events: str,
        delayed: str,
        delayed_items: str,
        idempotency_ttl_ms: int,
        tasks: Sequence[SubmitItem],
    ) -> Call[list[SubmitReply]]:
        """Append each task's TaskSubmitted with its work entry (or delayed
        item), skipping a task whose idempotency key already names one."""
        keys = [events, delayed, delayed_items]
        args: list[Any] = [str(idempotency_ttl_ms), len(tasks)]
        for t in tasks:
            # The events key stands in (same slot, never written) for a task
            # without an idempotency key.
            keys += [t.work, t.idempotency or events]
            args += [
                t.task_id,
                t.submitted,
                1 if t.idempotency else 0,
                t.run_at_ms,
                t.scheduled,
                t.item_head,
            ]

        def decode(reply: Any) -> list[SubmitReply]:
            return [SubmitReply(bool(c), text(eid), text(tid)) for c, eid, tid in reply]

        return Call(self._scripts["submit"], keys, args, decode)

    def append(self, *, events: str, entries: Sequence[tuple[str, bytes]]) -> Call[list[str]]:
        """Append ``(task_id, encoded event)`` pairs to a task log; the entry ids."""
        args: list[Any] = [len(entries)]
        for task_id, event in entries:
            args += [task_id, event]
        return Call(self._scripts["append"], [events], args, lambda r: [text(x) for x in r])

    def settle(
        self,
        *,
        events: str,
        done: str,
        cancels: str,
        delayed: str,
        delayed_items: str,
        dead_letters: str,
        group: str,
        consumer: str,
        items: Sequence[SettleItem],
    ) -> Call[list[SettleReply]]:
        """End held work entries of one partition (see the settle script)."""
        keys = [events, done, cancels, delayed, delayed_items, dead_letters]
        args: list[Any] = [group, consumer, len(items)]
        for item in items:
            keys.append(item.work)
            args += [
                item.task_id,
                item.entry_id,
                item.action,
                item.outcome,
                item.run_at_ms,
                item.extra,
                len(item.events),
                *item.events,
            ]

        def decode(reply: Any) -> list[SettleReply]:
            return [SettleReply(bool(ok), text(detail)) for ok, detail in reply]

        return Call(self._scripts["settle"], keys, args, decode)

    def append_held(
        self,
        *,
        events: str,
        work: str,
        group: str,
        consumer: str,
        entry_id: str,
        task_id: str,
        encoded: Sequence[bytes],
    ) -> Call[HeldReply]:
        """Append a running task's events while ``consumer`` holds its entry."""

        def decode(reply: Any) -> HeldReply:
            ok, *rest = reply
            if not ok:
                return HeldReply(False, (), text(rest[0]))
            return HeldReply(True, tuple(text(x) for x in rest))

        args = [group, consumer, entry_id, task_id, *encoded]
        return Call(self._scripts["append_held"], [events, work], args, decode)

    def request_cancel(
        self,
        *,
        events: str,
        done: str,
        cancels: str,
        delayed: str,
        delayed_items: str,
        task_id: str,
        requested: bytes,
        cancelled: bytes,
    ) -> Call[tuple[str, str]]:
        """Record a cancel request; ``(kind, detail)``: ``("done", outcome)``,
        ``("cancelled", event_id)`` or ``("requested", event_id)``."""
        keys = [events, done, cancels, delayed, delayed_items]
        return Call(
            self._scripts["request_cancel"],
            keys,
            [task_id, requested, cancelled],
            lambda r: (text(r[0]), text(r[1])),
        )

    def release_due(
        self, *, delayed: str, delayed_items: str, now_ms: int, limit: int, work_prefix: str
    ) -> Call[tuple[int, int]]:
        """Move due delayed tasks of one partition to their work streams;
        ``(released, orphans removed)``."""
        return Call(
            self._scripts["release_due"],
            [delayed, delayed_items],
            [now_ms, limit, work_prefix],
            lambda r: (int(r[0]), int(r[1])),
        )

    def reroute(
        self,
        *,
        events: str,
        done: str,
        from_stream: str,
        to_stream: str,
        group: str,
        entry_id: str,
        task_id: str,
        event: bytes,
        spec: Any,
    ) -> Call[RerouteReply]:
        """Move one waiting work entry to another stream with its TaskRerouted."""

        def decode(reply: Any) -> RerouteReply:
            if int(reply[0]):
                return RerouteReply(True, text(reply[1]), text(reply[2]))
            return RerouteReply(False, why=text(reply[1]))

        keys = [events, done, from_stream, to_stream]
        args = [group, entry_id, task_id, event, spec]
        return Call(self._scripts["reroute"], keys, args, decode)

    def renew(self, *, work: str, group: str, consumer: str, ids: Sequence[str]) -> Call[list[str]]:
        """Reset the idle time of the entries ``consumer`` still holds; their ids."""
        return Call(
            self._scripts["renew"],
            [work],
            [group, consumer, *ids],
            lambda r: [text(x) for x in r],
        )

    def claim(
        self, *, cancels: str, streams: Sequence[str], group: str, consumer: str, count: int
    ) -> Call[Claimed]:
        """Take up to ``count`` new entries from ``streams`` (one partition), in order."""

        def decode(reply: Any) -> Claimed:
            raw_entries, last = reply
            entries = [
                ClaimedEntry(int(index), eid, dict(zip(flat[::2], flat[1::2])), bool(cancel))
                for index, eid, flat, cancel in raw_entries
            ]
            return Claimed(entries, [text(x) for x in last])

        return Call(self._scripts["claim"], [cancels, *streams], [group, consumer, count], decode)

    def node_event(
        self,
        *,
        nodes: str,
        seen: str,
        info: str,
        node: str,
        event: bytes,
        gone: bool,
        now_ms: int,
        started: bytes,
    ) -> Call[str]:
        """Append a node event and keep (or, ``gone``, forget) the node's last
        sign of life; a non-empty ``started`` is kept as its info. The entry id."""
        args = [node, event, "gone" if gone else "seen", now_ms, started]
        return Call(self._scripts["node_event"], [nodes, seen, info], args, text)

    def mark_lost(
        self, *, nodes: str, seen: str, info: str, node: str, deadline_ms: int, event: bytes
    ) -> Call[bool]:
        """Append ``event`` (a NodeLost) if the node was last seen at or before
        ``deadline_ms``; whether it was written."""
        return Call(
            self._scripts["mark_lost"],
            [nodes, seen, info],
            [node, deadline_ms, event],
            lambda r: r is not None,
        )
