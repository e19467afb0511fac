"""initial schema: accounts, workers, devices, clusters, leases, nonces

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("soc2_verified", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_table(
        "nonces",
        sa.Column("worker_id", sa.String(length=32), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", "nonce"),
    )
    op.create_index("ix_nonces_at", "nonces", ["at"], unique=False)
    op.create_table(
        "clusters",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("renter_id", sa.String(length=32), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["renter_id"],
            ["accounts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_clusters_renter", "clusters", ["renter_id"], unique=False)
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("supplier_id", sa.String(length=32), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("latitude", sa.Double(), nullable=False),
        sa.Column("longitude", sa.Double(), nullable=False),
        sa.Column("datacenter_tier", sa.Integer(), nullable=False),
        sa.Column("soc2_claimed", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_heartbeat", sa.Double(), nullable=False),
        sa.Column("registered_at", sa.Double(), nullable=False),
        sa.Column("agent_version", sa.String(length=32), nullable=False),
        sa.Column("sandbox", sa.String(length=64), nullable=False),
        sa.Column("lease_version", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["supplier_id"],
            ["accounts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_workers_supplier", "workers", ["supplier_id"], unique=False)
    op.create_table(
        "devices",
        sa.Column("id", sa.String(length=96), nullable=False),
        sa.Column("worker_id", sa.String(length=32), nullable=False),
        sa.Column("local_name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("memory_mb", sa.BigInteger(), nullable=False),
        sa.Column("price_micros", sa.BigInteger(), nullable=False),
        sa.Column("uuid", sa.String(length=96), nullable=True),
        sa.Column("cores", sa.String(length=1024), nullable=False),
        sa.Column("driver_version", sa.String(length=64), nullable=True),
        sa.Column("cuda_version", sa.String(length=32), nullable=True),
        sa.Column("pci_bus_id", sa.String(length=64), nullable=True),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("lease_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["worker_id"],
            ["workers.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_devices_status", "devices", ["status"], unique=False)
    op.create_index("ix_devices_worker", "devices", ["worker_id"], unique=False)
    op.create_table(
        "leases",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("cluster_id", sa.String(length=32), nullable=False),
        sa.Column("renter_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("t1", sa.Double(), nullable=False),
        sa.Column("t2", sa.Double(), nullable=False),
        sa.Column("hours", sa.Integer(), nullable=False),
        sa.Column("head_device_id", sa.String(length=96), nullable=False),
        sa.Column("price_micros", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cluster_id"],
            ["clusters.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("cluster_id"),
    )
    op.create_index("ix_leases_state", "leases", ["state"], unique=False)
    op.create_table(
        "lease_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lease_id"],
            ["leases.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_lease_events_lease", "lease_events", ["lease_id"], unique=False)
    op.create_table(
        "lease_members",
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=96), nullable=False),
        sa.Column("worker_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lease_id"],
            ["leases.id"],
        ),
        sa.PrimaryKeyConstraint("lease_id", "device_id"),
    )
    op.create_index("ix_lease_members_worker", "lease_members", ["worker_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_lease_members_worker", table_name="lease_members")
    op.drop_table("lease_members")
    op.drop_index("ix_lease_events_lease", table_name="lease_events")
    op.drop_table("lease_events")
    op.drop_index("ix_leases_state", table_name="leases")
    op.drop_table("leases")
    op.drop_index("ix_devices_worker", table_name="devices")
    op.drop_index("ix_devices_status", table_name="devices")
    op.drop_table("devices")
    op.drop_index("ix_workers_supplier", table_name="workers")
    op.drop_table("workers")
    op.drop_index("ix_clusters_renter", table_name="clusters")
    op.drop_table("clusters")
    op.drop_index("ix_nonces_at", table_name="nonces")
    op.drop_table("nonces")
    op.drop_table("accounts")
