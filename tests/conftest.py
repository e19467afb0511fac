"""Fixtures shared by every tier: databases (SQLite always, PostgreSQL when configured)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gpupool.coordinator.storage.database import SqlDatabase
from gpupool.coordinator.storage.tables import metadata

POSTGRES_URL = os.environ.get("GPUPOOL_TEST_POSTGRES_URL")
REQUIRE_POSTGRES = os.environ.get("GPUPOOL_REQUIRE_POSTGRES") == "1"


@pytest.fixture(autouse=True)
def _own_pin_file(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test's CLI pins coordinator keys in a file of its own, never in the user's
    config: a coordinator a test started pins a key there that the next run's coordinator
    at the same address would contradict (a test that needs a shared file sets its own)."""
    pins = tmp_path_factory.mktemp("pins") / "known_coordinators"
    monkeypatch.setenv("GPUPOOL_KNOWN_COORDINATORS", str(pins))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if POSTGRES_URL or not REQUIRE_POSTGRES:
        return
    raise pytest.UsageError("GPUPOOL_REQUIRE_POSTGRES=1 but GPUPOOL_TEST_POSTGRES_URL is unset")


def _fresh_postgres() -> SqlDatabase:
    assert POSTGRES_URL
    db = SqlDatabase(POSTGRES_URL)
    with db.engine.begin() as conn:  # a clean schema for every test
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    db.migrate()
    return db


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlDatabase]:
    """A migrated, empty coordinator database: SQLite in a temp folder, or PostgreSQL."""
    if request.param == "postgres":
        if not POSTGRES_URL:
            pytest.skip("GPUPOOL_TEST_POSTGRES_URL is not set")
        db = _fresh_postgres()
    else:
        db = SqlDatabase(f"sqlite:///{tmp_path / 'coordinator.db'}")
        db.migrate()
    try:
        yield db
    finally:
        db.close()


__all__ = ["metadata"]


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") and not _nvml_works():
        pytest.skip("needs an NVIDIA GPU and driver (NVML did not initialise)")


@pytest.fixture(scope="session")
def docker_socket() -> Iterator[Path]:
    """The socket of a private Docker engine the session's Docker tests share."""
    from tests.dockerd import dockerd_missing, private_dockerd

    missing = dockerd_missing()
    if missing is not None:
        pytest.skip(missing)
    with private_dockerd() as socket:
        yield socket
