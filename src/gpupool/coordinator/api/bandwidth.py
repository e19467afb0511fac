"""Bandwidth measurement against the coordinator, as a speed test measures against its
server (rules and tiers: domain/connectivity.py).

- `GET /v1/agent/bandwidth?bytes=N`: N incompressible bytes for the agent to time.
- `POST /v1/agent/bandwidth?download_mbps=D`: a payload whose arrival the coordinator times
  itself (BodyLimit notes it). While the upload was too short to time well the answer names
  the next size to send; once it was long enough, the rates and the tier are stored.

Both are signed agent requests, so only registered workers can spend the coordinator's
bandwidth, and each payload is bounded by MAX_PROBE_BYTES.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api.deps import ServicesDep, SignedDep, WorkerDep
from gpupool.coordinator.api.limits import BodyTiming
from gpupool.domain.connectivity import (
    GROWTH,
    MAX_PROBE_BYTES,
    MIN_PROBE_BYTES,
    mbit_per_second,
    next_probe_size,
)
from gpupool.domain.errors import InvalidRequest
from gpupool.wire import models as w

router = APIRouter(prefix="/v1/agent", tags=["agent"])

PATH = "/v1/agent/bandwidth"
CHUNK = 64 * 1024


def _payload(nbytes: int) -> Iterator[bytes]:
    block = os.urandom(CHUNK)  # random, so no compression on the way can shorten it
    for start in range(0, nbytes, CHUNK):
        yield block[: min(CHUNK, nbytes - start)]


@router.get("/bandwidth", response_class=StreamingResponse)
async def download(
    _: WorkerDep,
    nbytes: int = Query(
        alias="bytes", ge=MIN_PROBE_BYTES, le=MAX_PROBE_BYTES, description="Payload size."
    ),
) -> StreamingResponse:
    """A payload for the agent to time its download with."""
    return StreamingResponse(
        _payload(nbytes),
        media_type="application/octet-stream",
        headers={"Content-Length": str(nbytes), "Cache-Control": "no-store"},
    )


@router.post("/bandwidth")
async def upload(
    request: Request,
    signed: SignedDep,
    svc: ServicesDep,
    download_mbps: float = Query(
        gt=0, le=1e6, description="The agent's timing of its latest download, Mbit/s."
    ),
) -> w.BandwidthOut:
    """Time this upload; store the measurement once the payload was large enough."""
    worker_id = await run_in_threadpool(svc.auth.verify, signed)
    size = len(signed.body)
    if not MIN_PROBE_BYTES <= size <= MAX_PROBE_BYTES:
        raise InvalidRequest(
            f"upload payloads are {MIN_PROBE_BYTES} to {MAX_PROBE_BYTES} bytes, not {size}"
        )
    timing: BodyTiming | None = getattr(request.state, "body_timing", None)
    if timing is None or timing.timed_bytes == 0 or timing.seconds <= 0:
        # The whole body came in one piece: too fast (or too small) to time.
        if size >= MAX_PROBE_BYTES:
            raise InvalidRequest("the upload arrived in one piece and cannot be timed")
        return w.BandwidthOut(stored=False, next_bytes=min(size * GROWTH, MAX_PROBE_BYTES))
    wanted = next_probe_size(size, timing.seconds)
    if wanted is not None:
        return w.BandwidthOut(stored=False, next_bytes=wanted)
    upload_mbps = mbit_per_second(timing.timed_bytes, timing.seconds)
    tier = await run_in_threadpool(
        svc.registry.report_bandwidth, worker_id, upload_mbps, download_mbps
    )
    return w.BandwidthOut(
        stored=True,
        upload_mbps=upload_mbps,
        download_mbps=download_mbps,
        connectivity_tier=tier,
    )
