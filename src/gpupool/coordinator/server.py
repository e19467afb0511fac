"""Running the coordinator: migrate the database, then serve the API under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from gpupool.coordinator.api.app import create_app
from gpupool.coordinator.settings import CoordinatorSettings
from gpupool.coordinator.storage.database import SqlDatabase

log = logging.getLogger("gpupool.coordinator")


def serve(settings: CoordinatorSettings, host: str, port: int) -> None:
    db = SqlDatabase(settings.db_url)
    db.migrate()
    log.info(
        "event=coordinator_start listen=%s:%d db=%s",
        host,
        port,
        db.engine.url.render_as_string(hide_password=True),
    )
    app = create_app(settings, db)
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="info",
            access_log=True,
            log_config=None,
            timeout_graceful_shutdown=3,  # long polls in flight must not hold up a stop
        )
    finally:
        db.close()
