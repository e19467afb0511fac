"""The capability challenge's arithmetic: matrices from seeds, exact products, row picks and the
throughput verdict.

Everything here is specified bit for bit in docs/challenge.md, so an agent written with CUDA
or NumPy derives the same matrices. Entry (i, j) of the n x n matrix with seed s is the
SplitMix64 output for counter i*n + j + 1, reduced to an integer in [-8, 8]; being
counter-based, any set of rows is generated without the others (the coordinator's check needs
only k rows of A). Products are computed in float32, which is exact while every partial sum
stays below 2^24 (see `EXACT_N_LIMIT`).

The domain owns no randomness: `pick_rows` turns randomness the caller drew into rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
MIX_1 = 0xBF58476D1CE4E5B9
MIX_2 = 0x94D049BB133111EB
ENTRY_BOUND = 8  # entries lie in [-8, 8]
# |partial sum| <= ENTRY_BOUND**2 * n must stay below 2**24, where float32 stops being exact.
EXACT_N_LIMIT = 2**24 // ENTRY_BOUND**2  # 262,144
# The size agents accept: three n x n float32 matrices (768 MiB at 8192) on the device and a
# float32 B (256 MiB) per entry of the coordinator's pool are what bound it, not exactness.
MAX_N = 8192
assert MAX_N <= EXACT_N_LIMIT

_CHUNK_ENTRIES = 1 << 17  # generate in slices whose uint64 temporaries stay in cache
_U64 = np.uint64


def _check_size(n: int) -> None:
    if not 1 <= n <= MAX_N:
        raise ValueError(f"matrix size {n} is outside 1..{MAX_N}")


def _check_seed(seed: int) -> None:
    if not 0 <= seed <= MASK64:
        raise ValueError("a seed is a 64-bit unsigned integer")


def matrix_rows(
    seed: int, n: int, rows: Sequence[int] | npt.NDArray[np.integer]
) -> npt.NDArray[np.int8]:
    """Rows `rows` (in that order) of the n x n challenge matrix with `seed`, as int8."""
    _check_size(n)
    _check_seed(seed)
    wanted = np.asarray(rows, dtype=np.int64).reshape(-1)
    if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
        raise ValueError(f"row index outside 0..{n - 1}")
    out = np.empty((wanted.size, n), dtype=np.int8)
    columns = np.arange(1, n + 1, dtype=_U64)  # the counter is i*n + j + 1
    per_slice = max(1, _CHUNK_ENTRIES // n)
    x = np.empty((min(per_slice, wanted.size), n), dtype=_U64)
    t = np.empty_like(x)
    # uint64 array arithmetic wraps modulo 2^64, which is what SplitMix64 specifies.
    for start in range(0, wanted.size, per_slice):
        part = wanted[start : start + per_slice].astype(_U64)
        z, tmp = x[: part.size], t[: part.size]
        np.multiply(part[:, None], _U64(n), out=z)
        z += columns
        z *= _U64(GOLDEN_GAMMA)
        z += _U64(seed)
        np.right_shift(z, _U64(30), out=tmp)
        z ^= tmp
        z *= _U64(MIX_1)
        np.right_shift(z, _U64(27), out=tmp)
        z ^= tmp
        z *= _U64(MIX_2)
        np.right_shift(z, _U64(31), out=tmp)
        z ^= tmp
        z >>= _U64(32)
        high = z.astype(np.uint32)
        high %= np.uint32(17)
        np.subtract(high.astype(np.int8), np.int8(ENTRY_BOUND), out=out[start : start + part.size])
    return out


def matrix(seed: int, n: int) -> npt.NDArray[np.int8]:
    """The whole n x n challenge matrix with `seed`."""
    return matrix_rows(seed, n, np.arange(n))


def operand(seed: int, n: int) -> npt.NDArray[np.float32]:
    """The matrix as the float32 operand both sides multiply with."""
    return matrix(seed, n).astype(np.float32)


def fold(values: npt.NDArray[np.integer]) -> npt.NDArray[np.int8]:
    """The chain's reduction g: an exact integer product entry back into [-8, 8], as
    (v mod 17) - 8 with the floor modulo (a result in 0..16 for negative v too)."""
    return (np.asarray(values, dtype=np.int64) % 17 - ENTRY_BOUND).astype(np.int8)


def chain_rows(
    seed_a: int,
    b_matrix: npt.NDArray[np.generic],
    n: int,
    rows: Sequence[int],
    steps: int,
    each: Callable[[int, npt.NDArray[np.int32]], None] | None = None,
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int32]]:
    """For rows `rows` of the chained challenge C = X_steps (X_1 = A B, X_(t+1) = g(X_t) B):
    the rows of the last step's left operand (A's rows when steps == 1) and of C, exactly.
    `each(t, rows of X_t)` sees every state on the way (t = 1..steps): the memory sketch's
    check reads the held states' rows there.

    Row i of every X_t depends only on row i of A and on B, so the coordinator follows k rows
    through the chain at k/n of the agent's cost."""
    if b_matrix.shape != (n, n):
        raise ValueError(f"B has shape {b_matrix.shape}, expected ({n}, {n})")
    if steps < 1:
        raise ValueError("a chain has at least one step")
    b = b_matrix.astype(np.float32, copy=False)
    left = matrix_rows(seed_a, n, rows)
    product = (left.astype(np.float32) @ b).astype(np.int32)
    if each is not None:
        each(1, product)
    for t in range(2, steps + 1):
        left = fold(product)
        product = (left.astype(np.float32) @ b).astype(np.int32)
        if each is not None:
            each(t, product)
    return left, product


