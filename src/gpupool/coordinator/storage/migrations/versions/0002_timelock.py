"""Proof of Time-Lock and capability challenges: chain heads, samples, signed batches,
certificates, per-model anomaly statistics, challenges

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(
            sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("flops", sa.Double(), nullable=True))
        batch.add_column(sa.Column("challenged_at", sa.Double(), nullable=True))
    op.create_table(
        "chain_heads",
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=96), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("lease_id", "device_id"),
    )
    op.create_table(
        "samples",
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=96), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("lease_id", "device_id", "seq"),
    )
    op.create_table(
        "sample_batches",
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=96), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("lease_id", "device_id", "last_seq"),
    )
    op.create_table(
        "certificates",
        sa.Column("lease_id", sa.String(length=32), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("issued_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("lease_id"),
    )
    op.create_table(
        "model_stats",
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("model"),
    )
    op.create_table(
        "challenges",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=96), nullable=False),
        sa.Column("worker_id", sa.String(length=32), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("seed_a", sa.String(length=16), nullable=False),
        sa.Column("seed_b", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("root", sa.String(length=64), nullable=True),
        sa.Column("rows", sa.JSON(), nullable=True),
        sa.Column("compute_seconds", sa.Double(), nullable=True),
        sa.Column("flops", sa.Double(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("issued_at", sa.Double(), nullable=False),
        sa.Column("answered_at", sa.Double(), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_challenges_device", "challenges", ["device_id"])
    op.create_index("ix_challenges_state", "challenges", ["state"])


def downgrade() -> None:
    for table in (
        "challenges",
        "model_stats",
        "certificates",
        "sample_batches",
        "samples",
        "chain_heads",
    ):
        op.drop_table(table)
    with op.batch_alter_table("devices") as batch:
        for column in ("challenged_at", "flops", "verified"):
            batch.drop_column(column)
