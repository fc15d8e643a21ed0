"""A small Jepsen-style checker for fault tests.

Every client operation is logged as ``invoke`` and then ``ok``, ``fail`` or
``unknown`` (JSONL, so a failing run can be read afterwards). At the end the
log of the system is read back and compared:

- **lost**: submitted ``ok`` but no terminal event;
- **phantom**: a terminal event for a task no ``ok`` or ``unknown`` submit named;
- **double terminal**: more than one terminal event for one task.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from eventcore.events import TERMINAL_EVENT_TYPES, TaskSubmitted
from eventcore.log import EventLog


@dataclass
class History:
    path: Path
    ok: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)

    def record(self, op: str, kind: str, **data: object) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"t": time.time(), "op": op, "type": kind, **data}) + "\n")


@dataclass
class Verdict:
    submitted: int
    terminal: int
    lost: list[str]
    phantom: list[str]
    double: list[str]

    @property
    def valid(self) -> bool:
        return not (self.lost or self.phantom or self.double)


async def check(log: EventLog, history: History) -> Verdict:
    ends: Counter[str] = Counter()
    seen: set[str] = set()
    for p in log.keys.all_partitions():
        for entry in await log.read(log.keys.events(p)):
            event = entry.event
            if isinstance(event, TaskSubmitted):
                seen.add(event.task_id)
            elif isinstance(event, TERMINAL_EVENT_TYPES):
                ends[event.task_id] += 1
    known = history.ok | history.unknown
    return Verdict(
        submitted=len(history.ok),
        terminal=len(ends),
        lost=sorted(t for t in history.ok if ends[t] == 0),
        phantom=sorted(t for t in ends if t not in known or t not in seen),
        double=sorted(t for t, n in ends.items() if n > 1),
    )
