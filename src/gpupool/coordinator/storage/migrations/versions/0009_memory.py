"""The capability challenge's memory phase: how many states the sketch covers, its seed, when
it went out, and the agent's sketch at the opened rows

Revision ID: 0009_memory
Revises: 0008_validation
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_memory"
down_revision = "0008_validation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("challenges") as batch:
        batch.add_column(sa.Column("held", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("memory_seed", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("probed_at", sa.Double(), nullable=True))
        batch.add_column(sa.Column("sketch", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("challenges") as batch:
        batch.drop_column("sketch")
        batch.drop_column("probed_at")
        batch.drop_column("memory_seed")
        batch.drop_column("held")
