"""Connectivity tiers from measured bandwidth.

A worker's tier is how many of the thresholds below the *slower* of its two directions
reaches: a cluster that all-reduces gradients is held back by whichever way is slower, so a
fast download does not make up for a slow upload. Tier 0 means "not measured" or "under
10 Mbit/s"; bookings ask for a minimum tier (`BookingRequest.min_connectivity_tier`).

| tier | slower direction at least |
|------|---------------------------|
| 1    | 10 Mbit/s                 |
| 2    | 100 Mbit/s                |
| 3    | 1 Gbit/s                  |
| 4    | 10 Gbit/s                 |

The agent measures against the coordinator, as a speed test does against its server: it
downloads a payload and times it, then uploads one that the coordinator times itself. The
payload grows until one transfer takes at least `TARGET_SECONDS` (short transfers measure
TCP slow start and request overhead, not the link) or reaches `MAX_PROBE_BYTES`.
"""

from __future__ import annotations

TIER_THRESHOLDS_MBPS = (10.0, 100.0, 1_000.0, 10_000.0)

MIN_PROBE_BYTES = 256 * 1024
MAX_PROBE_BYTES = 32 * 1024 * 1024
TARGET_SECONDS = 0.5
GROWTH = 8  # at most this factor between two attempts


def connectivity_tier(upload_mbps: float | None, download_mbps: float | None) -> int:
    """The tier of a worker with these measured rates (0 when either is unknown)."""
    if upload_mbps is None or download_mbps is None:
        return 0
    slower = min(upload_mbps, download_mbps)
    return sum(1 for threshold in TIER_THRESHOLDS_MBPS if slower >= threshold)


def mbit_per_second(nbytes: int, seconds: float) -> float:
    """The rate of moving `nbytes` in `seconds`, in Mbit/s (10^6 bits)."""
    if nbytes < 0:
        raise ValueError("a transfer cannot move a negative number of bytes")
    if seconds <= 0:
        raise ValueError("a transfer must take some time")
    return nbytes * 8 / seconds / 1e6


def next_probe_size(size: int, seconds: float) -> int | None:
    """The payload to try after moving `size` bytes in `seconds`; None when that transfer
    was long enough (or as large as allowed) to stand as the measurement.

    The next size aims at 1.5 * TARGET_SECONDS at the rate just seen, so one more attempt
    usually suffices, but grows by at most GROWTH (the first tiny transfer underestimates
    the rate, and an overshoot on a slow link costs real seconds)."""
    if size < MIN_PROBE_BYTES:
        raise ValueError(f"probe payloads start at {MIN_PROBE_BYTES} bytes")
    if seconds >= TARGET_SECONDS or size >= MAX_PROBE_BYTES:
        return None
    wanted = size * 1.5 * TARGET_SECONDS / max(seconds, 1e-6)
    return int(min(wanted, size * GROWTH, MAX_PROBE_BYTES))
