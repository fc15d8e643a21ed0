"""Detecting a node's capabilities and matching them against queues.

Detection runs for real on this machine; the only stand-in is a GPU declared
through ``declared_gpus``, which is how a node without NVML declares one too.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventcore.config import DEFAULT_QUEUES, QueueConfig
from eventcore.errors import EventcoreError
from eventcore.events import Capabilities, GpuInfo
from workers.capabilities import (
    detect,
    eligible_queues,
    free_gpu_memory_mb,
    free_memory_mb,
    satisfies,
    unmet,
)

RTX_4090 = GpuInfo(index=0, name="NVIDIA GeForce RTX 4090", memory_mb=24_564)
SMALL_GPU = GpuInfo(index=1, name="NVIDIA T400", memory_mb=2_048)


def cuda_devices() -> int:
    """How many CUDA devices torch sees here: the truth detect() must report."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def meminfo_kb(field: str) -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/meminfo")


needs_proc = pytest.mark.skipif(
    not os.path.exists("/proc/meminfo"), reason="reads /proc/meminfo (Linux)"
)


# -- detect -------------------------------------------------------------------------


@needs_proc
def test_detect_measures_this_machine() -> None:
    caps = detect()
    assert caps.cpu_cores == len(os.sched_getaffinity(0))
    assert caps.memory_mb == meminfo_kb("MemTotal") // 1024 > 0
    assert len(caps.gpus) == cuda_devices()
    assert caps.handlers == caps.models == ()


def test_gpu_off_finds_none() -> None:
    assert detect(gpu="off").gpus == ()


def test_gpu_on_without_a_device_explains_how_to_declare_one() -> None:
    if cuda_devices():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(EventcoreError, match="no CUDA device was found") as e:
        detect(gpu="on")
    assert "declared_gpus" in str(e.value)
    assert "worker.gpu" in str(e.value)


def test_gpu_on_with_an_empty_declaration_is_refused() -> None:
    with pytest.raises(EventcoreError, match="no CUDA device was found"):
        detect(gpu="on", declared_gpus=[])


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_declared_gpus_are_used_as_given(mode: str) -> None:
    caps = detect(gpu=mode, declared_gpus=[RTX_4090, SMALL_GPU])  # type: ignore[arg-type]
    assert caps.gpus == (RTX_4090, SMALL_GPU)


def test_declared_values_override_measurement() -> None:
    caps = detect(
        gpu="off",
        cpu_cores=3,
        memory_mb=1234,
        handlers=["inpaint", "upscale", "inpaint"],
        models=["lama", "lama"],
    )
    assert caps == Capabilities(
        cpu_cores=3, memory_mb=1234, handlers=("inpaint", "upscale"), models=("lama",)
    )


def test_unknown_gpu_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="'maybe'"):
        detect(gpu="maybe")  # type: ignore[arg-type]


@needs_proc
def test_free_memory_is_within_total() -> None:
    free = free_memory_mb()
    assert free is not None and 0 < free <= meminfo_kb("MemTotal") // 1024


def test_free_gpu_memory_has_one_reading_per_device() -> None:
    readings = free_gpu_memory_mb()
    assert len(readings) == cuda_devices()
    assert all(r >= 0 for r in readings)


# -- satisfies / unmet ----------------------------------------------------------------


def caps(
    *,
    cores: int = 8,
    memory: int = 32_768,
    gpus: tuple[GpuInfo, ...] = (),
    handlers: tuple[str, ...] = (),
    models: tuple[str, ...] = (),
) -> Capabilities:
    return Capabilities(
        cpu_cores=cores, memory_mb=memory, gpus=gpus, handlers=handlers, models=models
    )


def test_gpu_queue_needs_a_gpu() -> None:
    queue = QueueConfig(name="g", gpu=True)
    assert unmet(caps(), queue) == ["needs a GPU; this node has none"]
    assert satisfies(caps(gpus=(SMALL_GPU,)), queue)


def test_gpu_queue_needs_one_gpu_with_enough_memory() -> None:
    queue = QueueConfig(name="g", gpu=True, min_gpu_memory_mb=8192)
    assert unmet(caps(gpus=(SMALL_GPU,)), queue) == [
        "needs a GPU with 8192 MB of memory; the largest here has 2048 MB"
    ]
    # Any one device that is big enough will do; it need not be the first.
    assert satisfies(caps(gpus=(SMALL_GPU, RTX_4090)), queue)
    exactly = GpuInfo(index=0, name="x", memory_mb=8192)
    assert satisfies(caps(gpus=(exactly,)), queue)


def test_a_gpu_memory_minimum_implies_a_gpu() -> None:
    queue = QueueConfig(name="g", min_gpu_memory_mb=1024)
    assert not satisfies(caps(), queue)
    assert satisfies(caps(gpus=(SMALL_GPU,)), queue)


