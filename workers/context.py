"""What a handler sees while it runs: its task, a way to report progress, and
flags for cancel and soft timeout. The same object works inline and in a
child process; only the callables behind it differ."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eventcore.errors import EventcoreError

__all__ = ["Cancelled", "TaskContext"]


class Cancelled(EventcoreError):
    """Raised by a handler (usually through ``ctx.check_cancelled()``) when it
    stops because its task was cancelled."""


def _never() -> bool:
    return False


class TaskContext:
    """The handler's view of its task."""

    __slots__ = (
        "_cancel_flag",
        "_progress_sink",
        "_soft_flag",
        "attempt",
        "kind",
        "model",
        "params",
        "resources",
        "task_id",
    )

    def __init__(
        self,
        *,
        task_id: str,
        kind: str,
        params: dict[str, Any],
        attempt: int = 1,
        model: str | None = None,
        progress_sink: Callable[[float, str], None] | None = None,
        cancel_flag: Callable[[], bool] = _never,
        soft_flag: Callable[[], bool] = _never,
        resources: Any = None,
    ) -> None:
        self.task_id = task_id
        self.kind = kind
        self.params = params
        self.attempt = attempt
        self.model = model
        self._progress_sink = progress_sink
        self._cancel_flag = cancel_flag
        self._soft_flag = soft_flag
        self.resources = resources

    @property
    def blobs(self) -> Any:
        """The blob store (``get(ref) -> bytes``, ``put(data) -> BlobRef``)."""
        return self.resources.blobs

    @property
    def models(self) -> Any:
        """The model store (``get(name)`` -> a warm TorchScript model)."""
        return self.resources.models

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (0..1) with an optional step name. Cheap to call
        often: the worker throttles what reaches the log."""
        if self._progress_sink is not None:
            self._progress_sink(min(1.0, max(0.0, float(fraction))), message)

    @property
    def cancelled(self) -> bool:
        """True once someone asked to cancel this task: stop soon."""
        return self._cancel_flag()

    @property
    def soft_timeout_passed(self) -> bool:
        """True once the task ran past its soft timeout: wrap up if you can."""
        return self._soft_flag()

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the task was cancelled."""
        if self._cancel_flag():
            raise Cancelled(f"task {self.task_id} was cancelled")
