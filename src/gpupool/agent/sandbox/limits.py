"""A lease's memory and process-count limits, in whichever cgroup hierarchy holds each
controller: the unified (v2) one where its `cgroup.controllers` lists it, else the v1
hierarchy of that controller (a v1/v2 hybrid such as this project's machines keeps memory
and pids in v1, so the v2 lease cgroup alone cannot limit them).

v1 lease folders sit below the agent's own cgroup of that controller
(`<mount>/<own path>/gpupool-<worker>/<lease>`), so a lease's memory also counts against
whatever limit the supplier set on the agent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gpupool.agent.sandbox.cgroup import SandboxError, _enter_then_exec

_V1_FILES = {"memory": "memory.limit_in_bytes", "pids": "pids.max"}
# A lease member's memory is never limited below what one Ray node with its dashboard needs.
MEMORY_FLOOR_BYTES = 2 << 30


def lease_memory_bytes(leased_mb: Sequence[tuple[bool, int]], gpus: int, host_mb: int) -> int:
    """A lease member's memory limit from what it leased here, each device as (is a GPU,
    its registered memory in MiB): a CPU device's own share of host memory (devices.py
    splits it by cores), a GPU's 1/`gpus` of the host's (its memory_mb is the GPU's own),
    and never under MEMORY_FLOOR_BYTES."""
    total_mb = sum(host_mb // max(gpus, 1) if gpu else mb for gpu, mb in leased_mb)
    return max(total_mb << 20, MEMORY_FLOOR_BYTES)


_V2_FILES = {"memory": "memory.max", "pids": "pids.max"}


def v1_controller_dir(controller: str, mountinfo: str, proc_cgroup: str) -> Path | None:
    """This process's cgroup of a v1 controller, from /proc/self/mountinfo and
    /proc/self/cgroup text; None where no v1 hierarchy has it."""
    mount = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if len(fields) >= 3 and fields[0] == "cgroup" and controller in fields[2].split(","):
            mount = Path(left.split()[4])
    if mount is None:
        return None
    for line in proc_cgroup.splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return mount / path.strip().lstrip("/")
    return mount


def _v2_has(v2_dir: Path, controller: str) -> bool:
    with contextlib.suppress(OSError):
        return controller in (v2_dir.parent / "cgroup.controllers").read_text().split()
    return False


@dataclass
class Limits:
    """The v1 cgroups holding a lease's limits (the v2 ones live in its CgroupSandbox's
    folder and go with it)."""

    v1_dirs: tuple[Path, ...] = ()

    @classmethod
    def create(
        cls,
        v2_dir: Path,
        worker_id: str,
        lease_id: str,
        memory_bytes: int | None,
        pids_max: int | None,
    ) -> Limits:
        wanted = {"memory": memory_bytes, "pids": pids_max}
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
            own = Path("/proc/self/cgroup").read_text()
        except OSError as exc:
            raise SandboxError(f"cannot read this process's cgroups: {exc}") from exc
        made = []
        for controller, value in wanted.items():
            if value is None:
                continue
            if value <= 0:
                raise SandboxError(f"{controller} limit {value} must be positive")
            try:
                if _v2_has(v2_dir, controller):
                    (v2_dir.parent / "cgroup.subtree_control").write_text(f"+{controller}")
                    (v2_dir / _V2_FILES[controller]).write_text(str(value))
                    continue
                base = v1_controller_dir(controller, mountinfo, own)
                if base is None:
                    raise SandboxError(f"no cgroup hierarchy has the {controller} controller")
                directory = base / f"gpupool-{worker_id}" / lease_id
                directory.mkdir(parents=True, exist_ok=True)
                made.append(directory)
                (directory / _V1_FILES[controller]).write_text(str(value))
            except OSError as exc:
                cls(tuple(made)).remove()
                raise SandboxError(f"cannot set the lease's {controller} limit: {exc}") from exc
        return cls(tuple(made))

    @classmethod
    def attach(cls, worker_id: str, lease_id: str) -> Limits:
        """The v1 limit cgroups of a lease recorded before a restart (those that exist)."""
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
            own = Path("/proc/self/cgroup").read_text()
        except OSError:
            return cls()
        found = []
        for controller in _V1_FILES:
            base = v1_controller_dir(controller, mountinfo, own)
            if base is not None and (base / f"gpupool-{worker_id}" / lease_id).is_dir():
                found.append(base / f"gpupool-{worker_id}" / lease_id)
        return cls(tuple(found))

    def enter(self, argv: Sequence[str]) -> list[str]:
        """`argv`, started from a shell that first joins the v1 limit cgroups."""
        procs = [d / "cgroup.procs" for d in self.v1_dirs]
        return _enter_then_exec(procs, argv) if procs else list(argv)

    def remove(self) -> None:
        """Remove the v1 folders once their last task has gone (after the v2 kill)."""
        for directory in self.v1_dirs:
            for _ in range(250):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # exiting tasks still leaving
                    time.sleep(0.02)
            else:
                raise SandboxError(f"cannot remove cgroup {directory}")
            with contextlib.suppress(OSError):  # another lease's folder may still be there
                directory.parent.rmdir()
