"""Ledger: hash-chained journal, postings, balances and its head; stakes and slashes;
protocol-mode tasks and their runs

Revision ID: 0005_ledger
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_ledger"
down_revision = "0004_mesh"
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("memo", sa.Text(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("key"),
    )
    op.create_table(
        "ledger_postings",
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("account", sa.String(length=160), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["seq"], ["ledger_entries.seq"]),
        sa.PrimaryKeyConstraint("seq", "account"),
    )
    op.create_index("ix_ledger_postings_account", "ledger_postings", ["account"])
    op.create_table(
        "ledger_balances",
        sa.Column("account", sa.String(length=160), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account"),
    )
    head = op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])
    op.create_table(
        "stakes",
        sa.Column("device_id", sa.String(length=96), nullable=False),
        sa.Column("supplier_id", sa.String(length=32), nullable=False),
        sa.Column("worker_id", sa.String(length=32), nullable=False),
        sa.Column("staked_at", sa.Double(), nullable=False),
        sa.Column("unstake_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_table(
        "slashes",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("worker_id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=96), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("fraud", sa.Boolean(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_slashes_worker", "slashes", ["worker_id"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("renter_id", sa.String(length=32), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("image", sa.String(length=256), nullable=True),
        sa.Column("input", sa.LargeBinary(), nullable=False),
        sa.Column("input_hash", sa.String(length=64), nullable=False),
        sa.Column("tolerance", sa.Double(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("validation", sa.String(length=16), nullable=False),
        sa.Column("validator_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_tasks_renter", "tasks", ["renter_id"])
    op.create_index("ix_tasks_state", "tasks", ["state", "validation"])
    op.create_table(
        "task_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("device_id", sa.String(length=96), nullable=True),
        sa.Column("worker_id", sa.String(length=32), nullable=True),
        sa.Column("supplier_id", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("output", sa.LargeBinary(), nullable=True),
        sa.Column("output_hash", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("assigned_at", sa.Double(), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_task_runs_task", "task_runs", ["task_id"])
    op.create_index("ix_task_runs_worker", "task_runs", ["worker_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_task_runs_worker", table_name="task_runs")
    op.drop_index("ix_task_runs_task", table_name="task_runs")
    op.drop_table("task_runs")
    op.drop_index("ix_tasks_state", table_name="tasks")
    op.drop_index("ix_tasks_renter", table_name="tasks")
    op.drop_table("tasks")
    op.drop_index("ix_slashes_worker", table_name="slashes")
    op.drop_table("slashes")
    op.drop_table("stakes")
    op.drop_table("ledger_head")
    op.drop_table("ledger_balances")
    op.drop_index("ix_ledger_postings_account", table_name="ledger_postings")
    op.drop_table("ledger_postings")
    op.drop_table("ledger_entries")
