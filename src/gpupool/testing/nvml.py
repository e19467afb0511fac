"""An NVML double: the subset of `pynvml` that `gpupool.agent.nvml` calls, over fake GPUs.

It returns what the real library returns (bytes or str names, a memory struct with `total`,
a PCI struct with `busId`, the CUDA version as 1000*major + 10*minor) and raises an
`NVMLError` subclass from `nvmlInit` when told the driver library is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's own name
    def __str__(self) -> str:
        return "NVML Shared Library Not Found"


@dataclass(frozen=True)
class FakeGpu:
    uuid: str
    name: str
    memory_bytes: int
    pci_bus_id: str = "00000000:01:00.0"
    minor: int | None = None  # /dev/nvidia<minor>; None: its index on the fake machine


@dataclass
class GpuState:
    compute: dict[int, int] = field(default_factory=dict)  # pid -> used GPU memory (bytes)
    graphics: dict[int, int] = field(default_factory=dict)
    utilization: int = 0
    power_mw: int = 60_000
    temperature_c: int = 40
    memory_used_bytes: int = 0


class FakeNvml:
    NVMLError = NVMLError

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        driver: str = "550.54.15",
        cuda: int = 12040,
        library_present: bool = True,
    ) -> None:
        self.gpus = gpus or []
        self.driver = driver
        self.cuda = cuda
        self.library_present = library_present
        self.initialized = 0
        self._state: dict[str, GpuState] = {}

    def state(self, uuid: str) -> GpuState:
        """What a fake GPU shows now: its running processes and telemetry (tests set it)."""
        return self._state.setdefault(uuid, GpuState())

    def _by_uuid(self, uuid: str) -> FakeGpu:
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise NVMLError(f"no GPU with UUID {uuid}")

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> FakeGpu:  # noqa: N802
        return self._by_uuid(uuid.decode() if isinstance(uuid, bytes) else uuid)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list[SimpleNamespace]:  # noqa: N802
        return [
            SimpleNamespace(pid=pid, usedGpuMemory=mem)
            for pid, mem in self.state(handle.uuid).compute.items()
        ]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: FakeGpu) -> list[SimpleNamespace]:  # noqa: N802
        return [
            SimpleNamespace(pid=pid, usedGpuMemory=mem)
            for pid, mem in self.state(handle.uuid).graphics.items()
        ]

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(gpu=self.state(handle.uuid).utilization, memory=0)

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:  # noqa: N802
        return self.state(handle.uuid).power_mw

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:  # noqa: N802
        return self.state(handle.uuid).temperature_c

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if not self.library_present:
            raise NVMLError_LibraryNotFound()
        self.initialized += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        return self.gpus[index]

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> SimpleNamespace:  # noqa: N802
        used = self.state(handle.uuid).memory_used_bytes
        return SimpleNamespace(
            total=handle.memory_bytes, used=used, free=handle.memory_bytes - used
        )

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:  # noqa: N802
        return handle.uuid

    def nvmlDeviceGetMinorNumber(self, handle: FakeGpu) -> int:  # noqa: N802
        return handle.minor if handle.minor is not None else self.gpus.index(handle)

    def nvmlDeviceGetName(self, handle: FakeGpu) -> bytes:  # noqa: N802
        return handle.name.encode()  # older pynvml releases return bytes

    def nvmlDeviceGetPciInfo(self, handle: FakeGpu) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(busId=handle.pci_bus_id.encode())
