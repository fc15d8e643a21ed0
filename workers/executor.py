"""Running handlers in child processes that the worker can kill.

Each slot is one long-lived child process (started through a fork server, so
children do not inherit the worker's event loop, sockets or threads) that
runs one task at a time. Parent and child talk MessagePack over a pipe — no
pickle — in the tagged messages of :mod:`workers.pipe`: progress goes up,
the outcome comes last. Cancel and soft-timeout
flags are shared events the handler polls. A hard timeout or hard cancel
kills the child; the slot starts a fresh one for its next task.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from eventcore.events import ErrorInfo
from workers import pipe
from workers.context import TaskContext
from workers.handlers import Registry
from workers.outcomes import Ending, Outcome, error_info, outcome_of_exception
from workers.resources import ResourceConfig, Resources

__all__ = ["ChildSlot", "ProcessPool"]

_mp = multiprocessing.get_context("forkserver")


def child_main(
    conn: multiprocessing.connection.Connection,
    cancel: Any,
    soft: Any,
    specs: Sequence[str],
    resources: dict[str, Any],
) -> None:
    """The child's loop: run tasks one by one until told to stop."""
    registry = Registry(specs)
    res = Resources(msgspec.convert(resources, ResourceConfig))
    while True:
        try:
            msg = pipe.TO_CHILD.decode(conn.recv_bytes())
        except (EOFError, OSError):
            return
        match msg:
            case pipe.Stop():
                return
            case pipe.Reload():
                registry.reload()
            case pipe.RunTask():
                reply = _run(msg, registry, res, conn, cancel, soft)
                try:
                    conn.send_bytes(pipe.encode(reply))
                except TypeError as exc:  # a result msgpack cannot carry
                    info = error_info(
                        TypeError(f"result of {msg.kind!r} is not serialisable: {exc}")
                    )
                    conn.send_bytes(pipe.encode(pipe.Raised(ending=Ending.ERROR, error=info)))


def _run(
    msg: pipe.RunTask,
    registry: Registry,
    res: Resources,
    conn: multiprocessing.connection.Connection,
    cancel: Any,
    soft: Any,
) -> pipe.Returned | pipe.Raised:
    """Run one task in the child; its last message (progress goes out meanwhile)."""
    h = registry.get(msg.kind)
    ctx = TaskContext(
        task_id=msg.task_id,
        kind=msg.kind,
        params=msg.params,
        attempt=msg.attempt,
        model=msg.model,
        progress_sink=lambda f, m: conn.send_bytes(
            pipe.encode(pipe.Progress(fraction=f, message=m))
        ),
        cancel_flag=cancel.is_set,
        soft_flag=soft.is_set,
        resources=res,
    )
    t0 = time.perf_counter()
    try:
        if h is None:
            raise LookupError(f"no handler for kind {msg.kind!r} in the child process")
        result = h.fn(ctx)
        return pipe.Returned(
            result=result, duration=time.perf_counter() - t0, warm_models=res.warm_models()
        )
    except BaseException as exc:  # the task boundary: every error becomes an outcome
        o = outcome_of_exception(exc, time.perf_counter() - t0)
        return pipe.Raised.of(o, res.warm_models())


class ChildSlot:
    """One child process and the flags it shares with the worker."""

    def __init__(self, specs: Sequence[str], resources: ResourceConfig) -> None:
        self.specs = tuple(specs)
        self.resources = resources
        self.warm: tuple[str, ...] = ()  # models the child holds loaded, as of its last task
        self.cancel = _mp.Event()
        self.soft = _mp.Event()
        self._proc: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self.killed = False

    def _ensure(self) -> multiprocessing.connection.Connection:
        if self._proc is None or not self._proc.is_alive():
            if self._conn is not None:
                self._conn.close()
            parent, child = _mp.Pipe()
            self._proc = _mp.Process(
                target=child_main,
                args=(
                    child,
                    self.cancel,
                    self.soft,
                    self.specs,
                    msgspec.to_builtins(self.resources),
                ),
                daemon=True,
            )
            self._proc.start()
            child.close()
            self._conn = parent
        assert self._conn is not None
        return self._conn

    def start(self) -> None:
        """Start the child process unless it runs already (so :attr:`pid` is known)."""
        self._ensure()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def run(
        self,
        task_id: str,
        kind: str,
        params: dict[str, Any],
        attempt: int,
        model: str | None,
        on_progress: Callable[[float, str], None],
    ) -> Outcome:
        """Run one task in the child and wait for its outcome."""
        self.cancel.clear()
        self.soft.clear()
        self.killed = False
        conn = self._ensure()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome] = loop.create_future()

        def readable() -> None:
            try:
                while conn.poll():
                    msg = pipe.FROM_CHILD.decode(conn.recv_bytes())
                    match msg:
                        case pipe.Progress(fraction=fraction, message=message):
                            on_progress(fraction, message)
                            continue
                        case pipe.Returned() | pipe.Raised():
                            if not done.done():
                                self.warm = msg.warm_models
                                done.set_result(pipe.outcome(msg))
                            return
            except (EOFError, OSError):
                if not done.done():
                    self.warm = ()
                    ending = Ending.TIMEOUT if self.killed else Ending.DIED
                    done.set_result(Outcome(ending=ending, error=_died(self._proc)))

        fd = conn.fileno()
        loop.add_reader(fd, readable)
        try:
            run = pipe.RunTask(
                task_id=task_id, kind=kind, params=params, attempt=attempt, model=model
            )
            conn.send_bytes(pipe.encode(run))
            return await done
        finally:
            loop.remove_reader(fd)

    def kill(self) -> None:
        """Kill the child now (hard timeout, hard cancel); the next run starts a new one."""
        if self._proc is not None and self._proc.is_alive():
            self.killed = True
            self._proc.kill()
            self._proc.join(5)

    def reload(self) -> None:
        if self._conn is not None and self._proc is not None and self._proc.is_alive():
            self._conn.send_bytes(pipe.encode(pipe.Reload()))

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                assert self._conn is not None
                self._conn.send_bytes(pipe.encode(pipe.Stop()))
            except OSError:
                pass
            self._proc.join(2)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(2)
        if self._conn is not None:
            self._conn.close()


def _died(proc: Any) -> ErrorInfo:
    code = proc.exitcode if proc is not None else None
    return ErrorInfo(
        type="ChildProcessDied",
        message=f"the process running the task exited (exit code {code})",
        retryable=True,
    )


class ProcessPool:
    """Child slots, at most ``size`` busy at once; grown or shrunk on demand."""

    def __init__(self, size: int, specs: Sequence[str], resources: ResourceConfig) -> None:
        self.specs = tuple(specs)
        self.resources = resources
        self.size = size
        self._idle: list[ChildSlot] = []
        self._busy: set[ChildSlot] = set()

    def acquire(self) -> ChildSlot:
        slot = self._idle.pop() if self._idle else ChildSlot(self.specs, self.resources)
        self._busy.add(slot)
        return slot

    def release(self, slot: ChildSlot) -> None:
        self._busy.discard(slot)
        if len(self._idle) + len(self._busy) >= self.size + 1:
            slot.close()  # shrunk by set_concurrency
        else:
            self._idle.append(slot)

    def warm_models(self) -> tuple[str, ...]:
        return tuple(sorted({m for s in [*self._idle, *self._busy] for m in s.warm}))

    def reload(self) -> None:
        for slot in self._idle:
            slot.close()
        self._idle.clear()

    def close(self) -> None:
        for slot in [*self._idle, *self._busy]:
            slot.close()
        self._idle.clear()
        self._busy.clear()
