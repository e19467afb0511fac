"""Table definitions: the current schema. Migrations under `migrations/versions` build it."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("soc2_verified", sa.Boolean, nullable=False, default=False),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("supplier_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("public_key", sa.String(64), nullable=False),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("latitude", sa.Double, nullable=False),
    sa.Column("longitude", sa.Double, nullable=False),
    sa.Column("datacenter_tier", sa.Integer, nullable=False),
    sa.Column("soc2_claimed", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("last_heartbeat", sa.Double, nullable=False),
    sa.Column("registered_at", sa.Double, nullable=False),
    sa.Column("agent_version", sa.String(32), nullable=False),
    sa.Column("sandbox", sa.String(64), nullable=False),
    sa.Column("lease_version", sa.BigInteger, nullable=False, default=0),
    # Network position (docs/placement.md): Vivaldi coordinate, where peers probe it, and
    # measured bandwidth with the connectivity tier it gives.
    sa.Column("coord_vec", sa.JSON, nullable=True),
    sa.Column("coord_height", sa.Double, nullable=True),
    sa.Column("coord_error", sa.Double, nullable=True),
    sa.Column("coord_at", sa.Double, nullable=True),
    sa.Column("probe_host", sa.String(64), nullable=True),
    sa.Column("probe_port", sa.Integer, nullable=True),
    sa.Column("upload_mbps", sa.Double, nullable=True),
    sa.Column("download_mbps", sa.Double, nullable=True),
    sa.Column("connectivity_tier", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_workers_supplier", "supplier_id"),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.String(96), primary_key=True),
    sa.Column("worker_id", sa.String(32), sa.ForeignKey("workers.id"), nullable=False),
    sa.Column("local_name", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("memory_mb", sa.BigInteger, nullable=False),
    sa.Column("price_micros", sa.BigInteger, nullable=False),
    sa.Column("uuid", sa.String(96)),
    sa.Column("cores", sa.String(1024), nullable=False),
    sa.Column("driver_version", sa.String(64)),
    sa.Column("cuda_version", sa.String(32)),
    sa.Column("pci_bus_id", sa.String(64)),
    sa.Column("present", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("lease_id", sa.String(32)),
    sa.Column("verified", sa.Boolean, nullable=False, default=False),
    sa.Column("flops", sa.Double),
    sa.Column("challenged_at", sa.Double),
    sa.Index("ix_devices_worker", "worker_id"),
    sa.Index("ix_devices_status", "status"),
)

clusters = sa.Table(
    "clusters",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("renter_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("predicted_diameter_ms", sa.Double, nullable=True),
    sa.Index("ix_clusters_renter", "renter_id"),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "cluster_id", sa.String(32), sa.ForeignKey("clusters.id"), nullable=False, unique=True
    ),
    sa.Column("renter_id", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("t1", sa.Double, nullable=False),
    sa.Column("t2", sa.Double, nullable=False),
    sa.Column("hours", sa.Integer, nullable=False),
    sa.Column("head_device_id", sa.String(96), nullable=False),
    sa.Column("price_micros", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Index("ix_leases_state", "state"),
)

lease_members = sa.Table(
    "lease_members",
    metadata,
    sa.Column("lease_id", sa.String(32), sa.ForeignKey("leases.id"), primary_key=True),
    sa.Column("device_id", sa.String(96), primary_key=True),
    sa.Column("worker_id", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Index("ix_lease_members_worker", "worker_id"),
)

lease_events = sa.Table(
    "lease_events",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("lease_id", sa.String(32), sa.ForeignKey("leases.id"), nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Index("ix_lease_events_lease", "lease_id"),
)

nonces = sa.Table(
    "nonces",
    metadata,
    sa.Column("worker_id", sa.String(32), primary_key=True),
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("at", sa.Double, nullable=False),
    sa.Index("ix_nonces_at", "at"),
)


# Proof of Time-Lock ---------------------------------------------------------------------

chain_heads = sa.Table(
    "chain_heads",
    metadata,
    sa.Column("lease_id", sa.String(32), primary_key=True),
    sa.Column("device_id", sa.String(96), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("time_ms", sa.BigInteger, nullable=False),
)

samples = sa.Table(
    "samples",
    metadata,
    sa.Column("lease_id", sa.String(32), primary_key=True),
    sa.Column("device_id", sa.String(96), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("time_ms", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # the sample's canonical JSON, as hashed
)

sample_batches = sa.Table(
    "sample_batches",
    metadata,
    sa.Column("lease_id", sa.String(32), primary_key=True),
    sa.Column("device_id", sa.String(96), primary_key=True),
    sa.Column("last_seq", sa.BigInteger, primary_key=True),
    sa.Column("last_hash", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
    sa.Column("received_ms", sa.BigInteger, nullable=False),
)

certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("lease_id", sa.String(32), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),  # canonical JSON, as signed
    sa.Column("signature", sa.String(128), nullable=False),
    sa.Column("issued_at", sa.Double, nullable=False),
)

model_stats = sa.Table(
    "model_stats",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

# Capability challenges -------------------------------------------------------------------

challenges = sa.Table(
    "challenges",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("device_id", sa.String(96), nullable=False),
    sa.Column("worker_id", sa.String(32), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("seed_a", sa.String(16), nullable=False),
    sa.Column("seed_b", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # issued, answered, passed, failed, wrong
    sa.Column("root", sa.String(64)),
    sa.Column("rows", sa.JSON),
    sa.Column("compute_seconds", sa.Double),
    sa.Column("flops", sa.Double),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("issued_at", sa.Double, nullable=False),
    sa.Column("answered_at", sa.Double),
    sa.Column("finished_at", sa.Double),
    sa.Column("steps", sa.Integer, nullable=False, default=1, server_default="1"),
    sa.Column("delivered_at", sa.Double),
    sa.Column("lease_id", sa.String(32)),  # spot checks: the lease they ran under
    sa.Column("held", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("memory_seed", sa.String(16)),
    sa.Column("probed_at", sa.Double),
    sa.Column("sketch", sa.JSON),  # the memory sketch's entries at the opened rows
    sa.Index("ix_challenges_device", "device_id"),
    sa.Index("ix_challenges_state", "state"),
    sa.Index("ix_challenges_lease", "lease_id"),
)

# Ray on each lease (docs/ray.md): one row per worker of the lease, as its agent reports it.
ray_nodes = sa.Table(
    "ray_nodes",
    metadata,
    sa.Column("lease_id", sa.String(32), sa.ForeignKey("leases.id"), primary_key=True),
    sa.Column("worker_id", sa.String(32), sa.ForeignKey("workers.id"), primary_key=True),
    sa.Column("role", sa.String(8), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("mesh", sa.Boolean, nullable=False),
    sa.Column("node_id", sa.String(64), nullable=True),
    sa.Column("gcs_address", sa.String(96), nullable=True),
    sa.Column("dashboard_url", sa.String(128), nullable=True),
    sa.Column("reason", sa.String(2000), nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)
# The encrypted mesh (docs/mesh.md) ----------------------------------------------------------

# Every overlay address ever handed out: workers (id = worker id) and renters' clients
# (id = "client:<cluster id>"). Rows are never deleted, so an address is never reused.
mesh_nodes = sa.Table(
    "mesh_nodes",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),  # worker | client
    sa.Column("address", sa.String(15), nullable=False, unique=True),
    sa.Column("public_key", sa.String(44), nullable=False, unique=True),
    sa.Column("cluster_id", sa.String(32), nullable=True),  # clients: the cluster they reach
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

# Where a member's interface for a lease listens ("host:port"), as its agent reports it.
mesh_endpoints = sa.Table(
    "mesh_endpoints",
    metadata,
    sa.Column("lease_id", sa.String(32), primary_key=True),
    sa.Column("worker_id", sa.String(32), primary_key=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

# The latest direct probe from one member to another, per lease.
mesh_probes = sa.Table(
    "mesh_probes",
    metadata,
    sa.Column("lease_id", sa.String(32), primary_key=True),
    sa.Column("prober", sa.String(32), primary_key=True),
    sa.Column("target", sa.String(32), primary_key=True),
    sa.Column("rtt_ms", sa.Double, nullable=True),  # NULL: the probe got no answer
    sa.Column("at", sa.Double, nullable=False),
)

# Each pair's relay state (domain.mesh.PathState), and when each lease last ran the rule.
mesh_paths = sa.Table(
    "mesh_paths",
    metadata,
    sa.Column("lease_id", sa.String(32), primary_key=True),
    sa.Column("a", sa.String(32), primary_key=True),
    sa.Column("b", sa.String(32), primary_key=True),
    sa.Column("relay", sa.String(32), nullable=True),
    sa.Column("direct_failures", sa.Integer, nullable=False),
    sa.Column("direct_good", sa.Integer, nullable=False),
)

mesh_rounds = sa.Table(
    "mesh_rounds",
    metadata,
    sa.Column("lease_id", sa.String(32), primary_key=True),
    sa.Column("stepped_at", sa.Double, nullable=False),
)

# The ledger's tables live in their own module, on this metadata.
from gpupool.coordinator.storage import ledger_tables as _ledger_tables  # noqa: E402, F401
