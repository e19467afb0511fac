"""When a worker counts as down: it has missed `missed` heartbeats in a row."""

from __future__ import annotations

DEFAULT_HEARTBEAT_SECONDS = 10.0
MISSED_HEARTBEATS_FOR_DOWN = 3


def is_down(
    last_heartbeat: float,
    now: float,
    interval: float = DEFAULT_HEARTBEAT_SECONDS,
    missed: int = MISSED_HEARTBEATS_FOR_DOWN,
) -> bool:
    return now - last_heartbeat > interval * missed
