"""The guard with real processes, real cgroups and real signals: foreign processes pinned to
leased cores die at the first scan; the lease's own, allow-listed, unpinned and elsewhere-
pinned processes live. GPUs are seen through the NVML double."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.agent.sandbox.cgroup import (
    CgroupSandbox,
    ProcessGroupSandbox,
    Sandbox,
    Sandboxes,
    find_cgroup2_root,
    find_cpuset_root,
)
from gpupool.agent.sandbox.guard import DeviceView, Guard, LeaseView
from gpupool.domain.models import DeviceKind
from gpupool.testing import FakeGpu, FakeNvml
from tests.unit.agent.test_sandbox import alive, wait_until

ROOT = find_cgroup2_root()
CORES = sorted(os.sched_getaffinity(0))
LEASED = CORES[-1]
OTHER = CORES[0] if len(CORES) > 1 else None
# The agent runs elsewhere: this test process and its children are ordinary processes
# (the guard counts the agent's own children as system).
ELSEWHERE = -1
needs_cgroup = pytest.mark.skipif(ROOT is None, reason="no writable cgroup v2 here")


def pinned(core: int, *argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", str(core), *(argv or ("sleep", "600"))])


@pytest.fixture
def sandboxes() -> Iterator[Sandboxes]:
    boxes = Sandboxes(f"w-guard{os.getpid()}", ROOT, find_cpuset_root())
    yield boxes
    for leftover in boxes.leftovers(set()):
        leftover.destroy()
    if boxes.root is not None and boxes.root.exists():
        boxes.root.rmdir()
    if boxes.cpuset_root is not None and boxes.root is not None:
        stray = boxes.cpuset_root / boxes.root.name
        if stray.exists():
            stray.rmdir()


@pytest.fixture
def lease(sandboxes: Sandboxes) -> Iterator[tuple[Sandbox, LeaseView]]:
    box = sandboxes.create("l-guarded", [LEASED])
    view = LeaseView("l-guarded", box, [DeviceView("w-x:cpu9", "cpu9", DeviceKind.CPU, (LEASED,))])
    yield box, view
    box.destroy()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def _wait_pinned(proc: subprocess.Popen[bytes], core: int) -> None:
    """taskset execs its command once the affinity is set; wait for that."""
    wait_until(lambda: Path(f"/proc/{proc.pid}/exe").resolve().name != "taskset")


@needs_cgroup
def test_a_foreign_process_on_a_leased_core_is_killed_at_the_first_scan(
    lease: tuple[Sandbox, LeaseView], procs: list[subprocess.Popen[bytes]]
) -> None:
    _, view = lease
    foreign = pinned(LEASED)
    procs.append(foreign)
    _wait_pinned(foreign, LEASED)
    [seen] = Guard(agent_pid=ELSEWHERE).scan([view])
    assert foreign.wait(timeout=5) == -9
    [violation] = seen.violations
    assert violation.pid == foreign.pid
    assert violation.exe.endswith("sleep")
    assert violation.cmdline == "sleep 600"
    assert violation.first_seen_ms <= violation.killed_at_ms
    assert (foreign.pid, "sleep", "foreign") in seen.processes


@needs_cgroup
def test_the_lease_allow_listed_unpinned_and_elsewhere_pinned_processes_live(
    lease: tuple[Sandbox, LeaseView], procs: list[subprocess.Popen[bytes]]
) -> None:
    box, view = lease
    own = box.spawn(["sleep", "600"])
    allowed = pinned(LEASED, "/bin/sleep", "601")
    unpinned = subprocess.Popen(["sleep", "602"])
    procs += [allowed, unpinned]
    elsewhere = None
    if OTHER is not None:
        elsewhere = pinned(OTHER, "sleep", "603")
        procs.append(elsewhere)
    for p in procs:
        _wait_pinned(p, LEASED)
    guard = Guard(agent_pid=ELSEWHERE, allow_exes=[str(Path("/bin/sleep").resolve())])
    for _ in range(3):
        [seen] = guard.scan([view])
        assert seen.violations == []
    owners = {pid: owner for pid, _, owner in seen.processes}
    assert owners[own] == "lease"
    assert owners[allowed.pid] == "system"
    assert unpinned.pid not in owners
    assert all(alive(pid) for pid in (own, allowed.pid, unpinned.pid))
    if elsewhere is not None:
        assert elsewhere.pid not in owners and alive(elsewhere.pid)


@needs_cgroup
def test_the_lease_is_held_to_its_cores_even_when_it_asks_for_more(
    lease: tuple[Sandbox, LeaseView], tmp_path: Path
) -> None:
    box, _ = lease
    report = tmp_path / "affinity"
    script = (
        "import os\n"
        "try:\n    os.sched_setaffinity(0, set(range(os.cpu_count())))\n"
        "except OSError:\n    pass\n"
        f"open({str(report)!r}, 'w').write(repr(sorted(os.sched_getaffinity(0))))\n"
    )
    box.spawn([sys.executable, "-c", script])
    wait_until(lambda: report.exists() and report.read_text() != "")
    confined = box.confinement in ("cgroup1-cpuset", "cgroup2-cpuset")
    if confined:
        assert eval(report.read_text()) == [LEASED]
    assert box.confinement != "none"


@needs_cgroup
def test_destroy_removes_the_cpuset_cgroup_too(sandboxes: Sandboxes) -> None:
    box = sandboxes.create("l-cpuset", [LEASED])
    assert isinstance(box, CgroupSandbox)
    cpuset = box.cpuset_dir
    if cpuset is None:
        pytest.skip("no v1 cpuset hierarchy here")
    assert (cpuset / "cpuset.cpus").read_text().strip() == str(LEASED)
    box.destroy()
    assert not cpuset.exists()
    assert not Path(box.path).exists()


@needs_cgroup
def test_a_restarted_agent_finds_the_lease_cores_again(sandboxes: Sandboxes) -> None:
    box = sandboxes.create("l-again", [LEASED])
    again = sandboxes.attach("l-again", box.path)
    assert again is not None
    assert again.confinement == box.confinement
    again.destroy()


def test_a_foreign_process_on_a_leased_gpu_is_killed_and_the_lease_keeps_its_own(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    gpu = FakeGpu("GPU-1111", "NVIDIA H100 80GB HBM3", 80 << 30)
    nvml = FakeNvml([gpu])
    own = subprocess.Popen(["sleep", "600"], process_group=0)
    foreign = subprocess.Popen(["sleep", "601"])
    procs += [own, foreign]
    box = ProcessGroupSandbox("l-gpu", own.pid)
    state = nvml.state(gpu.uuid)
    state.compute.update({own.pid: 1 << 30, foreign.pid: 1 << 30})
    state.utilization, state.power_mw, state.memory_used_bytes = 97, 612_000, 2 << 30
    view = LeaseView("l-gpu", box, [DeviceView("w-x:gpu0", "gpu0", DeviceKind.GPU, (), gpu.uuid)])
    [seen] = Guard(agent_pid=ELSEWHERE, nvml=nvml).scan([view])
    assert foreign.wait(timeout=5) == -9
    assert [v.pid for v in seen.violations] == [foreign.pid]
    assert alive(own.pid)
    assert (seen.utilization_pct, seen.memory_mb, seen.power_mw) == (97, 2048, 612_000)


def test_cpu_utilisation_comes_from_proc_stat_deltas(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 1 1 1\ncpu0 100 0 100 800 0\ncpu1 0 0 0 1000 0\n")
    box = ProcessGroupSandbox("l-none")
    view = LeaseView("l-none", box, [DeviceView("w-x:cpu0", "cpu0", DeviceKind.CPU, (0,))])
    guard = Guard(list_procs=list, proc_root=tmp_path, thermal_root=tmp_path)
    assert guard.scan([view])[0].utilization_pct is None  # no previous reading yet
    stat.write_text("cpu  1 1 1 1\ncpu0 175 0 100 825 0\ncpu1 0 0 0 1100 0\n")
    assert guard.scan([view])[0].utilization_pct == 75


@needs_cgroup
def test_a_lease_of_every_core_leaves_the_machines_ordinary_processes_alone(
    sandboxes: Sandboxes, procs: list[subprocess.Popen[bytes]]
) -> None:
    box = sandboxes.create("l-all", CORES)
    view = LeaseView(
        "l-all", box, [DeviceView(f"w-x:cpu{c}", f"cpu{c}", DeviceKind.CPU, (c,)) for c in CORES]
    )
    ordinary = subprocess.Popen(["sleep", "600"])
    procs.append(ordinary)
    try:
        observations = Guard(agent_pid=ELSEWHERE).scan([view])
        assert all(o.violations == [] for o in observations)
        assert alive(ordinary.pid) and alive(os.getpid())
        if len(CORES) > 1:  # a process pinned to part of the machine is still caught
            intruder = pinned(LEASED)
            procs.append(intruder)
            _wait_pinned(intruder, LEASED)
            Guard(agent_pid=ELSEWHERE).scan([view])
            assert intruder.wait(timeout=5) == -9
    finally:
        box.destroy()


@needs_cgroup
def test_the_agents_own_helpers_on_a_leased_core_live(
    lease: tuple[Sandbox, LeaseView], procs: list[subprocess.Popen[bytes]]
) -> None:
    """A capability challenge the agent started may still run when a lease begins."""
    _, view = lease
    helper = pinned(LEASED)
    procs.append(helper)
    _wait_pinned(helper, LEASED)
    [seen] = Guard(agent_pid=os.getpid()).scan([view])
    assert seen.violations == [] and alive(helper.pid)
    assert (helper.pid, "sleep", "system") in seen.processes
