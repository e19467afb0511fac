"""Ray routes: agents report their lease's Ray nodes and learn the head's address (signed);
renters see their cluster's Ray view and use Ray's Jobs API through this authenticated proxy.

The proxy forwards to the head's Ray dashboard only for the cluster's own renter: anyone
else gets 404, as for every other cluster route. See docs/ray.md.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api.deps import RenterDep, ServicesDep, WorkerDep
from gpupool.coordinator.api.errors import error_response
from gpupool.domain.errors import InvalidRequest
from gpupool.domain.ray import RayNodeState, RayRole
from gpupool.services.ports import RayNodeRecord
from gpupool.services.raycluster import RayReport
from gpupool.wire import ray as r

agent_router = APIRouter(prefix="/v1/agent/leases", tags=["agent"])
router = APIRouter(prefix="/v1/clusters", tags=["ray"])

PROXY_TIMEOUT_SECONDS = 30.0
PACKAGE_NAME = re.compile(r"_ray_pkg_[0-9a-f]{16,64}\.zip")
JOB_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def _node(n: RayNodeRecord) -> r.RayNodeOut:
    return r.RayNodeOut(
        worker_id=n.worker_id,
        role=RayRole(n.role),
        state=RayNodeState(n.state),
        address=n.address,
        mesh=n.mesh,
        node_id=n.node_id,
        reason=n.reason,
    )


# agents ---------------------------------------------------------------------------------


@agent_router.post("/{lease_id}/ray", status_code=204)
async def report_ray(
    lease_id: str, body: r.RayNodeReport, request: Request, worker_id: WorkerDep, svc: ServicesDep
) -> None:
    report = RayReport(
        role=body.role,
        state=body.state,
        address=body.address,
        mesh=body.mesh,
        node_id=body.node_id,
        gcs_address=body.gcs_address,
        dashboard_url=body.dashboard_url,
        reason=body.reason,
        peer=request.client.host if request.client else None,
    )
    await run_in_threadpool(svc.ray.report, worker_id, lease_id, report)


@agent_router.get("/{lease_id}/ray")
async def ray_head(lease_id: str, worker_id: WorkerDep, svc: ServicesDep) -> r.RayHeadOut:
    head = await run_in_threadpool(svc.ray.head_for_member, worker_id, lease_id)
    return r.RayHeadOut(
        head=_node(head) if head else None,
        gcs_address=head.gcs_address if head else None,
        dashboard_url=head.dashboard_url if head else None,
    )


# renters --------------------------------------------------------------------------------


@router.get("/{cluster_id}/ray")
async def cluster_ray(cluster_id: str, renter: RenterDep, svc: ServicesDep) -> r.ClusterRayOut:
    view = await run_in_threadpool(svc.ray.view, renter, cluster_id)
    head = view.head
    return r.ClusterRayOut(
        cluster_id=cluster_id,
        lease_state=str(view.lease.state),
        dashboard_url=head.dashboard_url if head else None,
        gcs_address=head.gcs_address if head else None,
        mesh=bool(view.nodes) and all(n.mesh for n in view.nodes),
        nodes=[_node(n) for n in view.nodes],
    )


async def _forward(
    svc: ServicesDep,
    renter: RenterDep,
    cluster_id: str,
    method: str,
    path: str,
    json: Any = None,
    content: bytes | None = None,
) -> httpx.Response | JSONResponse:
    """Send one request to the cluster's Ray dashboard; a JSON error response when the head
    cannot be reached (502) or Ray refuses (its status, with Ray's message)."""
    base = await run_in_threadpool(svc.ray.dashboard, renter, cluster_id)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=PROXY_TIMEOUT_SECONDS) as http:
            answer = await http.request(method, path, json=json, content=content)
    except httpx.HTTPError as exc:
        return error_response(502, "ray_unreachable", f"the Ray head does not answer: {exc}")
    if answer.status_code >= 400:
        status = answer.status_code if answer.status_code in (400, 404) else 502
        text = answer.text.strip().splitlines()
        return error_response(status, "ray_error", (text[-1] if text else "")[:500])
    return answer


