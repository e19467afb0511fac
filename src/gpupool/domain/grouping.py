"""Latency-aware placement: the N matching devices with the smallest predicted diameter.

A cluster is as fast as its slowest link, so placement minimises the largest predicted RTT
between two members (the diameter), after the hard constraints. The search works on
*workers* (one machine, one network position) with a capacity (how many of its devices
match); devices on one worker are at distance zero.

Predicted RTT between two workers: from their Vivaldi coordinates when both have one
(`coordinates.distance`), else from geography (GEO_BASE_MS plus GEO_MS_PER_KM per
great-circle kilometre: 0.02 ms/km is the median of RTT over distance in the WonderNetwork
data for sites over 500 km apart, about twice light in fibre; 5 ms stands for access links).

The search (docs/placement.md argues it):
1. Seeds. With up to DENSE_LIMIT matching workers every worker is a seed and all pairwise
   distances are computed. Above that, a k-d tree over the coordinates (scipy's cKDTree;
   geography-only workers get their own tree over points on a sphere scaled to ms) gives,
   for a strided sample of workers, the distance to their N-th nearest neighbour, and the
   SEEDS densest become seeds.
2. Growth. From each seed, over its POOL_FACTOR * N nearest workers, add one worker at a
   time: the one whose largest distance to the members so far is smallest (ties to the
   cheaper), until the capacity reaches N.
3. Polish. The best groups are improved by swaps (replace the member that sets the
   diameter by an outsider when that shrinks the diameter). Where the pool has at most
   EXACT_LIMIT workers, the exact optimum (`diameter.min_diameter_subset`) joins them.
4. Short list (optional). Given a `measure` callback, the workers of the best groups (up to
   max(POOL_FACTOR * N, SHORTLIST_MIN) of them) have their real pairwise RTT measured, and
   growth, polish and the exact search run again on those measurements; the probes are
   counted.
5. Choice. Groups whose diameter is within the tolerance of the smallest (`equally_good`:
   TOLERANCE_MS or TOLERANCE_RATIO of it, whichever is larger) are equally good; among them
   the lowest price wins, then the smaller diameter, the higher reputation, the ids. So that
   a cheaper equally good group is a candidate at all, in pools searched densely growth also
   runs from every seed adding the cheapest worker that keeps the group within tolerance.
   The head is the most central member: smallest largest distance to the others, then
   smallest sum.

`PoolIndex` holds the pool as columns (NumPy arrays), so the hard constraints are vector
masks and a booking from 100,000 devices does not walk Python objects; the coordinator can
keep one between bookings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpupool.domain.coordinates import DIMENSIONS
from gpupool.domain.diameter import min_diameter_subset
from gpupool.domain.models import BookingRequest, Device, DeviceKind, SecurityTier, Shortfall
from gpupool.domain.placement import Placed, hard_constraints

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Floats = npt.NDArray[np.float64]
    Ints = npt.NDArray[np.intp]
    Bools = npt.NDArray[np.bool_]

GEO_BASE_MS = 5.0
GEO_MS_PER_KM = 0.02
EARTH_RADIUS_KM = 6371.0
DENSE_LIMIT = 400
SAMPLE = 1024
SEEDS = 32
POOL_FACTOR = 4
POLISHED = 8  # best grown groups that get polished
EXACT_LIMIT = 64  # up to this many workers (or short-listed ones): also the exact optimum
EXACT_BUDGET = 200_000  # branches the exact search may take before placement gives up on it
SHORTLIST_MIN = 64  # workers measured pairwise on the short list: max(4 N, SHORTLIST_MIN)
_TIE = 1e-9  # ms per micro-unit of price: breaks exact distance ties toward cheaper workers
# Diameters closer than this are the same to placement, so price decides between them:
# the predictions carry about 10 % median error (docs/placement.md), and 1 ms is below
# what separates two members on one continent's backbone from each other.
TOLERANCE_MS = 1.0
TOLERANCE_RATIO = 0.10

# Measure the real RTT between pairs of workers (by worker id); pairs it cannot measure are
# left out of the answer.
Measure = Callable[[Sequence[tuple[str, str]]], Mapping[tuple[str, str], float]]


def equally_good_limit(best_diameter_ms: float) -> float:
    """The largest diameter that is as good as `best_diameter_ms` (docs/placement.md)."""
    return best_diameter_ms + max(TOLERANCE_MS, TOLERANCE_RATIO * best_diameter_ms)


def geo_rtt_ms(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """Predicted RTT from great-circle distance (degrees in, ms out; NumPy arrays or floats)."""
    import numpy as np

    p1, p2 = np.radians(lat1), np.radians(lat2)
    dlat, dlon = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    km = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
    return GEO_BASE_MS + GEO_MS_PER_KM * km


class PoolIndex:
    """The pool as columns. Devices are sorted by worker, then price, reputation and id, so
    each worker's devices are one contiguous, cheapest-first run."""

    def __init__(self, devices: Sequence[Device]) -> None:
        import numpy as np

        self.devices = sorted(
            devices,
            key=lambda d: (d.worker_id, d.spec.price_micros_per_hour, -d.reputation, d.id),
        )
        ds = self.devices
        worker_ids: list[str] = []
        node_of = np.empty(len(ds), dtype=np.intp)
        for i, d in enumerate(ds):
            if not worker_ids or worker_ids[-1] != d.worker_id:
                worker_ids.append(d.worker_id)
            node_of[i] = len(worker_ids) - 1
        self.worker_ids = worker_ids
        self.node_of = node_of
        first_of_node: Ints = (
            np.flatnonzero(np.r_[True, node_of[1:] != node_of[:-1]]) if ds else np.zeros(0, np.intp)
        )
        self.node_start = np.r_[first_of_node, len(ds)].astype(np.intp)
        firsts = [ds[i] for i in first_of_node]
        w = len(firsts)
        self.vec = np.zeros((w, DIMENSIONS))
        self.height = np.zeros(w)
        self.has_coord = np.zeros(w, dtype=bool)
        for n, d in enumerate(firsts):
            c = d.coordinate
            if c is not None and len(c.vec) == DIMENSIONS:
                self.vec[n], self.height[n], self.has_coord[n] = c.vec, c.height, True
        self.lat = np.array([d.location.latitude for d in firsts], dtype=float)
        self.lon = np.array([d.location.longitude for d in firsts], dtype=float)

        def codes(values: list[str]) -> tuple[Ints, dict[str, int]]:
            vocabulary: dict[str, int] = {}
            return np.array(
                [vocabulary.setdefault(v, len(vocabulary)) for v in values], dtype=np.intp
            ), vocabulary

        self.available = np.array([d.available for d in ds], dtype=bool)
        self.is_gpu = np.array([d.spec.kind is DeviceKind.GPU for d in ds], dtype=bool)
        self.model, self.models = codes([d.spec.model.casefold() for d in ds])
        self.region, self.regions = codes([d.location.region.casefold() for d in ds])
        self.memory = np.array([d.spec.memory_mb for d in ds], dtype=np.int64)
        self.price = np.array([d.spec.price_micros_per_hour for d in ds], dtype=np.int64)
        self.reputation = np.array([d.reputation for d in ds], dtype=float)
        self.soc2_claimed = np.array([d.attributes.soc2_claimed for d in ds], dtype=bool)
        self.soc2_verified = np.array([d.attributes.soc2_verified for d in ds], dtype=bool)
        self.dc_tier = np.array([d.attributes.datacenter_tier for d in ds], dtype=np.int64)
        self.conn_tier = np.array([d.connectivity_tier for d in ds], dtype=np.int64)
        self.docker = np.array(["docker" in d.features for d in ds], dtype=bool)
        self.egress = np.array(["egress" in d.features for d in ds], dtype=bool)

    def __len__(self) -> int:
        return len(self.devices)

    # hard constraints as masks ---------------------------------------------------------

    def masks(self, request: BookingRequest) -> list[tuple[str, Bools]]:
        """One boolean column per constraint, named and ordered as `hard_constraints`."""
        import numpy as np

        def among(column: Ints, vocabulary: dict[str, int], wanted: Sequence[str]) -> Bools:
            codes = [vocabulary[v.casefold()] for v in wanted if v.casefold() in vocabulary]
            return np.isin(column, codes)

        if request.security_tier is SecurityTier.SOC2_VERIFIED:
            secure = self.soc2_verified
        elif request.security_tier is SecurityTier.SOC2_CLAIMED:
            secure = self.soc2_claimed | self.soc2_verified
        else:
            secure = np.ones(len(self), dtype=bool)
        columns: dict[str, Bools] = {
            "availability": self.available,
            "kind": self.is_gpu if request.kind is DeviceKind.GPU else ~self.is_gpu,
            "gpu_model": among(self.model, self.models, request.gpu_models),
            "memory": self.memory >= request.min_memory_mb,
            "region": among(self.region, self.regions, request.regions),
            "security_tier": secure,
            "datacenter_tier": self.dc_tier >= request.min_datacenter_tier,
            "connectivity_tier": self.conn_tier >= request.min_connectivity_tier,
            "price": self.price <= request.max_price_micros_per_hour,
            "image": self.docker,
            "egress": self.egress,
        }
        return [(name, columns[name]) for name, _ in hard_constraints(request)]

    # distances -------------------------------------------------------------------------

    def distances(self, rows: Ints, cols: Ints) -> Floats:
        """Predicted RTT in ms between workers `rows` and `cols` (a len(rows) x len(cols)
        matrix); zero between a worker and itself."""
        import numpy as np

        rows, cols = np.asarray(rows), np.asarray(cols)
        diff = self.vec[rows][:, None, :] - self.vec[cols][None, :, :]
        coord = np.linalg.norm(diff, axis=2) + self.height[rows][:, None] + self.height[cols]
        both = self.has_coord[rows][:, None] & self.has_coord[cols][None, :]
        if not both.all():
            geo = geo_rtt_ms(
                self.lat[rows][:, None], self.lon[rows][:, None], self.lat[cols], self.lon[cols]
            )
            coord = np.where(both, coord, geo)
        out: Floats = np.where(rows[:, None] == cols[None, :], 0.0, coord)
        return out


