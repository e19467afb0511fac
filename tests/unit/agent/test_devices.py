"""Device discovery: NVIDIA GPUs through NVML (here through the NVML double), else CPU cores."""

from __future__ import annotations

import pytest

from gpupool.agent.devices import cpu_devices, discover, parse_cpu_list
from gpupool.agent.nvml import cuda_version_text, probe_gpus
from gpupool.domain.models import DeviceKind
from gpupool.testing import FakeGpu, FakeNvml

H100 = FakeGpu(
    "GPU-5f2c1e0a-8d6b-4c3e-9a7f-0123456789ab",
    "NVIDIA H100 80GB HBM3",
    85_520_809_984,
    "00000000:18:00.0",
)
A100 = FakeGpu(
    "GPU-0b1c2d3e-4f5a-6b7c-8d9e-abcdefabcdef",
    "NVIDIA A100-SXM4-40GB",
    42_949_672_960,
    "00000000:3B:00.0",
)


def test_gpus_are_reported_with_what_nvml_says() -> None:
    nvml = FakeNvml([H100, A100], driver="550.54.15", cuda=12040)
    specs = discover(1, None, gpu_price_micros=2_000_000, cpu_price_micros=1, nvml=nvml)
    assert [s.local_name for s in specs] == ["gpu0", "gpu1"]
    h100 = specs[0]
    assert h100.kind is DeviceKind.GPU
    assert h100.model == "NVIDIA H100 80GB HBM3"  # decoded from bytes
    assert h100.uuid == H100.uuid
    assert h100.memory_mb == 81_559
    assert (h100.driver_version, h100.cuda_version) == ("550.54.15", "12.4")
    assert h100.pci_bus_id == "00000000:18:00.0"
    assert h100.price_micros_per_hour == 2_000_000
    assert nvml.initialized == 0  # shut down again


def test_without_the_nvidia_driver_the_machine_offers_cpu_devices() -> None:
    nvml = FakeNvml(library_present=False)
    assert probe_gpus(nvml) == []
    specs = discover(2, "0-3", gpu_price_micros=1, cpu_price_micros=50_000, nvml=nvml)
    assert [s.local_name for s in specs] == ["cpu0-1", "cpu2-3"]
    assert all(s.kind is DeviceKind.CPU and s.uuid is None for s in specs)
    assert [s.cores for s in specs] == [(0, 1), (2, 3)]


def test_driver_present_but_no_gpu_means_cpu_devices() -> None:
    specs = discover(1, "0", 1, 1, nvml=FakeNvml([]))
    assert [s.kind for s in specs] == [DeviceKind.CPU]


def test_cpu_groups_are_uniform() -> None:
    specs = cpu_devices([0, 1, 2, 3, 4], 2, 1, "cpu", memory_mb=5000)
    assert [s.cores for s in specs] == [(0, 1), (2, 3)]  # core 4 alone is not offered
    assert all(s.memory_mb == 2000 for s in specs)
    assert [s.cores for s in cpu_devices([7], 4, 1, "cpu", 100)] == [(7,)]


@pytest.mark.parametrize(
    ("text", "cores"),
    [
        ("0", [0]),
        ("0-3", [0, 1, 2, 3]),
        ("0-1,4,6-7", [0, 1, 4, 6, 7]),
        ("3,1,1", [1, 3]),
    ],
)
def test_parse_cpu_list(text: str, cores: list[int]) -> None:
    assert parse_cpu_list(text) == cores


@pytest.mark.parametrize("bad", ["a", "1-", "-1", "1-x"])
def test_parse_cpu_list_refuses_garbage(bad: str) -> None:
    with pytest.raises(ValueError, match="CPU list"):
        parse_cpu_list(bad)


def test_cuda_version_text() -> None:
    assert cuda_version_text(12040) == "12.4"
    assert cuda_version_text(11080) == "11.8"


@pytest.mark.gpu
def test_real_nvml_lists_real_gpus() -> None:
    import pynvml

    gpus = probe_gpus(pynvml)
    assert gpus, "NVML found no GPU on a machine marked as having one"
    for gpu in gpus:
        assert gpu.uuid.startswith("GPU-")
        assert gpu.memory_mb > 1000
        assert gpu.driver_version and gpu.cuda_version
