"""The projections' Lua scripts and the typed wrappers every call goes through.

The scripts are in ``lua/views.lua`` (in this package), split into sections by
``--- script: NAME`` lines like the log's library, and loaded by
:func:`eventcore.log.scripts.load_library`, which puts the log library's
``_shared`` helpers in front of each: the helpers have one source.

Each method of :class:`ViewScripts` knows one script's KEYS and ARGV layout and
decodes its answer; it returns an :class:`eventcore.log.scripts.Call`, awaited
alone or queued on a pipeline. A script's refusal of its arguments is raised
as the ``ResponseError`` Redis answered (callers such as the snapshot writer
catch it). The callers: :mod:`projections.store` (write_views),
:mod:`projections.leases` (renew_lease, release_lease),
:mod:`projections.snapshot` (publish_snapshot), :mod:`projections.trim`
(trim_stream, prune_done), :mod:`projections.export` (import_entries) and
:mod:`projections.retention` (expire_tasks).
Nothing else calls a projection script.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from redis.asyncio import Redis

from eventcore.codec import text
from eventcore.log.scripts import Call, load_library

__all__ = [
    "VIEW_SCRIPT_NAMES",
    "ExpiringTask",
    "FeedEntry",
    "ImportEntry",
    "Imported",
    "IndexOp",
    "Trimmed",
    "ViewScripts",
    "load_view_sources",
]

VIEW_SCRIPT_NAMES = (
    "write_views",
    "publish_snapshot",
    "trim_stream",
    "prune_done",
    "import_entries",
    "renew_lease",
    "release_lease",
    "expire_tasks",
)


@functools.cache
def load_view_sources() -> dict[str, str]:
    """The source of every projection script, by name."""
    return load_library("projections", "lua/views.lua", VIEW_SCRIPT_NAMES)


class FeedEntry(NamedTuple):
    """One entry of the view feed: which view changed, and its new value."""

    entity: str  # task | node | queue | stats
    id: str
    queue: str
    kind: str
    status: str
    node: str
    tenant: str
    view: bytes


class IndexOp(NamedTuple):
    """A task entering (``add``) or leaving an index sorted set."""

    add: bool
    key: str
    score: int
    member: str


class ExpiringTask(NamedTuple):
    """A finished task to take out of the views: its view key, the view as
    read (taken out only if unchanged), its id and its index keys."""

    key: str
    view: bytes
    task_id: str
    index_keys: Sequence[str]


class Trimmed(NamedTuple):
    minid: str  # the lowest id kept
    trimmed: int  # entries removed
    held_by: str  # the group that held the trim back ('' if none)


class ImportEntry(NamedTuple):
    """One exported entry to append with its original id."""

    id: str
    task_id: str
    outcome: str  # the terminal event type when it ends its task, else ''
    fields: Sequence[tuple[Any, Any]]


class Imported(NamedTuple):
    added: int
    present: int
    trimmed: int
    stop: int  # 1-based index of the entry that stopped the call, 0 if none
    reason: str
    newest: str


class ViewScripts:
    """The projections' scripts, registered on one Redis client, as typed calls."""

    __slots__ = ("_scripts",)

    def __init__(self, redis: Redis) -> None:
        self._scripts = {
            name: redis.register_script(source) for name, source in load_view_sources().items()
        }

    def _call(self, name: str, keys: Sequence[str], args: Sequence[Any], decode: Any) -> Any:
        return Call(self._scripts[name], keys, args, decode, translate_errors=False)

    def raw(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Call[Any]:
        """A call with KEYS and ARGV given as they are, answered undecoded: for
        checking a script's own refusal of bad arguments."""
        return self._call(name, keys, args, lambda reply: reply)

    def write_views(
        self,
        *,
        feed: str,
        lease_key: str,
        lease: str,
        watermark: str,
        nodes: str,
        queues: str,
        stats: str,
        feed_maxlen: int,
        tasks: Sequence[tuple[str, bytes]],
        node_views: Sequence[tuple[str, bytes]],
        queue_views: Sequence[tuple[str, bytes]],
        stat_views: Sequence[tuple[str, bytes]],
        feed_entries: Sequence[FeedEntry],
        marks: Mapping[str, str],
        index_ops: Sequence[IndexOp],
    ) -> Call[int]:
        """Write one batch of view changes at once: task views (``(key,
        view)``), node, queue and stats hash fields (``(field, view)``), feed
        entries, watermark marks (``{stream: last id}``) and index changes.
        The number of marks written. With a ``lease`` token, refused with
        ``LEASE`` (nothing written) unless ``lease_key`` holds that token.
        """
        keys = [feed, watermark, nodes, queues, stats, lease_key, *(key for key, _ in tasks)]
        args: list[Any] = [feed_maxlen, lease, len(tasks), *(view for _, view in tasks)]
        for section in (node_views, queue_views, stat_views):
            args.append(len(section))
            for name, view in section:
                args += [name, view]
        args.append(len(feed_entries))
        for entry in feed_entries:
            args += entry
        args.append(len(marks))
        for stream, entry_id in marks.items():
            args += [stream, entry_id]
        args.append(len(index_ops))
        for op in index_ops:
            args += ["a" if op.add else "r", op.key, op.score, op.member]
        return self._call("write_views", keys, args, int)

    def publish_snapshot(
        self,
        *,
        pointer: str,
        staging: str,
        final: str,
        previous: str | None,
        snapshot_id: str,
        fields: int,
        previous_id: str,
    ) -> Call[int]:
        """Make a fully written snapshot the latest: rename ``staging`` to
        ``final``, point ``pointer`` at it and drop ``previous`` (None when
        there is none). Refused unless the staging hash holds ``fields`` fields
        and the pointer still names ``previous_id``. The field count."""
        keys = [pointer, staging, final, previous if previous is not None else final]
        args = [snapshot_id, fields, previous_id]
        return self._call("publish_snapshot", keys, args, int)

    def trim_stream(self, *, stream: str, trim_mark: str, limit: str) -> Call[Trimmed]:
        """Trim ``stream`` below ``limit``, never past what a group still needs."""
        return self._call(
            "trim_stream",
            [stream, trim_mark],
            [limit],
            lambda r: Trimmed(text(r[0]), int(r[1]), text(r[2])),
        )

    def prune_done(
        self, *, done: str, delayed: str, cancels: str, task_ids: Sequence[str]
    ) -> Call[int]:
        """Forget the outcome of these ended tasks, unless delayed or with a
        cancel request on record; how many were forgotten."""
        return self._call("prune_done", [done, delayed, cancels], list(task_ids), int)

    def import_entries(
        self, *, stream: str, trim_mark: str, done: str | None, entries: Sequence[ImportEntry]
    ) -> Call[Imported]:
        """Append exported entries to ``stream`` with their original ids;
        ``done`` is the outcome hash of a task log (None for other streams)."""
        args: list[Any] = [len(entries)]
        for entry in entries:
            args += [entry.id, entry.task_id, entry.outcome, len(entry.fields)]
            for name, value in entry.fields:
                args += [name, value]

        def decode(r: Any) -> Imported:
            added, present, trimmed, stop, reason, newest = r
            return Imported(
                int(added), int(present), int(trimmed), int(stop), text(reason), text(newest)
            )

        keys = [stream, trim_mark, done if done is not None else stream]
        return self._call("import_entries", keys, args, decode)

    def renew_lease(self, *, lease_key: str, token: str, ttl_ms: int) -> Call[bool]:
        """Extend the lease held with ``token``; False if it is not held with it."""
        return self._call("renew_lease", [lease_key], [token, ttl_ms], lambda r: bool(int(r)))

    def release_lease(self, *, lease_key: str, token: str) -> Call[bool]:
        """Drop the lease held with ``token``; False if it is not held with it."""
        return self._call("release_lease", [lease_key], [token], lambda r: bool(int(r)))

    def expire_tasks(
        self, *, lease_key: str, token: str, tasks: Sequence[ExpiringTask]
    ) -> Call[int]:
        """Take these tasks out of the views, each only if its view is still
        the one read; how many were taken out. Refused with ``LEASE`` unless
        ``lease_key`` holds ``token`` (``""``: no check)."""
        keys = [lease_key, *(t.key for t in tasks)]
        args: list[Any] = [token]
        for t in tasks:
            args += [t.view, t.task_id, len(t.index_keys), *t.index_keys]
        return self._call("expire_tasks", keys, args, int)
