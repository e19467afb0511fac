"""A Ray head starts inside a Docker lease container (a private engine) with exactly its
leased resources, and its daemons are the lease's processes."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from gpupool.agent.ray.cmd import start_argv
from gpupool.agent.ray.node import CONTAINER_RAY_TEMP
from gpupool.agent.sandbox.cgroup import Sandboxes, find_cgroup2_root, find_cpuset_root
from gpupool.agent.sandbox.container import give, lease_uid, uids_in_use
from gpupool.agent.sandbox.docker import DockerContainers, DockerSpec
from gpupool.agent.sandbox.dockerapi import DockerEngine
from gpupool.domain.models import DeviceKind
from gpupool.domain.ray import LocalDevice, RayRole

CGROUP = find_cgroup2_root()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CGROUP is None, reason="needs root and a writable cgroup v2"),
]


def test_ray_head_in_a_docker_lease_reports_exactly_its_resources(docker_socket: Path) -> None:
    assert CGROUP is not None
    base = Path(tempfile.mkdtemp(prefix="gpd-"))
    uid = lease_uid("gpd-ray", uids_in_use())
    give(base, uid, uid)
    sandboxes = Sandboxes("gpd-ray", CGROUP, find_cpuset_root())
    engine = DockerEngine(docker_socket)
    spec = DockerSpec("l-ray", "gpd-ray", base, uid, uid, pids_max=4096, cores=(0,))
    box = DockerContainers(sandboxes, "gpd-ray", engine).create(spec)
    try:
        device = LocalDevice("w:cpu0", DeviceKind.CPU, 1)
        argv, ports = start_argv(RayRole.HEAD, "127.0.0.1", CONTAINER_RAY_TEMP, [device], 80 << 20)
        argv[0] = box.ray_executable()
        log = base / "start.log"
        script = '"$@" > "$0" 2>&1; echo $? > "$0.rc"'
        started = time.monotonic()
        box.spawn(["/bin/sh", "-c", script, str(log), *argv], {"RAY_USAGE_STATS_ENABLED": "0"})
        rc = Path(f"{log}.rc")
        deadline = time.monotonic() + 150
        while not rc.exists():
            assert time.monotonic() < deadline, "ray start did not finish"
            time.sleep(0.5)
        assert rc.read_text().strip() == "0", log.read_text()[-1500:]
        print(f"ray start in the Docker lease: {time.monotonic() - started:.1f} s")
        url = f"http://127.0.0.1:{ports['dashboard-port']}/api/v0/nodes"
        while True:
            try:
                rows = httpx.get(url, timeout=5).json()["data"]["result"]["result"]
                break
            except (httpx.HTTPError, KeyError, ValueError):
                assert time.monotonic() < deadline, "the dashboard never answered"
                time.sleep(1)
        assert len(rows) == 1 and rows[0]["state"] == "ALIVE"
        total = rows[0]["resources_total"]
        assert total["CPU"] == 1 and total["device:w:cpu0"] == 1 and "GPU" not in total
        running = {Path(f"/proc/{p}/comm").read_text().strip() for p in box.pids()}
        assert {"raylet", "gcs_server"} <= running  # Ray's daemons are the lease's
    finally:
        box.destroy()
        engine.close()
        sandboxes.release()
        shutil.rmtree(base, ignore_errors=True)
