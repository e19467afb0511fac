"""Placement against measured internet latencies: RTT matrices, simulated Vivaldi probing,
and the placement benchmark behind `gpupool bench placement`.

A matrix file is square, in milliseconds, whitespace or comma separated; zero, negative or
NaN off the diagonal mean "not measured". Directed measurements are made symmetric by the
mean of both directions (one direction where only one was measured).
"""

from __future__ import annotations

import csv
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpupool.domain.coordinates import (
    DIMENSIONS,
    INITIAL_ERROR,
    MIN_HEIGHT,
    Coordinate,
    update_many,
)
from gpupool.domain.grouping import LatencyAware
from gpupool.domain.models import (
    BookingRequest,
    Device,
    DeviceKind,
    DeviceSpec,
    DeviceStatus,
    Location,
    Shortfall,
    SupplierAttributes,
    WorkerStatus,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Matrix = npt.NDArray[np.float64]

ROUNDS = 400  # Vivaldi passes over each node's probes when computing coordinates


class MatrixError(ValueError):
    """A matrix or site file that cannot be used, with the reason."""


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    latitude: float
    longitude: float
    region: str


def load_matrix(path: Path) -> Matrix:
    """A symmetric RTT matrix with NaN where neither direction was measured (0 on the
    diagonal)."""
    import numpy as np

    try:
        text = path.read_text()
    except OSError as exc:
        raise MatrixError(f"cannot read {path}: {exc.strerror or exc}") from exc
    rows = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rows.append([float(v) for v in line.replace(",", " ").split()])
        except ValueError as exc:
            raise MatrixError(f"{path}:{number}: not a number ({exc})") from exc
    if not rows or any(len(r) != len(rows) for r in rows):
        raise MatrixError(f"{path}: not a square matrix ({len(rows)} rows)")
    return symmetric(np.array(rows, dtype=float))


def symmetric(directed: Matrix) -> Matrix:
    import numpy as np

    m = np.where(np.isfinite(directed) & (directed > 0), directed, np.nan)
    both = np.stack([m, m.T])
    counts = np.sum(np.isfinite(both), axis=0)
    sym = np.where(counts > 0, np.nansum(both, axis=0) / np.maximum(counts, 1), np.nan)
    np.fill_diagonal(sym, 0.0)
    return sym


def load_sites(path: Path) -> list[Site]:
    """Rows `index,name,latitude,longitude,region` (the header names them), one per matrix
    row, in order."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return [
            Site(r["name"], float(r["latitude"]), float(r["longitude"]), r["region"]) for r in rows
        ]
    except (OSError, KeyError, ValueError) as exc:
        raise MatrixError(f"{path}: not a site file ({exc})") from exc


# WonderNetwork's own files -------------------------------------------------------------

CONTINENTS = {"1": "north-america", "2": "south-america", "3": "europe", "4": "oceania"}
CONTINENTS["5"] = "asia"


def load_wondernetwork(folder: Path) -> tuple[Matrix, list[Site]]:
    """WonderProxy's July 2020 ping data (servers and grouped pings, average RTT), as a
    symmetric matrix over the sites that have a server row and at least one ping."""
    import numpy as np

    try:
        with (folder / "servers-2020-07-19.csv").open(newline="") as f:
            servers = {int(r["id"]): r for r in csv.DictReader(f)}
        with (folder / "pings-2020-07-19-grouped.csv").open(newline="") as f:
            pings = [
                (int(r["source"]), int(r["destination"]), float(r["avg"]))
                for r in csv.DictReader(f)
            ]
    except (OSError, KeyError, ValueError) as exc:
        raise MatrixError(f"{folder}: not the WonderNetwork data ({exc})") from exc
    ids = sorted({s for s, d, _ in pings if s != d} & servers.keys())
    where = {site: i for i, site in enumerate(ids)}
    directed = np.full((len(ids), len(ids)), np.nan)
    for s, d, avg in pings:
        if s in where and d in where and s != d:
            directed[where[s], where[d]] = avg
    sites = [
        Site(
            servers[i]["name"],
            float(servers[i]["latitude"]),
            float(servers[i]["longitude"]),
            CONTINENTS.get(servers[i]["continent"], "other"),
        )
        for i in ids
    ]
    return symmetric(directed), sites


# simulated probing -----------------------------------------------------------------------


@dataclass
class Coordinates:
    vec: Matrix
    height: Any
    error: Any
    probes: int
    probed: list[list[int]] = field(default_factory=list)

    def predicted(self) -> Matrix:
        import numpy as np

        diff = self.vec[:, None, :] - self.vec[None, :, :]
        out: Matrix = np.linalg.norm(diff, axis=2) + self.height[:, None] + self.height[None, :]
        return out


def simulate_vivaldi(matrix: Matrix, probes_per_node: int, rng: random.Random) -> Coordinates:
    """Each node measures `probes_per_node` random peers (among those the matrix has a
    measurement for) once; Vivaldi then runs ROUNDS passes over those measurements only."""
    import numpy as np

    n = len(matrix)
    probed = []
    for i in range(n):
        known = [j for j in range(n) if j != i and math.isfinite(matrix[i, j])]
        probed.append(rng.sample(known, min(probes_per_node, len(known))))
    np_rng = np.random.default_rng(rng.getrandbits(64))
    vec = np.zeros((n, DIMENSIONS))
    height = np.full(n, MIN_HEIGHT)
    error = np.full(n, INITIAL_ERROR)
    local = np.array([i for i in range(n) if probed[i]], dtype=np.intp)
    for _ in range(ROUNDS):
        remote = np.array([probed[i][int(np_rng.integers(len(probed[i])))] for i in local])
        rtt = matrix[local, remote]
        ties = np_rng.normal(size=(len(local), DIMENSIONS))
        update_many(vec, height, error, local, remote, rtt, ties)
    return Coordinates(vec, height, error, sum(len(p) for p in probed), probed)


def relative_errors(matrix: Matrix, predicted: Matrix) -> Any:
    """|predicted - measured| / measured over every measured pair."""
    import numpy as np

    iu = np.triu_indices(len(matrix), 1)
    real, guess = matrix[iu], predicted[iu]
    ok = np.isfinite(real) & (real > 0)
    return np.abs(guess[ok] - real[ok]) / real[ok]


# the benchmark ---------------------------------------------------------------------------


def devices_for(
    n: int, coordinates: Coordinates | None, sites: Sequence[Site] | None
) -> list[Device]:
    """One CPU device per matrix row, on its own worker `n000042` (row 42)."""
    out = []
    for i in range(n):
        site = sites[i] if sites else Site(str(i), 0.0, 0.0, "all")
        coordinate = None
        if coordinates is not None:
            coordinate = Coordinate(
                tuple(float(v) for v in coordinates.vec[i]),
                float(coordinates.height[i]),
                float(coordinates.error[i]),
            )
        out.append(
            Device(
                id=f"n{i:06d}:cpu",
                worker_id=f"n{i:06d}",
                supplier_id="bench",
                spec=DeviceSpec("cpu", DeviceKind.CPU, "bench", 1024, 1_000_000),
                status=DeviceStatus.IDLE,
                worker_status=WorkerStatus.UP,
                location=Location(site.latitude, site.longitude, site.region),
                attributes=SupplierAttributes(),
                coordinate=coordinate,
            )
        )
    return out


def row_of(worker_id: str) -> int:
    return int(worker_id[1:])


def diameter_of(matrix: Matrix, members: Sequence[int]) -> float:
    """The largest measured RTT among `members` (NaN when some pair was never measured)."""
    import numpy as np

    if len(members) < 2:
        return 0.0
    sub = matrix[np.ix_(members, members)]
    return float(sub.max()) if np.isfinite(sub).all() else math.nan


class MatrixProber:
    """Short-list probes answered from the matrix: what agents would measure."""

    def __init__(self, matrix: Matrix) -> None:
        self.matrix = matrix
        self.count = 0

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> Mapping[tuple[str, str], float]:
        self.count += len(pairs)
        out = {}
        for a, b in pairs:
            rtt = float(self.matrix[row_of(a), row_of(b)])
            if math.isfinite(rtt):
                out[(a, b)] = rtt
        return out


def bench_placement(
    matrix: Matrix,
    size: int,
    probes: int,
    seed: int,
    sites: Sequence[Site] | None = None,
    shortlist: bool = True,
) -> dict[str, Any]:
    """`gpupool bench placement`: coordinates from `probes` random peers per node, one
    cluster of `size`, its predicted and true diameter."""
    import numpy as np

    n = len(matrix)
    if not 2 <= size <= n:
        raise MatrixError(f"--size must be between 2 and {n} (the matrix has {n} rows)")
    if probes < 1:
        raise MatrixError("--probes must be at least 1")
    rng = random.Random(seed)  # noqa: S311 (a simulation, reproducible by seed)
    coords = simulate_vivaldi(matrix, probes, rng)
    devices = devices_for(n, coords, sites)
    prober = MatrixProber(matrix) if shortlist else None
    request = BookingRequest(size, DeviceKind.CPU, 1, 1_000_000)
    started = time.perf_counter()
    placed = LatencyAware(measure=prober).place(request, devices)
    elapsed = (time.perf_counter() - started) * 1000
    if isinstance(placed, Shortfall):
        raise MatrixError(f"no cluster of {size}: {placed.describe()}")
    members = sorted(row_of(d.worker_id) for d in placed.devices)
    errors = relative_errors(matrix, coords.predicted())
    return {
        "members": members,
        "head": row_of(placed.head.worker_id),
        "predicted_diameter_ms": round(placed.predicted_diameter_ms or 0.0, 3),
        "measured_diameter_ms": placed.measured_diameter_ms,
        "true_diameter_ms": round(diameter_of(matrix, members), 3),
        "elapsed_ms": round(elapsed, 3),
        "probes": coords.probes + (prober.count if prober else 0),
        "coordinate_probes": coords.probes,
        "shortlist_probes": prober.count if prober else 0,
        "vivaldi_median_relative_error": round(float(np.median(errors)), 4),
    }
