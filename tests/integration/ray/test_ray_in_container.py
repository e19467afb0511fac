"""A Ray head starts inside a lease container and its dashboard answers from the host."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from gpupool.agent.ray.cmd import list_nodes, start_argv
from gpupool.agent.sandbox.cgroup import Sandboxes, find_cgroup2_root
from gpupool.agent.sandbox.container import (
    Bind,
    Containers,
    ContainerSpec,
    bwrap_path,
    give,
    lease_uid,
    uids_in_use,
)
from gpupool.domain.models import DeviceKind
from gpupool.domain.ray import LocalDevice, RayRole

BWRAP = bwrap_path()
CGROUP = find_cgroup2_root()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(BWRAP is None or CGROUP is None, reason="needs root, bwrap, cgroup v2"),
]


def test_ray_head_starts_inside_a_container_and_answers() -> None:
    assert BWRAP is not None and CGROUP is not None
    base = Path(tempfile.mkdtemp(prefix="gpc-"))
    temp = Path(tempfile.mkdtemp(prefix="gpc-r"))  # short: Ray's socket paths
    lease = base / "lease"
    lease.mkdir()
    uid = lease_uid("gpc-ray", uids_in_use())
    give(lease, uid, uid)
    give(temp, uid, uid)
    sandboxes = Sandboxes("gpc-ray", CGROUP)
    spec = ContainerSpec(
        "l-ray", lease, uid, uid, share_host_network=True, pids_max=4096, binds=(Bind(temp, True),)
    )
    box = Containers(sandboxes, "gpc-ray", BWRAP).create(spec)
    try:
        device = LocalDevice("w:cpu0", DeviceKind.CPU, 1)
        argv, ports = start_argv(RayRole.HEAD, "127.0.0.1", temp, [device], 80 << 20)
        log = temp / "start.log"
        script = '"$@" > "$0" 2>&1; echo $? > "$0.rc"'
        box.spawn(["/bin/sh", "-c", script, str(log), *argv], {"RAY_USAGE_STATS_ENABLED": "0"})
        rc = Path(f"{log}.rc")
        deadline = time.monotonic() + 150
        while not rc.exists():
            assert time.monotonic() < deadline, "ray start did not finish"
            time.sleep(0.5)
        assert rc.read_text().strip() == "0", log.read_text()[-1500:]
        url = f"http://127.0.0.1:{ports['dashboard-port']}"
        while True:
            try:
                nodes = list_nodes(url)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the dashboard never answered"
                time.sleep(1)
        assert [n.alive for n in nodes] == [True] and "device:w:cpu0" in nodes[0].resources
        running = {Path(f"/proc/{p}/comm").read_text().strip() for p in box.pids()}
        assert {"raylet", "gcs_server"} <= running  # Ray's daemons are the lease's
    finally:
        box.destroy()
        sandboxes.release()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)
