"""What a spot check costs a running lease: the renter's work lost per check, and that as a
share of lease time at the coordinator's default rate.

    .venv/bin/python -m benchmarks.spot_check_cost --seconds 20 --every 2

A stand-in for the renter's work (a loop of float32 matrix products in a child process held
to one core, as a leased CPU device is) runs for --seconds twice: alone, then while the agent
answers a spot check every --every seconds on the same core, exactly as the agent does one
(`run_challenge` in the agent's process: generate, multiply, hash, open). The work lost per
check is (alone - beside) / alone x seconds / checks; the cost at the default rate is that
times the default checks per hour, over 3600 s. The GPU figure needs a GPU machine; a GPU
spot check is a 91-link chain at n = 4096 sized to 0.25 s on an H100, which the renter's
kernels share for that long. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
import sys
import time

import numpy as np

from gpupool.agent.proof.challenge import open_rows, run_challenge
from gpupool.coordinator.settings import CoordinatorSettings
from gpupool.domain.challenge import pick_rows


def renter_work(seconds: float, core: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    os.sched_setaffinity(0, {core})
    a = np.random.default_rng(1).random((384, 384), dtype=np.float32)
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        a = (a @ a) / 384.0
        done += 1
    out.put(done)


def run(seconds: float, every: float | None, n: int, core: int) -> tuple[int, int]:
    """(products the renter's work finished, spot checks answered meanwhile)."""
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    child = mp.Process(target=renter_work, args=(seconds, core, out))
    child.start()
    checks = 0
    if every is not None:
        os.sched_setaffinity(0, {core})  # the check shares the lease's core, as on a device
        deadline = time.monotonic() + seconds
        while time.monotonic() + every < deadline:
            time.sleep(every)
            seed_a, seed_b = (int.from_bytes(secrets.token_bytes(8), "little") for _ in range(2))
            work = run_challenge(n, seed_a, seed_b, backend="numpy")
            open_rows(work, pick_rows(secrets.token_bytes(16), n, 8))
            checks += 1
    child.join()
    return out.get(), checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--core", type=int, default=0)
    args = parser.parse_args()
    defaults = CoordinatorSettings(db_url="", admin_key="")
    n = defaults.challenge_size  # a CPU device's spot check: one product at challenge_size
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    alone, _ = run(args.seconds, None, n, args.core)
    beside, checks = run(args.seconds, args.every, n, args.core)
    lost_per_check = max(0.0, (alone - beside) / alone) * args.seconds / max(checks, 1)
    share = lost_per_check * defaults.spot_checks_per_hour / 3600
    result = {
        "command": " ".join(["python -m benchmarks.spot_check_cost", *sys.argv[1:]]),
        "n": n,
        "checks": checks,
        "renter_products_alone": alone,
        "renter_products_beside_checks": beside,
        "lost_seconds_per_check": round(lost_per_check, 3),
        "checks_per_hour": defaults.spot_checks_per_hour,
        "share_of_lease_time": round(share, 6),
    }
    print(
        f"CPU spot check (n={n}): the renter's work lost {lost_per_check:.3f} s per check "
        f"({checks} checks in {args.seconds} s); at {defaults.spot_checks_per_hour} an hour "
        f"that is {share:.4%} of lease time (target < 0.5 %)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
