"""The guard: every sampling interval, who runs on each leased device, and a kill for every
process that is neither the lease's nor on the short system allow-list.

Which processes are "on" a device:
- GPU: the processes NVML lists as computing or drawing on it.
- CPU core group: the processes pinned there: their CPU affinity lies entirely inside the
  lease's cores on this worker and is narrower than the whole machine (`taskset -c 3
  miner`). The machine's ordinary processes may run on every core and the scheduler spreads
  them everywhere; counting them would kill sshd and the agent itself (and, when a lease
  holds every core, everything). Keeping them off the leased cores is the supplier's
  configuration (systemd `AllowedCPUs=` for its slices), outside what the guard decides.

Owner of a process: `lease` when the lease's sandbox holds it, `system` when allow-listed
(kernel threads, pid 1, the agent itself and the helpers it starts, such as a capability
challenge, listed executables, processes in listed cgroups),
else `foreign`: killed with SIGKILL at once and recorded as a violation. A process is known
by (pid, start time), so a reused pid is a new process.
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

from gpupool.agent.sandbox.cgroup import Sandbox
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
        self._first_seen: dict[tuple[int, int], int] = {}
        self._cpu_times: dict[int, tuple[int, int]] = {}  # core -> (busy, total) at last scan

    # ownership ---------------------------------------------------------------------------

    def is_system(self, p: ProcessInfo) -> bool:
        return (
            p.kernel_thread
            or p.pid in (1, self.agent_pid)
            or p.ppid == self.agent_pid
            or (bool(p.exe) and p.exe in self.allow_exes)
            or any(p.cgroup2.startswith(prefix) for prefix in self.allow_cgroups)
        )

    def owner(self, p: ProcessInfo, lease_pids: set[int]) -> str:
        if p.pid in lease_pids:
            return "lease"
        return "system" if self.is_system(p) else "foreign"

    # the scan ----------------------------------------------------------------------------

    def scan(self, leases: Sequence[LeaseView]) -> list[DeviceObservation]:
        """Look at every leased device once; kill what is foreign; report what was seen."""
        procs = [p for p in self.list_procs() if p.state not in ("Z", "X")]
        by_pid = {p.pid: p for p in procs}
        core_load = self._core_load()
        seen_now: set[tuple[int, int]] = set()
        out: list[DeviceObservation] = []
        for lease in leases:
            lease_pids = lease.sandbox.pids()
            lease_cores = frozenset(c for d in lease.devices for c in d.cores)
            pinned = (
                [
                    p
                    for p in procs
                    if p.cpus_allowed
                    and p.cpus_allowed <= lease_cores
                    and p.cpus_allowed != self.machine_cores
                ]
                if lease_cores
                else []
            )
            for device in lease.devices:
                if device.kind is DeviceKind.GPU:
                    on_device = self._gpu_processes(device, by_pid)
                else:
                    cores = frozenset(device.cores)
                    on_device = [p for p in pinned if p.cpus_allowed & cores]
                processes: list[tuple[int, str, str]] = []
                violations: list[Violation] = []
                for p in on_device:
                    owner = self.owner(p, lease_pids)
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
