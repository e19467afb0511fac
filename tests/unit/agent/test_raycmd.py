"""The Ray adapter's pieces that need no Ray: command lines, temp dirs, stray killing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gpupool.agent.ray.cmd import (
    MAX_TEMP_DIR_CHARS,
    kill_processes_using,
    start_argv,
    temp_dir_for,
)
from gpupool.domain.models import DeviceKind
from gpupool.domain.ray import MIN_OBJECT_STORE_BYTES, LocalDevice, RayRole


def _options(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def test_head_and_worker_command_lines_carry_resources_ports_and_limits(tmp_path: Path) -> None:
    devices = [LocalDevice("w-1:cpu0-1", DeviceKind.CPU, 2)]
    head, ports = start_argv(RayRole.HEAD, "127.0.0.1", tmp_path, devices, 1)
    opts = _options(head)
    assert "--head" in head and opts["include-dashboard"] == "true"
    assert opts["num-cpus"] == "2" and opts["num-gpus"] == "0"
    assert json.loads(opts["resources"]) == {"device:w-1:cpu0-1": 1.0}
    assert int(opts["object-store-memory"]) == MIN_OBJECT_STORE_BYTES  # raised to Ray's floor
    assert opts["temp-dir"] == str(tmp_path)
    assert int(opts["port"]) == ports["port"] and "dashboard-port" in ports
    assert len(set(ports.values())) == len(ports)
    workers = range(int(opts["min-worker-port"]), int(opts["max-worker-port"]) + 1)
    assert len(workers) == 64 and not set(ports.values()) & set(workers)
    assert workers.stop <= 32768  # below the ephemeral range the other ports come from
    worker, _ = start_argv(RayRole.WORKER, "127.0.0.1", tmp_path, devices, 200 << 20, "h:1")
    assert "--head" not in worker and _options(worker)["address"] == "h:1"
    assert "dashboard-port" not in _options(worker)


def test_temp_dirs_stay_short_enough_for_rays_sockets(tmp_path: Path) -> None:
    short = temp_dir_for(Path("/s"), "w-1", "l-abc")
    assert short == Path("/s/ray/l-abc")
    long = temp_dir_for(tmp_path / ("x" * 60), "w-1", "l-abc")
    assert len(str(long)) <= MAX_TEMP_DIR_CHARS
    assert long != temp_dir_for(tmp_path / ("x" * 60), "w-2", "l-abc")


def test_strays_are_found_by_their_environment_and_others_are_left_alone(tmp_path: Path) -> None:
    marker = f"GPUPOOL_SCRATCH_DIR={tmp_path}/scratch"
    env = {**os.environ, "GPUPOOL_SCRATCH_DIR": f"{tmp_path}/scratch"}
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    stray = subprocess.Popen(sleeper, env=env, start_new_session=True)
    bystander = subprocess.Popen(sleeper, start_new_session=True)
    try:
        time.sleep(0.2)  # until exec has replaced the environment
        assert kill_processes_using(tmp_path / "nothing-names-this", marker) == [stray.pid]
        assert stray.wait(timeout=5) == -9
        assert bystander.poll() is None
    finally:
        for proc in (stray, bystander):
            proc.kill()
            proc.wait()
