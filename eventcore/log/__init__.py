"""The log: the ``EventLog`` (every write one Lua script, every read decoded),
its consumer groups, and the scripts with their typed wrappers.

``from eventcore.log import EventLog, Submission, ...`` is the usual import;
the modules are :mod:`~eventcore.log.eventlog` (the log), :mod:`~eventcore.log.records`
(what goes in and comes out), :mod:`~eventcore.log.groups` (consumer groups:
claim, autoclaim, renew, pending), :mod:`~eventcore.log.scripts` (the Lua
library ``lua/log.lua``), :mod:`~eventcore.log.spread` (reads over keys of
several slots, split per slot on Redis Cluster) and
:mod:`~eventcore.log.migrate` (the one-time rename of keys from before they
had hash tags).
"""

from eventcore.log.eventlog import EventLog
from eventcore.log.records import (
    CancelOutcome,
    CancelResult,
    HeldAppend,
    Reroute,
    RerouteResult,
    Settlement,
    SettleResult,
    Submission,
    SubmitResult,
)

__all__ = [
    "CancelOutcome",
    "CancelResult",
    "EventLog",
    "HeldAppend",
    "Reroute",
    "RerouteResult",
    "SettleResult",
    "Settlement",
    "Submission",
    "SubmitResult",
]
