"""The coordinator's side of the capability challenge, without I/O: building a challenge from
randomness the caller drew, keeping the pool of materialised B matrices, and checking the rows
an agent opens against its Merkle root and against the coordinator's own product rows.

The check is cheap because B comes from a small rotating pool of seeds (materialised once,
kept here, least recently used first out) while A's seed is fresh for every challenge, and
because each opened row is compared through a secret random vector r (Freivalds): with
f = B r computed once per pooled B, row i is right only if C_i . r == A_i . f, which costs
O(n) per row instead of O(n^2). A wrong row passes with probability at most 2^-24 (r's
entries are uniform in [0, 2^24) and the agent never sees r); when the fingerprint differs the
exact row is computed to name the first wrong column.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gpupool.crypto.merkle import leaf_hash, row_bytes, verify_proof
from gpupool.domain.challenge import (
    MAX_N,
    chain_rows,
    fold,
    matrix_rows,
    operand,
    sketch_of,
    sketch_vectors,
)


@dataclass(frozen=True, slots=True)
class ChallengeSpec:
    id: str
    n: int
    seed_a: int
    seed_b: int
    steps: int = 1  # chained multiplications (docs/challenge.md, "The chain")
    held: int = 0  # the last states the memory sketch covers (0: no memory phase)
    memory_seed: int | None = None


@dataclass(frozen=True, slots=True)
class Opening:
    """One row the agent opened: its values and the sibling hashes (hex, bottom-up)."""

    index: int
    values: Sequence[int]
    proof: Sequence[str]


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    reason: str


def challenge_spec(
    challenge_id: str, n: int, random_bytes: bytes, b_seeds: Sequence[int]
) -> ChallengeSpec:
    """A challenge from at least 16 random bytes: bytes 0-7 are A's fresh seed (little-endian),
    bytes 8-15 choose B's seed among `b_seeds`, the coordinator's current pool."""
    if len(random_bytes) < 16:
        raise ValueError("a challenge needs at least 16 random bytes")
    if not b_seeds:
        raise ValueError("the pool of B seeds is empty")
    if not 1 <= n <= MAX_N:
        raise ValueError(f"matrix size {n} is outside 1..{MAX_N}")
    seed_a = int.from_bytes(random_bytes[:8], "little")
    choice = int.from_bytes(random_bytes[8:16], "little") % len(b_seeds)
    return ChallengeSpec(challenge_id, n, seed_a, b_seeds[choice])


class BPool:
    """Up to `capacity` materialised B operands (float32, read-only), keyed by (seed_b, n).

    Size it to hold every seed of the rotating pool at every size in use, so checks never
    regenerate B; a miss costs one n x n generation (tens of ms at n = 2048).
    """

    def __init__(
        self, capacity: int = 4, random_bytes: Callable[[int], bytes] = secrets.token_bytes
    ) -> None:
        if capacity < 1:
            raise ValueError("a B pool holds at least one matrix")
        self.capacity = capacity
        self._random = random_bytes
        self._cache: OrderedDict[tuple[int, int], npt.NDArray[np.float32]] = OrderedDict()
        self._fingerprints: dict[tuple[int, int], tuple[npt.NDArray[np.int64], ...]] = {}

    def fingerprint(
        self, seed_b: int, n: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """A secret vector r (entries in [0, 2^24)) and B r, exact in int64."""
        self.get(seed_b, n)  # materialises B and its fingerprint on a miss
        r, br = self._fingerprints[(seed_b, n)]
        return r, br

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        return key in self._cache

    def get(self, seed_b: int, n: int) -> npt.NDArray[np.float32]:
        key = (seed_b, n)
        b = self._cache.get(key)
        if b is None:
            b = operand(seed_b, n)
            b.flags.writeable = False
            self._cache[key] = b
            r = (np.frombuffer(self._random(4 * n), dtype="<u4") >> 8).astype(np.int64)
            self._fingerprints[key] = (r, b.astype(np.int64) @ r)
            if len(self._cache) > self.capacity:
                old, _ = self._cache.popitem(last=False)
                self._fingerprints.pop(old, None)
        else:
            self._cache.move_to_end(key)
        return b


def verify_opening(
    challenge: ChallengeSpec,
    root: str,
    openings: Sequence[Opening],
    requested_rows: Sequence[int],
    b_pool: BPool,
    sketch: Mapping[int, int] | None = None,
) -> Outcome:
    """Check the agent's openings: exactly the requested rows, each proven against `root` and
    each equal to the coordinator's own row of the (chained) product; and, for a challenge
    with a memory phase, the agent's sketch S (`sketch`, by row) at those rows. Any failure
    is a wrong answer."""
    n = challenge.n
    requested = set(requested_rows)
    if not requested:
        raise ValueError("a check must request at least one row")  # else anything would pass
    if len(openings) != len(requested):
        return Outcome(False, f"wrong row count: expected {len(requested)}, got {len(openings)}")
    seen: set[int] = set()
    rows: list[npt.NDArray[np.int32]] = []
    for opening in openings:
        i = opening.index
        if i not in requested:
            return Outcome(False, f"unrequested row {i}")
        if i in seen:
            return Outcome(False, f"row {i} opened twice")
        seen.add(i)
        if len(opening.values) != n:
            return Outcome(False, f"row {i} has {len(opening.values)} values, expected {n}")
        try:
            encoded = row_bytes(opening.values)
        except ValueError:
            return Outcome(False, f"row {i} is not a row of int32 values")
        if not verify_proof(root, i, leaf_hash(encoded), opening.proof, n):
            return Outcome(False, f"bad proof for row {i}")
        rows.append(np.frombuffer(encoded, dtype="<i4"))

    indices = [o.index for o in openings]
    r, br = b_pool.fingerprint(challenge.seed_b, n)
    b = b_pool.get(challenge.seed_b, n)
    steps, held = challenge.steps, challenge.held
    first_held = steps - held + 1  # X_first_held .. X_steps are the held states
    states: list[npt.NDArray[np.int32]] = []

    def keep(t: int, product_rows: npt.NDArray[np.int32]) -> None:
        if held and t >= first_held:
            states.append(product_rows)

    if steps == 1:
        left_rows = matrix_rows(challenge.seed_a, n, indices)
    else:  # follow the k rows through the first steps - 1 links (k/n of the agent's work)
        left_rows = fold(chain_rows(challenge.seed_a, b, n, indices, steps - 1, keep)[1])
    for i, row, left in zip(indices, rows, left_rows.astype(np.int64), strict=True):
        if int(row.astype(np.int64) @ r) != int(left @ br):  # Freivalds on the last link
            want = (left.astype(np.float32) @ b).astype(np.int32)
            differs = np.flatnonzero(row != want)
            column = int(differs[0]) if differs.size else -1
            return Outcome(False, f"row {i} differs from the product at column {column}")
    if not held:
        return Outcome(True, f"{len(indices)} rows proven and equal to the product")
    if sketch is None or challenge.memory_seed is None or set(sketch) != set(indices):
        return Outcome(False, "the memory sketch is missing at the opened rows")
    states.append(np.stack(rows))  # X_steps: the opened rows, just proven equal to it
    want_s = sketch_of(states, sketch_vectors(challenge.memory_seed, n, held))
    for i, value in zip(indices, want_s.tolist(), strict=True):
        if sketch[i] != value:
            return Outcome(
                False,
                f"the memory sketch at row {i} is {sketch[i]}, not {value}: the device did "
                f"not hold its last {held} states",
            )
    return Outcome(True, f"{len(indices)} rows proven, and the sketch of {held} held states")
