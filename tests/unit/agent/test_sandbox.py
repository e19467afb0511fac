"""Lease sandboxes with real processes: a real cgroup v2 where the machine allows it (root
here), and the process-group fallback."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.agent.sandbox.cgroup import (
    CgroupSandbox,
    ProcessGroupSandbox,
    Sandboxes,
    cgroup2_mount,
    find_cgroup2_root,
    find_cpuset_root,
    own_cgroup2_path,
)

ROOT = find_cgroup2_root()
needs_cgroup = pytest.mark.skipif(ROOT is None, reason="no writable cgroup v2 here")


def wait_until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def sandboxes() -> Iterator[Sandboxes]:
    boxes = Sandboxes(f"w-test{os.getpid()}", ROOT)
    yield boxes
    if boxes.root is not None and boxes.root.exists():
        for leftover in boxes.leftovers(set()):
            leftover.destroy()
        boxes.root.rmdir()


def test_mountinfo_and_proc_cgroup_parsing() -> None:
    mountinfo = (
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert cgroup2_mount(mountinfo) == Path("/sys/fs/cgroup/unified")
    assert cgroup2_mount("31 23 0:28 / /x rw - tmpfs tmpfs rw\n") is None
    assert own_cgroup2_path("4:memory:/a\n0::/system.slice/agent.service\n") == (
        "/system.slice/agent.service"
    )


@needs_cgroup
def test_lease_starts_with_its_init_process_inside_its_cgroup(sandboxes: Sandboxes) -> None:
    box = sandboxes.create("l-init")
    assert isinstance(box, CgroupSandbox)
    wait_until(lambda: len(box.pids()) == 1)
    (pid,) = box.pids()
    # the shell that put it in the cgroup execs the lease init a moment later
    wait_until(
        lambda: b"gpupool.agent.sandbox.lease_init" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    assert os.getpgid(pid) == pid  # leads its own process group
    box.destroy()
    assert not Path(box.path).exists()
    assert not alive(pid)


@needs_cgroup
def test_destroy_kills_processes_that_escaped_their_process_group(
    sandboxes: Sandboxes,
) -> None:
    box = sandboxes.create("l-escape")
    box.spawn(["/bin/sh", "-c", "setsid sleep 600 & sleep 600"])
    wait_until(lambda: len(box.pids()) >= 4)  # init, sh, and both sleeps
    pids = box.pids()
    box.destroy()
    assert not any(alive(p) for p in pids)
    assert box.pids() == set()
    assert not Path(box.path).exists()


@needs_cgroup
def test_only_the_leases_processes_are_its_own(sandboxes: Sandboxes) -> None:
    box = sandboxes.create("l-own")
    outsider = subprocess.Popen(["sleep", "600"])
    try:
        inside = box.spawn(["sleep", "600"])
        wait_until(lambda: inside in box.pids())
        assert outsider.pid not in box.pids()
        box.destroy()
        assert alive(outsider.pid)  # a process outside the lease is never touched
    finally:
        outsider.kill()
        outsider.wait()


@needs_cgroup
def test_a_restarted_agent_reattaches_and_can_still_destroy(sandboxes: Sandboxes) -> None:
    box = sandboxes.create("l-restart")
    wait_until(lambda: bool(box.pids()))
    again = Sandboxes(sandboxes.root.name.removeprefix("gpupool-"), ROOT)  # type: ignore[union-attr]
    attached = again.attach("l-restart", box.path)
    assert attached is not None
    assert attached.pids() == box.pids()
    attached.destroy()
    assert again.attach("l-restart", box.path) is None


@needs_cgroup
def test_leftover_cgroups_are_found(sandboxes: Sandboxes) -> None:
    box = sandboxes.create("l-stray")
    assert [b.lease_id for b in sandboxes.leftovers(set())] == ["l-stray"]
    assert sandboxes.leftovers({"l-stray"}) == []
    box.destroy()


def test_process_group_fallback_kills_the_whole_group() -> None:
    box = ProcessGroupSandbox("l-pg")
    first = box.spawn(["sleep", "600"])
    second = box.spawn(["/bin/sh", "-c", "sleep 600 & wait"])
    wait_until(lambda: len(box.pids()) >= 3)
    assert box.pgid == first
    assert os.getpgid(second) == first
    box.destroy()
    assert box.pids() == set()
    assert not alive(first)
    assert not alive(second)


@needs_cgroup
def test_release_removes_the_workers_cgroup_folder_only_once_no_lease_is_left() -> None:
    boxes = Sandboxes(f"w-release{os.getpid()}", ROOT, find_cpuset_root())
    assert boxes.root is not None
    first, second = boxes.create("l-one", cores=[0]), boxes.create("l-two")
    cpuset = boxes.cpuset_root / boxes.root.name if boxes.cpuset_root else None
    first.destroy()
    boxes.release()  # a lease is left: its folder must stay for a restarted agent
    assert boxes.root.is_dir() and Path(second.path).is_dir()
    second.destroy()
    boxes.release()
    assert not boxes.root.exists()
    assert cpuset is None or not cpuset.exists()
    boxes.release()  # nothing left to remove: no error
