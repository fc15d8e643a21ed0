"""Configuration: one frozen :class:`Settings` struct for the whole system.

Values come from three layers, each overriding the one before:

1. the defaults written on the structs below;
2. a TOML file (``path``, else ``$EVENTCORE_CONFIG``; no file is fine);
3. environment variables: ``EVENTCORE_<KEY>`` for a top-level key
   (``EVENTCORE_PARTITIONS=4``), ``__`` between nested keys
   (``EVENTCORE_WEB__PORT=8080``), and plain ``REDIS_URL`` for ``redis.url``
   (an ``EVENTCORE_REDIS__URL`` beats it). Lists are JSON or comma-separated
   (``EVENTCORE_WORKER__QUEUES=cpu-light,cpu-heavy``); dicts and queue tables
   are JSON.

Any wrong value raises :class:`~eventcore.errors.ConfigError` naming the
dotted key (``queues[2].lease_ms``) and the file or variable it came from, so a
bad deployment fails at start instead of at the first task.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from eventcore.errors import ConfigError
from eventcore.events import RetryPolicy
from eventcore.keys import check_name

__all__ = [
    "DEFAULT_QUEUES",
    "BlobSettings",
    "LogSettings",
    "ModelSettings",
    "ProjectorSettings",
    "QueueConfig",
    "RedisSettings",
    "Settings",
    "SqlSettings",
    "ViewsSettings",
    "WebSettings",
    "WorkerSettings",
    "load_settings",
    "to_toml_dict",
]

# Range constraints live on the types, so msgspec reports them with the key's path.
Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0)]


class QueueConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A queue, the capabilities a worker needs to read it, and its task defaults.

    ``models`` are models a worker must have installed; ``kinds`` limits the
    task kinds routed here (empty = any kind). ``retry`` and the timeouts are
    used when a task does not set its own.
    """

    name: str
    gpu: bool = False
    min_gpu_memory_mb: Count = 0
    min_cores: Count = 0
    min_memory_mb: Count = 0
    models: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    max_deliveries: Annotated[int, Meta(ge=1)] = 5
    # Shorter leases would lapse between a busy worker's renewals and be reclaimed.
    lease_ms: Annotated[int, Meta(ge=100)] = 30_000
    retry: RetryPolicy = RetryPolicy()
    soft_timeout: Positive | None = None
    hard_timeout: Positive | None = None


# "high" / "low" are GPU memory classes, not priorities: every queue has its own
# priority streams.
# The image kinds may go to any of the first three; everything else (the
# diagnostic kinds, user handlers) only to cpu-light unless a queue says so.
IMAGE_KINDS = ("inpaint", "upscale")
DEFAULT_QUEUES: tuple[QueueConfig, ...] = (
    QueueConfig(name="gpu-high", gpu=True, min_gpu_memory_mb=8192, kinds=IMAGE_KINDS),
    QueueConfig(name="gpu-low", gpu=True, min_gpu_memory_mb=2048, kinds=IMAGE_KINDS),
    QueueConfig(name="cpu-heavy", min_cores=4, min_memory_mb=4096, kinds=IMAGE_KINDS),
    QueueConfig(name="cpu-light"),
)


class RedisSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where Redis is, and how hard to try reaching it.

    ``url=None`` starts an embedded server under ``data_dir``. ``durability``
    picks its AOF fsync: ``durable`` fsyncs every write, ``fast`` once a second
    (see :func:`eventcore.server.embedded.durability_config`).
    Failed connections are retried ``retry_attempts`` times with jittered
    exponential backoff from ``retry_backoff_base`` up to ``retry_backoff_cap``.
    Each client (a process may have a few) keeps at most ``max_connections``
    connections; a command that finds them all busy waits up to
    ``pool_timeout`` seconds for one before failing as "Redis unavailable".
    ``cluster`` picks the client: ``true`` a Redis Cluster client, ``false``
    a single-server one, unset (the default) whatever the server says it is
    (``cluster_enabled`` in ``INFO cluster``).
    """

    url: str | None = None
    cluster: bool | None = None
    durability: Literal["durable", "fast"] = "fast"
    data_dir: str = ".eventcore"
    connect_timeout: Positive = 5.0
    socket_timeout: Positive = 10.0
    retry_attempts: Count = 6
    retry_backoff_base: NonNegative = 0.05
    retry_backoff_cap: NonNegative = 2.0
    max_connections: Annotated[int, Meta(ge=1)] = 100
    pool_timeout: Positive = 30.0


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One worker process: its slots, the queues it reads, and its timers (seconds).

    ``concurrency=0`` means one slot per core; empty ``queues`` means every
    queue the node's capabilities satisfy. ``handlers`` are import paths of
    handler modules to load besides the built-in ones.
    """

    concurrency: Count = 0
    queues: tuple[str, ...] = ()
    heartbeat_interval: Positive = 5.0
    heartbeat_timeout: Positive = 20.0
    reclaim_interval: Positive = 5.0
    release_interval: Positive = 0.5
    shutdown_grace: NonNegative = 30.0
    gpu: Literal["auto", "on", "off"] = "auto"
    handlers: tuple[str, ...] = ()


class WebSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The HTTP server.

    ``redis_timeout`` bounds every Redis call a request makes, so a Redis that
    does not answer becomes a 503 within about that long. ``auth`` turns on
    bearer tokens (``eventcore token``); ``secret`` signs stream tickets (empty:
    a random key shared through Redis), valid ``ticket_ttl`` seconds.
    ``read_wait`` is how long a read with ``after=`` waits for the views;
    ``result_timeout`` how long the IOPaint-compatible routes wait for a
    result before answering 504. Each SSE client gets ``sse_buffer`` pending
    messages before it is sent ``resync`` and dropped, and a ping every
    ``sse_ping`` seconds.
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    max_body_bytes: Annotated[int, Meta(ge=1)] = 32 * 1024 * 1024
    max_files: Annotated[int, Meta(ge=1)] = 8
    max_fields: Annotated[int, Meta(ge=1)] = 64
    redis_timeout: Positive = 0.8
    auth: bool = False
    secret: str = ""
    ticket_ttl: Positive = 60.0
    read_wait: NonNegative = 2.0
    result_timeout: Positive = 120.0
    sse_buffer: Annotated[int, Meta(ge=1)] = 256
    sse_ping: Positive = 15.0


class ModelSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Model weights: ``files`` maps a model name to its file under ``root``."""

    root: str = "models"
    files: dict[str, str] = {}


class BlobSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Blobs (uploaded images, results): kept ``ttl`` seconds, at most ``max_bytes`` each."""

    ttl: Positive = 86_400.0
    max_bytes: Annotated[int, Meta(ge=1)] = 64 * 1024 * 1024


class ProjectorSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The projector processes (``eventcore project``).

    ``lease_ms``: how long a projector's hold on a view shard lasts without
    renewal (renewed every third of it). A projector that dies leaves its
    shards unfolded this long before another takes them over; one that is
    paused longer loses them and writes nothing when it wakes.
    """

    lease_ms: Annotated[int, Meta(ge=300)] = 5_000


class ViewsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long the Redis views keep a finished task.

    ``retention``: seconds after it finished that a task's view and index
    entries leave Redis, once the SQL history has every event of it (its
    ``sql`` group is past them); it stays in ``/v1/history`` and
    ``GET /v1/tasks/{id}`` answers from SQL. Without a SQL projector nothing
    leaves. ``0`` keeps every view. ``sweep_every``: how often a projector
    looks for such tasks in the shards it holds.
    """

    retention: NonNegative = 7 * 86_400.0
    sweep_every: Positive = 60.0


class LogSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long the log keeps its entries.

    Every ``snapshot_every`` seconds a projector takes a snapshot (leaving out
    the tasks the views no longer keep) and trims each log stream below
    ``retention`` seconds ago, never past the snapshot or what a consumer
    group, the SQL projector's included, has not read. ``0`` (either) turns
    this off; ``eventcore replay snapshot`` and ``events trim`` still work by
    hand.
    """

    retention: NonNegative = 7 * 86_400.0
    snapshot_every: NonNegative = 3_600.0


class SqlSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The SQL history (``eventcore sql``, ``/v1/history/...``).

    ``url``: ``postgresql://user:password@host:port/db`` for PostgreSQL, or
    ``sqlite:///path`` for a SQLite file; unset, the SQLite file
    ``history.sqlite3`` in the data directory (``redis.data_dir``).
    ``batch``: at most this many log entries a transaction.
    """

    url: str | None = None
    batch: Annotated[int, Meta(ge=1, le=100_000)] = 5_000


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything configurable, for every role (web, projector, worker, CLI).

    ``namespace`` prefixes every Redis key, so deployments can share a server;
    ``partitions`` spreads tasks over that many event logs; ``group`` is the
    consumer group workers read queues with; ``idempotency_ttl`` (seconds) is
    how long an idempotency key remembers its task.
    """

    redis: RedisSettings = RedisSettings()
    namespace: str = "ec"
    partitions: Annotated[int, Meta(ge=1)] = 1
    group: str = "workers"
    idempotency_ttl: Positive = 86_400.0
    queues: Annotated[tuple[QueueConfig, ...], Meta(min_length=1)] = DEFAULT_QUEUES
    worker: WorkerSettings = WorkerSettings()
    projector: ProjectorSettings = ProjectorSettings()
    views: ViewsSettings = ViewsSettings()
    log: LogSettings = LogSettings()
    sql: SqlSettings = SqlSettings()
    web: WebSettings = WebSettings()
    models: ModelSettings = ModelSettings()
    blobs: BlobSettings = BlobSettings()


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from defaults, then the TOML file, then ``env``.

    ``path=None`` reads ``$EVENTCORE_CONFIG`` if set, else no file; ``env=None``
    reads ``os.environ``. Raises :class:`ConfigError` on the first wrong value.
    """
    env = os.environ if env is None else env
    sources = _Sources()
    # Start empty rather than from the defaults: msgspec fills in whatever no
    # layer set, and a file's [[queues]] then replaces the default list whole.
    raw: dict[str, Any] = {}
    if path is not None:
        _merge(raw, _read_toml(path, os.fspath(path)), os.fspath(path), sources)
    elif file := env.get("EVENTCORE_CONFIG"):
        _merge(raw, _read_toml(file, f"{file} (EVENTCORE_CONFIG)"), file, sources)
    for var, keys, value in _env_layer(env):
        for key in reversed(keys):
            value = {key: value}
        _merge(raw, value, var, sources)
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as e:
        raise _config_error(str(e), raw, sources, ()) from None
    _validate(settings, sources)
    return settings


