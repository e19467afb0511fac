"""What a machine offers: its NVIDIA GPUs when NVML finds any, otherwise groups of CPU cores.

There is no simulated GPU: a machine without one offers CPU devices, and says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpupool.agent.nvml import GpuInfo, load_nvml, probe_gpus
from gpupool.agent.sandbox.procs import parse_cpu_list
from gpupool.domain.models import DeviceKind, DeviceSpec


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def total_memory_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def core_name(cores: Sequence[int]) -> str:
    return f"cpu{cores[0]}" if len(cores) == 1 else f"cpu{cores[0]}-{cores[-1]}"


def cpu_devices(
    cores: Sequence[int], group_size: int, price_micros: int, model: str, memory_mb: int
) -> list[DeviceSpec]:
    """Split the offered cores into devices of `group_size` cores each (a remainder smaller
    than a group is not offered, so every device of a worker is the same size)."""
    if group_size < 1:
        raise ValueError("a CPU device needs at least one core")
    cores = sorted(cores)
    groups = [cores[i : i + group_size] for i in range(0, len(cores), group_size)]
    groups = [g for g in groups if len(g) == group_size] or [cores]
    share = memory_mb // max(len(cores), 1)
    return [
        DeviceSpec(
            local_name=core_name(g),
            kind=DeviceKind.CPU,
            model=model,
            memory_mb=share * len(g),
            price_micros_per_hour=price_micros,
            cores=tuple(g),
        )
        for g in groups
    ]


def gpu_devices(gpus: Sequence[GpuInfo], price_micros: int) -> list[DeviceSpec]:
    return [
        DeviceSpec(
            local_name=f"gpu{g.index}",
            kind=DeviceKind.GPU,
            model=g.name,
            memory_mb=g.memory_mb,
            price_micros_per_hour=price_micros,
            uuid=g.uuid,
            driver_version=g.driver_version,
            cuda_version=g.cuda_version,
            pci_bus_id=g.pci_bus_id,
        )
        for g in gpus
    ]


def discover(
    cpu_group_size: int,
    cpu_list: str | None,
    gpu_price_micros: int,
    cpu_price_micros: int,
    nvml: Any = None,
) -> list[DeviceSpec]:
    """The devices to offer: GPUs if NVML sees any, else CPU core groups."""
    module = nvml if nvml is not None else load_nvml()
    gpus = probe_gpus(module) if module is not None else []
    if gpus:
        return gpu_devices(gpus, gpu_price_micros)
    cores = parse_cpu_list(cpu_list) if cpu_list else sorted(os.sched_getaffinity(0))
    return cpu_devices(cores, cpu_group_size, cpu_price_micros, cpu_model(), total_memory_mb())
