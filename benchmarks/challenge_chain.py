"""Capability challenge timed by the coordinator: the chain's size, the prover's and the
verifier's time per claimed model class.

    .venv/bin/python -m benchmarks.challenge_chain

For each class the coordinator's default sizing (services/challenges.py `Sizing`) gives n and
the number of links. Measured here, on this machine's CPU:
- the agent's fixed work on the host whatever the device (generating A, and B once per pool
  seed, hashing the last product into the Merkle tree, on up to 8 threads), which an honest
  GPU also pays inside the timed window;
- one link (an n x n by n x n product and the fold) with NumPy, from which a CPU answering
  the whole chain correctly is extrapolated: what an impersonating CPU would need;
- the coordinator's check end to end on correct openings and a correct memory sketch:
  following k rows through the first steps - 1 links, the Freivalds test on the last, k
  Merkle proofs, and the sketch at the k rows.
An honest GPU's time is the sizing target (no GPU is on this machine); the ratio an honest
device reaches on the coordinator's clock is target / (target + fixed host work). The last
line is JSON.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time

import numpy as np

from gpupool.agent.proof.challenge import HOST_THREADS, host_operand
from gpupool.crypto.merkle import MerkleTree, row_leaves
from gpupool.domain.challenge import (
    MIN_RATIO,
    chain_rows,
    challenge_flops,
    expected_flops,
    fold,
    operand,
    pick_rows,
    sketch_of,
    sketch_vectors,
)
from gpupool.services.capability import BPool, ChallengeSpec, Opening, verify_opening
from gpupool.services.challenges import Sizing

# Each class with the memory NVML reports for it (MiB): the memory phase's held states.
CLASSES = {"NVIDIA H100 80GB HBM3": 81_559, "NVIDIA A100-SXM4-80GB": 81_920, "Tesla T4": 15_360}


def host_work(n: int) -> tuple[float, float]:
    """Seconds to generate one operand (A; the agent keeps the pooled B between challenges,
    so B costs the same once per pool seed), and to hash an n x n int32 product into the
    tree."""
    started = time.perf_counter()
    a = host_operand(1, n)
    generated = time.perf_counter() - started
    b = host_operand(2, n)
    product = (a[:1] @ b).astype(np.int32).repeat(n, axis=0)  # any n x n int32 will do
    started = time.perf_counter()
    MerkleTree(row_leaves(product, HOST_THREADS))
    return generated, time.perf_counter() - started


def one_link(n: int) -> float:
    a, b = operand(3, n), operand(4, n)
    started = time.perf_counter()
    (fold((a @ b).astype(np.int32)).astype(np.float32) @ b)
    return (time.perf_counter() - started) / 2


def check(n: int, steps: int, held: int, k: int) -> float:
    """The coordinator's check on correct openings and a correct sketch, B already in a warm
    pool."""
    seed_a, seed_b, seed_m = (int.from_bytes(secrets.token_bytes(8), "little") for _ in range(3))
    pool = BPool(capacity=1)
    b = pool.get(seed_b, n)
    pool.fingerprint(seed_b, n)
    rows = pick_rows(secrets.token_bytes(16), n, k)
    states: list[np.ndarray] = []
    _, product = chain_rows(seed_a, b, n, rows, steps, lambda t, x: states.append(x))
    s = sketch_of(states[steps - held :], sketch_vectors(seed_m, n, held)) if held else None
    sketch = {i: int(v) for i, v in zip(rows, s, strict=True)} if s is not None else None
    # A tree over only the opened rows' leaves would not be the agent's tree; build a real
    # one over an n-row matrix holding the opened rows in their places.
    full = np.zeros((n, n), dtype=np.int32)
    full[rows] = product
    tree = MerkleTree(row_leaves(full))
    openings = [Opening(i, full[i].tolist(), tree.proof(i)) for i in rows]
    started = time.perf_counter()
    spec = ChallengeSpec("b", n, seed_a, seed_b, steps, held, seed_m)
    outcome = verify_opening(spec, tree.root, openings, rows, pool, sketch)
    seconds = time.perf_counter() - started
    assert outcome.ok, outcome.reason
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizing = Sizing()
    parser.add_argument("--k", type=int, default=sizing.chain_rows, help="rows opened")
    args = parser.parse_args()
    generated, hashed = host_work(sizing.gpu_size)
    link = one_link(sizing.gpu_size)
    out = []
    for model, memory_mb in CLASSES.items():
        n, steps, held = sizing.shape(expected_flops(model), 2048, memory_mb * 2**20)
        expected = expected_flops(model) or 0
        honest = challenge_flops(n, steps) / expected
        elapsed = honest + generated + hashed
        cold = honest + 2 * generated + hashed  # the first challenge with a B not yet kept
        row = {
            "model": model,
            "n": n,
            "steps": steps,
            "held": held,
            "gflop": round(challenge_flops(n, steps) / 1e9),
            "honest_gpu_compute_s": round(honest, 2),
            "host_work_s": round(generated + hashed, 2),
            "honest_ratio_on_coordinator_clock": round(honest / elapsed, 3),
            "honest_ratio_cold_b": round(honest / cold, 3),
            "cpu_impersonator_s": round(link * steps + generated + hashed, 1),
            "cpu_impersonator_ratio": round(
                challenge_flops(n, steps) / expected / (link * steps), 4
            ),
            "verify_s": round(check(n, steps, held, args.k), 3),
        }
        out.append(row)
        print(
            f"{model}: n={n} links={steps} held={held} ({row['gflop']} GFLOP); honest GPU "
            f"{row['honest_gpu_compute_s']} s + host {row['host_work_s']} s -> ratio "
            f"{row['honest_ratio_on_coordinator_clock']} ({row['honest_ratio_cold_b']} with B "
            f"not yet kept; passes at {MIN_RATIO}); CPU "
            f"impersonator {row['cpu_impersonator_s']} s (ratio {row['cpu_impersonator_ratio']}); "
            f"coordinator check {row['verify_s']} s"
        )
    print(
        json.dumps(
            {
                "command": " ".join(["python -m benchmarks.challenge_chain", *sys.argv[1:]]),
                "k": args.k,
                "sizing": {"gpu_size": sizing.gpu_size, "target_seconds": sizing.target_seconds},
                "host_threads": HOST_THREADS,
                "host_generate_one_operand_s": round(generated, 3),
                "host_hash_s": round(hashed, 3),
                "cpu_link_s": round(link, 3),
                "classes": out,
            }
        )
    )


if __name__ == "__main__":
    main()
