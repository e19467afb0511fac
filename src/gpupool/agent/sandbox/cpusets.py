"""The machine's cores partitioned between leases and everything else: a "system" cpuset holds
every process that is in no gpupool lease, on the online cores minus the union of every
gpupool lease cpuset on the machine, so the supplier's own programs step off leased cores
instead of being killed for running there (docs/sandbox.md).

The v1 cpuset hierarchy (a v1/v2 hybrid keeps cpuset there) is laid out as

    <root>/                    every process the partition has not moved (yet)
    <root>/gpupool-system/     the system set: the root's processes, moved
    <root>/gpupool-<worker>/<lease>/   a lease's cores (`CgroupSandbox`)

Several agents may share one machine (tests, the demo), each with its own worker folder: the
union covers all of them, one file lock makes their updates take turns, and only processes
of the root cpuset are ever moved, so no agent moves another's lease (or any cpuset a
container engine made) into the system set. The kernel resets a moved process's affinity to
its new cpuset's cores; a process that had pinned itself is pinned again to what is left of
its cores, and to exactly its own cores when the partition is lifted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpupool.agent.sandbox.procs import parse_cpu_list, parse_stat

log = logging.getLogger("gpupool.agent.sandbox.cpusets")

SYSTEM_NAME = "gpupool-system"
LEASE_PREFIX = "gpupool-"
LOCK_DIR = Path("/run/gpupool")
# Moving a pid fails for these: per-CPU kernel threads (EINVAL), a process that just exited
# (ESRCH), a kernel thread the kernel keeps in the root (EPERM/EBUSY). None is the agent's
# business, so none is fatal.
SKIPPED_ERRNOS = {errno.EINVAL, errno.ESRCH, errno.EPERM, errno.EBUSY, errno.ENOSPC}


class CpusetError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class PartitionState:
    leased: frozenset[int]  # the union of every gpupool lease's cores on the machine
    system: frozenset[int]  # the system set's cores; empty when no partition is in place
    moved: int = 0  # processes moved into the system set by this update
    skipped: int = 0  # processes that could not move (kernel threads, exits)


def is_lease_cpuset(path: str, prefix: str = LEASE_PREFIX, system: str = SYSTEM_NAME) -> bool:
    """Whether a process's v1 cpuset path is some agent's lease: /gpupool-<worker>/<id>."""
    parts = path.strip("/").split("/")
    return len(parts) == 2 and parts[0].startswith(prefix) and parts[0] != system


def _cpus(path: Path) -> frozenset[int]:
    try:
        return frozenset(parse_cpu_list(path.read_text()))
    except (OSError, ValueError):
        return frozenset()


def _cpu_text(cores: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))


def _procs(cpuset: Path) -> list[int]:
    try:
        return [int(p) for p in (cpuset / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _identity(pid: int) -> str | None:
    """pid:start-time, so a record never applies to a later process that reuses the pid."""
    try:
        return f"{pid}:{parse_stat(Path(f'/proc/{pid}/stat').read_text())[4]}"
    except (OSError, ValueError, IndexError):
        return None


class CpuPartition:
    """The system cpuset of one machine. `update()` after every lease cpuset made or removed;
    `release()` when the agent stops (it lifts the partition if no lease is left anywhere)."""

    def __init__(
        self,
        root: Path,
        *,
        system_name: str = SYSTEM_NAME,
        lease_prefix: str = LEASE_PREFIX,
        lock_dir: Path = LOCK_DIR,
        online: frozenset[int] | None = None,
    ) -> None:
        self.root = root
        self.system = root / system_name
        self.lease_prefix = lease_prefix
        self.lock_dir = lock_dir
        self.online = online if online is not None else _cpus(root / "cpuset.cpus")
        self._pins = lock_dir / f"{system_name}.pins.json"  # identity -> its own cores

    @property
    def system_path(self) -> str:
        """The system set as /proc/<pid>/cgroup names it ("/gpupool-system")."""
        return "/" + self.system.name

    def is_lease_cpuset(self, path: str) -> bool:
        return is_lease_cpuset(path, self.lease_prefix, self.system.name)

    def leased(self) -> frozenset[int]:
        """The union of the cores of every gpupool lease cpuset on the machine."""
        cores: set[int] = set()
        for worker in self.root.glob(f"{self.lease_prefix}*"):
            if worker.is_dir() and worker != self.system:
                for lease in worker.iterdir():
                    if lease.is_dir():
                        cores |= _cpus(lease / "cpuset.cpus")
        return frozenset(cores)

    def system_pids(self) -> set[int]:
        return set(_procs(self.system))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_dir / f"{self.system.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def update(self) -> PartitionState:
        """Fit the system set to the leases now on the machine; lift it when there are none."""
        with self._locked():
            leased = self.leased() & self.online
            free = self.online - leased
            if not leased or not free:
                # Nothing leased, or every core is: the system's processes cannot be moved
                # onto no core, so they stay where they are and the guard leaves them be.
                self._lift()
                return PartitionState(leased, frozenset())
            moved, skipped = self._fit(free)
        log.info(
            "event=cpuset_partition system=%s leased=%s moved=%d skipped=%d",
            _cpu_text(free),
            _cpu_text(leased),
            moved,
            skipped,
        )
        return PartitionState(leased, free, moved, skipped)

    def release(self) -> PartitionState:
        """The agent stops: lift the partition, unless another agent's lease still holds
        cores (its agent keeps the partition then, fitted to what is left)."""
        return self.update()

    # the two moves -------------------------------------------------------------------------

    def _fit(self, free: frozenset[int]) -> tuple[int, int]:
        try:
            self.system.mkdir(exist_ok=True)
            if not (self.system / "cpuset.mems").read_text().strip():
                (self.system / "cpuset.mems").write_text((self.root / "cpuset.mems").read_text())
            (self.system / "cpuset.cpus").write_text(_cpu_text(free))
        except OSError as exc:
            raise CpusetError(f"cannot set up the system cpuset {self.system}: {exc}") from exc
        pins = self._load_pins()
        moved, skipped = 0, set()
        # Processes forked in the root while we move are caught by the next pass.
        for _ in range(3):
            waiting = [pid for pid in _procs(self.root) if pid not in skipped]
            if not waiting:
                break
            for pid in waiting:
                own = self._affinity(pid)
                if not self._move(pid, self.system):
                    skipped.add(pid)
                    continue
                moved += 1
                ident = _identity(pid)
                if own and own != self.online and ident is not None:
                    pins[ident] = sorted(own)
        self._save_pins(pins)
        self._repin(pins, free)
        return moved, len(skipped)

    def _lift(self) -> None:
        if not self.system.is_dir():
            return
        pins = self._load_pins()
        for _ in range(3):
            for pid in _procs(self.system):
                self._move(pid, self.root)
            with contextlib.suppress(OSError):
                self.system.rmdir()
                break
        if self.system.is_dir():
            raise CpusetError(f"cannot remove the system cpuset {self.system}: it stays busy")
        self._repin(pins, self.online)
        self._pins.unlink(missing_ok=True)
        log.info("event=cpuset_partition_lifted cores=%s", _cpu_text(self.online))

    @staticmethod
    def _move(pid: int, cpuset: Path) -> bool:
        try:
            (cpuset / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            if exc.errno in SKIPPED_ERRNOS:
                return False
            raise CpusetError(f"cannot move process {pid} into {cpuset}: {exc}") from exc
        return True

    # affinities of processes that had pinned themselves -----------------------------------

    @staticmethod
    def _affinity(pid: int) -> frozenset[int]:
        try:
            return frozenset(os.sched_getaffinity(pid))
        except OSError:
            return frozenset()

    def _repin(self, pins: dict[str, list[int]], allowed: frozenset[int]) -> None:
        for ident, cores in pins.items():
            pid = int(ident.split(":", 1)[0])
            keep = frozenset(cores) & allowed
            if keep and _identity(pid) == ident:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(pid, keep)

    def _load_pins(self) -> dict[str, list[int]]:
        try:
            data = json.loads(self._pins.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): [int(c) for c in v] for k, v in data.items()}

    def _save_pins(self, pins: dict[str, list[int]]) -> None:
        live = {k: v for k, v in pins.items() if _identity(int(k.split(":", 1)[0])) == k}
        tmp = self._pins.with_suffix(".tmp")
        tmp.write_text(json.dumps(live, sort_keys=True))
        tmp.replace(self._pins)


def find_partition(cpuset_root: Path | None) -> CpuPartition | None:
    """The machine's partition where a writable v1 cpuset hierarchy exists (`find_cpuset_root`)."""
    return CpuPartition(cpuset_root) if cpuset_root is not None else None
