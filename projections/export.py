"""Export the log as JSON Lines, and import such a file into a log.

One JSON object per line, one line per stream entry, in id order across
streams (so a file reads as the log's history, and a time range is a range
of lines)::

    {"stream":"{p0}:events","id":"1714564800000-0","event":{"type":"task.submitted",...}}

- ``stream``: the stream's key without the namespace: ``{pN}:events`` (task
  log of partition N), ``nodes``, ``ctl:all``, ``ctl:acks``, ``ctl:node:<node>``.
- ``id``: the entry id.
- ``event``: the event in msgspec's JSON form (the struct's fields, ``type``
  the tag, bytes as base64).
- ``raw`` (only when needed): the entry's fields exactly as stored, values in
  base64. Written when ``event`` does not give back the stored bytes: an
  entry of an older schema version, a value JSON cannot carry exactly, extra
  fields, or an entry that does not decode (which then has no ``event``).

Import writes ``raw`` when a line has it, otherwise the fields the log's own
writers would (``task`` or ``node``, then ``e``, the encoded event), under the
entry's own id: the entries it writes are identical to the exported ones.
Only these streams can be written, so an import file cannot touch any other
key. What it does not carry: work entries, the delayed set, idempotency keys,
blobs. A terminal event also records the task's outcome in ``done``, so a
cancel of an imported finished task answers that it ended.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import IO, Any

import msgspec
from redis.asyncio import Redis

from eventcore.codec import StreamKind, encode, text
from eventcore.errors import DecodeError, EventcoreError
from eventcore.events import (
    TASK_EVENT_TYPES,
    TERMINAL_EVENT_TYPES,
    ControlEvent,
    NodeEvent,
    TaskEvent,
)
from eventcore.ids import parse_stream_id, stream_id_key
from eventcore.keys import Keys, check_name
from eventcore.log import EventLog
from projections.points import Point, log_streams
from projections.scripts import ImportEntry, ViewScripts

__all__ = [
    "ExportLine",
    "ExportResult",
    "ImportResult",
    "export_entries",
    "export_log",
    "export_streams",
    "import_log",
]

AnyEvent = TaskEvent | NodeEvent | ControlEvent


class ExportLine(msgspec.Struct, frozen=True, omit_defaults=True):
    """One line of an export: a stream entry."""

    stream: str
    id: str
    event: AnyEvent | None = None
    raw: dict[str, bytes] | None = None


class ExportResult(msgspec.Struct, frozen=True):
    entries: int
    raw: int  # entries written with their raw fields
    undecodable: int  # of those, entries that do not decode
    streams: int


class ImportResult(msgspec.Struct, frozen=True):
    lines: int
    added: int  # entries written
    present: int  # entries already there, identical: skipped
    trimmed: int  # entries below the stream's trim mark: skipped


_line = msgspec.json.Encoder()
_parse = msgspec.json.Decoder(ExportLine)
_event_json = msgspec.json.Decoder(AnyEvent)


def _relative(keys: Keys, key: str) -> str:
    # The export names streams without the namespace (and without the node and
    # control keys' tags, as before they had them), so they can be imported
    # elsewhere and old exports still import.
    return keys.relative_name(key)


def _fields(kind: StreamKind, event: Any) -> list[tuple[bytes, bytes]]:
    """The fields eventcore's writers store for an event in a stream of ``kind``."""
    data = encode(event)
    match kind:
        case StreamKind.TASK:
            return [(b"task", event.task_id.encode()), (b"e", data)]
        case StreamKind.NODE:
            return [(b"node", event.node.encode()), (b"e", data)]
        case _:
            return [(b"e", data)]


async def export_streams(log: EventLog) -> list[str]:
    """The streams an export holds: the task logs, the node stream, the
    control streams."""
    keys = log.keys
    per_node = sorted(
        [
            text(k)
            async for k in log.redis.scan_iter(
                match=keys.control_pattern(), _type="stream", count=1000
            )
        ]
    )
    return [*log_streams(keys), keys.control_broadcast(), keys.control_acks(), *per_node]


async def _read(
    redis: Redis, stream: str, start: str, end: str, batch: int
) -> AsyncIterator[tuple[str, dict[bytes, bytes]]]:
    while True:
        raw = await redis.xrange(stream, min=start, max=end, count=batch)
        for eid, fields in raw:
            yield text(eid), fields
        if len(raw) < batch:
            return
        start = "(" + text(raw[-1][0])