# The memory sketch (docs/challenge.md, "Memory: the held states"). The device keeps the last
# `held` states X_(T-held+1) .. X_T of its chain; after it commits the root the coordinator
# sends a fresh seed, and the device answers S = sum_j X_(T-held+1+j) r_j, with r_j row j of
# the challenge matrix of that seed. Entries stay below 2^53 (|X| <= 64 n, |r| <= 8, at most
# MAX_STEPS states), so float64 and int64 both compute S exactly.
STATE_BYTES_PER_ENTRY = 4  # a state as the chain produces it: float32
MAX_STEPS = 384  # bounds the coordinator's check: it follows k rows through every link
assert MAX_STEPS * (ENTRY_BOUND**2 * MAX_N) * ENTRY_BOUND * MAX_N < 2**53


def memory_steps(memory_bytes: int, n: int, fraction: float) -> int:
    """How many n x n float32 states make `fraction` of the claimed memory (0: no memory
    claimed, or no fraction asked)."""
    if memory_bytes <= 0 or fraction <= 0:
        return 0
    return math.ceil(fraction * memory_bytes / (STATE_BYTES_PER_ENTRY * n * n))


def sketch_vectors(seed: int, n: int, held: int) -> npt.NDArray[np.int8]:
    """r_0 .. r_(held-1): the first `held` rows of the n x n challenge matrix with `seed`."""
    if not 1 <= held <= n:
        raise ValueError(f"a sketch over {held} states needs 1..{n} vectors")
    return matrix_rows(seed, n, np.arange(held))


def sketch_of(states: Sequence[npt.NDArray[np.generic]], vectors: npt.NDArray[np.int8]) -> Any:
    """S = sum_j states[j] r_j, exactly in int64, for states given whole or as rows: the
    agent's NumPy backend passes whole states (n x n), the coordinator the k rows it follows."""
    if len(states) != len(vectors):
        raise ValueError(f"{len(states)} states for {len(vectors)} sketch vectors")
    total: Any = 0
    for state, r in zip(states, vectors, strict=True):
        total = total + np.asarray(state).astype(np.int64) @ r.astype(np.int64)
    return np.asarray(total, dtype=np.int64)


def memory_deadline(working_set_bytes: int, floor_seconds: float, bandwidth: float) -> float:
    """Seconds the coordinator allows between sending the sketch seed and receiving S: a
    floor for the round trip and the upload, plus one read of the held states at `bandwidth`
    bytes/s, a rate device memory beats many times over and a host link (PCIe) cannot reach."""
    return floor_seconds + working_set_bytes / bandwidth


def product_rows(
    seed_a: int, b_matrix: npt.NDArray[np.generic], n: int, rows: Sequence[int], steps: int = 1
) -> npt.NDArray[np.int32]:
    """Rows `rows` of the challenge's product (A @ B for one step), exactly, from the generated
    rows of A and a materialised B."""
    return chain_rows(seed_a, b_matrix, n, rows, steps)[1]


def challenge_flops(n: int, steps: int = 1) -> int:
    """Floating-point operations in a chain of `steps` n x n by n x n multiplications."""
    return 2 * steps * n**3


def chain_steps(expected: float | None, n: int, target_seconds: float, max_steps: int) -> int:
    """How many chained steps make an honest device of `expected` FLOP/s compute for about
    `target_seconds`, within 1..max_steps (1 when nothing is expected: a CPU, an unknown
    model)."""
    if expected is None or expected <= 0 or target_seconds <= 0:
        return 1
    return max(1, min(max_steps, math.ceil(target_seconds * expected / challenge_flops(n))))


