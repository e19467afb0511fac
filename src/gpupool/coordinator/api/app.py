"""Building the FastAPI application: services, routes, errors, limits and the ticker.

The ticker runs every `tick_seconds`: it marks silent workers down, ends leases at T2, fails
leases that missed the provisioning deadline, settles ending leases and forgets old nonces.
Every step is idempotent, so several coordinator replicas may tick over one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

import gpupool
from gpupool.coordinator.api import (
    accounts,
    agents,
    bandwidth,
    clusters,
    errors,
    meta,
    offers,
    ray,
    workers,
)
from gpupool.coordinator.api import ledger as ledger_api
from gpupool.coordinator.api import mesh as mesh_api
from gpupool.coordinator.api import stakes as stakes_api
from gpupool.coordinator.api import tasks as tasks_api
from gpupool.coordinator.api.deps import Services
from gpupool.coordinator.api.limits import BodyLimit
from gpupool.coordinator.settings import CoordinatorSettings
from gpupool.crypto.identity import Identity
from gpupool.domain.connectivity import MAX_PROBE_BYTES
from gpupool.domain.grouping import LatencyAware
from gpupool.domain.placement import Placement
from gpupool.services.accounts import Accounts
from gpupool.services.agent_auth import AgentAuth
from gpupool.services.challenges import Challenges, Sizing
from gpupool.services.ledger import Ledger
from gpupool.services.market import Market
from gpupool.services.mesh import Mesh
from gpupool.services.ports import Clock, Database, SystemClock
from gpupool.services.raycluster import RayClusters
from gpupool.services.registry import Registry
from gpupool.services.settlement import Settlement
from gpupool.services.spot_checks import SpotChecks
from gpupool.services.stake import Stakes
from gpupool.services.tasks import Tasks
from gpupool.services.timelock import TimeLock

log = logging.getLogger("gpupool.coordinator")


def build_services(
    settings: CoordinatorSettings, db: Database, clock: Clock, placement: Placement | None = None
) -> Services:
    challenges = Challenges(
        db,
        clock,
        size=settings.challenge_size,
        rows=settings.challenge_rows,
        every_seconds=settings.challenge_every_seconds,
        deadline_seconds=settings.challenge_deadline_seconds,
        spot_deadline_seconds=settings.spot_check_deadline_seconds,
        sizing=Sizing(
            gpu_size=settings.challenge_gpu_size,
            target_seconds=settings.challenge_seconds,
            max_steps=settings.challenge_max_steps,
            rtt_allowance_seconds=settings.challenge_rtt_allowance_seconds,
            memory_fraction=settings.challenge_memory_fraction,
            memory_floor_seconds=settings.challenge_memory_floor_seconds,
            memory_bandwidth=settings.challenge_memory_bandwidth,
        ),
    )
    return Services(
        settings=settings,
        accounts=Accounts(db, clock, settings.admin_key),
        auth=AgentAuth(db, clock),
        registry=Registry(db, clock, settings.heartbeat_seconds),
        market=Market(
            db,
            clock,
            placement or LatencyAware(),
            settings.hour_seconds,
            settings.provision_deadline_seconds,
            require_stake=settings.require_stake,
        ),
        challenges=challenges,
        spot_checks=SpotChecks(
            db,
            clock,
            challenges,
            per_hour=settings.spot_checks_per_hour,
            hour_seconds=settings.hour_seconds,
            size=settings.spot_check_size,
            target_seconds=settings.spot_check_seconds,
        ),
        timelock=TimeLock(
            db,
            clock,
            _signer(settings),
            epoch_seconds=settings.epoch_seconds,
            interval_seconds=settings.sample_interval_seconds,
        ),
        ray=RayClusters(db, clock),
        ledger=Ledger(db, clock),
        settlement=Settlement(db, clock, settings.hour_seconds),
        stakes=Stakes(db, clock, settings.unstake_cooldown_seconds),
        tasks=Tasks(db, clock),
    )


def _signer(settings: CoordinatorSettings) -> Identity:
    if not settings.signing_key:
        return Identity.generate()
    return Identity.from_private_bytes(settings.signing_key)


def tick(svc: Services) -> None:
    down = svc.registry.mark_stale_down()
    if down:
        log.warning("event=workers_down workers=%s", ",".join(down))
    svc.market.tick()
    svc.challenges.issue_due()  # also judges overdue challenges, spot checks among them
    spot = svc.spot_checks.tick()
    if spot:
        log.info("event=spot_checks devices=%s", ",".join(c.device_id for c in spot))
    certified = svc.timelock.certify_due()
    if certified:
        log.info("event=certified leases=%s", ",".join(certified))
    svc.tasks.assign_pending()
    settled = svc.settlement.settle_due()
    if settled:
        log.info("event=settled leases=%s", ",".join(settled))
    svc.auth.forget_old_nonces()


async def _ticker(svc: Services) -> None:
    while True:
        try:
            await run_in_threadpool(tick, svc)
        except Exception:
            log.exception("event=tick_failed")
        await asyncio.sleep(svc.settings.tick_seconds)


def create_app(
    settings: CoordinatorSettings,
    db: Database,
    clock: Clock | None = None,
    run_ticker: bool = True,
) -> FastAPI:
    svc = build_services(settings, db, clock or SystemClock())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_ticker(svc)) if run_ticker else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="gpupool coordinator",
        version=gpupool.__version__,
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = svc
    app.state.mesh = Mesh(db, clock or SystemClock())
    errors.install(app)
    for module in (accounts, agents, bandwidth, clusters, meta, offers, ray, workers):
        app.include_router(module.router)
    app.include_router(ray.agent_router)
    app.include_router(mesh_api.agent_router)
    app.include_router(mesh_api.renter_router)
    app.include_router(ledger_api.router)
    app.include_router(stakes_api.router)
    app.include_router(tasks_api.router)

    @app.get("/v1/health", tags=["meta"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": gpupool.__version__}

    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        larger={bandwidth.PATH: MAX_PROBE_BYTES},
    )
    # added last, so outermost: even the body limit's 413 names the key
    app.add_middleware(meta.PresentKey, public_key=svc.timelock.public_key)
    return app
