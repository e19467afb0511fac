"""Validation a cartel cannot steer: the address each worker fetches its runs from, so
re-runs avoid the network of the job's earlier runs

Revision ID: 0007_validation
Revises: 0006_ray
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_validation"
down_revision = "0006_ray"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_addresses",
        sa.Column("worker_id", sa.String(length=32), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("seen_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["worker_id"], ["workers.id"]),
        sa.PrimaryKeyConstraint("worker_id"),
    )


def downgrade() -> None:
    op.drop_table("worker_addresses")
