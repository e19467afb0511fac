"""Two leases on one machine, each on its own core and disk: each lease's processes run only on
its core, and the Ray inside each reports exactly its leased resources."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from gpupool.agent.ray.cmd import start_argv
from gpupool.agent.sandbox.cgroup import Sandboxes, find_cgroup2_root, find_cpuset_root
from gpupool.agent.sandbox.container import (
    Containers,
    ContainerSandbox,
    ContainerSpec,
    bwrap_path,
    lease_uid,
    uids_in_use,
)
from gpupool.agent.sandbox.cryptdisk import CryptDisk, CryptDiskUnavailable, check_available
from gpupool.agent.sandbox.procs import parse_cpu_list
from gpupool.domain.models import DeviceKind
from gpupool.domain.ray import LocalDevice, RayRole

BWRAP = bwrap_path()
CGROUP = find_cgroup2_root()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        BWRAP is None or CGROUP is None or find_cpuset_root() is None or (os.cpu_count() or 1) < 2,
        reason="needs root, bwrap, cgroup v2, a cpuset hierarchy and two cores",
    ),
]


def _cpus_allowed(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return set(parse_cpu_list(line.split(":", 1)[1].strip()))
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def _head(box: ContainerSandbox, home: Path, device: str) -> str:
    argv, ports = start_argv(
        RayRole.HEAD, "127.0.0.1", Path("/tmp/ray"), [LocalDevice(device, DeviceKind.CPU, 1)],
        80 << 20,
    )  # fmt: skip
    log = home / "start.log"
    box.spawn(["/bin/sh", "-c", '"$@" > "$0" 2>&1; echo $? > "$0.rc"', str(log), *argv],
              {"RAY_USAGE_STATS_ENABLED": "0"})  # fmt: skip
    return f"http://127.0.0.1:{ports['dashboard-port']}"


def _resources(dashboard_url: str) -> list[dict[str, float]]:
    """Each alive node's total resources, with quantities, from the head's state API."""
    answer = httpx.get(f"{dashboard_url}/api/v0/nodes", params={"limit": 100}, timeout=5)
    answer.raise_for_status()
    rows = answer.json()["data"]["result"]["result"]
    return [row.get("resources_total") or {} for row in rows if row.get("state") == "ALIVE"]


def test_each_lease_sees_only_its_core_and_ray_reports_only_its_resources() -> None:
    assert BWRAP is not None and CGROUP is not None
    try:
        check_available()
    except CryptDiskUnavailable as exc:
        pytest.skip(str(exc))
    worker = "gpt-two"
    sandboxes = Sandboxes(worker, CGROUP, find_cpuset_root())
    containers = Containers(sandboxes, worker, BWRAP)
    made: list[tuple[ContainerSandbox, CryptDisk, Path]] = []
    try:
        urls = {}
        for core, lease in ((0, "l-two-a"), (1, "l-two-b")):
            base = Path(tempfile.mkdtemp(prefix="gpt-"))
            plain = Path(tempfile.mkdtemp(prefix="gpt-r"))
            plain.rmdir()
            uid = lease_uid(lease, uids_in_use())
            disk = CryptDisk.create(base / "lease", (uid, uid), plain)
            spec = ContainerSpec(
                lease, disk.plain, uid, uid, share_host_network=True, pids_max=4096
            )
            box = containers.create(spec, [core])
            made.append((box, disk, base))
            urls[core] = _head(box, disk.plain, f"w:cpu{core}")
        deadline = time.monotonic() + 150
        seen: dict[int, dict[str, float]] = {}
        while len(seen) < 2:
            assert time.monotonic() < deadline, "the two Ray heads did not both answer"
            for core, url in urls.items():
                if core not in seen:
                    try:
                        nodes = _resources(url)
                    except httpx.HTTPError:
                        continue
                    if nodes:
                        [seen[core]] = nodes
            time.sleep(1)
        for core, resources in seen.items():
            own = {k for k in resources if k.startswith("device:")}
            assert own == {f"device:w:cpu{core}"}  # not the other lease's device
            assert resources["CPU"] == 1.0  # the one leased core, not the machine's two
        for core, (box, _, _) in enumerate(made):
            pids = box.pids()
            assert pids
            for pid in pids:  # every process of the lease, Ray's included, on its core only
                assert _cpus_allowed(pid) == {core}, f"pid {pid} of lease on core {core}"
    finally:
        for box, disk, base in made:
            box.destroy()
            disk.destroy()
            shutil.rmtree(base, ignore_errors=True)
        sandboxes.release()
