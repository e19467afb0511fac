"""`gpupool job`: submit, list, follow and stop Ray jobs on a booked cluster.

Jobs go through the coordinator's authenticated proxy to the cluster's Ray Jobs API, so only
the cluster's renter can reach them (docs/ray.md). A working directory is zipped here and
stored in the cluster's Ray before the job that uses it is submitted.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import sys
import time
import zipfile
from pathlib import Path
from typing import Annotated

import typer

from gpupool.cli.common import (
    DEFAULT_COORDINATOR,
    CliError,
    CoordinatorOpt,
    JsonOpt,
    KeyOpt,
    client,
    env_pairs,
    err,
    out,
    print_json,
    table,
)
from gpupool.client import Client
from gpupool.wire.ray import JobOut

app = typer.Typer(help="Ray jobs on your clusters.", no_args_is_help=True)

FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")
MAX_PACKAGE_BYTES = 1 << 20  # the coordinator's body limit
POLL_SECONDS = 1.0


def package_directory(directory: Path) -> tuple[str, bytes]:
    """A working directory as Ray's package: a zip of its files (without the folder itself),
    named by the hash of its content."""
    if not directory.is_dir():
        raise CliError(f"{directory} is not a directory", 2)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                info = zipfile.ZipInfo(str(path.relative_to(directory)), (1980, 1, 1, 0, 0, 0))
                info.external_attr = (path.stat().st_mode & 0o777) << 16
                archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    data = buffer.getvalue()
    if len(data) > MAX_PACKAGE_BYTES:
        raise CliError(f"{directory} zips to {len(data)} bytes; the limit is 1 MiB", 2)
    return f"_ray_pkg_{hashlib.sha256(data).hexdigest()[:32]}.zip", data


def follow(gp: Client, cluster_id: str, job_id: str, timeout: float, echo: bool) -> JobOut:
    """Wait until the job finishes, printing its log as it grows."""
    shown = 0
    deadline = time.monotonic() + timeout
    while True:
        job = gp.job(cluster_id, job_id)
        if echo:
            logs = gp.job_logs(cluster_id, job_id)
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
        if job.status in FINISHED:
            return job
        if time.monotonic() > deadline:
            raise CliError(f"job {job_id} is still {job.status} after {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


@app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    cluster_id: str,
    command: Annotated[list[str], typer.Argument(help="The job's command, after --.")],
    working_dir: Annotated[
        Path | None, typer.Option(help="Upload this folder; the job runs inside it.")
    ] = None,
    env: Annotated[list[str] | None, typer.Option(help="NAME=VALUE for the job (repeat).")] = None,
    wait: Annotated[bool, typer.Option(help="Stream the logs until the job finishes.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the job.")] = 3600.0,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Submit COMMAND as a Ray job on the cluster: gpupool job submit c-... -- python x.py"""
    env_vars = env_pairs(env or [])
    entrypoint = shlex.join(command)
    with client(coordinator, key) as gp:
        package = None
        if working_dir is not None:
            package, data = package_directory(working_dir)
            gp.upload_package(cluster_id, package, data)
        job = gp.submit_job(cluster_id, entrypoint, package, env_vars)
        assert job.submission_id is not None
        if not json_out:
            err.print(f"submitted {job.submission_id} to {cluster_id}")
        if wait:
            job = follow(gp, cluster_id, job.submission_id, timeout, echo=not json_out)
    if json_out:
        print_json(job)
    else:
        err.print(
            f"job {job.submission_id}: {job.status}" + (f" ({job.message})" if job.message else "")
        )
    if wait and job.status != "SUCCEEDED":
        raise typer.Exit(1)


@app.command("list")
def list_jobs(
    cluster_id: str,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the cluster's jobs."""
    with client(coordinator, key) as gp:
        jobs = gp.jobs(cluster_id)
    if json_out:
        print_json(jobs)
        return
    out.print(
        table(
            f"{len(jobs)} jobs on {cluster_id}",
            ["job", "status", "entrypoint"],
            [(j.submission_id, j.status, j.entrypoint[:60]) for j in jobs],
        )
    )


@app.command("logs")
def logs(
    cluster_id: str,
    job_id: str,
    follow_logs: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job finishes.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to follow.")] = 3600.0,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
) -> None:
    """Print a job's logs."""
    with client(coordinator, key) as gp:
        if follow_logs:
            follow(gp, cluster_id, job_id, timeout, True)
        else:
            sys.stdout.write(gp.job_logs(cluster_id, job_id))


@app.command("stop")
def stop(
    cluster_id: str,
    job_id: str,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Stop a running job."""
    with client(coordinator, key) as gp:
        job = gp.stop_job(cluster_id, job_id)
    if json_out:
        print_json(job)
    else:
        out.print(f"job {job.submission_id}: {job.status}")
