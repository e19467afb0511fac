"""The guard: every sampling interval, who runs on each leased device, and a kill for every
process that entered a lease's device from outside.

Which processes are "on" a device:
- GPU: the processes NVML lists as computing or drawing on it.
- CPU core group: the processes in the lease's cpuset, and the processes outside the system
  cpuset (`cpusets.CpuPartition`) whose affinity lies entirely inside the lease's cores and
  is narrower than the whole machine (`taskset -c 3 miner`). The machine's ordinary
  processes are kept off leased cores by the partition, not by the guard: a process in the
  system set cannot run on a leased core whatever its affinity says, so it is never looked
  at; nor is a process in another gpupool lease's cpuset (another agent's lease on the same
  machine, whose guard answers for it).

Owner of a process: `lease` when the lease's sandbox holds it; `system` when it is the
agent's own work (the agent and its descendants that are in none of its leases, such as a
capability challenge or spot check on a leased device) or allow-listed (kernel threads,
pid 1, listed executables, processes in listed cgroups); else `foreign`: killed with SIGKILL
at once and recorded as a violation. A process is known by (pid, start time), so a reused
pid is a new process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpupool.agent.sandbox.cgroup import CgroupSandbox, Sandbox
from gpupool.agent.sandbox.cpusets import SYSTEM_NAME, is_lease_cpuset
from gpupool.agent.sandbox.docker import SEALED
from gpupool.agent.sandbox.procs import ProcessInfo, list_processes, parse_cpu_list
from gpupool.domain.models import DeviceKind

MIB = 1024 * 1024
NVML_TEMPERATURE_GPU = 0


@dataclass(frozen=True, slots=True)
class DeviceView:
    device_id: str
    local_name: str
    kind: DeviceKind
    cores: tuple[int, ...] = ()
    gpu_uuid: str | None = None


@dataclass(frozen=True, slots=True)
class LeaseView:
    lease_id: str
    sandbox: Sandbox
    devices: list[DeviceView]


@dataclass(frozen=True, slots=True)
class Violation:
    pid: int
    exe: str
    cmdline: str
    first_seen_ms: int
    killed_at_ms: int
    device_id: str
    lease_id: str


@dataclass(frozen=True, slots=True)
class DeviceObservation:
    device_id: str
    processes: list[tuple[int, str, str]]  # (pid, name, owner)
    violations: list[Violation] = field(default_factory=list)
    utilization_pct: int | None = None
    memory_mb: int | None = None
    power_mw: int | None = None
    temperature_c: int | None = None


def online_cores(sys_root: Path = Path("/sys/devices/system/cpu")) -> frozenset[int]:
    """Every core the machine has online: a process allowed on all of them is not pinned."""
    try:
        return frozenset(parse_cpu_list((sys_root / "online").read_text()))
    except (OSError, ValueError):
        return frozenset(os.sched_getaffinity(0))


def _wall_ms() -> int:
    return round(time.time() * 1000)


class Guard:
    def __init__(
        self,
        *,
        allow_exes: Sequence[str] = (),
        allow_cgroups: Sequence[str] = (),
        nvml: Any = None,
        kill: Callable[[int, int], None] = os.kill,
        now_ms: Callable[[], int] = _wall_ms,
        list_procs: Callable[[], list[ProcessInfo]] = list_processes,
        agent_pid: int | None = None,
        proc_root: Path = Path("/proc"),
        thermal_root: Path = Path("/sys/class/thermal"),
        machine_cores: frozenset[int] | None = None,
        system_cpuset: str = "/" + SYSTEM_NAME,
    ) -> None:
        self.allow_exes = frozenset(allow_exes)
        self.allow_cgroups = tuple(allow_cgroups)
        self.nvml = nvml
        self.kill = kill
        self.now_ms = now_ms
        self.list_procs = list_procs
        self.agent_pid = agent_pid if agent_pid is not None else os.getpid()
        self.proc_root = proc_root
        self.thermal_root = thermal_root
        self.machine_cores = machine_cores if machine_cores is not None else online_cores()
        self.system_cpuset = system_cpuset
        self._first_seen: dict[tuple[int, int], int] = {}
        self._cpu_times: dict[int, tuple[int, int]] = {}  # core -> (busy, total) at last scan

    # ownership ---------------------------------------------------------------------------

    def is_system(self, p: ProcessInfo, by_pid: dict[int, ProcessInfo], leased: set[int]) -> bool:
        return (
            p.kernel_thread
            or p.pid == 1
            or self.is_agents_own(p, by_pid, leased)
            or (bool(p.exe) and p.exe in self.allow_exes)
            or any(p.cgroup2.startswith(prefix) for prefix in self.allow_cgroups)
        )

    def is_agents_own(
        self, p: ProcessInfo, by_pid: dict[int, ProcessInfo], leased: set[int]
    ) -> bool:
        """The agent, or a descendant of it whose line up to the agent passes through no
        process of any lease: a lease's processes are the agent's descendants too (it spawns
        their first process), and one that leaves its sandbox must not become the agent's."""
        seen: set[int] = set()
        current: ProcessInfo | None = p
        while current is not None and current.pid not in seen:
            if current.pid == self.agent_pid:
                return True
            if current.pid in leased or current.pid <= 1:
                return False
            seen.add(current.pid)
            current = by_pid.get(current.ppid)
        return False

    def owner(
        self,
        p: ProcessInfo,
        lease_pids: set[int],
        by_pid: dict[int, ProcessInfo] | None = None,
        leased: set[int] | None = None,
    ) -> str:
        if p.pid in lease_pids:
            return "lease"
        known = by_pid if by_pid is not None else {p.pid: p}
        every_lease = leased if leased is not None else lease_pids
        return "system" if self.is_system(p, known, every_lease) else "foreign"

    def _lease_cpuset(self, sandbox: Sandbox) -> str | None:
        """The lease's v1 cpuset as /proc/<pid>/cgroup names it, where it has one."""
        if isinstance(sandbox, SEALED):  # the container's cgroup holds its cpuset
            sandbox = sandbox.cgroup
        directory = sandbox.cpuset_dir if isinstance(sandbox, CgroupSandbox) else None
        # <cpuset root>/gpupool-<worker>/<lease>, as `CgroupSandbox.create` lays it out
        return f"/{directory.parent.name}/{directory.name}" if directory is not None else None

    def _on_cores(
        self, procs: list[ProcessInfo], lease: LeaseView, cores: frozenset[int]
    ) -> list[ProcessInfo]:
        """The processes that may run on the lease's cores now (see the module's docstring)."""
        if not cores:
            return []
        own_cpuset = self._lease_cpuset(lease.sandbox)

        def pinned_outside(p: ProcessInfo) -> bool:
            return (
                p.cpuset != self.system_cpuset
                and not is_lease_cpuset(p.cpuset)
                and bool(p.cpus_allowed)
                and p.cpus_allowed <= cores
                and p.cpus_allowed != self.machine_cores
            )

        def in_own(p: ProcessInfo) -> bool:  # a Docker container's cpuset lies inside the lease's
            return bool(own_cpuset) and (
                p.cpuset == own_cpuset or p.cpuset.startswith(f"{own_cpuset}/")
            )

        return [p for p in procs if in_own(p) or pinned_outside(p)]

    # the scan ----------------------------------------------------------------------------

    def scan(self, leases: Sequence[LeaseView]) -> list[DeviceObservation]:
        """Look at every leased device once; kill what is foreign; report what was seen."""
        procs = [p for p in self.list_procs() if p.state not in ("Z", "X")]
        by_pid = {p.pid: p for p in procs}
        core_load = self._core_load()
        seen_now: set[tuple[int, int]] = set()
        out: list[DeviceObservation] = []
        pids_of = {lease.lease_id: lease.sandbox.pids() for lease in leases}
        leased = set().union(*pids_of.values()) if pids_of else set()
        for lease in leases:
            lease_pids = pids_of[lease.lease_id]
            lease_cores = frozenset(c for d in lease.devices for c in d.cores)
            pinned = self._on_cores(procs, lease, lease_cores)
            for device in lease.devices:
                if device.kind is DeviceKind.GPU:
                    on_device = self._gpu_processes(device, by_pid)
                else:
                    cores = frozenset(device.cores)
                    on_device = [p for p in pinned if p.cpus_allowed & cores]
                processes: list[tuple[int, str, str]] = []
                violations: list[Violation] = []
                for p in on_device:
                    owner = self.owner(p, lease_pids, by_pid, leased)
                    processes.append((p.pid, p.name, owner))
                    seen_now.add(p.identity)
                    if owner == "foreign":
                        violations.append(self._kill(p, device, lease.lease_id))
                telemetry = (
                    self._gpu_telemetry(device)
                    if device.kind is DeviceKind.GPU
                    else self._cpu_telemetry(device, core_load, procs, lease_pids)
                )
                out.append(DeviceObservation(device.device_id, processes, violations, *telemetry))
        self._first_seen = {k: v for k, v in self._first_seen.items() if k in seen_now}
        return out

    def _kill(self, p: ProcessInfo, device: DeviceView, lease_id: str) -> Violation:
        first = self._first_seen.setdefault(p.identity, self.now_ms())
        with contextlib.suppress(ProcessLookupError):
            self.kill(p.pid, signal.SIGKILL)
        return Violation(p.pid, p.exe, p.cmdline, first, self.now_ms(), device.device_id, lease_id)

    # GPUs through NVML -------------------------------------------------------------------

    def _gpu_processes(
        self, device: DeviceView, by_pid: dict[int, ProcessInfo]
    ) -> list[ProcessInfo]:
        if self.nvml is None or device.gpu_uuid is None:
            return []
        handle = self.nvml.nvmlDeviceGetHandleByUUID(device.gpu_uuid)
        pids: set[int] = set()
        for lister in (
            self.nvml.nvmlDeviceGetComputeRunningProcesses,
            self.nvml.nvmlDeviceGetGraphicsRunningProcesses,
        ):
            with contextlib.suppress(self.nvml.NVMLError):
                pids.update(int(x.pid) for x in lister(handle))
        return [by_pid[pid] for pid in sorted(pids) if pid in by_pid]

    def _gpu_telemetry(
        self, device: DeviceView
    ) -> tuple[int | None, int | None, int | None, int | None]:
        if self.nvml is None or device.gpu_uuid is None:
            return (None, None, None, None)
        n = self.nvml
        h = n.nvmlDeviceGetHandleByUUID(device.gpu_uuid)

        def read(call: Callable[[], Any]) -> Any:
            try:
                return call()
            except n.NVMLError:
                return None

        util = read(lambda: int(n.nvmlDeviceGetUtilizationRates(h).gpu))
        memory = read(lambda: int(n.nvmlDeviceGetMemoryInfo(h).used) // MIB)
        power = read(lambda: int(n.nvmlDeviceGetPowerUsage(h)))
        temp = read(lambda: int(n.nvmlDeviceGetTemperature(h, NVML_TEMPERATURE_GPU)))
        return (util, memory, power, temp)

    # CPU core groups ----------------------------------------------------------------------

    def _core_load(self) -> dict[int, tuple[int, int]]:
        """(busy, total) jiffies per core since the previous scan."""
        now: dict[int, tuple[int, int]] = {}
        with contextlib.suppress(OSError):
            for line in (self.proc_root / "stat").read_text().splitlines():
                head, _, rest = line.partition(" ")
                if head.startswith("cpu") and head[3:].isdigit():
                    values = [int(v) for v in rest.split()]
                    idle = values[3] + (values[4] if len(values) > 4 else 0)
                    now[int(head[3:])] = (sum(values) - idle, sum(values))
        delta = {
            core: (busy - self._cpu_times[core][0], total - self._cpu_times[core][1])
            for core, (busy, total) in now.items()
            if core in self._cpu_times
        }
        self._cpu_times = now
        return delta

    def _cpu_telemetry(
        self,
        device: DeviceView,
        load: dict[int, tuple[int, int]],
        procs: list[ProcessInfo],
        lease_pids: set[int],
    ) -> tuple[int | None, int | None, int | None, int | None]:
        parts = [load[c] for c in device.cores if c in load]
        total = sum(t for _, t in parts)
        util = round(100 * sum(b for b, _ in parts) / total) if total > 0 else None
        cores = frozenset(device.cores)
        rss = sum(p.rss_kb for p in procs if p.pid in lease_pids and p.cpus_allowed & cores)
        return (util, rss // 1024, None, self._temperature())

    def _temperature(self) -> int | None:
        readings = []
        for zone in self.thermal_root.glob("thermal_zone*/temp"):
            with contextlib.suppress(OSError, ValueError):
                readings.append(int(zone.read_text().strip()) // 1000)
        return max(readings) if readings else None
