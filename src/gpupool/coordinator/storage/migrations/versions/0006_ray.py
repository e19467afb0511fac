"""Ray on each lease: every worker's Ray node, its role, address and join state

Revision ID: 0006_ray
Revises: 0005_ledger
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_ray"
down_revision = "0005_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ray_nodes",
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.Column("worker_id", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("mesh", sa.Boolean(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=True),
        sa.Column("gcs_address", sa.String(length=96), nullable=True),
        sa.Column("dashboard_url", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.String(length=2000), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["lease_id"], ["leases.id"]),
        sa.ForeignKeyConstraint(["worker_id"], ["workers.id"]),
        sa.PrimaryKeyConstraint("lease_id", "worker_id"),
    )


def downgrade() -> None:
    op.drop_table("ray_nodes")
