"""The exact minimum-diameter k-subset of a distance matrix: the yardstick for placement,
and placement itself where the pool (or its measured short list) is small.

The smallest D such that k nodes exist with every pairwise distance at most D is the
smallest threshold at which the graph "distance <= D" has a clique of k nodes. The
thresholds are the matrix's distinct distances, searched by bisection; each step asks a
branch-and-bound clique search (greedy colouring bound, as in Tomita's MCQ) whether a
k-clique exists, after pruning nodes of degree below k - 1 (the k-core). The problem is
NP-hard in general; on internet latencies near the optimum the graphs are sparse and the
search is quick for a few hundred nodes. `budget` caps the search's branch count so a
caller can give up (None) instead of waiting.

Nodes may carry weights (a worker's matching devices): then the question is the smallest
diameter of a set whose weights sum to at least k, and the colouring bound sums, per
colour, the largest weight in it.

Unknown distances (inf or NaN) never join two nodes.
"""

from __future__ import annotations

from collections.abc import Sequence


class SearchTooLarge(Exception):
    """The clique search passed its branch budget."""


def _bits(mask: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


class _CliqueSearch:
    def __init__(self, adjacency: list[int], k: int, weights: Sequence[int], budget: int) -> None:
        self.adj = adjacency
        self.k = k
        self.w = weights
        self.budget = budget

    def _weight(self, mask: int) -> int:
        return sum(self.w[v] for v in _bits(mask))

    def find(self) -> list[int] | None:
        alive = (1 << len(self.adj)) - 1
        changed = True
        while changed:  # the weighted k-core: a member and its neighbours weigh k at least
            changed = False
            for v in _bits(alive):
                if self.w[v] + self._weight(self.adj[v] & alive) < self.k:
                    alive &= ~(1 << v)
                    changed = True
        if self._weight(alive) < self.k:
            return None
        return self._expand([], 0, alive)

    def _colour(self, candidates: int) -> list[tuple[int, int]]:
        """Greedy colouring: (vertex, bound) in colour order, where bound is the sum over
        colours up to this vertex's of each colour's largest weight."""
        out: list[tuple[int, int]] = []
        uncoloured = candidates
        bound = 0
        while uncoloured:
            free = uncoloured
            members = []
            while free:
                low = free & -free
                v = low.bit_length() - 1
                free &= ~self.adj[v] & ~low
                uncoloured &= ~low
                members.append(v)
            bound += max(self.w[v] for v in members)
            out.extend((v, bound) for v in members)
        return out

    def _expand(self, chosen: list[int], have: int, candidates: int) -> list[int] | None:
        self.budget -= 1
        if self.budget < 0:
            raise SearchTooLarge
        if have >= self.k:
            return chosen
        for v, bound in reversed(self._colour(candidates)):
            if have + bound < self.k:
                return None
            found = self._expand([*chosen, v], have + self.w[v], candidates & self.adj[v])
            if found is not None:
                return found
            candidates &= ~(1 << v)
        return None


def clique_within(
    distances: Sequence[Sequence[float]],
    k: int,
    threshold: float,
    weights: Sequence[int] | None = None,
    budget: int = 2_000_000,
) -> list[int] | None:
    """Nodes weighing k at least whose pairwise distances are all at most `threshold`, or
    None."""
    n = len(distances)
    adjacency = [0] * n
    for i in range(n):
        row = distances[i]
        for j in range(i + 1, n):
            if row[j] <= threshold:  # False for NaN
                adjacency[i] |= 1 << j
                adjacency[j] |= 1 << i
    return _CliqueSearch(adjacency, k, weights or [1] * n, budget).find()


def min_diameter_subset(
    distances: Sequence[Sequence[float]],
    k: int,
    weights: Sequence[int] | None = None,
    budget: int = 2_000_000,
) -> tuple[list[int], float] | None:
    """The nodes (weighing k at least) with the smallest largest pairwise distance, and that
    distance; None when no such nodes are all measured to each other, or when the search
    passes `budget` branches. `distances` must be symmetric."""
    n = len(distances)
    w = list(weights) if weights is not None else [1] * n
    if k < 1 or sum(w) < k:
        raise ValueError(f"cannot choose {k} from nodes weighing {sum(w)}")
    heaviest = max(range(n), key=lambda v: w[v])
    if w[heaviest] >= k:
        return [heaviest], 0.0
    values = sorted(
        {
            float(distances[i][j])
            for i in range(n)
            for j in range(i + 1, n)
            if distances[i][j] == distances[i][j] and distances[i][j] != float("inf")
        }
    )
    try:
        best = clique_within(distances, k, values[-1], w, budget) if values else None
        if best is None:
            return None
        lo, hi = 0, len(values) - 1  # values[hi] is feasible
        while lo < hi:
            mid = (lo + hi) // 2
            found = clique_within(distances, k, values[mid], w, budget)
            if found is None:
                lo = mid + 1
            else:
                hi, best = mid, found
    except SearchTooLarge:
        return None
    return sorted(best), values[hi]
