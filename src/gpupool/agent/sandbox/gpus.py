"""A GPU lease sees only its GPUs: from NVML, the leased devices' UUIDs and minor numbers give
the device nodes a lease container binds (`/dev/nvidia<minor>` of each leased GPU and the
driver's control nodes, never another GPU's node) and the environment its processes start
with, `CUDA_VISIBLE_DEVICES` / `NVIDIA_VISIBLE_DEVICES` set to the UUIDs.

UUIDs rather than indices, because CUDA's and NVML's index orders differ (CUDA orders by
speed unless CUDA_DEVICE_ORDER=PCI_BUS_ID) while a UUID names one device everywhere; Ray reads
the list and hands out its ids 0..n-1 as positions in it, so Ray's GPU 0 inside the lease is
the lease's first GPU, whatever its index on the machine (docs/sandbox.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpupool.domain.models import DeviceKind, DeviceSpec

# Every CUDA process opens these besides its GPUs' own nodes; nvidia-uvm-tools is absent on
# some drivers, nvidia-modeset serves displays only and stays out.
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")


class GpuBindingError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class GpuBinding:
    """What a lease container gets for its GPUs (`ContainerSpec(device_nodes=, env=)`)."""

    indices: tuple[int, ...]  # NVML indices on this machine
    uuids: tuple[str, ...]
    minors: tuple[int, ...]
    device_nodes: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def num_gpus(self) -> int:
        """Ray's `--num-gpus` for the lease's node: exactly the leased GPUs."""
        return len(self.uuids)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def bind_gpus(nvml: Any, indices: Sequence[int], dev_root: Path = Path("/dev")) -> GpuBinding:
    """The binding of the GPUs at these NVML indices; GpuBindingError for an index the machine
    lacks or names twice. Control nodes are bound where present (`dev_root`)."""
    if len(set(indices)) != len(indices):
        raise GpuBindingError(f"GPU indices named twice: {sorted(indices)}")
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise GpuBindingError(f"NVML is unavailable: {_text(exc)}") from exc
    try:
        count = int(nvml.nvmlDeviceGetCount())
        uuids, minors = [], []
        for index in indices:
            if not 0 <= index < count:
                raise GpuBindingError(f"no GPU {index} here: this machine has {count}")
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuids.append(_text(nvml.nvmlDeviceGetUUID(handle)))
            minors.append(int(nvml.nvmlDeviceGetMinorNumber(handle)))
    except nvml.NVMLError as exc:
        raise GpuBindingError(f"NVML could not describe GPUs {list(indices)}: {exc}") from exc
    finally:
        nvml.nvmlShutdown()
    nodes = [str(dev_root / f"nvidia{m}") for m in minors]
    nodes += [str(dev_root / n) for n in CONTROL_NODES if (dev_root / n).exists()] if uuids else []
    visible = ",".join(uuids)
    return GpuBinding(
        indices=tuple(indices),
        uuids=tuple(uuids),
        minors=tuple(minors),
        device_nodes=tuple(nodes),
        env={"CUDA_VISIBLE_DEVICES": visible, "NVIDIA_VISIBLE_DEVICES": visible},
    )


def gpu_indices(devices: Sequence[DeviceSpec]) -> list[int]:
    """The NVML indices of a lease's GPU devices (`agent.devices` names them gpu<index>)."""
    found = []
    for d in devices:
        if d.kind is DeviceKind.GPU:
            digits = d.local_name.removeprefix("gpu")
            if not digits.isdigit():
                raise GpuBindingError(f"not a GPU device name: {d.local_name!r}")
            found.append(int(digits))
    return found


def lease_gpu_env(nvml: Any, devices: Sequence[DeviceSpec]) -> dict[str, str]:
    """The GPU environment of a lease member's processes; {} when it leases no GPU."""
    indices = gpu_indices(devices)
    return dict(bind_gpus(nvml, indices).env) if indices else {}
