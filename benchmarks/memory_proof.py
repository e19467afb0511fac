"""The capability challenge's memory phase: what holding the states buys an honest device, and
what not holding them costs a cheater.

    .venv/bin/python -m benchmarks.memory_proof

Measured on this machine (NumPy, no GPU), on a chain scaled to fit: the honest sketch from
held states, a cheater that held nothing and rebuilds them (the whole chain again), and the
entropy of a state's entries (what lossless packing could save a cheater). Then, per claimed
model class at the coordinator's default sizing, the figures the docs argue from: held
states, working set, the sketch's deadline, one read of the working set at the card's memory
bandwidth and over its host link (datasheet rates), the share of the states a device must
hold to answer in time, and the least memory that holds that share losslessly packed. The
last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

from gpupool.agent.proof.challenge import run_challenge
from gpupool.domain.challenge import STATE_BYTES_PER_ENTRY, challenge_flops, expected_flops
from gpupool.services.challenges import Sizing

# (NVML memory MiB, device memory bandwidth B/s, host link B/s): datasheet figures.
CLASSES = {
    "NVIDIA H100 80GB HBM3": (81_559, 3.35e12, 64e9),  # HBM3, PCIe 5.0 x16
    "NVIDIA A100-SXM4-80GB": (81_920, 2.04e12, 32e9),  # HBM2e, PCIe 4.0 x16
    "NVIDIA GeForce RTX 4090": (24_564, 1.01e12, 32e9),  # GDDR6X, PCIe 4.0 x16
    "Tesla T4": (15_360, 0.32e12, 16e9),  # GDDR6, PCIe 3.0 x16
}


def entropy_bits(values: np.ndarray) -> float:
    """Shannon entropy of the values' empirical distribution, bits per entry."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def measured(n: int, steps: int) -> dict[str, float]:
    work = run_challenge(n, 11, 12, "numpy", steps, steps)
    started = time.perf_counter()
    work.sketch(0x5EED)
    sketch = time.perf_counter() - started
    started = time.perf_counter()  # the cheater: no states kept, so the chain once more
    again = run_challenge(n, 11, 12, "numpy", steps, steps)
    again.sketch(0x5EED)
    rebuild = time.perf_counter() - started
    bits = entropy_bits(np.asarray(work.held[-1]).astype(np.int64))
    work.release()
    again.release()
    return {"n": n, "steps": steps, "sketch_s": sketch, "rebuild_s": rebuild, "bits": bits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="matrix size of the measured chain")
    parser.add_argument("--steps", type=int, default=8, help="links (all held) measured")
    args = parser.parse_args()
    m = measured(args.n, args.steps)
    # A state's entries are sums of n products: their spread grows as sqrt(n), half a bit of
    # entropy per doubling of n.
    bits_8192 = m["bits"] + 0.5 * math.log2(8192 / args.n)
    print(
        f"measured at n={args.n}, {args.steps} held states: sketch {m['sketch_s']:.3f} s, "
        f"rebuilding the states {m['rebuild_s']:.2f} s ({m['rebuild_s'] / m['sketch_s']:.0f}x); "
        f"state entropy {m['bits']:.2f} bits/entry (about {bits_8192:.1f} at n = 8192)"
    )
    sizing = Sizing()
    rows = []
    for model, (memory_mb, device_bw, host_bw) in CLASSES.items():
        expected = expected_flops(model) or 0.0
        n, steps, held = sizing.shape(expected, 2048, memory_mb * 2**20)
        working_set = held * STATE_BYTES_PER_ENTRY * n * n
        deadline = sizing.memory_deadline(n, held)
        link = challenge_flops(n) / expected
        row = {
            "model": model,
            "steps": steps,
            "held": held,
            "working_set_gb": round(working_set / 1e9, 1),
            "share_of_claimed": round(working_set / (memory_mb * 2**20), 3),
            "deadline_s": round(deadline, 3),
            "read_device_s": round(working_set / device_bw, 3),
            "read_host_link_s": round(working_set / host_bw, 2),
            # rebuilding a fraction f of the held states takes f * held links
            "must_hold_share": round(max(0.0, 1 - deadline / (held * link)), 3),
        }
        # the least device memory that answers in time: the share it must hold, losslessly
        # packed at the states' entropy
        row["least_memory_gb"] = round(
            row["must_hold_share"] * working_set * bits_8192 / 32 / 1e9, 1
        )
        rows.append(row)
        print(
            f"{model}: {held} of {steps} links held, {row['working_set_gb']} GB "
            f"({row['share_of_claimed']:.0%} of claimed); sketch due in {row['deadline_s']} s; "
            f"one read {row['read_device_s']} s from device memory, {row['read_host_link_s']} s "
            f"over the host link; must hold {row['must_hold_share']:.0%} of the states; "
            f"so at least {row['least_memory_gb']} GB however packed"
        )
    print(
        json.dumps(
            {
                "command": " ".join(["python -m benchmarks.memory_proof", *sys.argv[1:]]),
                "measured": {k: round(v, 4) for k, v in m.items()},
                "entropy_bits_at_8192": round(bits_8192, 2),
                "classes": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
