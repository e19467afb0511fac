"""The encrypted mesh: overlay addresses and WireGuard keys, per-lease endpoints, probes and
relay states

Revision ID: 0004_mesh
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_mesh"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mesh_nodes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("address", sa.String(length=15), nullable=False),
        sa.Column("public_key", sa.String(length=44), nullable=False),
        sa.Column("cluster_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("address"),
        sa.UniqueConstraint("public_key"),
    )
    op.create_table(
        "mesh_endpoints",
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.Column("worker_id", sa.String(length=32), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("lease_id", "worker_id"),
    )
    op.create_table(
        "mesh_probes",
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.Column("prober", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("rtt_ms", sa.Double(), nullable=True),
        sa.Column("at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("lease_id", "prober", "target"),
    )
    op.create_table(
        "mesh_paths",
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.Column("a", sa.String(length=32), nullable=False),
        sa.Column("b", sa.String(length=32), nullable=False),
        sa.Column("relay", sa.String(length=32), nullable=True),
        sa.Column("direct_failures", sa.Integer(), nullable=False),
        sa.Column("direct_good", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("lease_id", "a", "b"),
    )
    op.create_table(
        "mesh_rounds",
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.Column("stepped_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("lease_id"),
    )


def downgrade() -> None:
    for table in ("mesh_rounds", "mesh_paths", "mesh_probes", "mesh_endpoints", "mesh_nodes"):
        op.drop_table(table)
