"""A lease member's default memory limit: its devices' share of the machine (limits.py)."""

from __future__ import annotations

from gpupool.agent.sandbox.limits import MEMORY_FLOOR_BYTES, lease_memory_bytes


def test_a_cpu_lease_gets_its_devices_share_of_host_memory() -> None:
    # two CPU devices of 8 GiB each (devices.py splits host memory by cores)
    assert lease_memory_bytes([(False, 8192), (False, 8192)], gpus=0, host_mb=65536) == 16 << 30


def test_a_gpu_lease_gets_host_memory_by_gpu_not_the_gpus_own_memory() -> None:
    # an 80 GB GPU on a machine of 4 GPUs and 512 GiB: a quarter of the host, not 80 GB
    limit = lease_memory_bytes([(True, 81_559)], gpus=4, host_mb=512 * 1024)
    assert limit == 128 << 30
    assert lease_memory_bytes([(True, 81_559)] * 2, gpus=4, host_mb=512 * 1024) == 256 << 30


def test_never_below_what_a_ray_node_needs() -> None:
    assert lease_memory_bytes([(False, 256)], gpus=0, host_mb=4096) == MEMORY_FLOOR_BYTES
    assert lease_memory_bytes([], gpus=0, host_mb=0) == MEMORY_FLOOR_BYTES
