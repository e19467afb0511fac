"""The agent's settings: one typed object per process, built by the CLI."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

ENGINES = ("auto", "docker", "bwrap")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    coordinator_url: str
    supplier_key: str = field(repr=False)
    state_dir: Path
    region: str = "local"
    latitude: float = 0.0
    longitude: float = 0.0
    datacenter_tier: int = 0
    soc2_claimed: bool = False
    cpu_group_size: int = 1
    cpus: str | None = None
    gpu_price: str = "1.00"
    cpu_price: str = "0.05"
    hostname: str = field(default_factory=socket.gethostname)
    long_poll_seconds: float = 25.0
    # None: follow the interval the coordinator announces.
    heartbeat_seconds: float | None = None
    # Tear down running leases when the agent exits (the local network uses this; a real
    # agent keeps leases running across its own restarts).
    teardown_on_exit: bool = False
    # The guard's explicit allow-list beyond kernel threads, pid 1 and the agent itself.
    guard_allow_exes: tuple[str, ...] = ()
    # RTT probes for network coordinates: the UDP port to answer on (0: any free port;
    # None: do not probe) and the address peers should use (None: what the coordinator sees).
    probe_port: int | None = 0
    probe_advertise: str | None = None
    # Measure bandwidth against the coordinator at start and then this often (None: never).
    bandwidth_seconds: float | None = 6 * 3600.0
    guard_allow_cgroups: tuple[str, ...] = ()
    # Ray on every lease (docs/ray.md): on or off, and each node's object-store limit.
    ray: bool = True
    ray_object_store_bytes: int = 100 << 20
    # The encrypted mesh: join each lease's WireGuard mesh (off, or on without root or the
    # WireGuard tools, leases run without it), and the address peers reach this machine at
    # (None: the local address used to reach the coordinator).
    mesh: bool = True
    mesh_advertise: str | None = None
    # Encrypt each lease's writable disk with gocryptfs (docs/sandbox.md). Off only by the
    # supplier's explicit choice: with it on, a machine without gocryptfs or FUSE fails its
    # leases with the reason instead of running them unencrypted.
    encrypted_disk: bool = True
    # Offer Internet egress to leases that book it (docs/mesh.md, "Internet egress"): off
    # unless the supplier turns it on, since the lease's traffic leaves from its address.
    egress: bool = False
    # Which container runs a lease (docs/supplier.md, "Docker"): auto (bubblewrap, and Docker
    # for a lease whose booking names an image), docker (every lease) or bwrap (never Docker:
    # image bookings fail); docker_host: the engine's socket (None: Docker's default).
    container_engine: str = "auto"
    docker_host: str | None = None

    def __post_init__(self) -> None:
        if self.container_engine not in ENGINES:
            raise ValueError(
                f"container engine {self.container_engine!r}: use one of {', '.join(ENGINES)}"
            )
