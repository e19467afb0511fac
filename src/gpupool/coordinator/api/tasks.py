"""Protocol mode: renters' jobs, validators' sampling, and the agents' side (signed)."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from gpupool.coordinator.api.deps import AccountDep, RenterDep, ServicesDep, WorkerDep
from gpupool.domain.errors import InvalidRequest
from gpupool.services.ports import RunRecord
from gpupool.services.tasks import TaskView
from gpupool.wire import tasks as w

router = APIRouter(tags=["tasks"])


def _b64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("not base64") from exc


def run_out(r: RunRecord) -> w.RunOut:
    return w.RunOut(
        id=r.id,
        purpose=r.purpose,
        device_id=r.device_id,
        worker_id=r.worker_id,
        state=r.state,
        output_hash=r.output_hash,
        error=r.error,
        finished_at=r.finished_at,
    )


def task_out(v: TaskView) -> w.TaskOut:
    t, result = v.task, v.result
    return w.TaskOut(
        id=t.id,
        command=t.command,
        image=t.image,
        input_hash=t.input_hash,
        tolerance=t.tolerance,
        state=t.state,
        validation=t.validation,
        output_b64=base64.b64encode(result.output).decode() if result and result.output else None,
        output_hash=result.output_hash if result else None,
        runs=[run_out(r) for r in v.runs],
        created_at=t.created_at,
    )


@router.post("/v1/tasks", status_code=201)
async def submit(body: w.TaskIn, renter: RenterDep, svc: ServicesDep) -> w.TaskOut:
    """A deterministic job: the command reads the input on stdin and writes its output."""
    view = await run_in_threadpool(
        svc.tasks.submit, renter, body.command, _b64(body.input_b64), body.image, body.tolerance
    )
    return task_out(view)


@router.get("/v1/tasks")
async def list_tasks(renter: RenterDep, svc: ServicesDep) -> list[w.TaskOut]:
    return [task_out(v) for v in await run_in_threadpool(svc.tasks.tasks, renter)]


@router.get("/v1/tasks/{task_id}")
async def show(task_id: str, account: AccountDep, svc: ServicesDep) -> w.TaskOut:
    return task_out(await run_in_threadpool(svc.tasks.get, account, task_id))


@router.post("/v1/validations")
async def validate(body: w.ValidateIn, account: AccountDep, svc: ServicesDep) -> w.ValidateOut:
    """Sample each finished, unsampled job with probability p for a re-run elsewhere."""
    return w.ValidateOut(sampled=await run_in_threadpool(svc.tasks.validate, account, body.p))


@router.get("/v1/validations")
async def validations(
    account: AccountDep, svc: ServicesDep, ids: str = Query("", max_length=20_000)
) -> list[w.TaskOut]:
    """The validator's sampled jobs by id (comma-separated), with their runs and verdicts."""
    wanted = [i for i in ids.split(",") if i]
    return [task_out(v) for v in await run_in_threadpool(svc.tasks.validations, account, wanted)]


@router.get("/v1/agent/tasks")
async def agent_work(
    request: Request, worker_id: WorkerDep, svc: ServicesDep
) -> list[w.AgentRunOut]:
    """The runs assigned to this worker: each run's own id and the work, nothing that links
    a validator's re-run to the job's first run (no task id, no purpose)."""
    seen = request.client.host if request.client else None
    work = await run_in_threadpool(svc.tasks.work, worker_id, seen)
    return [
        w.AgentRunOut(
            run_id=run.id,
            device_id=run.device_id or "",
            command=task.command,
            image=task.image,
            input_b64=base64.b64encode(task.input).decode(),
        )
        for run, task in work
    ]


@router.post("/v1/agent/tasks/{run_id}/result")
async def agent_result(
    run_id: str, body: w.RunResultIn, worker_id: WorkerDep, svc: ServicesDep
) -> w.AgentResultOut:
    output = _b64(body.output_b64) if body.output_b64 is not None else None
    run = await run_in_threadpool(
        svc.tasks.report, worker_id, run_id, output, body.output_hash, body.error
    )
    return w.AgentResultOut(
        run_id=run.id, state=run.state, output_hash=run.output_hash, error=run.error
    )
