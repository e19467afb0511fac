"""Request and response bodies of protocol mode: `/v1/tasks`, `/v1/validations` and the
agents' `/v1/agent/tasks`. Inputs and outputs travel base64-encoded."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from gpupool.wire.models import Request, Response

B64 = Annotated[str, StringConstraints(max_length=720_000, pattern=r"^[A-Za-z0-9+/=]*$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class TaskIn(Request):
    command: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    input_b64: B64 = ""
    image: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    tolerance: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Numeric outputs agree when each number is within tolerance x "
        "max(1, |a|, |b|); None: outputs must be byte-identical.",
    )


class RunOut(Response):
    id: str
    purpose: str
    device_id: str | None
    worker_id: str | None
    state: str
    output_hash: str | None
    error: str
    finished_at: float | None


class TaskOut(Response):
    id: str
    command: str
    image: str | None
    input_hash: str
    tolerance: float | None
    state: str
    validation: str
    output_b64: str | None
    output_hash: str | None
    runs: list[RunOut]
    created_at: float


class AgentRunOut(Response):
    """A run as its agent sees it. A first run and a validator's re-run look alike: a fresh
    random run id, never the task's id or the run's purpose."""

    run_id: str
    device_id: str
    command: str
    image: str | None
    input_b64: str


class AgentResultOut(Response):
    """What an agent hears back for its result: as little as a first run's, so that the
    answer does not tell it afterwards which runs were re-runs."""

    run_id: str
    state: str
    output_hash: str | None
    error: str


class RunResultIn(Request):
    output_b64: B64 | None = None
    output_hash: Sha256 | None = None
    error: Annotated[str, StringConstraints(max_length=2000)] = ""


class ValidateIn(Request):
    p: float = Field(ge=0, le=1, description="Chance that each finished job is re-run.")


class ValidateOut(Response):
    sampled: list[str]
