"""Capability challenge: the agent's work against the coordinator's check.

    .venv/bin/python -m benchmarks.challenge --n 2048 --k 8 --repeat 3

Agent side (backend "auto": NumPy here): generate A and B, multiply (the timed part that
throughput is judged on), hash the rows and build the Merkle tree. Coordinator side, with B
already in a warm BPool: generate the k requested rows of A, multiply them by B, check k
proofs (`verify_opening` end to end). The cold-pool cost, generating and caching one B, is
reported apart: a coordinator pays it once per pool seed, not per challenge. Each figure is
the median over --repeat runs with fresh seeds; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time

from gpupool.agent.proof.challenge import open_rows, run_challenge
from gpupool.crypto.merkle import MerkleTree, row_leaves
from gpupool.domain.challenge import challenge_flops, operand, pick_rows, product_rows
from gpupool.services.capability import BPool, ChallengeSpec, Opening, verify_opening


def one_round(n: int, k: int, backend: str) -> tuple[str, dict[str, float]]:
    """The backend's name and each timed phase's seconds, for one challenge with fresh seeds."""
    seed_a, seed_b = (int.from_bytes(secrets.token_bytes(8), "little") for _ in range(2))
    spec = ChallengeSpec("bench", n, seed_a, seed_b)
    clock = time.perf_counter
    t0 = clock()
    operand(seed_a, n), operand(seed_b, n)
    t1 = clock()
    work = run_challenge(n, seed_a, seed_b, backend)
    t2 = clock()
    MerkleTree(row_leaves(work.product))
    t3 = clock()

    pool = BPool(capacity=1)
    pool.get(seed_b, n)
    t4 = clock()
    rows = pick_rows(secrets.token_bytes(16), n, k)
    openings = [Opening(**o) for o in open_rows(work, rows)]
    t5 = clock()
    outcome = verify_opening(spec, work.root, openings, rows, pool)
    t6 = clock()
    product_rows(seed_a, pool.get(seed_b, n), n, rows)
    t7 = clock()
    assert outcome.ok, outcome.reason
    return work.backend, {
        "generate": t1 - t0,
        "multiply": work.compute_seconds,
        "hash": t3 - t2,
        "agent_total": t2 - t1,
        "cold_b": t4 - t3,
        "check": t6 - t5,
        "check_rows": t7 - t6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    n, k = args.n, args.k

    figures: dict[str, list[float]] = {}
    backend = ""
    for _ in range(args.repeat):
        backend, phases = one_round(n, k, args.backend)
        for name, seconds in phases.items():
            figures.setdefault(name, []).append(seconds)

    med = {name: statistics.median(values) for name, values in figures.items()}
    ms = {name: round(value * 1000, 3) for name, value in med.items()}
    result = {
        "command": " ".join(["python -m benchmarks.challenge", *sys.argv[1:]]),
        "n": n,
        "k": k,
        "repeat": args.repeat,
        "backend": backend,
        "median_ms": ms,
        "agent_gflops": round(challenge_flops(n) / med["multiply"] / 1e9, 1),
        "check_over_multiply": round(med["check"] / med["multiply"], 5),
        "check_over_agent_total": round(med["check"] / med["agent_total"], 5),
        "op_count_ratio_k_over_n": round(k / n, 5),
    }
    print(f"n={n} k={k} backend={backend}, median of {args.repeat}")
    print(
        f"agent:       generate A,B {ms['generate']} ms, multiply {ms['multiply']} ms "
        f"({result['agent_gflops']} GFLOP/s), hash+root {ms['hash']} ms; "
        f"total {ms['agent_total']} ms"
    )
    print(
        f"coordinator: check (k rows of A, k fingerprints, k proofs) {ms['check']} ms; "
        f"exact k rows x B (only run to name a wrong column) {ms['check_rows']} ms; "
        f"cold pool: B and its fingerprint {ms['cold_b']} ms"
    )
    print(
        f"ratio:       check / multiply {result['check_over_multiply']:.3%}, "
        f"check / agent total {result['check_over_agent_total']:.3%}, "
        f"operation count k/n {result['op_count_ratio_k_over_n']:.3%}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
