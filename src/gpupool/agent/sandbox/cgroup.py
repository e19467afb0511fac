"""Lease sandboxes: every process of a lease runs in the lease's own cgroup and process group,
so the agent can tell which processes are the lease's and kill all of them at the end.

`CgroupSandbox` uses the unified (v2) hierarchy, which this kernel has even in v1/v2 hybrid
mode; membership there is exact, also for processes that double-fork out of their process
group. Where no writable cgroup v2 exists (no root, say) `ProcessGroupSandbox` falls back to a
process group, which a process can leave with setsid: the agent says which one it uses when it
registers.

Each lease starts with one process, the lease init (`gpupool.agent.sandbox.lease_init`): the
leader of the lease's process group and a child subreaper that reaps the lease's orphans.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpupool.agent.sandbox.cpusets import CpuPartition, CpusetError
from gpupool.agent.sandbox.procs import parse_cpu_list

KILL_WAIT_SECONDS = 10.0
log = logging.getLogger("gpupool.agent.sandbox")


class SandboxError(Exception):
    pass


class Sandbox(Protocol):
    lease_id: str

    @property
    def path(self) -> str:
        """Where the sandbox lives (a cgroup directory, or a process group id)."""
        ...

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        """Start a process inside the sandbox; returns its pid."""
        ...

    def pids(self) -> set[int]:
        """Every process that belongs to the lease now."""
        ...

    def destroy(self) -> None:
        """Kill every process of the lease, wait until none is left, remove the sandbox."""
        ...

    @property
    def confinement(self) -> str:
        """How the lease is held to its cores: cgroup2-cpuset, cgroup1-cpuset, affinity or
        none (no cores given)."""
        ...


def cgroup2_mount(mountinfo: str) -> Path | None:
    """The mount point of the unified cgroup hierarchy, from /proc/self/mountinfo text."""
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def own_cgroup2_path(proc_cgroup: str) -> str:
    """This process's cgroup in the unified hierarchy, from /proc/self/cgroup text."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return "/"


def find_cgroup2_root() -> Path | None:
    """The writable cgroup v2 directory the agent may create lease cgroups under, if any."""
    try:
        mount = cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        own = own_cgroup2_path(Path("/proc/self/cgroup").read_text())
    except OSError:
        return None
    if mount is None:
        return None
    base = mount / own.lstrip("/")
    if not (base / "cgroup.procs").exists() or not os.access(base, os.W_OK):
        return None
    return base


def _lease_init_argv() -> list[str]:
    return [sys.executable, "-m", "gpupool.agent.sandbox.lease_init"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_cpuset_root() -> Path | None:
    """A writable v1 cpuset hierarchy (a v1/v2 hybrid keeps cpuset there), if any."""
    root = Path("/sys/fs/cgroup/cpuset")
    if (root / "cpuset.cpus").exists() and os.access(root, os.W_OK):
        return root
    return None


def _cpu_list(cores: Sequence[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))


def _enter_then_exec(procs: Sequence[Path], argv: Sequence[str]) -> list[str]:
    """A /bin/sh command line that writes its own pid into each cgroup.procs, then execs."""
    if len(procs) == 1:
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs[0]), *argv]
    script = 'echo $$ > "$0" && echo $$ > "$1" && shift && exec "$@"'
    return ["/bin/sh", "-c", script, str(procs[0]), str(procs[1]), *argv]


def _v2_cpuset(root: Path, directory: Path, cores: Sequence[int]) -> bool:
    """Confine a v2 lease cgroup to `cores` where the unified hierarchy has cpuset."""
    parent_controllers = root.parent / "cgroup.controllers"
    try:
        if "cpuset" not in parent_controllers.read_text().split():
            return False
        for level in (root.parent, root):
            (level / "cgroup.subtree_control").write_text("+cpuset")
        (directory / "cpuset.cpus").write_text(_cpu_list(cores))
    except OSError:
        return False
    return True


def _v1_cpuset(directory: Path, cores: Sequence[int]) -> Path | None:
    """A v1 cpuset cgroup for the lease (a v1/v2 hybrid): parents inherit the root's mems."""
    try:
        for level in (directory.parent, directory):
            level.mkdir(exist_ok=True)
            mems = (level.parent / "cpuset.mems").read_text().strip()
            if not (level / "cpuset.mems").read_text().strip():
                (level / "cpuset.mems").write_text(mems)
            if level == directory.parent and not (level / "cpuset.cpus").read_text().strip():
                (level / "cpuset.cpus").write_text((level.parent / "cpuset.cpus").read_text())
        (directory / "cpuset.cpus").write_text(_cpu_list(cores))
    except OSError:
        return None
    return directory