@dataclass(frozen=True, slots=True)
class _Group:
    nodes: tuple[int, ...]  # worker indices of the index, in the order they joined
    diameter: float


class LatencyAware:
    """Placement by smallest predicted diameter (see the module docstring)."""

    def __init__(self, measure: Measure | None = None) -> None:
        self.measure = measure

    def place(self, request: BookingRequest, candidates: Sequence[Device]) -> Placed | Shortfall:
        return self.place_indexed(request, PoolIndex(candidates))

    def place_indexed(self, request: BookingRequest, index: PoolIndex) -> Placed | Shortfall:
        import numpy as np

        n = request.devices
        remaining = np.ones(len(index), dtype=bool)
        excluded: dict[str, int] = {}
        for name, mask in index.masks(request):
            excluded[name] = int(np.count_nonzero(remaining & ~mask))
            remaining &= mask
        matching = int(remaining.sum())
        if matching < n:
            return Shortfall(n, matching, excluded)
        capacity = np.bincount(index.node_of[remaining], minlength=len(index.worker_ids))
        cheapest = np.full(len(index.worker_ids), np.inf)
        np.minimum.at(cheapest, index.node_of[remaining], index.price[remaining])
        search = _Search(index, capacity, cheapest, n)
        groups = search.candidates()
        probes = 0
        measured: Floats | None = None
        shortlist: Ints | None = None
        if self.measure is not None and len(groups) > 0:
            shortlist, measured, probes = search.measure(groups, self.measure)
            groups = search.regroup(shortlist, measured)
        limit = equally_good_limit(min(g.diameter for g in groups))
        good = [g for g in groups if g.diameter <= limit + 1e-9]
        best = min(good, key=lambda g: search.rank(g, remaining))
        chosen = search.devices_of(best.nodes, remaining)
        # the group's workers that hold a chosen device (the cheapest N may leave one out)
        holding = {d.worker_id for d in chosen}
        used = [v for v in best.nodes if index.worker_ids[v] in holding]
        nodes = np.array(used, dtype=np.intp)
        predicted = float(index.distances(nodes, nodes).max()) if len(nodes) > 1 else 0.0
        measured_diameter = None
        matrix = index.distances(nodes, nodes)
        if measured is not None and shortlist is not None:
            where = {int(v): i for i, v in enumerate(shortlist)}
            sub = np.array([where[int(v)] for v in nodes], dtype=np.intp)
            matrix = measured[np.ix_(sub, sub)]
            measured_diameter = float(matrix.max()) if len(nodes) > 1 else 0.0
        ecc = matrix.max(axis=1)
        centre = min(range(len(nodes)), key=lambda i: (ecc[i], matrix[i].sum(), i))
        head_worker = index.worker_ids[int(nodes[centre])]
        head = next(d for d in chosen if d.worker_id == head_worker)
        return Placed(tuple(chosen), head, predicted, measured_diameter, probes)