async def _merged(
    redis: Redis, streams: list[str], start: str, end: str, batch: int
) -> AsyncIterator[tuple[str, str, dict[bytes, bytes]]]:
    """Entries of every stream, merged in id order (ties: stream order)."""
    readers = [_read(redis, s, start, end, batch) for s in streams]
    heap: list[tuple[tuple[int, int], int, str, dict[bytes, bytes]]] = []
    for i, reader in enumerate(readers):
        first = await anext(reader, None)
        if first is not None:
            heap.append((stream_id_key(first[0]), i, *first))
    heapq.heapify(heap)
    while heap:
        _, i, eid, fields = heapq.heappop(heap)
        yield streams[i], eid, fields
        nxt = await anext(readers[i], None)
        if nxt is not None:
            heapq.heappush(heap, (stream_id_key(nxt[0]), i, *nxt))


async def export_log(
    log: EventLog,
    out: IO[bytes],
    *,
    since: Point | None = None,
    until: Point | None = None,
    batch: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write the log's entries between two points (inclusive) to ``out``."""
    streams = await export_streams(log)
    start = since.start_id if since is not None else "-"
    end = until.end_id if until is not None else "+"
    written = raw_count = bad = 0
    async for stream, eid, fields in _merged(log.redis, streams, start, end, batch):
        codec = log.codec_of(stream)
        stored = list(fields.items())
        event: Any = None
        try:
            event = codec.decode_fields(stream, eid, fields).event
        except DecodeError:
            bad += 1
        raw: dict[str, bytes] | None = None
        # Lossless only if what import would write from the JSON is what is stored.
        if event is None or _fields(codec.kind, _event_json.decode(_line.encode(event))) != stored:
            raw = {name.decode("latin-1"): value for name, value in stored}
            raw_count += 1
        out.write(_line.encode(ExportLine(_relative(log.keys, stream), eid, event, raw)))
        out.write(b"\n")
        written += 1
        if progress is not None:
            progress(written)
    return ExportResult(written, raw_count, bad, len(streams))


# -- import ---------------------------------------------------------------------------


class _Item(msgspec.Struct, frozen=True):
    line: int
    stream: str
    id: str
    task_id: str
    outcome: str
    fields: list[tuple[bytes, bytes]]
    event: Any = None  # None: the entry does not decode


class _Streams:
    """Maps the export's stream names to this deployment's keys."""

    def __init__(self, log: EventLog) -> None:
        keys = log.keys
        self.keys = keys
        self.codec_of = log.codec_of
        self.known = {
            _relative(keys, k): k
            for k in [*log_streams(keys), keys.control_broadcast(), keys.control_acks()]
        }
        self.node_prefix = _relative(keys, keys.control(""))
        # Exports written before partition tags were spread over the slots
        # name partition p's streams under {p<p>}.
        for p in keys.all_partitions():
            new = _relative(keys, keys.events(p))
            old = keys.legacy_partition_prefix(p)[len(keys.namespace) + 1 :] + "events"
            self.known.setdefault(old, self.known[new])

    def target(self, name: str) -> str | None:
        if name in self.known:
            return self.known[name]
        if name.startswith(self.node_prefix):
            node = name[len(self.node_prefix) :]
            try:
                return self.keys.control(check_name("node", node))
            except ValueError:
                return None
        return None


def _item(streams: _Streams, n: int, line: bytes) -> _Item:
    """Check one line and turn it into what the import script writes."""
    try:
        entry = _parse.decode(line)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise EventcoreError(f"line {n}: not an export entry: {exc}") from None
    stream = streams.target(entry.stream)
    if stream is None:
        raise EventcoreError(
            f"line {n}: stream {entry.stream!r} is not a log stream of namespace "
            f"{streams.keys.namespace!r} ({streams.keys.partitions} partition(s))"
        )
    try:
        bad = parse_stream_id(entry.id) == (0, 0)
    except ValueError:
        bad = True
    if bad:
        raise EventcoreError(f"line {n}: {entry.id!r} is not a stream entry id")
    codec = streams.codec_of(stream)
    event = entry.event
    if entry.raw is not None:
        fields = [(name.encode("latin-1"), value) for name, value in entry.raw.items()]
        if not fields:
            raise EventcoreError(f"line {n}: an entry needs at least one field")
        try:
            event = codec.decode_fields(stream, entry.id, dict(fields)).event
        except DecodeError:
            event = None  # kept as it was: the projector will park it again
    elif event is None:
        raise EventcoreError(f"line {n}: the entry has neither 'event' nor 'raw'")
    else:
        try:
            fields = _fields(codec.kind, codec.decode(encode(event)))
        except DecodeError:
            raise EventcoreError(
                f"line {n}: a {event.type_name()} event does not belong in stream {entry.stream!r}"
            ) from None
    task_id, outcome = "", ""
    if codec.kind is StreamKind.TASK and isinstance(event, TASK_EVENT_TYPES):
        task_id = event.task_id  # type: ignore[attr-defined]
        home = streams.keys.events(streams.keys.partition(task_id))
        if home != stream:
            raise EventcoreError(
                f"line {n}: task {task_id} belongs in {_relative(streams.keys, home)} here, "
                f"not {entry.stream}: import into a namespace with the same number of "
                "partitions as the export"
            )
        if isinstance(event, TERMINAL_EVENT_TYPES):
            outcome = event.type_name()
    return _Item(n, stream, entry.id, task_id, outcome, fields, event)


def export_entries(log: EventLog, lines: Iterable[bytes]) -> Iterator[tuple[str, str, Any]]:
    """The entries of an export's log streams (every partition's task log and
    the node stream) as ``(stream key, id, event)``, in the file's order, for
    readers that fold an export without importing it (the SQL history's
    backfill). ``event`` is ``None`` for an entry that does not decode. A
    line that does not parse raises an error naming it, as the import does."""
    streams = _Streams(log)
    folded = set(log_streams(log.keys))
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        item = _item(streams, n, line)
        if item.stream in folded:
            yield item.stream, item.id, item.event


async def import_log(
    log: EventLog,
    lines: Iterable[bytes],
    *,
    batch: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Append the entries of an export to this log, keeping their ids.

    Idempotent: entries already there (same id, same fields) are skipped, and
    so are entries below a stream's trim mark. A line that does not parse, or
    an entry that cannot keep its id (the stream already holds newer entries,
    or another entry has that id), stops the import with an error naming the
    line; the lines before it are written, nothing after it in its stream.
    ``progress`` gets the lines and bytes read so far.
    """
    streams = _Streams(log)
    counts = [0, 0, 0]  # added, present, trimmed
    pending: list[_Item] = []
    n = read_bytes = 0

    async def flush() -> None:
        await _write(log, streams.keys, pending, counts)
        pending.clear()

    for n, line in enumerate(lines, start=1):
        read_bytes += len(line)
        if not line.strip():
            continue
        try:
            pending.append(_item(streams, n, line))
        except EventcoreError as exc:
            await flush()
            raise EventcoreError(f"{exc} ({_so_far(counts)})") from None
        if len(pending) >= batch:
            await flush()
            if progress is not None:
                progress(n, read_bytes)
    await flush()
    if progress is not None:
        progress(n, read_bytes)
    return ImportResult(n, *counts)


def _so_far(counts: list[int]) -> str:
    return f"so far {counts[0]} entries added, {counts[1]} already there, {counts[2]} trimmed"


async def _write(log: EventLog, keys: Keys, items: list[_Item], counts: list[int]) -> None:
    """One script call per stream, in one round trip; entries keep file order
    within each stream."""
    if not items:
        return
    by_stream: dict[str, list[_Item]] = {}
    for item in items:
        by_stream.setdefault(item.stream, []).append(item)
    done_of = {keys.events(p): keys.done(p) for p in keys.all_partitions()}
    scripts = ViewScripts(log.redis)
    calls = [
        scripts.import_entries(
            stream=stream,
            trim_mark=keys.trim_mark(stream),
            done=done_of.get(stream),  # only task logs record outcomes
            entries=[ImportEntry(i.id, i.task_id, i.outcome, i.fields) for i in group],
        )
        for stream, group in by_stream.items()
    ]
    async with log.redis.pipeline(transaction=False) as pipe:
        for call in calls:
            await call.queue(pipe)
        replies = await pipe.execute(raise_on_error=False)
    stops: list[tuple[int, str]] = []
    for (stream, group), call, reply in zip(by_stream.items(), calls, replies):
        if isinstance(reply, Exception):
            raise EventcoreError(f"import into {stream} failed: {reply}")
        added, present, trimmed, stop, reason, newest = call.decode(reply)
        counts[0] += added
        counts[1] += present
        counts[2] += trimmed
        if stop:
            item = group[stop - 1]
            rel = _relative(keys, stream)
            if reason == "conflict":
                why = f"entry {item.id} of {rel} already exists with other content"
            else:
                why = (
                    f"{rel} already holds entries up to {newest}, after {item.id}, so "
                    "the entry cannot keep its id (import into a fresh namespace, or into "
                    "the one the export came from)"
                )
            stops.append((item.line, why))
    if stops:
        line, why = min(stops)
        raise EventcoreError(f"line {line}: {why} ({_so_far(counts)})")
