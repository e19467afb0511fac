"""The cpuset partition on the real v1 cpuset hierarchy. It moves every process of this
(shared) machine for a second or two, so each test restores everything in `finally`, and the
module runs only as root where the cpuset controller is writable. All names carry `gps`."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.agent.sandbox.cgroup import Sandboxes, find_cgroup2_root, find_cpuset_root
from gpupool.agent.sandbox.cpusets import CpuPartition, _cpus
from gpupool.agent.sandbox.procs import read_process

ROOT = find_cpuset_root()
CORES = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(
    ROOT is None or os.geteuid() != 0 or len(CORES) < 2,
    reason="needs root, a writable v1 cpuset hierarchy and two cores",
)
LEASED, FREE = CORES[-1], CORES[0]


def cpuset_of(pid: int) -> str:
    info = read_process(Path(f"/proc/{pid}"))
    assert info is not None
    return info.cpuset


def lease_cpuset(worker: str, lease: str, cores: list[int]) -> Path:
    assert ROOT is not None
    folder = ROOT / worker / lease
    for level in (folder.parent, folder):
        level.mkdir(exist_ok=True)
        (level / "cpuset.mems").write_text((ROOT / "cpuset.mems").read_text())
        (level / "cpuset.cpus").write_text(",".join(map(str, cores)))
    return folder


def remove_cpuset(folder: Path) -> None:
    assert ROOT is not None
    for pid in (folder / "cgroup.procs").read_text().split():
        with contextlib.suppress(OSError):
            (ROOT / "cgroup.procs").write_text(pid)
    folder.rmdir()
    with contextlib.suppress(OSError):  # the worker folder, once its last lease is gone
        folder.parent.rmdir()


@pytest.fixture
def partition(tmp_path: Path) -> Iterator[CpuPartition]:
    assert ROOT is not None
    part = CpuPartition(ROOT, system_name="gps-system", lease_prefix="gps-", lock_dir=tmp_path)
    try:
        yield part
    finally:
        for worker in ROOT.glob("gps-w*"):
            for lease in [d for d in worker.iterdir() if d.is_dir()]:
                remove_cpuset(lease)
        part.update()  # no gps lease is left: lifts the partition
        assert not part.system.exists()


@pytest.fixture
def sleepers() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started = {
        "plain": subprocess.Popen(["sleep", "60"]),
        "on_leased": subprocess.Popen(["taskset", "-c", str(LEASED), "sleep", "60"]),
        "on_free": subprocess.Popen(["taskset", "-c", str(FREE), "sleep", "60"]),
    }
    try:
        for proc in started.values():  # taskset has exec'd sleep once the name says so
            for _ in range(200):
                if Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sleep":
                    break
                os.sched_yield()
        yield started
    finally:
        for proc in started.values():
            proc.kill()
            proc.wait()


def test_a_lease_moves_the_rest_of_the_system_off_its_cores_and_the_last_lease_restores_it(
    partition: CpuPartition, sleepers: dict[str, subprocess.Popen[bytes]]
) -> None:
    held = lease_cpuset("gps-w1", "l1", [LEASED])
    inside = subprocess.Popen(["sleep", "60"])
    try:
        (held / "cgroup.procs").write_text(str(inside.pid))
        state = partition.update()
        assert state.leased == {LEASED}
        assert state.system == set(CORES) - {LEASED}
        assert state.moved > 0
        for proc in [*sleepers.values()]:
            assert cpuset_of(proc.pid) == "/gps-system"
            assert LEASED not in os.sched_getaffinity(proc.pid)
        assert cpuset_of(os.getpid()) == "/gps-system"  # this test is "the system" too
        # the lease's own process is never moved into the system set
        assert cpuset_of(inside.pid) == "/gps-w1/l1"
        assert os.sched_getaffinity(inside.pid) == {LEASED}
        # a process pinned to a core that is not leased keeps its pin
        assert os.sched_getaffinity(sleepers["on_free"].pid) == {FREE}

        remove_cpuset(held)
        state = partition.update()
        assert state.system == frozenset()
        assert not partition.system.exists()
        for proc in sleepers.values():
            assert cpuset_of(proc.pid) == "/"
        assert os.sched_getaffinity(sleepers["plain"].pid) == set(CORES)
        # pins come back exactly, the one the lease had pushed off its core included
        assert os.sched_getaffinity(sleepers["on_leased"].pid) == {LEASED}
        assert os.sched_getaffinity(sleepers["on_free"].pid) == {FREE}
    finally:
        inside.kill()
        inside.wait()


def test_the_partition_covers_every_agents_leases_and_stays_while_any_is_left(
    partition: CpuPartition, sleepers: dict[str, subprocess.Popen[bytes]]
) -> None:
    first = lease_cpuset("gps-w1", "l1", [LEASED])
    second = lease_cpuset("gps-w2", "l2", [LEASED])
    partition.update()
    remove_cpuset(first)  # one agent's lease ends; another agent's lease still holds the core
    state = partition.update()
    assert state.system == set(CORES) - {LEASED}
    assert cpuset_of(sleepers["plain"].pid) == "/gps-system"
    remove_cpuset(second)
    assert partition.update().system == frozenset()
    assert cpuset_of(sleepers["plain"].pid) == "/"


def test_a_lease_of_every_core_leaves_the_system_where_it_is(
    partition: CpuPartition, sleepers: dict[str, subprocess.Popen[bytes]]
) -> None:
    lease_cpuset("gps-w1", "all", CORES)
    state = partition.update()
    assert state.leased == set(CORES)
    assert state.system == frozenset()
    assert not partition.system.exists()
    assert cpuset_of(sleepers["plain"].pid) == "/"


def test_lease_cpuset_paths_are_told_from_the_system_set_and_other_cpusets() -> None:
    assert ROOT is not None
    part = CpuPartition(ROOT)
    assert part.is_lease_cpuset("/gpupool-w1/l1")
    assert not part.is_lease_cpuset("/gpupool-system")
    assert not part.is_lease_cpuset("/gpupool-w1")
    assert not part.is_lease_cpuset("/docker/abc")
    assert not part.is_lease_cpuset("/")


def test_the_agents_sandboxes_refit_the_partition_as_a_lease_comes_and_goes(
    tmp_path: Path,
) -> None:
    assert ROOT is not None
    part = CpuPartition(
        ROOT, system_name="gps-system", lease_prefix="gpupool-gps-", lock_dir=tmp_path
    )
    boxes = Sandboxes(f"gps-sb{os.getpid()}", find_cgroup2_root(), ROOT, part)
    box = boxes.create("l1", [LEASED])
    try:
        assert _cpus(part.system / "cpuset.cpus") == set(CORES) - {LEASED}
        assert cpuset_of(os.getpid()) == "/gps-system"
    finally:
        box.destroy()
        boxes.release()
        part.update()
    assert not part.system.exists()
    assert cpuset_of(os.getpid()) == "/"
