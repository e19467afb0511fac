"""Request and response bodies of the Ray routes: agents' Ray node reports, the cluster's Ray
view, and Ray jobs through the coordinator's proxy (docs/ray.md)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints

from gpupool.domain.ray import RayNodeState, RayRole
from gpupool.wire.models import Request, Response

Address = Annotated[str, StringConstraints(min_length=1, max_length=64)]
NodeId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16,64}$")]
JobId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]


class RayNodeReport(Request):
    """An agent's Ray node on one lease."""

    role: RayRole
    state: RayNodeState
    address: Address = Field(description="The address the node binds to.")
    mesh: bool = Field(description="True when that address is the mesh overlay address.")
    node_id: NodeId | None = None
    gcs_address: Annotated[str, StringConstraints(max_length=96)] | None = None
    dashboard_url: Annotated[str, StringConstraints(max_length=128)] | None = None
    reason: Annotated[str, StringConstraints(max_length=2000)] = ""


class RayNodeOut(Response):
    worker_id: str
    role: RayRole
    state: RayNodeState
    address: str
    mesh: bool
    node_id: str | None
    reason: str


class RayHeadOut(Response):
    """The lease's Ray head, for the members that join it; `head` is null until reported."""

    head: RayNodeOut | None
    gcs_address: str | None
    dashboard_url: str | None


class ClusterRayOut(Response):
    cluster_id: str
    lease_state: str
    dashboard_url: str | None = Field(
        description="The head's Ray dashboard (reachable over the mesh or the members' network)."
    )
    gcs_address: str | None
    mesh: bool = Field(description="False: the members talk over their ordinary addresses.")
    nodes: list[RayNodeOut]


class JobSubmitIn(Request):
    entrypoint: Annotated[str, StringConstraints(min_length=1, max_length=8000)]
    working_dir_package: (
        Annotated[str, StringConstraints(pattern=r"^_ray_pkg_[0-9a-f]{16,64}\.zip$")] | None
    ) = Field(None, description="A package uploaded with PUT .../jobs/packages/{name} first.")
    env_vars: dict[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")],
        Annotated[str, StringConstraints(max_length=4000)],
    ] = Field(default_factory=dict, max_length=64)
    submission_id: JobId | None = None


class JobOut(Response):
    submission_id: str | None
    job_id: str | None = None
    status: str
    entrypoint: str = ""
    message: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    driver_node_id: str | None = None

    @classmethod
    def from_ray(cls, data: dict[str, Any]) -> JobOut:
        driver = data.get("driver_info") or {}
        return cls.model_validate(
            {**data, "driver_node_id": driver.get("node_id") if isinstance(driver, dict) else None}
        )


class JobLogsOut(Response):
    logs: str
