"""Tables of the ledger (journal, postings, balances, the chain head), stakes and slashes,
and protocol-mode tasks. They share `tables.metadata`; migration 0005_ledger builds them
(0008_validation the workers' seen addresses)."""

from __future__ import annotations

import sqlalchemy as sa

from gpupool.coordinator.storage.tables import metadata

# The journal: one row per move, hash chained in `seq` order (crypto/ledger.py).
ledger_entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("key", sa.String(200), nullable=False, unique=True),  # the idempotency key
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("memo", sa.Text, nullable=False),  # canonical JSON
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

ledger_postings = sa.Table(
    "ledger_postings",
    metadata,
    sa.Column("seq", sa.BigInteger, sa.ForeignKey("ledger_entries.seq"), primary_key=True),
    sa.Column("account", sa.String(160), primary_key=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Index("ix_ledger_postings_account", "account"),
)

# Running balances, kept in the transaction of each entry (the journal is the truth; a check
# recomputes them from the postings).
ledger_balances = sa.Table(
    "ledger_balances",
    metadata,
    sa.Column("account", sa.String(160), primary_key=True),
    sa.Column("balance", sa.BigInteger, nullable=False),
)

# One row (id 1): the journal's last entry. Every move locks it first, so entries are
# appended one at a time on every backend and a retried key finds the first move.
ledger_head = sa.Table(
    "ledger_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# Stake per device: who staked, and when an unstake was asked for (the cooldown runs from
# then).
stakes = sa.Table(
    "stakes",
    metadata,
    sa.Column("device_id", sa.String(96), primary_key=True),
    sa.Column("supplier_id", sa.String(32), nullable=False),
    sa.Column("worker_id", sa.String(32), nullable=False),
    sa.Column("staked_at", sa.Double, nullable=False),
    sa.Column("unstake_at", sa.Double, nullable=True),
)

slashes = sa.Table(
    "slashes",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),  # the ledger entry's key
    sa.Column("worker_id", sa.String(32), nullable=False),
    sa.Column("device_id", sa.String(96), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("fraud", sa.Boolean, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Index("ix_slashes_worker", "worker_id"),
)

# Protocol mode: jobs and their runs (the original, validators' checks, third runs).
tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("renter_id", sa.String(32), nullable=False),
    sa.Column("command", sa.Text, nullable=False),
    sa.Column("image", sa.String(256), nullable=True),
    sa.Column("input", sa.LargeBinary, nullable=False),
    sa.Column("input_hash", sa.String(64), nullable=False),
    sa.Column("tolerance", sa.Double, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),  # queued, done, failed
    sa.Column("validation", sa.String(16), nullable=False),  # none, sampled, confirmed, ...
    sa.Column("validator_id", sa.String(32), nullable=True),
    sa.Column("created_at", sa.Double, nullable=False),
    # the largest p a validation drew this job with (None: never drawn); 0008_validation
    sa.Column("drawn_p", sa.Double, nullable=True),
    sa.Index("ix_tasks_renter", "renter_id"),
    sa.Index("ix_tasks_state", "state", "validation"),
)

task_runs = sa.Table(
    "task_runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("task_id", sa.String(32), sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("purpose", sa.String(16), nullable=False),  # job, check, third
    sa.Column("device_id", sa.String(96), nullable=True),  # None until assigned
    sa.Column("worker_id", sa.String(32), nullable=True),
    sa.Column("supplier_id", sa.String(32), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),  # waiting, assigned, done, failed
    sa.Column("output", sa.LargeBinary, nullable=True),
    sa.Column("output_hash", sa.String(64), nullable=True),
    sa.Column("error", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("assigned_at", sa.Double, nullable=True),
    sa.Column("finished_at", sa.Double, nullable=True),
    sa.Index("ix_task_runs_task", "task_id"),
    sa.Index("ix_task_runs_worker", "worker_id", "state"),
)

# Where each worker was last seen fetching runs from (the TCP peer, not a figure the agent
# reports): re-runs avoid the network of the job's earlier runs.
worker_addresses = sa.Table(
    "worker_addresses",
    metadata,
    sa.Column("worker_id", sa.String(32), sa.ForeignKey("workers.id"), primary_key=True),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("seen_at", sa.Double, nullable=False),
)
