"""The mesh's routes (docs/mesh.md).

Agents (signed requests): register their WireGuard key, report each lease interface's
endpoint and their direct probes, and long-poll their peer map. Renters (API key): connect a
machine of their own to one of their own clusters.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api.deps import RenterDep, ServicesDep, WorkerDep, long_poll
from gpupool.services.mesh import Mesh
from gpupool.wire import mesh as wm

agent_router = APIRouter(prefix="/v1/agent/mesh", tags=["mesh"])
renter_router = APIRouter(prefix="/v1/clusters", tags=["mesh"])


def mesh_service(request: Request) -> Mesh:
    svc: Mesh = request.app.state.mesh
    return svc


MeshDep = Annotated[Mesh, Depends(mesh_service)]


@agent_router.post("/key")
async def register_key(body: wm.MeshKeyIn, worker_id: WorkerDep, mesh: MeshDep) -> wm.MeshKeyOut:
    """Register (or rotate) the worker's WireGuard public key; its overlay address."""
    address = await run_in_threadpool(mesh.register_key, worker_id, body.public_key)
    return wm.MeshKeyOut(address=address)


@agent_router.put("/leases/{lease_id}/endpoint")
async def set_endpoint(
    lease_id: str, body: wm.MeshEndpointIn, worker_id: WorkerDep, mesh: MeshDep
) -> wm.MeshEndpointOut:
    """Where the worker's interface for this lease listens (its peers' endpoint for it)."""
    await run_in_threadpool(mesh.set_endpoint, worker_id, lease_id, body.endpoint)
    return wm.MeshEndpointOut(endpoint=body.endpoint)


@agent_router.post("/leases/{lease_id}/probes")
async def report_probes(
    lease_id: str, body: wm.MeshProbesIn, worker_id: WorkerDep, mesh: MeshDep
) -> wm.MeshProbesOut:
    stepped = await run_in_threadpool(mesh.report_probes, worker_id, lease_id, body.rtt_ms)
    return wm.MeshProbesOut(stepped=stepped)


@agent_router.get("/leases/{lease_id}")
async def peer_map(
    request: Request,
    lease_id: str,
    worker_id: WorkerDep,
    mesh: MeshDep,
    svc: ServicesDep,
    version: str = Query("", max_length=64, description="Answer once the map differs."),
    wait: float = Query(0, ge=0, le=60, description="Seconds to wait for a change."),
) -> wm.MeshMapOut:
    """The worker's peer map in the lease; a long poll when `version` is the current one.
    404 when the worker is not (or no longer) a member of the active lease."""
    await long_poll(request, svc, wait, lambda: mesh.version(worker_id, lease_id) != version)
    current = await run_in_threadpool(mesh.peer_map, worker_id, lease_id)
    return wm.MeshMapOut.of(lease_id, current.version, current.peer_map)


@renter_router.post("/{cluster_id}/mesh/connect")
async def connect(
    cluster_id: str, body: wm.MeshConnectIn, renter: RenterDep, mesh: MeshDep
) -> wm.MeshMapOut:
    """Add the renter's machine (its public key; the private key stays there) to the
    cluster's mesh; its address and the members to reach."""
    m = await run_in_threadpool(mesh.connect_client, renter, cluster_id, body.public_key)
    return wm.MeshMapOut.of("", "", m)
