"""Waiting until a task ends: the one "follow the task to its terminal
event" for the routes that answer with the result itself and for
``eventcore submit --wait``.

It reads the log, not the views, so it does not depend on the projector:
the task's history first, then its partition stream from there on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from eventcore.events import TERMINAL_EVENT_TYPES, Event
from eventcore.log import EventLog

__all__ = ["wait_terminal"]


async def wait_terminal(
    log: EventLog,
    task_id: str,
    *,
    timeout: float | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> Event | None:
    """The task's terminal event (``TaskSucceeded``, ``TaskFailed``, ...);
    None when ``timeout`` seconds (None: no limit) run out first.

    ``on_event`` is called with each of the task's events in order, the
    terminal one included, as they are read (``eventcore submit --wait``
    prints them). ``log`` should be one whose client may block for a second:
    the stream is read in blocking reads of up to that long.
    """
    stream = log.keys.events(log.keys.partition(task_id))
    deadline = None if timeout is None else time.monotonic() + timeout
    position = "0-0"
    for entry in await log.history(task_id):
        position = entry.id
        if on_event is not None:
            on_event(entry.event)
        if isinstance(entry.event, TERMINAL_EVENT_TYPES):
            return entry.event
    while True:
        if deadline is None:
            block = 1000
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            block = max(1, min(int(left * 1000), 1000))
        for entry in await log.tail({stream: position}, count=1000, block_ms=block):
            position = entry.id
            event = entry.event
            if event.task_id != task_id:
                continue
            if on_event is not None:
                on_event(event)
            if isinstance(event, TERMINAL_EVENT_TYPES):
                return event
        # A busy partition answers every read at once: let other work run.
        await asyncio.sleep(0)
