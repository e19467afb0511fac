"""The agent's Proof of Time-Lock loops: every sampling interval the guard looks at each
leased device (killing foreign processes) and the recorder turns what it saw into a sample;
every epoch the recorder seals and sends the samples.

The sender wakes shortly after each beacon boundary, so the samples it sends name the
beacon that was current while they were taken, which the coordinator still accepts as
"just before current".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpupool.agent.link import LinkError
from gpupool.agent.proof.recorder import Recorder
from gpupool.agent.sandbox.cgroup import Sandbox
from gpupool.agent.sandbox.guard import DeviceObservation, DeviceView, Guard, LeaseView
from gpupool.domain.models import DeviceSpec

log = logging.getLogger("gpupool.agent.proof.prover")

SEND_AFTER_BOUNDARY_SECONDS = 0.3


@dataclass(frozen=True, slots=True)
class Observed:
    """A guard observation in the form the recorder samples."""

    device_id: str
    lease_id: str
    observation: DeviceObservation

    def sample_fields(self) -> dict[str, Any]:
        o = self.observation
        return {
            "processes": [
                {"pid": pid, "name": name[:64], "owner": owner} for pid, name, owner in o.processes
            ],
            "utilization_pct": o.utilization_pct,
            "memory_mb": o.memory_mb,
            "power_mw": o.power_mw,
            "temperature_c": o.temperature_c,
            "violations": [
                {
                    "pid": v.pid,
                    "exe": v.exe[:256],
                    "cmdline": v.cmdline[:512],
                    "first_seen_ms": v.first_seen_ms,
                    "killed_at_ms": v.killed_at_ms,
                }
                for v in o.violations
            ],
        }


Running = Callable[[], dict[str, tuple[Sandbox, list[str]]]]


class Prover:
    def __init__(
        self, guard: Guard, recorder: Recorder, devices: list[DeviceSpec], running: Running
    ) -> None:
        self.guard = guard
        self.recorder = recorder
        self.specs = {d.local_name: d for d in devices}
        self.running = running  # lease id -> (sandbox, global device ids), a snapshot
        self._lock = threading.Lock()  # one scan at a time

    def _views(self, leases: dict[str, tuple[Sandbox, list[str]]]) -> list[LeaseView]:
        views = []
        for lease_id, (sandbox, device_ids) in sorted(leases.items()):
            devices = []
            for device_id in device_ids:
                spec = self.specs.get(device_id.split(":", 1)[-1])
                if spec is None:
                    continue
                devices.append(
                    DeviceView(device_id, spec.local_name, spec.kind, spec.cores, spec.uuid)
                )
            views.append(LeaseView(lease_id, sandbox, devices))
        return views

    def sample(self, only_lease: str | None = None) -> None:
        leases = self.running()
        if only_lease is not None:
            leases = {k: v for k, v in leases.items() if k == only_lease}
        if not leases:
            return
        if self.recorder.beacon_outdated():
            # Name the beacon of this epoch, not the last one: a sample naming an older
            # beacon would be stale by the time the next send reaches the coordinator.
            try:
                self.recorder.refresh_beacon()
            except LinkError as exc:
                log.warning("event=beacon_unavailable reason=%s", exc.message)
        with self._lock:
            views = self._views(leases)
            device_lease = {d.device_id: v.lease_id for v in views for d in v.devices}
            observations = self.guard.scan(views)
        for o in observations:
            for v in o.violations:
                log.warning(
                    "event=foreign_process_killed lease=%s device=%s pid=%d exe=%s",
                    device_lease.get(o.device_id),
                    o.device_id,
                    v.pid,
                    v.exe,
                )
        self.recorder.record(
            Observed(o.device_id, device_lease[o.device_id], o)
            for o in observations
            if o.device_id in device_lease
        )

    def finish(self, lease_id: str) -> None:
        """A last sample and a last send for a lease that is about to be torn down."""
        self.sample(only_lease=lease_id)
        self.recorder.flush(only_lease=lease_id)

    # loops ------------------------------------------------------------------------------

    def run_sampler(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except Exception:
                log.exception("event=sample_failed")
            stop.wait(max(0.0, self.recorder.interval_seconds - (time.monotonic() - started)))

    def run_sender(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if self.recorder.beacon is None:
                    self.recorder.refresh_beacon()
                self.recorder.flush()
            except Exception:
                log.exception("event=send_failed")
            epoch = self.recorder.epoch_seconds
            now = time.time()
            next_boundary = (now // epoch + 1) * epoch
            stop.wait(next_boundary - now + SEND_AFTER_BOUNDARY_SECONDS)
