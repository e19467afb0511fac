"""On real hardware only (`gpu`): a lease container bound to one GPU sees that GPU alone
through CUDA and NVML, and the CUDA context it opens shows in NVML under the leased GPU as the
lease's process, which the guard leaves alone."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from gpupool.agent.nvml import load_nvml
from gpupool.agent.sandbox.cgroup import Sandboxes, find_cgroup2_root
from gpupool.agent.sandbox.container import (
    Containers,
    ContainerSpec,
    bwrap_path,
    give,
    lease_uid,
    uids_in_use,
)
from gpupool.agent.sandbox.gpus import bind_gpus
from gpupool.agent.sandbox.guard import DeviceView, Guard, LeaseView
from gpupool.domain.models import DeviceKind
from tests.unit.agent.test_gpus import SEES

# SEES, then hold a CUDA context open until told to stop, so NVML lists the process
PRINTED = 'print(json.dumps({"nvml": nvml, "cuda": uuids}))'
HOLDS = (
    SEES.replace(PRINTED, 'out = json.dumps({"nvml": nvml, "cuda": uuids})')
    + """
import os, sys, time
ctx, dev = ctypes.c_void_p(), ctypes.c_int()
assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
assert cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev) == 0
open(sys.argv[1] + ".tmp", "w").write(out)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while not os.path.exists(sys.argv[1] + ".stop"):
    time.sleep(0.1)
"""
)


@pytest.mark.gpu
def test_a_container_sees_only_its_gpu_and_its_cuda_process_is_the_leases() -> None:
    nvml = load_nvml()
    bwrap, root = bwrap_path(), find_cgroup2_root()
    if nvml is None or bwrap is None or root is None:
        pytest.skip("needs nvidia-ml-py, bwrap and cgroup v2")
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        pytest.skip("no NVIDIA driver here")
    count = nvml.nvmlDeviceGetCount()
    binding = bind_gpus(nvml, [count - 1])  # the last GPU: never an unpinned process's choice
    home = Path(tempfile.mkdtemp(prefix="gpg-"))
    uid = lease_uid("l-gpu-test", uids_in_use())
    give(home, uid, uid)
    (home / "holds.py").write_text(HOLDS)
    boxes = Sandboxes(f"gpg-{os.getpid()}", root)
    spec = ContainerSpec(
        "l-gpu-test",
        home,
        uid,
        uid,
        share_host_network=True,
        device_nodes=binding.device_nodes,
        env=binding.env,
        pids_max=256,
    )
    box = Containers(boxes, f"gpg-{os.getpid()}", bwrap).create(spec)
    result = home / "seen.json"
    try:
        box.spawn(["python3", str(home / "holds.py"), str(result)])
        deadline = time.monotonic() + 60
        while not result.exists():
            assert time.monotonic() < deadline, "the container's CUDA process did not start"
            time.sleep(0.2)
        seen = json.loads(result.read_text())
        # Only the leased GPU's device node is bound: NVML and CUDA inside see it alone.
        assert seen["cuda"] == list(binding.uuids)
        assert seen["nvml"] == list(binding.uuids)
        device = DeviceView("w:gpu", "gpu", DeviceKind.GPU, (), binding.uuids[0])
        [observed] = Guard(agent_pid=-1, nvml=nvml).scan([LeaseView("l-gpu-test", box, [device])])
        owners = {pid: owner for pid, _, owner in observed.processes}
        assert owners and set(owners) <= box.pids()  # the context is the container's process
        assert set(owners.values()) == {"lease"} and not observed.violations
    finally:
        (home / "seen.json.stop").write_text("")
        box.destroy()
        boxes.release()
        nvml.nvmlShutdown()
        shutil.rmtree(home, ignore_errors=True)
