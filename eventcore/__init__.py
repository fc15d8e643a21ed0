"""eventcore: an event-sourced task system on Redis Streams.

The log's public API: events, the codec, keys, the lifecycle table, the
``EventLog`` with its atomic writes and reads, consumer-group helpers,
settings, and connecting to (or embedding) Redis.
"""

import importlib.metadata

from eventcore.codec import CONTROL, NODE, TASK, Codec, Entry, encode
from eventcore.config import QueueConfig, Settings, load_settings
from eventcore.connection import ClientOptions, connect, make_client
from eventcore.errors import (
    ConfigError,
    DecodeError,
    EventcoreError,
    IllegalTransition,
    RedisUnavailable,
    ScriptArgumentError,
    TaskError,
)
from eventcore.ids import new_task_id, partition_of
from eventcore.keys import Keys
from eventcore.log import (
    CancelOutcome,
    CancelResult,
    EventLog,
    Settlement,
    SettleResult,
    Submission,
    SubmitResult,
)
from eventcore.log.groups import WorkEntry
from eventcore.server.embedded import EmbeddedRedis
from eventcore.transitions import TaskStatus, is_legal, next_status

try:
    # pyproject.toml is the one place the version is written; the installed
    # package's metadata carries it from there.
    __version__ = importlib.metadata.version("eventcore")
except importlib.metadata.PackageNotFoundError:  # run from a source tree never installed
    __version__ = "0+unknown"

__all__ = [
    "CONTROL",
    "NODE",
    "TASK",
    "CancelOutcome",
    "CancelResult",
    "ClientOptions",
    "Codec",
    "ConfigError",
    "DecodeError",
    "EmbeddedRedis",
    "Entry",
    "EventLog",
    "EventcoreError",
    "IllegalTransition",
    "Keys",
    "QueueConfig",
    "RedisUnavailable",
    "ScriptArgumentError",
    "Settings",
    "SettleResult",
    "Settlement",
    "Submission",
    "SubmitResult",
    "TaskError",
    "TaskStatus",
    "WorkEntry",
    "connect",
    "encode",
    "is_legal",
    "load_settings",
    "make_client",
    "new_task_id",
    "next_status",
    "partition_of",
]
