"""Capability challenges timed by the coordinator (the chain's length, when the agent got it)
and spot checks during leases (the lease a challenge ran under)

Revision ID: 0007_chain
Revises: 0006_ray
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_chain"
down_revision = "0006_ray"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("challenges") as batch:
        batch.add_column(sa.Column("steps", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("delivered_at", sa.Double(), nullable=True))
        batch.add_column(sa.Column("lease_id", sa.String(length=32), nullable=True))
        batch.create_index("ix_challenges_lease", ["lease_id"])


def downgrade() -> None:
    with op.batch_alter_table("challenges") as batch:
        batch.drop_index("ix_challenges_lease")
        batch.drop_column("lease_id")
        batch.drop_column("delivered_at")
        batch.drop_column("steps")
