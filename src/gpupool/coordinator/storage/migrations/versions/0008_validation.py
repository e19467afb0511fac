"""Validation a cartel cannot steer: the address each worker fetches its runs from, so
re-runs avoid the network of the job's earlier runs; the largest p each job was drawn with,
so a pass at a small p does not take jobs out of a later validation's reach

Revision ID: 0008_validation
Revises: 0007_chain
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_validation"
down_revision = "0007_chain"
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
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("drawn_p", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("drawn_p")
    op.drop_table("worker_addresses")
