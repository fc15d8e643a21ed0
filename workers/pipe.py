"""The messages between a worker and its child processes (see
:mod:`workers.executor`), one tagged Struct per kind, in MessagePack.

The worker sends :class:`RunTask`, :class:`Reload` or :class:`Stop`; the
child answers a run with any number of :class:`Progress` and then exactly one
:class:`Returned` or :class:`Raised`. Both ends run the same code (the child
is started by the worker), so a message kind is changed in one place here;
the tags are short because progress can be sent many times a second.
"""

from __future__ import annotations

from typing import Any

import msgspec

from eventcore.events import ErrorInfo
from workers.outcomes import Ending, Outcome

__all__ = [
    "FROM_CHILD",
    "TO_CHILD",
    "FromChild",
    "Progress",
    "Raised",
    "Reload",
    "Returned",
    "RunTask",
    "Stop",
    "ToChild",
    "encode",
]


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of the pipe's messages; each kind sets ``tag=...``."""


# -- worker to child -------------------------------------------------------------


class RunTask(Message, frozen=True, tag="run"):
    """Run one task and report on it."""

    task_id: str
    kind: str
    params: dict[str, Any]
    attempt: int
    model: str | None = None


class Reload(Message, frozen=True, tag="reload"):
    """Load the handlers again before the next task."""


class Stop(Message, frozen=True, tag="stop"):
    """Exit the child's loop: the worker closes the slot."""


# -- child to worker -------------------------------------------------------------


class Progress(Message, frozen=True, tag="progress"):
    """A progress report of the running handler."""

    fraction: float
    message: str = ""


class Returned(Message, frozen=True, tag="ok"):
    """The handler returned ``result``: the run's last message."""

    result: Any = None
    duration: float = 0.0
    warm_models: tuple[str, ...] = ()  # models the child holds loaded now


class Raised(Message, frozen=True, tag="raised"):
    """The handler raised (an error, a retry request, a cancel), or its result
    could not be sent: the run's last message."""

    ending: Ending
    error: ErrorInfo | None = None
    retry_delay: float | None = None
    duration: float = 0.0
    warm_models: tuple[str, ...] = ()

    @classmethod
    def of(cls, outcome: Outcome, warm_models: tuple[str, ...]) -> Raised:
        return cls(
            ending=outcome.ending,
            error=outcome.error,
            retry_delay=outcome.retry_delay,
            duration=outcome.duration,
            warm_models=warm_models,
        )


ToChild = RunTask | Reload | Stop
FromChild = Progress | Returned | Raised

TO_CHILD: msgspec.msgpack.Decoder[ToChild] = msgspec.msgpack.Decoder(ToChild)
FROM_CHILD: msgspec.msgpack.Decoder[FromChild] = msgspec.msgpack.Decoder(FromChild)
_encoder = msgspec.msgpack.Encoder()


def encode(message: ToChild | FromChild) -> bytes:
    """A message as the pipe carries it. Raises ``TypeError`` for a value
    MessagePack cannot carry (a handler's result, say)."""
    return _encoder.encode(message)


def outcome(message: Returned | Raised) -> Outcome:
    """The outcome a run's last message reports."""
    match message:
        case Returned(result=result, duration=duration):
            return Outcome(ending=Ending.OK, result=result, duration=duration)
        case Raised():
            return Outcome(
                ending=message.ending,
                error=message.error,
                retry_delay=message.retry_delay,
                duration=message.duration,
            )
