"""A distributed model search on real data, run as a Ray job by `gpupool demo`.

The model predicts the round-trip time between two internet sites from their great-circle
distance: a polynomial in distance (degree p) fitted by ridge regression (penalty lam) to the
WonderNetwork RTT matrix (data/wondernetwork). Every (p, lam) pair is one trial, scored by
5-fold cross-validated RMSE in milliseconds; trials are Ray tasks handed round-robin to the
cluster's nodes. Prints one line `RESULT {json}` with the best trial, the trial count and the
node ids that ran trials, and keeps the best model as a checkpoint in the lease's encrypted scratch
folder when it runs inside a lease.

    python rtt_search.py [DATA_DIR]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

EARTH_RADIUS_KM = 6371.0
DEGREES = (1, 2, 3, 4)
PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
FOLDS = 5
SEED = 7


def load_pairs(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Distance (thousands of km) and RTT (ms) of every measured pair of sites."""
    with (data / "sites.csv").open() as f:
        sites = [(float(r["latitude"]), float(r["longitude"])) for r in csv.DictReader(f)]
    rtt = np.loadtxt(data / "rtt-ms.txt", comments="#")
    lat, lon = np.radians(np.array(sites)).T
    i, j = np.triu_indices(len(sites), k=1)
    h = (
        np.sin((lat[j] - lat[i]) / 2) ** 2
        + np.cos(lat[i]) * np.cos(lat[j]) * np.sin((lon[j] - lon[i]) / 2) ** 2
    )
    distance = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(h)) / 1000.0
    y = rtt[i, j]
    keep = np.isfinite(y)
    return distance[keep], y[keep]


def features(distance: np.ndarray, degree: int) -> np.ndarray:
    return np.vander(distance, degree + 1, increasing=True)


def fit(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    penalty = lam * np.eye(x.shape[1])
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    coef: np.ndarray = np.linalg.solve(x.T @ x + penalty, x.T @ y)
    return coef


@ray.remote(num_cpus=1)
def trial(distance: np.ndarray, y: np.ndarray, degree: int, lam: float) -> dict[str, Any]:
    folds = np.random.default_rng(SEED).integers(0, FOLDS, size=len(y))
    x = features(distance, degree)
    errors = []
    for k in range(FOLDS):
        train, test = folds != k, folds == k
        coef = fit(x[train], y[train], lam)
        errors.append(float(np.sqrt(np.mean((x[test] @ coef - y[test]) ** 2))))
    return {
        "degree": degree,
        "lam": lam,
        "rmse_ms": float(np.mean(errors)),
        "node_id": ray.get_runtime_context().get_node_id(),
    }


def checkpoint(best: dict[str, Any], distance: np.ndarray, y: np.ndarray) -> bool:
    """Keep the best model in the lease's encrypted scratch folder (when in a lease)."""
    try:
        from gpupool.agent.sandbox.scratch import Scratch, ScratchError
    except ImportError:
        return False
    try:
        scratch = Scratch.from_env()
    except ScratchError:
        return False
    coef = fit(features(distance, best["degree"]), y, best["lam"])
    scratch.write("rtt-model.json", json.dumps({**best, "coef": coef.tolist()}).encode())
    return True


def main() -> None:
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "wondernetwork")
    distance, y = load_pairs(data)
    ray.init()
    d_ref, y_ref = ray.put(distance), ray.put(y)
    alive = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])  # type: ignore[no-untyped-call]
    grid = [(p, lam) for p in DEGREES for lam in PENALTIES]
    # Trials go round-robin to the nodes, so every member of the cluster works.
    pending = [
        trial.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(alive[i % len(alive)], soft=False)
        ).remote(d_ref, y_ref, p, lam)
        for i, (p, lam) in enumerate(grid)
    ]
    results = ray.get(pending)
    best = min(results, key=lambda r: r["rmse_ms"])
    summary = {
        "pairs": len(y),
        "trials": len(results),
        "best": {k: best[k] for k in ("degree", "lam", "rmse_ms")},
        "trial_nodes": sorted({r["node_id"] for r in results}),
        "alive_nodes": alive,
        "checkpoint": checkpoint(best, distance, y),
    }
    print("RESULT " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
