"""The partition count the suite runs with: ``EVENTCORE_TEST_PARTITIONS`` (1 unless set).

Every fixture and settings helper that does not ask for a count of its own
takes this one, so the log the test reads and the app or worker it runs agree.
"""

from __future__ import annotations

import os

PARTITIONS = int(os.environ.get("EVENTCORE_TEST_PARTITIONS", "1"))