def test_cpu_queue_does_not_need_a_gpu() -> None:
    assert satisfies(caps(), QueueConfig(name="c"))


def test_cores_and_memory_minimums() -> None:
    queue = QueueConfig(name="c", min_cores=4, min_memory_mb=4096)
    assert satisfies(caps(cores=4, memory=4096), queue)
    assert unmet(caps(cores=2, memory=1024), queue) == [
        "needs 4 CPU cores; this node has 2",
        "needs 4096 MB of memory; this node has 1024 MB",
    ]


def test_every_listed_model_must_be_installed() -> None:
    queue = QueueConfig(name="m", models=("lama", "mat"))
    assert satisfies(caps(models=("mat", "lama", "sd")), queue)
    assert unmet(caps(models=("lama",)), queue) == ["needs models not installed here: mat"]


def test_listed_kinds_need_one_handler() -> None:
    queue = QueueConfig(name="k", kinds=("inpaint", "upscale"))
    assert satisfies(caps(handlers=("upscale",)), queue)
    assert unmet(caps(handlers=("resize",)), queue) == [
        "takes kinds inpaint, upscale; this node has no handler for any"
    ]
    assert satisfies(caps(), QueueConfig(name="any-kind"))


def test_all_unmet_requirements_are_reported() -> None:
    queue = QueueConfig(
        name="all", gpu=True, min_cores=64, min_memory_mb=1 << 20, models=("sd",), kinds=("x",)
    )
    assert len(unmet(caps(), queue)) == 5


# -- eligible_queues with the default queues ------------------------------------------


def names(queues: list[QueueConfig]) -> list[str]:
    return [q.name for q in queues]


def test_a_node_without_image_handlers_reads_only_cpu_light() -> None:
    node = detect(declared_gpus=[RTX_4090], cpu_cores=8, memory_mb=32_768)
    assert names(eligible_queues(node, DEFAULT_QUEUES)) == ["cpu-light"]


def test_small_cpu_box_reads_only_cpu_light() -> None:
    node = detect(gpu="off", cpu_cores=2, memory_mb=8192)
    assert names(eligible_queues(node, DEFAULT_QUEUES)) == ["cpu-light"]


IMAGE = ("inpaint", "upscale")


def test_big_cpu_box_reads_both_cpu_queues() -> None:
    node = detect(gpu="off", cpu_cores=8, memory_mb=32_768, handlers=IMAGE)
    assert names(eligible_queues(node, DEFAULT_QUEUES)) == ["cpu-heavy", "cpu-light"]


def test_small_gpu_reads_gpu_low_but_not_gpu_high() -> None:
    node = detect(declared_gpus=[SMALL_GPU], cpu_cores=2, memory_mb=8192, handlers=IMAGE)
    assert names(eligible_queues(node, DEFAULT_QUEUES)) == ["gpu-low", "cpu-light"]


def test_24gb_gpu_workstation_reads_every_default_queue() -> None:
    node = detect(gpu="on", declared_gpus=[RTX_4090], cpu_cores=8, memory_mb=32_768, handlers=IMAGE)
    assert eligible_queues(node, DEFAULT_QUEUES) == list(DEFAULT_QUEUES)


# -- properties -------------------------------------------------------------------------

gpu_infos = st.builds(
    GpuInfo, index=st.integers(0, 7), name=st.just("gpu"), memory_mb=st.integers(0, 81_920)
)
capabilities = st.builds(
    Capabilities,
    cpu_cores=st.integers(1, 128),
    memory_mb=st.integers(0, 1 << 20),
    gpus=st.lists(gpu_infos, max_size=3).map(tuple),
    handlers=st.lists(st.sampled_from(["inpaint", "upscale"]), unique=True).map(tuple),
    models=st.lists(st.sampled_from(["lama", "sd"]), unique=True).map(tuple),
)


@given(capabilities, st.integers(0, 64), st.integers(0, 1 << 16), st.integers(0, 1 << 16))
def test_more_resources_never_lose_a_queue(
    node: Capabilities, cores: int, memory: int, gpu_memory: int
) -> None:
    bigger = Capabilities(
        cpu_cores=node.cpu_cores + cores,
        memory_mb=node.memory_mb + memory,
        gpus=(*node.gpus, GpuInfo(index=9, name="extra", memory_mb=gpu_memory)),
        handlers=(*node.handlers, "resize"),
        models=(*node.models, "mat"),
    )
    queues = (*DEFAULT_QUEUES, QueueConfig(name="m", models=("lama",), kinds=("inpaint",)))
    assert set(names(eligible_queues(node, queues))) <= set(names(eligible_queues(bigger, queues)))
