"""NVIDIA GPUs through NVML (nvidia-ml-py, imported as `pynvml`).

`probe_gpus` takes the NVML module as a parameter so that tests can hand in the NVML double
from `gpupool.testing`; the product passes the real module. A machine without the NVIDIA
driver (NVMLError_LibraryNotFound, as on CPU-only machines) simply has no GPUs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

log = logging.getLogger("gpupool.agent")


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    memory_mb: int
    driver_version: str
    cuda_version: str
    pci_bus_id: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def load_nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    module: ModuleType = pynvml
    return module


def cuda_version_text(version: int) -> str:
    """NVML reports the CUDA driver version as 1000*major + 10*minor (12040 → "12.4")."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def probe_gpus(nvml: Any) -> list[GpuInfo]:
    """Every GPU NVML can see, or [] when NVML or its driver library is absent."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        log.info("event=nvml_unavailable reason=%s", _text(exc))
        return []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = cuda_version_text(int(nvml.nvmlSystemGetCudaDriverVersion()))
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_mb=int(memory.total) // (1024 * 1024),
                    driver_version=driver,
                    cuda_version=cuda,
                    pci_bus_id=_text(nvml.nvmlDeviceGetPciInfo(handle).busId),
                )
            )
        return gpus
    finally:
        nvml.nvmlShutdown()
