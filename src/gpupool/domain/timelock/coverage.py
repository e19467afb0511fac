"""How much of the lease window a device's accepted samples vouch for.

A sample at time t vouches for one sampling interval I either side of it: [t - I, t + I].
The covered time is the measure of the union of these spans clipped to [t1, t_end]. Samples
one interval apart overlap, a gap of up to two intervals between samples is still covered
(one late or lost sample costs nothing), and a longer gap g leaves exactly g - 2I uncovered.
All times are integer milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpupool.domain.errors import InvalidRequest

DEFAULT_INTERVAL_MS = 1_000
PPM = 1_000_000


def covered_spans(
    times: Iterable[int], t1_ms: int, t_end_ms: int, interval_ms: int = DEFAULT_INTERVAL_MS
) -> list[tuple[int, int]]:
    """The covered parts of [t1, t_end] as disjoint, sorted (start, end) spans, in one pass
    over `times`, which must be sorted (equal times are allowed)."""
    if interval_ms <= 0:
        raise InvalidRequest(f"the sampling interval must be positive, not {interval_ms}")
    spans: list[tuple[int, int]] = []
    last: int | None = None
    for t in times:
        if last is not None and t < last:
            raise InvalidRequest(f"sample times must be sorted: {t} comes after {last}")
        last = t
        start, end = max(t - interval_ms, t1_ms), min(t + interval_ms, t_end_ms)
        if start >= end:
            continue  # wholly outside the window
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def covered_ms(
    times: Iterable[int], t1_ms: int, t_end_ms: int, interval_ms: int = DEFAULT_INTERVAL_MS
) -> int:
    """Milliseconds of [t1, t_end] within one interval of a sample (`times` sorted)."""
    return sum(end - start for start, end in covered_spans(times, t1_ms, t_end_ms, interval_ms))


def uncovered_gaps(
    times: Iterable[int], t1_ms: int, t_end_ms: int, interval_ms: int = DEFAULT_INTERVAL_MS
) -> list[tuple[int, int]]:
    """The parts of [t1, t_end] no sample vouches for, as sorted (start, end) spans."""
    gaps: list[tuple[int, int]] = []
    cursor = t1_ms
    for start, end in covered_spans(times, t1_ms, t_end_ms, interval_ms):
        if start > cursor:
            gaps.append((cursor, start))
        cursor = end
    if cursor < t_end_ms:
        gaps.append((cursor, t_end_ms))
    return gaps


def coverage_ppm(covered: int, t1_ms: int, t_end_ms: int) -> int:
    """Covered share of the window in parts per million, rounded down; 0 for an empty window
    (nothing was leased, so nothing was shown)."""
    window = t_end_ms - t1_ms
    if window <= 0:
        return 0
    return min(PPM, max(0, covered) * PPM // window)


def coverage(
    times: Iterable[int], t1_ms: int, t_end_ms: int, interval_ms: int = DEFAULT_INTERVAL_MS
) -> float:
    """Covered share of the window, in [0, 1]; 0.0 for an empty window."""
    window = t_end_ms - t1_ms
    if window <= 0:
        return 0.0
    return covered_ms(times, t1_ms, t_end_ms, interval_ms) / window