@dataclass
class CgroupSandbox:
    lease_id: str
    directory: Path
    cores: tuple[int, ...] = ()
    cpuset_dir: Path | None = None  # v1 cpuset cgroup holding the lease's cores
    v2_cpuset: bool = False

    @property
    def confinement(self) -> str:
        if not self.cores:
            return "none"
        if self.v2_cpuset:
            return "cgroup2-cpuset"
        return "cgroup1-cpuset" if self.cpuset_dir is not None else "affinity"

    @property
    def path(self) -> str:
        return str(self.directory)

    @classmethod
    def create(
        cls,
        root: Path,
        lease_id: str,
        cores: Sequence[int] = (),
        cpuset_root: Path | None = None,
    ) -> CgroupSandbox:
        directory = root / lease_id
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SandboxError(f"cannot create cgroup {directory}: {exc}") from exc
        box = cls(lease_id, directory, tuple(sorted(cores)))
        if cores:
            box.v2_cpuset = _v2_cpuset(root, directory, cores)
            if not box.v2_cpuset and cpuset_root is not None:
                box.cpuset_dir = _v1_cpuset(cpuset_root / root.name / lease_id, cores)
        return box

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        # The child enters the cgroups itself, before exec, so nothing it starts can escape.
        procs = [self.directory / "cgroup.procs"]
        if self.cpuset_dir is not None:
            procs.append(self.cpuset_dir / "cgroup.procs")
        if self.confinement == "affinity":
            argv = ["taskset", "-c", _cpu_list(self.cores), *argv]
        wrapper = _enter_then_exec(procs, argv)
        proc = subprocess.Popen(
            wrapper,
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        _REAPED.append(proc)
        # Return only once the child is inside: a destroy() racing a spawn must not miss it.
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while proc.pid not in self.pids() and proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise SandboxError(f"process {proc.pid} did not enter {self.directory}")
            time.sleep(0.001)
        return proc.pid

    def _remove_cpuset(self) -> None:
        if self.cpuset_dir is None:
            return
        for _ in range(100):
            try:
                self.cpuset_dir.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # the last tasks are still leaving
                time.sleep(0.02)
        raise SandboxError(f"cannot remove cpuset cgroup {self.cpuset_dir}")

    def owns(self, pid: int) -> bool:
        return pid in self.pids()

    def pids(self) -> set[int]:
        try:
            text = (self.directory / "cgroup.procs").read_text()
        except FileNotFoundError:
            return set()
        return {int(p) for p in text.split()}

    def destroy(self) -> None:
        """Kill every process of the lease and remove its cgroup; SandboxError if it cannot."""
        kill_file = self.directory / "cgroup.kill"
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while self.directory.exists():
            _reap()
            pids = self.pids()
            if pids:
                if kill_file.exists():
                    kill_file.write_text("1")
                else:
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
            else:
                try:
                    self.directory.rmdir()
                    self._remove_cpuset()
                    return
                except FileNotFoundError:
                    self._remove_cpuset()
                    return
                except OSError:  # busy: exiting tasks not yet reaped, or a late arrival
                    pass
            if time.monotonic() > deadline:
                what = f"processes {sorted(pids)} survive kill" if pids else "it stays busy"
                raise SandboxError(f"cannot remove cgroup {self.directory}: {what}")
            time.sleep(0.02)


@dataclass
class ProcessGroupSandbox:
    """Fallback without cgroups: the lease is the process group of its init process."""

    lease_id: str
    pgid: int | None = None
    cores: tuple[int, ...] = ()

    @property
    def path(self) -> str:
        return f"pgid:{self.pgid}" if self.pgid else "pgid:-"

    @property
    def confinement(self) -> str:
        return "affinity" if self.cores else "none"

    def owns(self, pid: int) -> bool:
        return pid in self.pids()

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        # The first process leads a new group (in the agent's session, so that later ones may
        # join it: a process cannot join a group of another session).
        if self.cores:
            argv = ["taskset", "-c", _cpu_list(self.cores), *argv]
        proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            process_group=0 if self.pgid is None else self.pgid,
        )
        _REAPED.append(proc)
        if self.pgid is None:
            self.pgid = proc.pid
        return proc.pid

    def pids(self) -> set[int]:
        if self.pgid is None:
            return set()
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = (entry / "stat").read_text()
                    fields = stat[stat.rindex(")") + 2 :].split()
                    if int(fields[2]) == self.pgid and fields[0] != "Z":
                        found.add(int(entry.name))
        return found

    def destroy(self) -> None:
        if self.pgid is None:
            return
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            _reap()
            if time.monotonic() > deadline:
                raise SandboxError(f"process group {self.pgid} survives kill")
            time.sleep(0.02)
        _reap()


