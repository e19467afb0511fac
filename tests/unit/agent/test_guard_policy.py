"""What the guard kills now that the machine's cores are partitioned: a process that entered a
lease's devices from outside, never one that merely sits in the system set, never the
agent's own work. Real processes, real cgroups and cpusets (named with `gps`), GPUs through
the NVML double."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.agent.sandbox.cgroup import Sandbox, Sandboxes, find_cgroup2_root, find_cpuset_root
from gpupool.agent.sandbox.cpusets import CpuPartition
from gpupool.agent.sandbox.guard import DeviceView, Guard, LeaseView
from gpupool.domain.models import DeviceKind
from gpupool.testing import FakeGpu, FakeNvml
from tests.unit.agent import test_guard
from tests.unit.agent.test_sandbox import alive, wait_until

ROOT, CPUSETS = find_cgroup2_root(), find_cpuset_root()
CORES = sorted(os.sched_getaffinity(0))
LEASED = CORES[-1]
ELSEWHERE = -1  # the agent is another process: this test's children are nobody's
needs_cpusets = pytest.mark.skipif(
    ROOT is None or CPUSETS is None or os.geteuid() != 0 or len(CORES) < 2,
    reason="needs root, cgroup v2, a writable v1 cpuset hierarchy and two cores",
)
procs = test_guard.procs  # the fixture that kills what a test started
UUIDS = [f"GPU-gps-{i:04d}" for i in range(2)]


@pytest.fixture
def lease() -> Iterator[tuple[Sandbox, LeaseView]]:
    boxes = Sandboxes(f"gps-guard{os.getpid()}", ROOT, CPUSETS)
    box = boxes.create("l-gps", [LEASED])
    view = LeaseView("l-gps", box, [DeviceView("w:cpu9", "cpu9", DeviceKind.CPU, (LEASED,))])
    try:
        yield box, view
    finally:
        box.destroy()
        boxes.release()


def _exec_done(proc: subprocess.Popen[bytes], name: str = "sleep") -> None:
    wait_until(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == name)


@needs_cpusets
def test_a_foreign_process_that_moves_itself_into_a_leases_cpuset_is_killed_and_reported(
    lease: tuple[Sandbox, LeaseView], procs: list[subprocess.Popen[bytes]]
) -> None:
    box, view = lease
    cpuset = box.cpuset_dir  # type: ignore[attr-defined]
    assert cpuset is not None
    # The intruder writes its own pid into the lease's cpuset, as root may, then computes.
    intruder = subprocess.Popen(
        ["/bin/sh", "-c", 'echo $$ > "$0" && exec sleep 60', str(cpuset / "cgroup.procs")]
    )
    procs.append(intruder)
    _exec_done(intruder)
    assert str(intruder.pid) in (cpuset / "cgroup.procs").read_text().split()
    [seen] = Guard(agent_pid=ELSEWHERE).scan([view])
    assert [v.pid for v in seen.violations] == [intruder.pid]
    assert seen.violations[0].lease_id == "l-gps"
    assert seen.violations[0].cmdline == "sleep 60"
    assert intruder.wait(timeout=5) == -9
    assert (intruder.pid, "sleep", "foreign") in seen.processes


@needs_cpusets
def test_an_unrelated_process_pinned_to_a_leased_core_moves_to_the_system_set_and_lives(
    lease: tuple[Sandbox, LeaseView], procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    _, view = lease
    assert CPUSETS is not None
    partition = CpuPartition(
        CPUSETS, system_name="gps-system", lease_prefix="gpupool-gps-", lock_dir=tmp_path
    )
    bystander = subprocess.Popen(["taskset", "-c", str(LEASED), "sleep", "60"])
    procs.append(bystander)
    _exec_done(bystander)
    try:
        assert partition.update().system == set(CORES) - {LEASED}
        guard = Guard(agent_pid=ELSEWHERE, system_cpuset=partition.system_path)
        for _ in range(2):
            [seen] = guard.scan([view])
            assert seen.violations == []
        assert alive(bystander.pid)
        assert bystander.pid not in {pid for pid, _, _ in seen.processes}
        assert LEASED not in os.sched_getaffinity(bystander.pid)
    finally:
        view.sandbox.destroy()
        partition.update()
    assert not partition.system.exists()
    assert os.sched_getaffinity(bystander.pid) == {LEASED}  # its own pin, given back


def _gpu_lease(box: Sandbox) -> LeaseView:
    return LeaseView("l-gpu", box, [DeviceView("w:gpu1", "gpu1", DeviceKind.GPU, (), UUIDS[1])])


def _orphan() -> int:
    """A process the agent did not start: double-forked, so it is nobody's child here."""
    argv = ["/bin/sh", "-c", "sleep 60 > /dev/null 2>&1 & echo $!"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


def test_the_agents_own_challenge_on_a_leased_gpu_lives_and_an_outsider_dies(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    nvml = FakeNvml([FakeGpu(u, "NVIDIA H100", 80 << 30) for u in UUIDS])
    # This test is the agent: a challenge runs in a helper it starts, which starts another.
    helper = subprocess.Popen(
        [sys.executable, "-c", "import subprocess; subprocess.run(['sleep', '60'])"]
    )
    procs.append(helper)
    children = Path(f"/proc/{helper.pid}/task/{helper.pid}/children")
    wait_until(lambda: children.read_text().strip())
    grandchild = int(children.read_text().split()[0])
    outsider = _orphan()
    boxes = Sandboxes(f"gps-gpu{os.getpid()}", ROOT, None)
    box = boxes.create("l-gpu")
    try:
        lease_pid = box.spawn(["sleep", "60"])
        for pid in (helper.pid, grandchild, lease_pid, outsider):
            nvml.state(UUIDS[1]).compute[pid] = 1 << 30
        nvml.state(UUIDS[0]).compute[os.getpid()] = 1 << 30  # not the lease's GPU: not seen
        [seen] = Guard(agent_pid=os.getpid(), nvml=nvml).scan([_gpu_lease(box)])
        owners = {pid: owner for pid, _, owner in seen.processes}
        assert owners == {
            helper.pid: "system",
            grandchild: "system",
            lease_pid: "lease",
            outsider: "foreign",
        }
        assert [v.pid for v in seen.violations] == [outsider]
        wait_until(lambda: not alive(outsider))
        assert alive(helper.pid) and alive(grandchild) and alive(lease_pid)
    finally:
        if alive(outsider):
            os.kill(outsider, 9)
        box.destroy()
        boxes.release()


def test_a_lease_process_is_never_the_agents_own_even_though_the_agent_started_it() -> None:
    """The agent spawns each lease's first process; what descends from the lease is the
    lease's, and once out of its sandbox it is foreign, not the agent's."""
    from gpupool.agent.sandbox.procs import ProcessInfo

    def info(pid: int, ppid: int) -> ProcessInfo:
        return ProcessInfo(pid, ppid, "p", "S", "/x", "x", "/", frozenset(), 0, pid, False)

    agent, init, escaped, helper = info(100, 1), info(200, 100), info(300, 200), info(400, 100)
    by_pid = {p.pid: p for p in (agent, init, escaped, helper)}
    guard = Guard(agent_pid=100)
    assert guard.owner(escaped, set(), by_pid, {200}) == "foreign"
    assert guard.owner(helper, set(), by_pid, {200}) == "system"
    assert guard.owner(init, {200}, by_pid, {200}) == "lease"


@needs_cpusets
def test_a_container_leases_processes_are_the_leases_on_its_cores() -> None:
    """The container sandbox holds its cpuset through its cgroup: the guard lists the
    container's processes on the leased core as the lease's, and kills none of them."""
    from gpupool.agent.sandbox.container import (
        Containers,
        ContainerSpec,
        bwrap_path,
        give,
        lease_uid,
        uids_in_use,
    )

    bwrap = bwrap_path()
    if bwrap is None:
        pytest.skip("needs bwrap")
    assert ROOT is not None
    boxes = Sandboxes(f"gps-ctr{os.getpid()}", ROOT, CPUSETS)
    home = Path(f"/tmp/gps-ctr{os.getpid()}")
    home.mkdir()
    uid = lease_uid("l-gps-ctr", uids_in_use())
    give(home, uid, uid)
    spec = ContainerSpec("l-gps-ctr", home, uid, uid, share_host_network=True, pids_max=64)
    box = Containers(boxes, f"gps-ctr{os.getpid()}", bwrap).create(spec, [LEASED])
    try:
        box.spawn(["sleep", "60"])
        wait_until(lambda: any(Path(f"/proc/{p}/comm").read_text().strip() == "sleep"
                               for p in box.pids()))  # fmt: skip
        view = LeaseView(
            "l-gps-ctr", box, [DeviceView("w:cpu9", "cpu9", DeviceKind.CPU, (LEASED,))]
        )
        [seen] = Guard(agent_pid=ELSEWHERE).scan([view])
        mine = {pid for pid, _, owner in seen.processes if owner == "lease"}
        assert mine and mine <= box.pids()
        assert not seen.violations
    finally:
        box.destroy()
        boxes.release()
        home.rmdir()
