"""The sealed lease's own share of a member's bring-up: the same `ray start --head` in the
lease's cgroup alone and in its container on its encrypted disk, and the sandbox's set-up.

    .venv/bin/python -m benchmarks.sandbox_share --rounds 3

Each round, one after the other: (1) a plain cgroup sandbox runs `ray start --head` with its
temp dir in a host folder, as leases did before containers; (2) a container (bubblewrap, the
lease's uid, limits) on a fresh gocryptfs disk runs the same, its Ray temp dir in the
container's /tmp, as the agent does now. Timed: making the disk, making the sandbox, and
`ray start` until it exits 0 (Ray's daemons and dashboard up). Needs root, bwrap, gocryptfs,
cgroup v2. Prints medians and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpupool.agent.ray.cmd import start_argv
from gpupool.agent.sandbox.cgroup import Sandbox, Sandboxes, find_cgroup2_root
from gpupool.agent.sandbox.container import (
    Containers,
    ContainerSpec,
    bwrap_path,
    lease_uid,
    uids_in_use,
)
from gpupool.agent.sandbox.cryptdisk import CryptDisk
from gpupool.domain.models import DeviceKind
from gpupool.domain.ray import LocalDevice, RayRole

WORKER = "bench-share"
DEVICE = LocalDevice("w:cpu0", DeviceKind.CPU, 1)


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started


def _ray_start(box: Sandbox, ray_temp: Path, log_dir: Path) -> float:
    argv, _ = start_argv(RayRole.HEAD, "127.0.0.1", ray_temp, [DEVICE], 80 << 20)
    log = log_dir / "start.log"
    started = time.perf_counter()
    box.spawn(["/bin/sh", "-c", '"$@" > "$0" 2>&1; echo $? > "$0.rc"', str(log), *argv],
              {"RAY_USAGE_STATS_ENABLED": "0"})  # fmt: skip
    rc = Path(f"{log}.rc")
    while not rc.exists():
        if time.perf_counter() - started > 180:
            raise TimeoutError("ray start did not finish in 180 s")
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if rc.read_text().strip() != "0":
        raise RuntimeError(log.read_text()[-800:])
    return seconds


def plain_round(sandboxes: Sandboxes, lease: str) -> dict[str, float]:
    temp = Path(tempfile.mkdtemp(prefix="gpb-"))
    box, made = _timed(lambda: sandboxes.create(lease))
    try:
        return {"sandbox_s": made, "ray_start_s": _ray_start(box, temp, temp)}
    finally:
        box.destroy()
        shutil.rmtree(temp, ignore_errors=True)


def sealed_round(containers: Containers, lease: str) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="gpb-"))
    plain = Path(tempfile.mkdtemp(prefix="gpb-r"))
    plain.rmdir()
    uid = lease_uid(lease, uids_in_use())
    disk, mounted = _timed(lambda: CryptDisk.create(base / "lease", (uid, uid), plain))
    spec = ContainerSpec(lease, disk.plain, uid, uid, share_host_network=True, pids_max=4096)
    box, made = _timed(lambda: containers.create(spec))
    try:
        ray = _ray_start(box, Path("/tmp/ray"), disk.plain)  # the container's own /tmp
        return {"disk_s": mounted, "sandbox_s": made, "ray_start_s": ray}
    finally:
        box.destroy()
        disk.destroy()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root, bwrap = find_cgroup2_root(), bwrap_path()
    if root is None or bwrap is None:
        raise SystemExit("needs root, bwrap and a writable cgroup v2")
    sandboxes = Sandboxes(WORKER, root)
    containers = Containers(sandboxes, WORKER, bwrap)
    plain: list[dict[str, float]] = []
    sealed: list[dict[str, float]] = []
    try:
        for i in range(args.rounds):
            plain.append(plain_round(sandboxes, f"l-plain{i}"))
            sealed.append(sealed_round(containers, f"l-sealed{i}"))
            print(f"round {i + 1}: cgroup only {plain[-1]}, sealed {sealed[-1]}")
    finally:
        sandboxes.release()

    def median(rows: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 3)

    out = {
        "rounds": args.rounds,
        "cgroup_only": {k: median(plain, k) for k in plain[0]},
        "sealed": {k: median(sealed, k) for k in sealed[0]},
    }
    share = sum(out["sealed"].values()) - sum(out["cgroup_only"].values())
    out["sealed_share_s"] = round(share, 3)
    print(f"medians: cgroup only {out['cgroup_only']}; sealed {out['sealed']}")
    print(f"the sealed lease's own share of one member's bring-up: {share:.2f} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
