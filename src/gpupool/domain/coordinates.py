"""Vivaldi network coordinates with height (Dabek, Cox, Kaashoek, Morris, SIGCOMM 2004).

Each worker keeps a point in a DIMENSIONS-dimensional Euclidean space plus a non-negative
height (its access link: the time every packet spends getting onto the internet core), and an
error estimate. The predicted round-trip time between two workers is

    rtt(a, b) = |a.vec - b.vec| + a.height + b.height            (milliseconds)

After measuring a real RTT to a peer, a worker moves its own coordinate with the adaptive
timestep of the paper (section 4.3), weighing its own error against the peer's:

    w      = e_local / (e_local + e_remote)
    e_s    = |predicted - rtt| / rtt
    e'     = e_s * CE * w + e_local * (1 - CE * w)
    force  = CC * w * (rtt - predicted)
    x'     = x + force * u(x - x_remote)

where `u` is the unit vector in the height space (section 5.5): its Euclidean part is
(x.vec - remote.vec) / |x - remote| and its height part (x.height + remote.height) /
|x - remote|, with |x - remote| the predicted distance. A too-short prediction pushes the
two apart and raises the height; a too-long one pulls them together and lowers it.

Constants (documented in docs/placement.md): 4 dimensions plus height, CE = CC = 0.25 (the
paper's values), a new node starts at the origin with height MIN_HEIGHT and error 1.0, error
is capped at MAX_ERROR. Two nodes at the same point push apart in a direction the caller
supplies (the domain draws no random numbers).

Besides the rule for one worker (`update`, what the agent runs) there is `update_many`, the
same rule applied to many independent (local, remote, rtt) triples at once with NumPy, for
simulations over measured RTT matrices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

DIMENSIONS = 4
CE = 0.25  # error weight: how fast the error estimate follows new samples
CC = 0.25  # coordinate weight: the largest fraction of the error a node corrects at once
INITIAL_ERROR = 1.0
MAX_ERROR = 1.5
MIN_HEIGHT = 0.01  # ms
MIN_RTT = 0.001  # ms: RTTs below this (same host) are clamped so e_s stays finite


@dataclass(frozen=True, slots=True)
class Coordinate:
    vec: tuple[float, ...]
    height: float = MIN_HEIGHT
    error: float = INITIAL_ERROR

    @classmethod
    def origin(cls, dimensions: int = DIMENSIONS) -> Coordinate:
        return cls((0.0,) * dimensions)

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (*self.vec, self.height, self.error)):
            raise ValueError("a coordinate must be finite")
        if self.height < 0 or self.error < 0:
            raise ValueError("height and error must not be negative")


def distance(a: Coordinate, b: Coordinate) -> float:
    """Predicted RTT in milliseconds."""
    if len(a.vec) != len(b.vec):
        raise ValueError(f"coordinates of {len(a.vec)} and {len(b.vec)} dimensions")
    return math.dist(a.vec, b.vec) + a.height + b.height


def update(
    local: Coordinate, remote: Coordinate, rtt_ms: float, tie_direction: Sequence[float]
) -> Coordinate:
    """The local coordinate after one RTT measurement to `remote`.

    `tie_direction` is a unit-ish vector used only when the two Euclidean parts coincide
    (a new node at the origin meeting another): the caller draws it at random.
    """
    if not rtt_ms > 0 or not math.isfinite(rtt_ms):
        raise ValueError(f"an RTT must be a positive number of milliseconds, not {rtt_ms}")
    rtt = max(rtt_ms, MIN_RTT)
    predicted = distance(local, remote)
    total_error = local.error + remote.error
    w = local.error / total_error if total_error > 0 else 0.5
    sample_error = abs(predicted - rtt) / rtt
    error = min(MAX_ERROR, sample_error * CE * w + local.error * (1 - CE * w))
    force = CC * w * (rtt - predicted)

    diff = [x - y for x, y in zip(local.vec, remote.vec, strict=True)]
    norm = math.hypot(*diff)
    if norm < 1e-9:
        size = math.hypot(*tie_direction) or 1.0
        diff = [d / size for d in tie_direction]
        norm = 1.0
    span = norm + local.height + remote.height  # |local - remote| in the height space
    vec = tuple(x + force * d / span for x, d in zip(local.vec, diff, strict=True))
    height = max(MIN_HEIGHT, local.height + force * (local.height + remote.height) / span)
    return Coordinate(vec, height, error)


def update_many(
    vec: npt.NDArray[np.float64],
    height: npt.NDArray[np.float64],
    error: npt.NDArray[np.float64],
    local: npt.NDArray[np.intp],
    remote: npt.NDArray[np.intp],
    rtt_ms: npt.NDArray[np.float64],
    tie_direction: npt.NDArray[np.float64],
) -> None:
    """`update` for node `local[i]` measuring `rtt_ms[i]` to node `remote[i]`, for every i,
    in place. Each local index must appear at most once per call (the updates are computed
    from the coordinates before the call, as if they happened at the same moment)."""
    import numpy as np

    rtt = np.maximum(rtt_ms, MIN_RTT)
    diff = vec[local] - vec[remote]
    norm = np.linalg.norm(diff, axis=1)
    hsum = height[local] + height[remote]
    predicted = norm + hsum
    e_local, e_remote = error[local], error[remote]
    total = e_local + e_remote
    w = np.divide(e_local, total, out=np.full_like(total, 0.5), where=total > 0)
    sample_error = np.abs(predicted - rtt) / rtt
    new_error = np.minimum(MAX_ERROR, sample_error * CE * w + e_local * (1 - CE * w))
    force = CC * w * (rtt - predicted)
    tied = norm < 1e-9
    if tied.any():
        t = tie_direction[: int(tied.sum())]
        diff[tied] = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        norm = np.where(tied, 1.0, norm)
    span = norm + hsum
    vec[local] += (force / span)[:, None] * diff
    height[local] = np.maximum(MIN_HEIGHT, height[local] + force * hsum / span)
    error[local] = new_error