def to_toml_dict(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, for ``eventcore config show``.

    ``None`` values are left out, since TOML has no null: the result can be
    written back as a TOML file that loads to the same settings.
    """

    def drop_none(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop_none(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [drop_none(v) for v in value]
        return value

    return drop_none(msgspec.to_builtins(settings))


# -- layers ------------------------------------------------------------------

# Variables with the prefix that are not keys: the file name itself, and the
# server binary to run (EVENTCORE_REDIS_SERVER), the fault-injection hook
# (EVENTCORE_CRASH_AT) and the test suite's own knobs (EVENTCORE_TEST_...).
_NOT_KEYS = re.compile(r"^EVENTCORE_(CONFIG|REDIS_SERVER|CRASH_AT|TEST_.*)$")


def _read_toml(path: str | os.PathLike[str], source: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("<file>", f"cannot read config file: {e.strerror}", source) from None
    except tomllib.TOMLDecodeError as e:  # its message ends "(at line N, column M)"
        raise ConfigError("<file>", f"invalid TOML: {e}", source) from None


def _env_layer(env: Mapping[str, str]) -> list[tuple[str, tuple[str, ...], Any]]:
    """(variable, key path, converted value) for every variable that sets a key."""
    found = []
    if env.get("REDIS_URL"):  # empty counts as unset, as compose files leave it
        found.append(("REDIS_URL", ("redis", "url"), env["REDIS_URL"]))
    for var in sorted(env):
        if not var.startswith("EVENTCORE_") or _NOT_KEYS.match(var):
            continue
        keys = tuple(var.removeprefix("EVENTCORE_").lower().split("__"))
        target = _type_at(keys)
        # A whole table (EVENTCORE_WEB) is refused: converting it would fill in
        # defaults over the keys the file set.
        if target is None or _is_struct(_strip(target)):
            raise ConfigError(_dotted(keys), _unknown(var, keys), var)
        found.append((var, keys, _env_value(var, keys, env[var], target)))
    return found


def _unknown(var: str, keys: tuple[str, ...]) -> str:
    if _type_at(keys) is not None:
        return f"{var} names a table; set one of its keys, as in {var}__<KEY>"
    # EVENTCORE_REDIS_URL is the likely slip: one underscore where two belong.
    section, _, rest = keys[0].partition("_")
    if len(keys) == 1 and rest and _type_at((section, rest)) is not None:
        return (
            f"{var} names no config key; did you mean EVENTCORE_{section.upper()}__{rest.upper()}?"
        )
    return f"{var} names no config key; nested keys take a double underscore: EVENTCORE_WEB__PORT"


def _env_value(var: str, keys: tuple[str, ...], text: str, target: Any) -> Any:
    """Convert one variable's string to the key's type, as plain data.

    Converted here rather than in the merged dict so that the TOML layer stays
    strictly typed while ``"4"`` and ``"true"`` from the environment still work.
    """
    container = typing.get_origin(_strip(target))
    value: Any = text
    if text == "" and _is_optional(target):  # an empty variable means "unset" (None)
        value = None
    elif container in (tuple, list, dict) and text.lstrip().startswith(("[", "{")):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(_dotted(keys), f"invalid JSON: {e}", var) from None
    elif container in (tuple, list):
        value = [item.strip() for item in text.split(",") if item.strip()]
    try:
        return msgspec.to_builtins(msgspec.convert(value, target, strict=False))
    except msgspec.ValidationError as e:
        raise _config_error(str(e), value, _Sources(var), keys) from None


def _merge(
    base: dict[str, Any],
    layer: dict[str, Any],
    source: str,
    sources: _Sources,
    at: tuple[str, ...] = (),
) -> None:
    """Deep-merge ``layer`` into ``base``: tables merge key by key, anything
    else (lists included) replaces what was there."""
    for key, value in layer.items():
        # Descend even into a table base lacks, so that each leaf, not the
        # whole table, is recorded as coming from this source.
        if isinstance(value, dict) and isinstance(base.get(key, {}), dict):
            _merge(base.setdefault(key, {}), value, source, sources, (*at, key))
        else:
            base[key] = value
            sources.set((*at, key), source)


class _Sources:
    """Which file or variable set each key, looked up by the longest known prefix."""

    def __init__(self, everything: str = "") -> None:
        self._by_path: dict[tuple[str | int, ...], str] = {(): everything} if everything else {}

    def set(self, path: tuple[str, ...], source: str) -> None:
        # A replaced table or list takes its children's sources with it.
        for old in [p for p in self._by_path if p[: len(path)] == path]:
            del self._by_path[old]
        self._by_path[path] = source

    def of(self, path: tuple[str | int, ...]) -> str:
        """The source of ``path``, or "" if it kept its default."""
        for n in range(len(path), -1, -1):
            if path[:n] in self._by_path:
                return self._by_path[path[:n]]
        return ""


# -- checks ------------------------------------------------------------------


def _validate(s: Settings, sources: _Sources) -> None:
    """What the types cannot say: names, references between keys, orderings."""

    def fail(path: tuple[str | int, ...], detail: str) -> typing.NoReturn:
        raise ConfigError(_dotted(path), detail, sources.of(path))

    def name(path: tuple[str | int, ...], what: str, value: str) -> None:
        try:
            check_name(what, value)
        except ValueError as e:
            fail(path, str(e))

    name(("namespace",), "namespace", s.namespace)
    name(("group",), "group", s.group)
    seen: set[str] = set()
    for i, q in enumerate(s.queues):
        name(("queues", i, "name"), "queue name", q.name)
        if q.name in seen:
            fail(("queues", i, "name"), f"queue {q.name!r} is declared twice")
        seen.add(q.name)
        if q.hard_timeout is not None and (q.soft_timeout or 0) > q.hard_timeout:
            fail(("queues", i, "soft_timeout"), "must not exceed hard_timeout")
        if q.retry.max_retries < 0 or q.retry.delay < 0 or not 0 <= q.retry.jitter <= 1:
            fail(("queues", i, "retry"), "needs max_retries >= 0, delay >= 0, 0 <= jitter <= 1")
    for i, queue in enumerate(s.worker.queues):
        if queue not in seen:
            fail(("worker", "queues", i), f"queue {queue!r} is not declared in [[queues]]")
    w = s.worker
    if w.heartbeat_timeout <= w.heartbeat_interval:
        # Otherwise a healthy node is declared lost between two heartbeats.
        # Blame whichever of the two was set, the timeout if both were.
        timeout = ("worker", "heartbeat_timeout")
        blame = timeout if sources.of(timeout) else ("worker", "heartbeat_interval")
        fail(
            blame,
            f"heartbeat_timeout ({w.heartbeat_timeout}) must exceed "
            f"heartbeat_interval ({w.heartbeat_interval})",
        )


def _config_error(
    message: str, raw: Any, sources: _Sources, prefix: tuple[str, ...]
) -> ConfigError:
    """Turn msgspec's "Expected `int`, got `str` - at `$.web.port`" into a ConfigError
    on key ``web.port`` that says what was given and where it came from."""
    text, _, at = message.partition(" - at `$")
    path: tuple[str | int, ...] = tuple(
        int(index) if index.isdigit() else index or name
        for name, index in re.findall(r"\.([^.\[`]+)|\[(\d+|\.\.\.)\]", at)
    )
    field = re.search(r"(unknown|missing required) field `([^`]+)`", text)
    if field:
        path = (*path, field.group(2))
    full = (*prefix, *path)
    if field and field.group(1) == "unknown":
        parent = _strip(_type_at(full[:-1]))
        keys = ", ".join(f.name for f in msgspec.structs.fields(parent))
        detail = f"unknown key; valid keys here: {keys}"
    elif field:
        detail = "required key is missing"
    else:
        if text.startswith("Invalid enum value"):  # msgspec does not list the choices
            text = "Expected one of " + ", ".join(map(repr, _choices(_type_at(full))))
        value = _lookup(raw, path)
        detail = text if value is _MISSING else f"{text}, given {value!r}"
    return ConfigError(_dotted(full), detail, sources.of(full))


# -- type helpers --------------------------------------------------------------

_MISSING = object()


def _type_at(path: tuple[str | int, ...]) -> Any:
    """The annotated type of the key at ``path`` in Settings, or None if no such key."""
    t: Any = Settings
    for part in path:
        t = _strip(t)
        if _is_struct(t) and isinstance(part, str):
            t = next((f.type for f in msgspec.structs.fields(t) if f.name == part), None)
        elif typing.get_origin(t) in (tuple, list) and isinstance(part, int):
            t = typing.get_args(t)[0]
        else:
            return None
        if t is None:
            return None
    return t


def _strip(t: Any) -> Any:
    """``t`` without Annotated constraints and without an optional ``| None``."""
    while typing.get_origin(t) is Annotated:
        t = typing.get_args(t)[0]
    if _is_optional(t):
        (t,) = (a for a in typing.get_args(t) if a is not type(None))
        return _strip(t)
    return t


def _is_optional(t: Any) -> bool:
    union = typing.get_origin(t) in (typing.Union, types.UnionType)
    return union and type(None) in typing.get_args(t)


def _is_struct(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, msgspec.Struct)


def _choices(t: Any) -> list[Any]:
    t = _strip(t)
    if typing.get_origin(t) is Literal:
        return list(typing.get_args(t))
    return [m.value for m in t] if isinstance(t, type) and issubclass(t, Enum) else []


def _lookup(raw: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return raw


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) or part == "..." else f".{part}"
    return out.lstrip(".")
