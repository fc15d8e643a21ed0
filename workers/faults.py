"""Fault injection for the fault tests: ``EVENTCORE_CRASH_AT=<point>`` makes
the worker exit abruptly (``os._exit(137)``, as a SIGKILL would) at that
point. Points: ``after_claim`` (claimed and started, handler not finished),
``after_result_before_ack`` (the outcome is known, the settle not sent)."""

from __future__ import annotations

import os

POINTS = ("after_claim", "after_result_before_ack")
_armed = os.environ.get("EVENTCORE_CRASH_AT", "")


def crash_point(name: str) -> None:
    if _armed == name:
        os._exit(137)
