"""The Alembic migrations build exactly the schema that `tables.py` declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gpupool.coordinator.storage.database import SqlDatabase
from gpupool.coordinator.storage.tables import metadata


def test_migrations_match_the_declared_tables(database: SqlDatabase) -> None:
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
