"""GPU pinning: a lease's binding names its own GPUs only, by UUID and device node, through
the NVML double; on real hardware (`gpu`) a process with the binding's environment sees
exactly the leased GPUs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpupool.agent.nvml import load_nvml
from gpupool.agent.sandbox.gpus import GpuBindingError, bind_gpus, gpu_indices, lease_gpu_env
from gpupool.domain.models import DeviceKind, DeviceSpec
from gpupool.testing import FakeGpu, FakeNvml

# Minor numbers need not follow NVML's index order: here they run backwards.
EIGHT = [
    FakeGpu(f"GPU-{i:08x}-gps", "NVIDIA H100", 80 << 30, f"0000:{i + 1:02x}:00.0", minor=7 - i)
    for i in range(8)
]


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    for name in ("nvidiactl", "nvidia-uvm", *(f"nvidia{m}" for m in range(8))):
        (tmp_path / name).touch()  # no nvidia-uvm-tools on this "driver"
    return tmp_path


def test_two_leases_on_one_machine_each_get_only_their_own_gpus(dev: Path) -> None:
    nvml = FakeNvml(EIGHT)
    a = bind_gpus(nvml, [3, 1], dev)
    b = bind_gpus(nvml, [6], dev)
    assert a.uuids == (EIGHT[3].uuid, EIGHT[1].uuid)
    assert a.env["CUDA_VISIBLE_DEVICES"] == f"{EIGHT[3].uuid},{EIGHT[1].uuid}"
    assert a.env["NVIDIA_VISIBLE_DEVICES"] == a.env["CUDA_VISIBLE_DEVICES"]
    assert a.device_nodes == (
        str(dev / "nvidia4"),
        str(dev / "nvidia6"),
        str(dev / "nvidiactl"),
        str(dev / "nvidia-uvm"),
    )
    assert b.uuids == (EIGHT[6].uuid,) and b.minors == (1,)
    assert b.device_nodes[0] == str(dev / "nvidia1")
    assert set(a.uuids).isdisjoint(b.uuids)
    gpu_nodes = {n for n in a.device_nodes + b.device_nodes if n[-1].isdigit()}
    assert len(gpu_nodes) == 3  # no GPU node is in both
    assert (a.num_gpus, b.num_gpus) == (2, 1)
    assert nvml.initialized == 0  # every init was paired with its shutdown


def test_a_gpu_the_machine_lacks_or_named_twice_is_refused_clearly() -> None:
    nvml = FakeNvml(EIGHT[:2])
    with pytest.raises(GpuBindingError, match="no GPU 2 here: this machine has 2"):
        bind_gpus(nvml, [2])
    with pytest.raises(GpuBindingError, match=r"GPU indices named twice: \[1, 1\]"):
        bind_gpus(nvml, [1, 1])
    with pytest.raises(GpuBindingError, match="NVML is unavailable"):
        bind_gpus(FakeNvml(EIGHT, library_present=False), [0])


def _spec(name: str, kind: DeviceKind) -> DeviceSpec:
    return DeviceSpec(local_name=name, kind=kind, model="m", memory_mb=1, price_micros_per_hour=1)


def test_the_ray_node_env_follows_the_lease_devices() -> None:
    nvml = FakeNvml(EIGHT)
    specs = [_spec("gpu5", DeviceKind.GPU), _spec("gpu2", DeviceKind.GPU)]
    assert gpu_indices(specs) == [5, 2]
    env = lease_gpu_env(nvml, specs)
    assert env["CUDA_VISIBLE_DEVICES"] == f"{EIGHT[5].uuid},{EIGHT[2].uuid}"
    assert lease_gpu_env(nvml, [_spec("cpu0-3", DeviceKind.CPU)]) == {}
    with pytest.raises(GpuBindingError, match="not a GPU device name: 'gpuX'"):
        gpu_indices([_spec("gpuX", DeviceKind.GPU)])


SEES = """
import ctypes, json, pynvml
pynvml.nvmlInit()
n = pynvml.nvmlDeviceGetCount()
nvml = [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(n)]
cuda = ctypes.CDLL("libcuda.so.1")
count = ctypes.c_int(-1)
assert cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
uuids = []
for i in range(count.value):
    dev, raw = ctypes.c_int(), (ctypes.c_ubyte * 16)()
    assert cuda.cuDeviceGet(ctypes.byref(dev), i) == 0 and cuda.cuDeviceGetUuid(raw, dev) == 0
    h = bytes(raw).hex()
    uuids.append(f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
nvml = [u.decode() if isinstance(u, bytes) else u for u in nvml]
print(json.dumps({"nvml": nvml, "cuda": uuids}))
"""


@pytest.mark.gpu
def test_a_process_with_the_binding_env_sees_exactly_the_leased_gpus() -> None:
    nvml = load_nvml()
    if nvml is None:
        pytest.skip("nvidia-ml-py is not installed")
    try:
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
        nvml.nvmlShutdown()
    except nvml.NVMLError:
        pytest.skip("no NVIDIA driver here")
    leased = [count - 1]  # the last GPU: never the one an unpinned process would pick
    binding = bind_gpus(nvml, leased)
    assert all(Path(n).exists() for n in binding.device_nodes)
    out = subprocess.run(
        [sys.executable, "-c", SEES],
        env={"PATH": "/usr/bin:/bin", **binding.env},
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(out.stdout)
    # NVML ignores CUDA_VISIBLE_DEVICES (only device nodes limit it): the container's
    # bind does that. CUDA honours the env: it sees the leased GPU alone.
    assert binding.uuids[0] in seen["nvml"]
    assert seen["cuda"] == list(binding.uuids)
