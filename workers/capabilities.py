"""What this machine can run, and which queues that lets a worker read.

:func:`detect` measures the node once at start (CPU cores, memory, CUDA devices
through torch) and adds what the worker was configured with (handlers,
models); the result is announced in ``NodeStarted``. :func:`satisfies`,
:func:`unmet` and :func:`eligible_queues` are pure: they match those
capabilities against the requirements declared on each queue.
:func:`free_memory_mb` and :func:`free_gpu_memory_mb` are cheap readings for
heartbeats.

CUDA caveat: asking torch for device properties or free memory initialises
CUDA in the calling process, and a CUDA-initialised process cannot be forked
into a child that uses CUDA. Handler processes must therefore be started with
the ``spawn`` or ``forkserver`` method.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Literal

from eventcore.config import QueueConfig
from eventcore.errors import EventcoreError
from eventcore.events import Capabilities, GpuInfo

__all__ = [
    "detect",
    "eligible_queues",
    "free_gpu_memory_mb",
    "free_memory_mb",
    "satisfies",
    "unmet",
]

logger = logging.getLogger(__name__)

_MB = 1024 * 1024


def detect(
    *,
    gpu: Literal["auto", "on", "off"] = "auto",
    handlers: Sequence[str] = (),
    models: Sequence[str] = (),
    declared_gpus: Sequence[GpuInfo] | None = None,
    cpu_cores: int | None = None,
    memory_mb: int | None = None,
) -> Capabilities:
    """This node's capabilities.

    ``cpu_cores`` and ``memory_mb`` default to what the machine reports (the
    cores this process may run on; total memory, 0 if unknown). GPUs are
    ``declared_gpus`` when given, for machines where torch cannot see the
    device; otherwise none with ``gpu="off"``, and the CUDA devices torch finds
    with ``"auto"`` or ``"on"``. ``"on"`` raises :class:`EventcoreError` when
    that leaves no GPU, so a GPU node with a broken driver fails at start
    instead of quietly reading only CPU queues.
    """
    if gpu not in ("auto", "on", "off"):
        raise ValueError(f"gpu must be 'auto', 'on' or 'off', got {gpu!r}")
    reason = "none declared"
    if declared_gpus is not None:
        gpus = tuple(declared_gpus)
    elif gpu == "off":
        gpus = ()
    else:
        gpus, reason = _cuda_devices()
    if gpu == "on" and not gpus:
        raise EventcoreError(
            f"worker.gpu is 'on' but no CUDA device was found ({reason}). Install a "
            "CUDA build of torch; or, if the GPU is there but torch cannot see it, "
            "declare it with detect(declared_gpus=[GpuInfo(index=0, name=..., "
            "memory_mb=...)]); or set worker.gpu to 'auto' or 'off' "
            "(EVENTCORE_WORKER__GPU) to run without one"
        )
    return Capabilities(
        cpu_cores=_cpu_cores() if cpu_cores is None else cpu_cores,
        memory_mb=_total_memory_mb() if memory_mb is None else memory_mb,
        gpus=gpus,
        # Order kept as configured, duplicates dropped: the list is shown to people.
        handlers=tuple(dict.fromkeys(handlers)),
        models=tuple(dict.fromkeys(models)),
    )


def free_memory_mb() -> int | None:
    """Memory available for new work (``MemAvailable``), or ``None`` if unknown."""
    return _meminfo_mb("MemAvailable")


def free_gpu_memory_mb() -> tuple[int, ...]:
    """Free memory of each CUDA device, by index; empty without CUDA."""
    torch = _torch()
    if torch is None:
        return ()
    try:
        if not torch.cuda.is_available():
            return ()
        return tuple(torch.cuda.mem_get_info(i)[0] // _MB for i in range(torch.cuda.device_count()))
    except RuntimeError as e:  # a driver that fails now is worth a line, not a dead heartbeat
        logger.warning("cannot read free GPU memory: %s", e)
        return ()


# -- matching -------------------------------------------------------------------


def unmet(caps: Capabilities, queue: QueueConfig) -> list[str]:
    """Why a node with ``caps`` may not read ``queue``, one reason per requirement;
    empty if it may."""
    reasons = []
    # A GPU memory minimum implies a GPU even when `gpu` was left false: that is
    # the only reading of such a queue that is not a silent no-op.
    if queue.gpu or queue.min_gpu_memory_mb > 0:
        if not caps.gpus:
            reasons.append("needs a GPU; this node has none")
        elif all(g.memory_mb < queue.min_gpu_memory_mb for g in caps.gpus):
            largest = max(g.memory_mb for g in caps.gpus)
            reasons.append(
                f"needs a GPU with {queue.min_gpu_memory_mb} MB of memory; "
                f"the largest here has {largest} MB"
            )
    if caps.cpu_cores < queue.min_cores:
        reasons.append(f"needs {queue.min_cores} CPU cores; this node has {caps.cpu_cores}")
    if caps.memory_mb < queue.min_memory_mb:
        reasons.append(
            f"needs {queue.min_memory_mb} MB of memory; this node has {caps.memory_mb} MB"
        )
    missing = [m for m in queue.models if m not in caps.models]
    if missing:
        reasons.append(f"needs models not installed here: {', '.join(missing)}")
    if queue.kinds and not any(k in caps.handlers for k in queue.kinds):
        reasons.append(f"takes kinds {', '.join(queue.kinds)}; this node has no handler for any")
    return reasons


def satisfies(caps: Capabilities, queue: QueueConfig) -> bool:
    """Whether a node with ``caps`` meets every requirement of ``queue``."""
    return not unmet(caps, queue)


def eligible_queues(caps: Capabilities, queues: Sequence[QueueConfig]) -> list[QueueConfig]:
    """The queues a node with ``caps`` may read, in declaration order."""
    return [q for q in queues if satisfies(caps, q)]


# -- measuring --------------------------------------------------------------------


def _cpu_cores() -> int:
    # The affinity mask is what this process may actually use (taskset, cpusets
    # in containers); cpu_count() is the whole machine.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _total_memory_mb() -> int:
    total = _meminfo_mb("MemTotal")
    if total is not None:
        return total
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // _MB
    except (AttributeError, ValueError, OSError):
        # 0 rather than a guess: a queue with a memory minimum then stays unread.
        logger.warning("cannot tell this machine's memory; counting it as 0 MB")
        return 0


def _meminfo_mb(field: str) -> int | None:
    """A ``/proc/meminfo`` field (reported in kB) in MB, or None where there is none."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name == field:
                    return int(value.split()[0]) // 1024
    except (OSError, ValueError, IndexError):
        pass  # not Linux, or a format we do not know: the callers have fallbacks
    return None


@functools.cache
def _torch() -> ModuleType | None:
    """torch, imported on first use (it takes seconds and most calls never need
    it), or None if it cannot be imported."""
    try:
        import torch
    except Exception as e:
        # Broad on purpose: besides ImportError, a broken install fails with
        # OSError (missing CUDA libraries), RuntimeError and others. Any of
        # them means "no GPU here", which the worker can live with.
        logger.warning("torch cannot be imported, so no GPU is used: %s: %s", type(e).__name__, e)
        return None
    return torch


def _cuda_devices() -> tuple[tuple[GpuInfo, ...], str]:
    """The CUDA devices torch sees, and if there are none, why."""
    torch = _torch()
    if torch is None:
        return (), "torch cannot be imported"
    try:
        if not torch.cuda.is_available():
            # ROCm builds answer through torch.cuda too, with version.hip set.
            if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
                return (), f"torch {torch.__version__} is a CPU-only build"
            return (), "torch.cuda.is_available() is False: no device or no working driver"
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(GpuInfo(index=i, name=props.name, memory_mb=props.total_memory // _MB))
    except RuntimeError as e:
        logger.warning("CUDA is present but failed: %s", e)
        return (), f"CUDA failed: {e}"
    return tuple(gpus), "torch found no CUDA device"