# Children the agent started; polled so that killed ones do not linger as zombies.
_REAPED: list[subprocess.Popen[bytes]] = []


def _reap() -> None:
    _REAPED[:] = [p for p in _REAPED if p.poll() is None]


class Sandboxes:
    """Makes and re-attaches lease sandboxes of one worker, by the best means available."""

    def __init__(
        self,
        worker_id: str,
        cgroup_root: Path | None,
        cpuset_root: Path | None = None,
        partition: CpuPartition | None = None,
    ) -> None:
        self.root = cgroup_root / f"gpupool-{worker_id}" if cgroup_root else None
        self.cpuset_root = cpuset_root
        self.partition = partition  # the system cpuset, refitted as lease cpusets come and go

    def repartition(self) -> None:
        """Fit the system cpuset to the leases now on the machine. A failure leaves the
        machine's processes where they are (the guard still leaves the system set alone), so
        it is logged, never a reason to fail a lease."""
        if self.partition is None:
            return
        try:
            self.partition.update()
        except (CpusetError, OSError) as exc:
            log.error("event=cpuset_partition_failed reason=%s", exc)

    @property
    def kind(self) -> str:
        return "cgroup2" if self.root else "process-group"

    def create(self, lease_id: str, cores: Sequence[int] = ()) -> Sandbox:
        """A sandbox for the lease, holding its processes to `cores` (CPU devices)."""
        sandbox: Sandbox
        if self.root is not None:
            sandbox = CgroupSandbox.create(self.root, lease_id, cores, self.cpuset_root)
        else:
            sandbox = ProcessGroupSandbox(lease_id, cores=tuple(sorted(cores)))
        if cores:
            self.repartition()
        sandbox.spawn(_lease_init_argv())
        return sandbox

    def attach(self, lease_id: str, path: str) -> Sandbox | None:
        """The sandbox of a lease recorded before a restart, if it still exists."""
        if path.startswith("pgid:"):
            pgid = path.removeprefix("pgid:")
            group = ProcessGroupSandbox(lease_id, int(pgid) if pgid.isdigit() else None)
            return group if group.pids() else None
        directory = Path(path)
        if not directory.is_dir():
            return None
        box = CgroupSandbox(lease_id, directory)
        if self.cpuset_root is not None and self.root is not None:
            cpuset = self.cpuset_root / self.root.name / lease_id
            if cpuset.is_dir():
                box.cpuset_dir = cpuset
                box.cores = tuple(parse_cpu_list((cpuset / "cpuset.cpus").read_text()))
        return box

    def release(self) -> None:
        """Remove this worker's own cgroup folders (v2, and v1 cpuset) when no lease sandbox
        is left in them: an agent that stops with no open lease leaves nothing behind. A
        folder that still holds a lease stays, for the restarted agent to re-attach."""
        if self.root is None:
            return
        self.repartition()  # lifted unless some agent's lease still holds cores
        folders = [self.root]
        if self.cpuset_root is not None:
            folders.append(self.cpuset_root / self.root.name)
        for folder in folders:
            with contextlib.suppress(OSError):  # absent, or a lease's cgroup still inside
                folder.rmdir()

    def leftovers(self, known: set[str]) -> list[Sandbox]:
        """Lease cgroups on disk that no record names (a crash between create and save)."""
        if self.root is None or not self.root.is_dir():
            return []
        found: list[Sandbox] = []
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and d.name not in known:
                box = self.attach(d.name, str(d))
                if box is not None:
                    found.append(box)
        return found
