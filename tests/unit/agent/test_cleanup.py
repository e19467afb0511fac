"""`cleanup` after an agent stops: its lease cgroups (with their processes) and lease disks go;
another agent's on the same machine stay; a running agent is refused."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.agent.main import IDENTITY_FILE, LEASES_DIR, STATE_FILE, cleanup
from gpupool.agent.sandbox.cgroup import Sandboxes, find_cgroup2_root
from gpupool.agent.sandbox.cryptdisk import CryptDisk, CryptDiskUnavailable, check_available
from gpupool.agent.sandbox.disks import LeaseDisks
from gpupool.agent.state import AgentState, LeaseRecord, StateDirBusy, lock_state_dir
from gpupool.crypto.identity import load_or_create


def _why_not() -> str:
    if os.geteuid() != 0 or find_cgroup2_root() is None:
        return "needs root and a writable cgroup v2"
    try:
        check_available()
    except CryptDiskUnavailable as exc:
        return str(exc)
    return ""


pytestmark = pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "-")


@pytest.fixture
def cgroup_root() -> Iterator[Path]:
    base = find_cgroup2_root()
    assert base is not None
    root = Path(tempfile.mkdtemp(prefix="gpd-cleanup-", dir=base))
    try:
        yield root
    finally:
        for folder in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
            if folder.is_dir():
                with contextlib.suppress(OSError):
                    (folder / "cgroup.kill").write_text("1")
                with contextlib.suppress(OSError):
                    folder.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()


@pytest.fixture
def base() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="gpd-cleanup-"))
    try:
        yield folder
    finally:
        for state_dir in folder.iterdir():
            if (state_dir / IDENTITY_FILE).exists():
                disks = LeaseDisks(
                    state_dir, load_or_create(state_dir / IDENTITY_FILE)[0].worker_id
                )
                for lease in (state_dir / LEASES_DIR).glob("*"):
                    with contextlib.suppress(Exception):
                        disks.destroy(lease.name)
        shutil.rmtree(folder, ignore_errors=True)


def _agent_with_a_lease(state_dir: Path, cgroup_root: Path, lease: str) -> tuple[int, CryptDisk]:
    """What a running agent leaves: a lease cgroup with a process in it, an encrypted disk
    with data on it, and the lease recorded in leases.json."""
    identity, _ = load_or_create(state_dir / IDENTITY_FILE)
    sandbox = Sandboxes(identity.worker_id, cgroup_root).create(lease)
    sleeper = sandbox.spawn(["sleep", "60"])
    disk = LeaseDisks(state_dir, identity.worker_id).create(lease)  # where the agent mounts it
    assert isinstance(disk, CryptDisk)
    (disk.plain / "data").write_text("renter data")
    state = AgentState(state_dir / STATE_FILE, {lease: LeaseRecord(sandbox.path, ["cpu-0"])})
    state.save()
    return sleeper, disk


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_cleanup_removes_its_agents_leftovers_and_nothing_of_another_agent(
    base: Path, cgroup_root: Path
) -> None:
    ours, theirs = base / "ours", base / "theirs"
    our_pid, our_disk = _agent_with_a_lease(ours, cgroup_root, "l-gpd1")
    their_pid, their_disk = _agent_with_a_lease(theirs, cgroup_root, "l-gpd2")

    removed = cleanup(ours, cgroup_root)

    assert not _alive(our_pid)
    assert not our_disk.mounted and not (ours / LEASES_DIR / "l-gpd1").exists()
    assert AgentState.load(ours / STATE_FILE).leases == {}
    assert (ours / IDENTITY_FILE).exists()  # the worker, and its stake, survive
    worker = load_or_create(ours / IDENTITY_FILE)[0].worker_id
    assert removed == [
        f"cgroup {cgroup_root / f'gpupool-{worker}' / 'l-gpd1'}",
        f"lease folder {ours / LEASES_DIR / 'l-gpd1'}",
    ]
    # The other agent's lease is untouched.
    assert _alive(their_pid)
    assert their_disk.mounted and (their_disk.plain / "data").read_text() == "renter data"
    assert list(AgentState.load(theirs / STATE_FILE).leases) == ["l-gpd2"]

    cleanup(theirs, cgroup_root)
    assert not _alive(their_pid) and not their_disk.mounted
    assert not any(p.is_dir() for p in cgroup_root.iterdir())  # the worker folders went too


def test_cleanup_refuses_while_the_agent_runs(base: Path, cgroup_root: Path) -> None:
    state_dir = base / "running"
    lock = lock_state_dir(state_dir)
    try:
        with pytest.raises(StateDirBusy, match="another agent is running"):
            cleanup(state_dir, cgroup_root)
    finally:
        lock.close()


def test_cleanup_of_a_state_folder_without_leases_changes_nothing(
    base: Path, cgroup_root: Path
) -> None:
    load_or_create(base / "fresh" / IDENTITY_FILE)
    assert cleanup(base / "fresh", cgroup_root) == []
    assert not any(p.is_dir() for p in cgroup_root.iterdir())  # no worker folder was made