@router.put("/{cluster_id}/jobs/packages/{package}", status_code=204, response_model=None)
async def upload_package(
    cluster_id: str, package: str, request: Request, renter: RenterDep, svc: ServicesDep
) -> JSONResponse | None:
    """A zipped working directory, stored in the cluster's Ray (the GCS) for jobs to use."""
    if not PACKAGE_NAME.fullmatch(package):
        raise InvalidRequest("package names are _ray_pkg_<16 to 64 hex digits>.zip")
    body = await request.body()
    answer = await _forward(
        svc, renter, cluster_id, "PUT", f"/api/packages/gcs/{package}", content=body
    )
    return answer if isinstance(answer, JSONResponse) else None


@router.post("/{cluster_id}/jobs", status_code=201, response_model=r.JobOut)
async def submit_job(
    cluster_id: str, body: r.JobSubmitIn, renter: RenterDep, svc: ServicesDep
) -> Any:
    runtime_env: dict[str, Any] = {}
    if body.working_dir_package:
        runtime_env["working_dir"] = f"gcs://{body.working_dir_package}"
    if body.env_vars:
        runtime_env["env_vars"] = body.env_vars
    payload: dict[str, Any] = {"entrypoint": body.entrypoint, "runtime_env": runtime_env}
    if body.submission_id:
        payload["submission_id"] = body.submission_id
    answer = await _forward(svc, renter, cluster_id, "POST", "/api/jobs/", json=payload)
    if isinstance(answer, JSONResponse):
        return answer
    submission_id = answer.json()["submission_id"]
    return await _job(svc, renter, cluster_id, submission_id)


async def _job(svc: ServicesDep, renter: RenterDep, cluster_id: str, job_id: str) -> Any:
    answer = await _forward(svc, renter, cluster_id, "GET", f"/api/jobs/{job_id}")
    return answer if isinstance(answer, JSONResponse) else r.JobOut.from_ray(answer.json())


@router.get("/{cluster_id}/jobs", response_model=list[r.JobOut])
async def list_jobs(cluster_id: str, renter: RenterDep, svc: ServicesDep) -> Any:
    answer = await _forward(svc, renter, cluster_id, "GET", "/api/jobs/")
    if isinstance(answer, JSONResponse):
        return answer
    return [r.JobOut.from_ray(j) for j in answer.json() if j.get("submission_id")]


@router.get("/{cluster_id}/jobs/{job_id}", response_model=r.JobOut)
async def job(cluster_id: str, job_id: str, renter: RenterDep, svc: ServicesDep) -> Any:
    return await _job(svc, renter, cluster_id, _checked(job_id))


@router.get("/{cluster_id}/jobs/{job_id}/logs", response_model=r.JobLogsOut)
async def job_logs(cluster_id: str, job_id: str, renter: RenterDep, svc: ServicesDep) -> Any:
    answer = await _forward(svc, renter, cluster_id, "GET", f"/api/jobs/{_checked(job_id)}/logs")
    if isinstance(answer, JSONResponse):
        return answer
    return r.JobLogsOut(logs=str(answer.json().get("logs", "")))


@router.post("/{cluster_id}/jobs/{job_id}/stop", response_model=r.JobOut)
async def stop_job(cluster_id: str, job_id: str, renter: RenterDep, svc: ServicesDep) -> Any:
    answer = await _forward(svc, renter, cluster_id, "POST", f"/api/jobs/{_checked(job_id)}/stop")
    if isinstance(answer, JSONResponse):
        return answer
    return await _job(svc, renter, cluster_id, job_id)


def _checked(job_id: str) -> str:
    """Job ids go into the dashboard's URL path: letters, digits, '_' and '-' only."""
    if not JOB_ID.fullmatch(job_id):
        raise InvalidRequest("a job id holds letters, digits, '_' and '-' only")
    return job_id
