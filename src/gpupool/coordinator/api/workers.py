"""The worker list: suppliers see their own workers, renters and the admin the whole pool."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api import convert
from gpupool.coordinator.api.deps import ServicesDep, ViewerDep
from gpupool.wire import models as w

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get("")
async def list_workers(viewer: ViewerDep, svc: ServicesDep) -> list[w.WorkerOut]:
    return [convert.worker(v) for v in await run_in_threadpool(svc.registry.workers, viewer)]
