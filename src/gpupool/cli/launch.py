"""`gpupool launch task.yaml`: the one-command path. Book (or reuse) a cluster, wait for it,
ship the working directory, run `setup` on every node and `run` on the head as Ray jobs,
stream their logs, and with `--down` end the cluster, whatever happened.

The task file's format is in `cli/taskfile.py`. Setup runs as one Ray job whose tasks are
pinned to every alive node (`workloads/every_node.py`); it and the run job share one working
directory package, so what setup leaves in the working directory on a node, run finds there.
The exit status is 0 only when the run job SUCCEEDED.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

import gpupool
from gpupool.cli.clusters import TERMINAL, wait_for_ray, wait_for_state, with_ray
from gpupool.cli.common import (
    DEFAULT_COORDINATOR,
    BookingKeyOpt,
    CliError,
    CoordinatorOpt,
    JsonOpt,
    KeyOpt,
    client,
    env_pairs,
    err,
    print_json,
)
from gpupool.cli.jobs import follow, package_directory
from gpupool.cli.taskfile import TaskFile, load_task, stage
from gpupool.client import ApiError, Client
from gpupool.wire.models import ClusterOut
from gpupool.wire.ray import JobOut

EVERY_NODE = Path(gpupool.__file__).parent / "workloads" / "every_node.py"
EVERY_NODE_NAME = "_gpupool_every_node.py"
RELEASE_TIMEOUT = 120.0  # seconds --down waits for the members to release their devices


def launch(
    task_file: Annotated[Path, typer.Argument(help="The task file (YAML).")],
    cluster_id: Annotated[
        str | None,
        typer.Option("--cluster", help="Run on this cluster of yours instead of booking one."),
    ] = None,
    down: Annotated[
        bool, typer.Option(help="Terminate the cluster at the end, on failure too.")
    ] = False,
    env: Annotated[
        list[str] | None, typer.Option(help="NAME=VALUE, over the task file's envs (repeat).")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the cluster, and again for each job.")
    ] = 3600.0,
    idempotency_key: BookingKeyOpt = None,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Book a cluster for a task file, set it up, run it and stream its logs."""
    task = load_task(task_file)
    task.envs.update(env_pairs(env or []))
    say = not json_out
    with tempfile.TemporaryDirectory(prefix="gpupool-launch-") as tmp:
        work = Path(tmp)
        stage(task, task_file.resolve().parent, work)
        if task.setup is not None:
            shutil.copyfile(EVERY_NODE, work / EVERY_NODE_NAME)
        try:
            package = package_directory(work) if any(work.iterdir()) else None
        except CliError as exc:  # its message names the temporary folder
            raise CliError(f"{task_file}: workdir and file_mounts: {exc}", 2) from exc
    with client(coordinator, key) as gp:
        cluster = _cluster(gp, task, cluster_id, idempotency_key, say)
        result: dict[str, Any] = {"cluster": None, "setup": None, "run": None}
        try:
            cluster = wait_for_state(gp, cluster.id, ("ready",), timeout, json_out)
            if cluster.state != "ready":
                raise CliError(f"{cluster.id} is {cluster.state}: {cluster.reason}")
            result["cluster"] = with_ray(cluster, wait_for_ray(gp, cluster, timeout, json_out))
            if package is not None:
                gp.upload_package(cluster.id, *package)
            name = package[0] if package is not None else None
            if task.setup is not None:
                setup = shlex.join(["python", EVERY_NODE_NAME, task.setup])
                job = _job(gp, cluster.id, "setup", setup, name, task, timeout, say)
                result["setup"] = job.model_dump(mode="json")
                if job.status != "SUCCEEDED":
                    raise CliError(f"setup ended {job.status} on {cluster.id}: run not started")
            job = _job(
                gp,
                cluster.id,
                "run",
                shlex.join(["bash", "-c", task.run]),
                name,
                task,
                timeout,
                say,
            )
            result["run"] = job.model_dump(mode="json")
        finally:
            result["terminated"] = down and _terminate(gp, cluster.id, json_out)
    if json_out:
        print_json(result)
    if result["run"]["status"] != "SUCCEEDED":
        raise typer.Exit(1)


def _cluster(
    gp: Client, task: TaskFile, cluster_id: str | None, idempotency_key: str | None, say: bool
) -> ClusterOut:
    if cluster_id is not None:
        cluster = gp.cluster(cluster_id)
        if say:
            err.print(f"using {cluster.id} ({cluster.state}, {len(cluster.members)} devices)")
        return cluster
    # a launch books once even when retried: the key is the caller's, or this run's own
    cluster = gp.create_cluster(
        idempotency_key=idempotency_key or f"launch-{uuid.uuid4()}", **task.resources.booking()
    )
    if say:
        label = f" for {task.name}" if task.name else ""
        err.print(
            f"booked {cluster.id}{label}: {len(cluster.members)} devices, "
            f"{cluster.total_price} for {cluster.hours} h"
        )
    return cluster


def _job(
    gp: Client,
    cluster_id: str,
    step: str,
    entrypoint: str,
    package: str | None,
    task: TaskFile,
    timeout: float,
    say: bool,
) -> JobOut:
    job = gp.submit_job(cluster_id, entrypoint, package, dict(task.envs))
    assert job.submission_id is not None
    if say:
        err.print(f"{step}: Ray job {job.submission_id}")
    job = follow(gp, cluster_id, job.submission_id, timeout, echo=say)
    if say:
        err.print(f"{step}: {job.status}" + (f" ({job.message})" if job.message else ""))
    return job


def _terminate(gp: Client, cluster_id: str, quiet: bool) -> bool:
    """End the cluster (--down) and wait until its devices are released; False when it had
    already ended or ending it failed."""
    try:
        if gp.cluster(cluster_id).state in TERMINAL:
            return False
        gp.terminate(cluster_id)
        ended = wait_for_state(gp, cluster_id, TERMINAL, RELEASE_TIMEOUT, quiet)
    except (ApiError, CliError) as exc:
        why = exc.message if isinstance(exc, ApiError) else str(exc)
        err.print(f"[red]could not terminate {cluster_id}:[/red] {why}", highlight=False)
        return False
    if not quiet:
        err.print(f"terminated {cluster_id}: {ended.state}")
    return True
