"""Task ids and their partitions.

Task ids are UUIDv7 strings: a 48-bit millisecond timestamp, then a 12-bit
sequence that keeps ids made in the same millisecond by one process in order,
then random bits. Their text sorts in time order, and the creation time can be
read back, which lets the log start a task's history scan at its birth.

A task's partition is ``crc32(id) % partitions``: stable across processes,
machines and Python versions (unlike ``hash``).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import zlib

__all__ = [
    "id_time_ms",
    "new_task_id",
    "parse_stream_id",
    "partition_of",
    "stream_id_key",
    "task_id_in_partition",
]

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def new_task_id(now_ms: int | None = None) -> str:
    """A new time-ordered, unique task id (UUIDv7 text form)."""
    global _last_ms, _seq
    with _lock:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        if ms <= _last_ms:
            # Same millisecond (or the clock stepped back): keep order by
            # counting within the last millisecond we used.
            ms = _last_ms
            _seq += 1
            if _seq > 0xFFF:
                ms += 1
                _seq = 0
        else:
            _seq = 0
        _last_ms = ms
        seq = _seq
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


def id_time_ms(task_id: str) -> int:
    """The creation time (ms since the epoch) written into a UUIDv7 task id."""
    return uuid.UUID(task_id).int >> 80


def partition_of(task_id: str, partitions: int) -> int:
    """The partition a task id belongs to."""
    if partitions <= 1:
        return 0
    return zlib.crc32(task_id.encode()) % partitions


def task_id_in_partition(partition: int, partitions: int) -> str:
    """A new task id that maps to ``partition``.

    Used for idempotent submits: the idempotency key picks the partition (so a
    retried submit finds its key), and the task id must live in the same one.
    About ``partitions`` tries are expected; each is a microsecond.
    """
    if not 0 <= partition < max(partitions, 1):
        raise ValueError(f"partition {partition} out of range for {partitions} partitions")
    while True:
        task_id = new_task_id()
        if partition_of(task_id, partitions) == partition:
            return task_id


def is_task_id(text: str) -> bool:
    """Whether ``text`` is a task id in canonical form."""
    try:
        return str(uuid.UUID(text)) == text and uuid.UUID(text).version == 7
    except ValueError:
        return False


_MAX_PART = 2**64 - 1


def _digits(text: str) -> bool:
    # ASCII digits only: Python's int() also takes "1_000", " 1" and other
    # scripts' digits (Arabic-Indic ones, say), which Redis does not, so a
    # lenient parse let a bad id through to Redis instead of refusing it.
    # (No regex: this runs for every feed item.)
    return 0 < len(text) <= 20 and text.isascii() and text.isdigit()


def _parse(entry_id: str, *, seq_required: bool) -> tuple[int, int]:
    ms, dash, seq = entry_id.partition("-") if isinstance(entry_id, str) else ("", "", "")
    if not _digits(ms) or (dash and not _digits(seq)) or (seq_required and not dash):
        raise ValueError(f"{entry_id!r} is not a stream entry id (<ms>-<seq>, ASCII digits)")
    ms_n, seq_n = int(ms), int(seq or 0)
    if ms_n > _MAX_PART or seq_n > _MAX_PART:
        raise ValueError(f"{entry_id!r} is out of range: each part is below 2**64")
    return ms_n, seq_n


def parse_stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id given by a user (``Last-Event-ID``, ``after=``, ``--at``):
    exactly ``<ms>-<seq>``, ASCII digits, each part below 2**64, as a pair of
    numbers; ValueError naming the text otherwise. The one parser for ids that
    come from outside."""
    return _parse(entry_id, seq_required=True)


def stream_id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id ``"ms-seq"`` as a pair of numbers, for comparing
    (``"ms"`` alone means seq 0, as Redis reads it); ValueError when it is
    not one. Ids from users go through :func:`parse_stream_id`."""
    return _parse(entry_id, seq_required=False)
