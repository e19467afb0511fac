"""The demo's Ray workload: a distributed model search on real data (WonderNetwork RTTs),
submitted as a Ray job to the booked cluster through the coordinator's job proxy.

See `gpupool/workloads/rtt_search.py` for the model and the search; this module ships it
with its data as the job's working directory, follows the job and reads its result line.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

import gpupool
from gpupool.cli.common import CliError
from gpupool.cli.jobs import follow, package_directory
from gpupool.client import Client

WORKLOAD = Path(gpupool.__file__).parent / "workloads" / "rtt_search.py"
DATA = Path(gpupool.__file__).parents[2] / "data" / "wondernetwork"
JOB_TIMEOUT = 300.0


def run_rtt_search(gp: Client, cluster_id: str, say: Console) -> dict[str, Any]:
    """Run the search on the cluster; the demo's `ray` summary."""
    if not (DATA / "rtt-ms.txt").exists():
        raise CliError(f"the demo's data is missing: {DATA} (run from a gpupool checkout)")
    with tempfile.TemporaryDirectory(prefix="gpupool-job-") as tmp:
        work = Path(tmp)
        shutil.copy(WORKLOAD, work / "rtt_search.py")
        (work / "wondernetwork").mkdir()
        for name in ("sites.csv", "rtt-ms.txt"):
            shutil.copy(DATA / name, work / "wondernetwork" / name)
        package, data = package_directory(work)
    ray = gp.cluster_ray(cluster_id)
    joined = sum(n.state == "joined" for n in ray.nodes)
    if ray.mesh:
        say.print(f"• Ray: {joined} nodes joined over the cluster's WireGuard mesh")
    else:
        say.print(
            f"• Ray: {joined} nodes joined [yellow]without the mesh[/yellow]: they talk over "
            "their ordinary addresses (here one machine's loopback; the mesh needs root and "
            "WireGuard on each member, docs/mesh.md)"
        )
    gp.upload_package(cluster_id, package, data)
    job = gp.submit_job(cluster_id, "python rtt_search.py wondernetwork", package)
    assert job.submission_id is not None
    say.print(f"• submitted Ray job {job.submission_id}: RTT model search over 24 trials")
    job = follow(gp, cluster_id, job.submission_id, JOB_TIMEOUT, echo=False)
    logs = gp.job_logs(cluster_id, job.submission_id or "")
    lines = [x for x in logs.splitlines() if x.startswith("RESULT ")]
    if job.status != "SUCCEEDED" or not lines:
        tail = "\n".join(logs.strip().splitlines()[-5:])
        raise CliError(f"the Ray job {job.submission_id} ended {job.status}:\n{tail}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    best = result["best"]
    say.print(
        f"• job {job.status}: {result['trials']} trials on {len(result['trial_nodes'])} of "
        f"{len(result['alive_nodes'])} Ray nodes; best model RTT ≈ poly(distance, "
        f"{best['degree']}), ridge {best['lam']:g}: cross-validated RMSE "
        f"[bold]{best['rmse_ms']:.2f} ms[/bold] over {result['pairs']} site pairs"
    )
    return {
        "nodes": len(result["alive_nodes"]),
        "mesh": ray.mesh,
        "trial_nodes": len(result["trial_nodes"]),
        "job_id": job.submission_id,
        "job_status": job.status,
        "workload": "ridge-polynomial RTT-from-distance search, 5-fold CV (WonderNetwork)",
        "trials": result["trials"],
        "best_rmse_ms": round(best["rmse_ms"], 3),
        "best": best,
        "checkpoint_in_encrypted_scratch": result["checkpoint"],
    }
