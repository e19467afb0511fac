"""The coordinator's settings: one typed object per process, built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # The coordinator's Ed25519 private key (raw 32 bytes): signs certificates and keys the
    # beacons. Empty means a new key for this process only (tests).
    signing_key: bytes = field(default=b"", repr=False)
    epoch_seconds: float = 10.0
    sample_interval_seconds: float = 1.0
    # Capability challenges: matrix size n, rows opened, how often idle devices are
    # re-challenged (0: only once), and how long an agent has to finish one.
    challenge_size: int = 2048
    challenge_rows: int = 8
    challenge_every_seconds: float = 6 * 3600.0
    challenge_deadline_seconds: float = 300.0
    # GPU challenges are chains sized so an honest device of the claimed model computes for
    # challenge_seconds on the coordinator's clock (docs/challenge.md, "Sizing and timing").
    challenge_gpu_size: int = 8192
    challenge_seconds: float = 3.0
    challenge_max_steps: int = 384
    challenge_rtt_allowance_seconds: float = 0.05
    # The memory phase: the last states of a GPU's chain, this share of its claimed memory,
    # held on the device and sketched within floor + one read at the bandwidth (bytes/s).
    challenge_memory_fraction: float = 0.75
    challenge_memory_floor_seconds: float = 0.3
    challenge_memory_bandwidth: float = 128e9
    # Spot checks on leased devices (docs/challenge.md, "Spot checks"): a Poisson rate per
    # lease hour (hour_seconds), the deadline for the root, and the short chain's size.
    spot_checks_per_hour: float = 4.0
    spot_check_deadline_seconds: float = 10.0
    spot_check_size: int = 4096
    spot_check_seconds: float = 0.25
    # Ledger (docs/ledger.md): devices enter the pool only with their stake; unstaking waits.
    require_stake: bool = True
    unstake_cooldown_seconds: float = 7 * 24 * 3600.0