class _Search:
    def __init__(self, index: PoolIndex, capacity: Ints, cheapest: Floats, n: int) -> None:
        import numpy as np

        self.index = index
        self.capacity = capacity
        self.cheapest = cheapest
        self.n = n
        self.nodes = np.flatnonzero(capacity > 0)

    # 1-3: seeds, growth, polish over predicted distances --------------------------------

    def candidates(self) -> list[_Group]:
        import numpy as np

        nodes = self.nodes
        if len(nodes) <= DENSE_LIMIT:
            d = self.index.distances(nodes, nodes)
            best = self._best(self._grow_all(nodes, d) + self._exact(nodes, d))
            if not best:
                return best
            limit = equally_good_limit(min(g.diameter for g in best))
            cheap = [g for s in range(len(nodes)) for g in self._grow_from(nodes, d, [s], limit)]
            return best + self._distinct(cheap)
        pool_size = min(len(nodes), POOL_FACTOR * self.n)
        groups: list[_Group] = []
        for subset, points in self._embeddings(nodes):
            if len(subset) == 0:
                continue
            from scipy.spatial import cKDTree  # type: ignore[import-untyped]

            tree = cKDTree(points)
            k = min(len(subset), self.n)
            stride = max(1, len(subset) // SAMPLE)
            sample = np.arange(0, len(subset), stride)
            kth, _ = tree.query(points[sample], k=k)
            radius = kth if k == 1 else kth[:, -1]
            density = radius + 2 * self.index.height[subset[sample]]
            seeds = sample[np.argsort(density, kind="stable")[:SEEDS]]
            _, near = tree.query(points[seeds], k=min(len(subset), 2 * pool_size))
            near = near.reshape(len(seeds), -1)
            for seed, around in zip(seeds, near, strict=True):
                pool = subset[around]
                d_seed = self.index.distances(np.array([subset[seed]]), pool)[0]
                pool = pool[np.argsort(d_seed, kind="stable")[:pool_size]]
                d = self.index.distances(pool, pool)
                seed_at = int(np.flatnonzero(pool == subset[seed])[0])
                groups.extend(self._grow_from(pool, d, [seed_at]))
        return self._best(groups)

    def _embeddings(self, nodes: Ints) -> list[tuple[Ints, Floats]]:
        """Workers with coordinates by their coordinates; the rest on a sphere in ms."""
        import numpy as np

        has = self.index.has_coord[nodes]
        located = nodes[~has]
        lat, lon = np.radians(self.index.lat[located]), np.radians(self.index.lon[located])
        scale = EARTH_RADIUS_KM * GEO_MS_PER_KM
        sphere = np.column_stack(
            (np.cos(lat) * np.cos(lon) * scale, np.cos(lat) * np.sin(lon) * scale, np.sin(lat))
        )
        sphere[:, 2] *= scale
        return [(nodes[has], self.index.vec[nodes[has]]), (located, sphere)]

    def _grow_all(self, pool: Ints, d: Floats) -> list[_Group]:
        import numpy as np

        size = min(len(pool), POOL_FACTOR * self.n)
        out: list[_Group] = []
        for s in range(len(pool)):
            near = np.argpartition(d[s], size - 1)[:size] if size < len(pool) else None
            if near is None:
                out.extend(self._grow_from(pool, d, [s]))
            else:
                if s not in near:
                    near[np.argmax(d[s, near])] = s
                sub = d[np.ix_(near, near)]
                seed_at = int(np.flatnonzero(near == s)[0])
                out.extend(self._grow_from(pool[near], sub, [seed_at]))
        return out

    def _grow_from(
        self, pool: Ints, d: Floats, start: list[int], limit: float | None = None
    ) -> list[_Group]:
        """Grow one group inside `pool` (with distance matrix `d`) from the members `start`:
        each step adds the worker nearest to all members, or, given `limit`, the cheapest
        worker within `limit` of all members (so the diameter stays within it)."""
        import numpy as np

        cap = self.capacity[pool]
        tie = self.cheapest[pool] * _TIE
        price = self.cheapest[pool]
        inside = np.zeros(len(pool), dtype=bool)
        inside[start] = True
        ecc = d[start].max(axis=0)
        order = list(start)
        have = int(cap[start].sum())
        while have < self.n:
            if limit is None:
                score = np.where(inside, np.inf, ecc + tie)
            else:
                score = np.where(inside | (ecc > limit + 1e-9), np.inf, price + ecc * 1e-6)
            j = int(np.argmin(score))
            if not np.isfinite(score[j]):
                return []
            inside[j] = True
            order.append(j)
            have += int(cap[j])
            ecc = np.maximum(ecc, d[j])
        members = np.array(order, dtype=np.intp)
        diameter = float(d[np.ix_(members, members)].max())
        return [_Group(tuple(int(pool[i]) for i in order), diameter)]

    def _polish(self, d: Floats, order: list[int], cap: Ints) -> list[int]:
        """Swap the member that sets the diameter for an outsider while that shrinks it
        (and the capacity still covers N)."""
        import numpy as np

        members = list(order)
        for _ in range(4 * self.n):
            m = np.array(members, dtype=np.intp)
            sub = d[np.ix_(m, m)]
            diameter = sub.max()
            if diameter <= 0:
                break
            worst = int(np.argmax(sub.max(axis=1)))
            rest = np.delete(m, worst)
            short = self.n - int(cap[rest].sum())  # capacity the newcomer must bring
            outside = np.setdiff1d(np.arange(len(d)), m)
            outside = outside[cap[outside] >= short]
            if len(outside) == 0:
                break
            rest_diameter = d[np.ix_(rest, rest)].max() if len(rest) > 1 else 0.0
            with_c = np.maximum(d[np.ix_(outside, rest)].max(axis=1), rest_diameter)
            c = int(np.argmin(with_c))
            if with_c[c] >= diameter - 1e-9:
                break
            members[worst] = int(outside[c])
        return members

    def _best(self, groups: list[_Group], space: tuple[Ints, Floats] | None = None) -> list[_Group]:
        """Distinct groups, smallest diameter first, the first POLISHED of them polished:
        within `space` (workers and their distance matrix) when given, else among each
        group's nearest workers by prediction."""
        import numpy as np

        unique: dict[frozenset[int], _Group] = {}
        for g in sorted(groups, key=lambda g: g.diameter):
            unique.setdefault(frozenset(g.nodes), g)
        ranked = list(unique.values())
        polished = []
        for g in ranked[:POLISHED]:
            nodes = np.array(g.nodes, dtype=np.intp)
            if space is None:
                around = self._neighbourhood(nodes)
                d = self.index.distances(around, around)
            else:
                around, d = space
            at = {int(v): i for i, v in enumerate(around)}
            order = self._polish(d, [at[int(v)] for v in nodes], self.capacity[around])
            members = np.array(order, dtype=np.intp)
            diameter = float(d[np.ix_(members, members)].max())
            polished.append(_Group(tuple(int(around[i]) for i in order), diameter))
        return self._distinct(polished) + ranked[POLISHED:]

    @staticmethod
    def _distinct(groups: list[_Group]) -> list[_Group]:
        unique: dict[frozenset[int], _Group] = {}
        for g in sorted(groups, key=lambda g: g.diameter):
            unique.setdefault(frozenset(g.nodes), g)
        return list(unique.values())

    def _neighbourhood(self, nodes: Ints) -> Ints:
        """The group and the POOL_FACTOR * N workers nearest to its members."""
        import numpy as np

        d = self.index.distances(nodes, self.nodes).min(axis=0)
        size = min(len(self.nodes), POOL_FACTOR * self.n)
        pool = self.nodes[np.argsort(d, kind="stable")[:size]]
        return np.union1d(pool, nodes)

    def measure(self, groups: list[_Group], measure: Measure) -> tuple[Ints, Floats, int]:
        import numpy as np

        limit = max(POOL_FACTOR * self.n, SHORTLIST_MIN)
        shortlist: list[int] = []
        for g in groups:
            new = [v for v in g.nodes if v not in shortlist]
            if shortlist and len(shortlist) + len(new) > limit:
                break
            shortlist.extend(new)
        nodes = np.array(shortlist, dtype=np.intp)
        ids = [self.index.worker_ids[v] for v in shortlist]
        pairs = [(ids[i], ids[j]) for i in range(len(ids)) for j in range(i + 1, len(ids))]
        got = measure(pairs) if pairs else {}
        matrix = self.index.distances(nodes, nodes)
        for i in range(len(ids)):
            for j in range(i + 1, len(ids)):
                rtt = got.get((ids[i], ids[j]), got.get((ids[j], ids[i])))
                if rtt is not None and math.isfinite(rtt) and rtt > 0:
                    matrix[i, j] = matrix[j, i] = rtt
        return nodes, matrix, len(pairs)

    def regroup(self, shortlist: Ints, measured: Floats) -> list[_Group]:
        groups = []
        for s in range(len(shortlist)):
            groups.extend(self._grow_from(shortlist, measured, [s]))
        groups.extend(self._exact(shortlist, measured))
        return self._best(groups, (shortlist, measured))

    def _exact(self, pool: Ints, d: Floats) -> list[_Group]:
        """The optimum within `pool` when it is small and the search stays in budget."""
        if len(pool) > EXACT_LIMIT:
            return []
        weights = [int(c) for c in self.capacity[pool]]
        found = min_diameter_subset(d.tolist(), self.n, weights, EXACT_BUDGET)
        if found is None:
            return []
        members, diameter = found
        return [_Group(tuple(int(pool[i]) for i in members), diameter)]

    # 5: choice ------------------------------------------------------------------------

    def devices_of(self, nodes: Sequence[int], remaining: Bools) -> list[Device]:
        """The group's N cheapest matching devices, whichever of its workers hold them (at
        one price, the earlier worker's first). Filling worker by worker in the group's
        order priced one set of workers differently by the order it was grown in."""
        import numpy as np

        starts = self.index.node_start
        held = [starts[v] + np.flatnonzero(remaining[starts[v] : starts[v + 1]]) for v in nodes]
        rows = np.concatenate(held)
        position = np.repeat(np.arange(len(held)), [len(h) for h in held])
        order = np.lexsort((rows, position, self.index.price[rows]))[: self.n]
        return [self.index.devices[int(i)] for i in rows[order]]

    def rank(self, g: _Group, remaining: Bools) -> tuple[int, float, float, tuple[str, ...]]:
        """The order among equally good groups: price first, then the tighter one."""
        devices = self.devices_of(g.nodes, remaining)
        return (
            sum(d.spec.price_micros_per_hour for d in devices),
            round(g.diameter, 6),
            -sum(d.reputation for d in devices),
            tuple(sorted(d.id for d in devices)),
        )
