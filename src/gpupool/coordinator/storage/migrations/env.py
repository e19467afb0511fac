"""Alembic environment: runs migrations on the connection the coordinator hands in."""

from __future__ import annotations

from alembic import context

from gpupool.coordinator.storage.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
