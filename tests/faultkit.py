"""Sizes of the fault tests.

By default a fault test runs at the size RELIABILITY.md gives for its figure;
``EVENTCORE_TEST_FAULT_SIZE=quick`` picks a smaller run of the same faults, for
the extra passes of the suite (on other servers) that need not repeat the full
one. (``EVENTCORE_TEST_...``, like the suite's other knobs: eventcore's config
loader leaves that prefix alone, where any other ``EVENTCORE_`` variable must
name a config key.)
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

SIZE_VAR = "EVENTCORE_TEST_FAULT_SIZE"


def fault_size(full: T, quick: T) -> T:
    """``full`` unless the suite runs with ``EVENTCORE_TEST_FAULT_SIZE=quick``."""
    value = os.environ.get(SIZE_VAR, "full")
    if value not in ("full", "quick"):
        raise ValueError(f"{SIZE_VAR}={value!r}: expected 'full' or 'quick'")
    return quick if value == "quick" else full
