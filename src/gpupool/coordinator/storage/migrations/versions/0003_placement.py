"""Latency-aware placement: workers' network coordinates, probe ports and connectivity
tiers; each cluster's predicted diameter

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WORKER_COLUMNS = (
    "coord_vec",
    "coord_height",
    "coord_error",
    "coord_at",
    "probe_host",
    "probe_port",
    "upload_mbps",
    "download_mbps",
    "connectivity_tier",
)


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("coord_vec", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("coord_height", sa.Double(), nullable=True))
        batch.add_column(sa.Column("coord_error", sa.Double(), nullable=True))
        batch.add_column(sa.Column("coord_at", sa.Double(), nullable=True))
        batch.add_column(sa.Column("probe_host", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("probe_port", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("upload_mbps", sa.Double(), nullable=True))
        batch.add_column(sa.Column("download_mbps", sa.Double(), nullable=True))
        batch.add_column(
            sa.Column("connectivity_tier", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("predicted_diameter_ms", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("predicted_diameter_ms")
    with op.batch_alter_table("workers") as batch:
        for column in WORKER_COLUMNS:
            batch.drop_column(column)
