"""Placement on real internet latencies (WonderNetwork, July 2020) and on a large pool.

    python -m benchmarks.placement quality --seeds 11
    python -m benchmarks.placement scale --pool 100000 --size 16 --repeat 21

`quality`: for clusters of 4, 8 and 16, latency-aware placement (Vivaldi from K = 16 probes
per node plus the short-list probes) against geography only, random sites within one
continent, and the exact optimum (minimum-diameter subset by clique search); true diameters
from the measured matrix, medians over seeds.
`scale`: a synthetic pool of devices spread over the WonderNetwork sites (workers of 1-8
devices near their site's coordinate); time to place 16 devices from a prebuilt index, and
to build the index.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpupool.domain.coordinates import Coordinate
from gpupool.domain.diameter import min_diameter_subset
from gpupool.domain.grouping import LatencyAware, PoolIndex
from gpupool.domain.models import (
    BookingRequest,
    Device,
    DeviceKind,
    DeviceSpec,
    DeviceStatus,
    Location,
    SupplierAttributes,
    WorkerStatus,
)
from gpupool.services.netsim import (
    bench_placement,
    devices_for,
    diameter_of,
    load_wondernetwork,
    row_of,
    simulate_vivaldi,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wondernetwork"


def quality(seeds: int, probes: int, data: Path) -> dict[str, Any]:
    matrix, sites = load_wondernetwork(data)
    unknown_as_inf = np.where(np.isnan(matrix), np.inf, matrix).tolist()
    by_region: dict[str, list[int]] = {}
    for i, s in enumerate(sites):
        by_region.setdefault(s.region, []).append(i)
    report: dict[str, Any] = {"sites": len(sites), "probes_per_node": probes, "sizes": {}}
    errors = []
    for size in (4, 8, 16):
        started = time.perf_counter()
        optimum = min_diameter_subset(unknown_as_inf, size)
        optimum_s = time.perf_counter() - started
        assert optimum is not None
        best = optimum[1]
        ours, ours_ms, randoms = [], [], []
        total_probes = []
        for seed in range(1, seeds + 1):
            r = bench_placement(matrix, size, probes, seed, sites)
            ours.append(r["true_diameter_ms"])
            ours_ms.append(r["elapsed_ms"])
            total_probes.append(r["probes"])
            errors.append(r["vivaldi_median_relative_error"])
            rng = random.Random(seed)
            big = [reg for reg, members in sorted(by_region.items()) if len(members) >= size]
            region = rng.choice(big)
            randoms.append(diameter_of(matrix, rng.sample(by_region[region], size)))
        geo = LatencyAware().place(
            BookingRequest(size, DeviceKind.CPU, 1, 1_000_000),
            devices_for(len(matrix), None, sites),
        )
        geo_members = [row_of(d.worker_id) for d in geo.devices]  # type: ignore[union-attr]
        geo_diameter = diameter_of(matrix, geo_members)
        median_ours = statistics.median(ours)
        median_random = statistics.median(randoms)
        report["sizes"][str(size)] = {
            "optimum_ms": round(best, 2),
            "optimum_search_s": round(optimum_s, 2),
            "latency_aware_median_ms": round(median_ours, 2),
            "latency_aware_ratio_to_optimum": round(median_ours / best, 3),
            "latency_aware_ratio_per_seed": [round(d / best, 2) for d in ours],
            "geography_only_ms": round(geo_diameter, 2),
            "geography_only_ratio": round(geo_diameter / best, 3),
            "random_in_continent_median_ms": round(median_random, 2),
            "random_over_latency_aware": round(median_random / median_ours, 2),
            "placement_median_ms": round(statistics.median(ours_ms), 1),
            "probes_median": statistics.median(total_probes),
        }
    report["vivaldi_median_relative_error"] = round(statistics.median(errors), 4)
    return report


def synthetic_pool(size: int, data: Path, seed: int) -> list[Device]:
    """`size` devices on workers of 1-8 devices, each worker near one WonderNetwork site."""
    matrix, sites = load_wondernetwork(data)
    rng = random.Random(seed)
    coords = simulate_vivaldi(matrix, 16, rng)
    np_rng = np.random.default_rng(seed)
    devices: list[Device] = []
    w = 0
    while len(devices) < size:
        site = rng.randrange(len(sites))
        vec = coords.vec[site] + np_rng.normal(scale=0.5, size=coords.vec.shape[1])
        coordinate = Coordinate(
            tuple(float(v) for v in vec), float(coords.height[site]) + rng.uniform(0, 2), 0.2
        )
        worker = f"w{w:07d}"
        w += 1
        for g in range(min(rng.randint(1, 8), size - len(devices))):
            devices.append(
                Device(
                    id=f"{worker}:cpu{g}",
                    worker_id=worker,
                    supplier_id="bench",
                    spec=DeviceSpec(
                        f"cpu{g}", DeviceKind.CPU, "bench", 1024, rng.randint(1, 4) * 250_000
                    ),
                    status=DeviceStatus.IDLE,
                    worker_status=WorkerStatus.UP,
                    location=Location(sites[site].latitude, sites[site].longitude, "any"),
                    attributes=SupplierAttributes(),
                    coordinate=coordinate,
                )
            )
    return devices


def scale(pool: int, size: int, repeat: int, data: Path) -> dict[str, Any]:
    devices = synthetic_pool(pool, data, seed=1)
    started = time.perf_counter()
    index = PoolIndex(devices)
    build_ms = (time.perf_counter() - started) * 1000
    request = BookingRequest(size, DeviceKind.CPU, 1, 1_000_000)
    times, diameters = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        placed = LatencyAware().place_indexed(request, index)
        times.append((time.perf_counter() - started) * 1000)
        diameters.append(placed.predicted_diameter_ms)  # type: ignore[union-attr]
    times.sort()
    return {
        "pool_devices": pool,
        "workers": len(index.worker_ids),
        "size": size,
        "index_build_ms": round(build_ms, 1),
        "place_median_ms": round(statistics.median(times), 2),
        "place_p90_ms": round(times[int(0.9 * (len(times) - 1))], 2),
        "predicted_diameter_ms": round(float(diameters[0] or 0.0), 2),
        "repeat": repeat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--seeds", type=int, default=11)
    q.add_argument("--probes", type=int, default=16)
    s = sub.add_parser("scale")
    s.add_argument("--pool", type=int, default=100_000)
    s.add_argument("--size", type=int, default=16)
    s.add_argument("--repeat", type=int, default=21)
    for p in (q, s):
        p.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if args.what == "quality":
        print(json.dumps(quality(args.seeds, args.probes, args.data), indent=1))
    else:
        print(json.dumps(scale(args.pool, args.size, args.repeat, args.data), indent=1))


if __name__ == "__main__":
    main()