def timed_flops(n: int, steps: int, elapsed: float, allowance: float) -> float:
    """Throughput on the coordinator's clock: the chain's operations over the time from
    handing the challenge out to receiving its root, less a round-trip allowance that is
    capped at half the elapsed time, so no claimed delay can more than double the figure."""
    credit = min(max(allowance, 0.0), max(elapsed, 0.0) / 2)
    return challenge_flops(n, steps) / max(elapsed - credit, 1e-9)


def format_seed(seed: int) -> str:
    """A seed as it travels: 16 lowercase hex characters."""
    _check_seed(seed)
    return f"{seed:016x}"


def parse_seed(text: str) -> int:
    if not re.fullmatch(r"[0-9a-fA-F]{16}", text):
        raise ValueError("a seed is 16 hex characters")
    return int(text, 16)


def _mix64(x: int) -> int:
    """SplitMix64's finaliser on one Python integer."""
    z = x & MASK64
    z = ((z ^ (z >> 30)) * MIX_1) & MASK64
    z = ((z ^ (z >> 27)) * MIX_2) & MASK64
    return z ^ (z >> 31)


def pick_rows(random_bytes: bytes, n: int, k: int) -> list[int]:
    """k distinct rows of 0..n-1, sorted, derived deterministically from the caller's bytes.

    The bytes are folded into a 64-bit state that seeds a SplitMix64 stream; draws are
    rejection-sampled so every row is equally likely, and repeats are skipped.
    """
    if not 1 <= k <= n:
        raise ValueError(f"cannot pick {k} distinct rows of {n}")
    if len(random_bytes) < 8:
        raise ValueError("pick_rows needs at least 8 random bytes")
    state = 0
    for start in range(0, len(random_bytes), 8):
        state = _mix64(state ^ int.from_bytes(random_bytes[start : start + 8], "little"))
    limit = (1 << 64) - (1 << 64) % n
    picked: set[int] = set()
    counter = 0
    while len(picked) < k:
        counter += 1
        draw = _mix64(state + counter * GOLDEN_GAMMA)
        if draw < limit:
            picked.add(draw % n)
    return sorted(picked)


# Realistic dense FP32 (no TF32) matmul TFLOPS, most specific names first: a name is matched
# case-insensitively as a whole word inside the NVML name, and the first match wins ("a10"
# must not claim an "A100", nor "l4" an "L40S"). Estimates at 60-80% of the datasheet peak;
# learned medians should replace them as the network measures real devices.
EXPECTED_TFLOPS: tuple[tuple[str, float], ...] = (
    ("gh200", 50.0),
    ("h200", 50.0),
    ("h100 pcie", 38.0),
    ("h100 nvl", 45.0),
    ("h100", 50.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("a100", 18.0),
    ("l40s", 55.0),
    ("l40", 50.0),
    ("l4", 18.0),
    ("a10g", 20.0),
    ("a10", 20.0),
    ("a40", 24.0),
    ("rtx a6000", 25.0),
    ("rtx 4090", 50.0),
    ("rtx 3090", 24.0),
    ("rtx 3080", 19.0),
    ("v100", 14.0),
    ("t4", 4.5),
)
MIN_RATIO = 0.5  # below half its model's expected figure a device is unsupported


def expected_flops(model: str) -> float | None:
    """The table's FLOP/s for an NVML model name, or None for models it does not know."""
    name = model.casefold()
    for pattern, tflops in EXPECTED_TFLOPS:
        if re.search(rf"(?<![0-9a-z]){re.escape(pattern)}(?![0-9a-z])", name):
            return tflops * 1e12
    return None


@dataclass(frozen=True, slots=True)
class ThroughputVerdict:
    ok: bool
    expected: float | None  # FLOP/s the figure was compared with; None: nothing to compare
    ratio: float | None  # measured / expected
    reason: str


def throughput_verdict(
    model: str, flops: float, learned_reference: float | None = None
) -> ThroughputVerdict:
    """Judge a measured FLOP/s figure against the table, else against a learned reference
    (the median of earlier passed figures for this model, which is how CPUs are judged)."""
    if not math.isfinite(flops) or flops <= 0:
        return ThroughputVerdict(False, None, None, f"measured throughput {flops} is not positive")
    expected = expected_flops(model)
    source = "table"
    if expected is None and learned_reference is not None and learned_reference > 0:
        expected, source = learned_reference, "learned median"
    if expected is None:
        return ThroughputVerdict(True, None, None, f"no reference for {model!r} yet: measured")
    ratio = flops / expected
    ok = ratio >= MIN_RATIO
    verdict = "meets" if ok else "is below"
    reason = (
        f"{flops / 1e12:.3g} TFLOPS {verdict} {MIN_RATIO} x {expected / 1e12:.3g} "
        f"({source}) for {model!r}"
    )
    return ThroughputVerdict(ok, expected, ratio, reason)
