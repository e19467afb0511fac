"""The coordinator's settings: one typed object per process, built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from gpupool.domain.liveness import DEFAULT_HEARTBEAT_SECONDS


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    db_url: str
    admin_key: str
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    # One billing hour in seconds. Only tests and the demo shorten it.
    hour_seconds: float = 3600.0
    provision_deadline_seconds: float = 300.0
    tick_seconds: float = 1.0
    max_body_bytes: int = 1 << 20
    long_poll_max_seconds: float = 30.0
    long_poll_check_seconds: float = 0.2
