"""Storage for the coordinator: SQLAlchemy Core tables, the repositories that implement
`gpupool.services.ports`, and Alembic migrations. SQLite (WAL) is the embedded default;
PostgreSQL (`postgresql+psycopg://`) serves several coordinator replicas.
"""
