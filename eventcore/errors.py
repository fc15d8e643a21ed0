"""The error hierarchy. Every error eventcore raises on purpose derives from
:class:`EventcoreError`, so callers can catch one type at their boundary."""

from __future__ import annotations


class EventcoreError(Exception):
    """Base of every error eventcore raises on purpose."""


class ConfigError(EventcoreError):
    """A configuration value is wrong. The message names the key and where it came from."""

    def __init__(self, key: str, detail: str, source: str = "") -> None:
        self.key = key
        self.detail = detail
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"config key {key!r}{where}: {detail}")


class DecodeError(EventcoreError):
    """A stream entry does not decode. Names the stream and the entry id."""

    def __init__(self, stream: str, entry_id: str, detail: str) -> None:
        self.stream = stream
        self.entry_id = entry_id
        self.detail = detail
        super().__init__(f"cannot decode entry {entry_id} of stream {stream}: {detail}")


class IllegalTransition(EventcoreError):
    """A task event that the lifecycle does not allow from the task's current status."""

    def __init__(self, status: object, event_type: str) -> None:
        self.status = status
        self.event_type = event_type
        super().__init__(f"event {event_type!r} is not allowed in status {status!s}")


class RedisUnavailable(EventcoreError):
    """Redis cannot be reached, refused the credentials, or is too old.

    The message is one line meant for a person; the original error is chained.
    """


class PostgresUnavailable(EventcoreError):
    """PostgreSQL is not installed, cannot run here, or did not start.

    The message is one line meant for a person, or ends with the server's log.
    """


class ScriptArgumentError(EventcoreError, ValueError):
    """A Lua script refused its arguments before writing anything."""


class TaskError(EventcoreError):
    """An error raised by a task handler.

    ``non_retryable=True`` fails the task at once, whatever its retry policy.
    """

    def __init__(self, message: str, *, non_retryable: bool = False) -> None:
        self.non_retryable = non_retryable
        super().__init__(message)
