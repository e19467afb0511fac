"""An NVML double: the subset of `pynvml` that `gpupool.agent.nvml` calls, over fake GPUs.

It returns what the real library returns (bytes or str names, a memory struct with `total`,
a PCI struct with `busId`, the CUDA version as 1000*major + 10*minor) and raises an
`NVMLError` subclass from `nvmlInit` when told the driver library is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        return SimpleNamespace(total=handle.memory_bytes, used=0, free=handle.memory_bytes)

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:  # noqa: N802
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> bytes:  # noqa: N802
        return handle.name.encode()  # older pynvml releases return bytes

    def nvmlDeviceGetPciInfo(self, handle: FakeGpu) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(busId=handle.pci_bus_id.encode())
