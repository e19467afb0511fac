"""A booked 3-member cluster is a Ray cluster: members in separate network namespaces join
one head, a job submitted through the coordinator runs tasks on every member and its logs
reach the renter, no one else reaches its jobs, its scratch data dies with the lease, and
after termination nothing of Ray is left on any member."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpupool.agent.ray.cmd import temp_dir_for
from gpupool.agent.sandbox.scratch import Scratch, ScratchError
from gpupool.client import ApiError, Client
from gpupool.crypto.identity import load
from gpupool.wire.models import ClusterOut
from tests.integration.conftest import eventually, wait_state
from tests.integration.ray.conftest import AGENTS, RayNet

pytestmark = pytest.mark.integration

JOB = """
import json, os, ray
from gpupool.agent.sandbox.scratch import Scratch

ray.init()
devices = json.loads(os.environ["LEASE_DEVICES"])

@ray.remote(num_cpus=1)
def where(device):
    Scratch.from_env().write("secret.bin", ("plaintext of " + device).encode())
    with open(os.path.join(os.environ["HOME"], "plain.txt"), "w") as f:  # no gpupool API
        f.write("plaintext of " + device)
    return ray.get_runtime_context().get_node_id()

ran_on = ray.get([where.options(resources={"device:" + d: 1}).remote(d) for d in devices])
alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
print("RESULT " + json.dumps({"alive": sorted(alive), "ran_on": sorted(ran_on)}))
"""


def _gpupool(
    net: RayNet, key: str, *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUPOOL_KEY": key, "GPUPOOL_COORDINATOR": net.url}
    return subprocess.run(
        [sys.executable, "-m", "gpupool", *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip


def _book(renter: Client) -> ClusterOut:
    cluster = renter.create_cluster(devices=3, kind="cpu", hours=1, max_price_per_hour="1")
    return wait_state(renter, cluster.id, "ready", timeout=120)


def _lease_leftovers(net: RayNet, cluster: ClusterOut) -> list[str]:
    """Whatever of the lease's Ray is still on any member: processes, TCP listeners, dirs."""
    found = []
    for name in AGENTS:
        host = net.host(name)
        for pid in host.run("ip", "netns", "pids", host.netns, check=False).split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "ray" in cmd and "gpupool agent" not in cmd:
                cgroup = Path(f"/proc/{pid}/cgroup").read_text().strip().replace("\n", " ")
                found.append(f"{name}: process {pid} {cmd[:60]} in {cgroup}")
        for line in host.run("ss", "-ltnH", check=False).splitlines():
            found.append(f"{name}: TCP listener {line.split()[3]}")
        state = net.agent_dir(name)
        worker_ids = {m.worker_id for m in cluster.members}
        for worker in worker_ids:
            tmp = temp_dir_for(state, worker, cluster.lease_id)
            if tmp.exists():
                found.append(f"{name}: temp dir {tmp}")
        if (state / "leases" / cluster.lease_id).exists():
            found.append(f"{name}: lease folder")
    return found


def test_three_members_form_one_ray_cluster_that_runs_the_renters_job_everywhere(
    raynet: RayNet, tmp_path: Path
) -> None:
    renter = raynet.renter("ray-renter")
    started = time.monotonic()
    cluster = _book(renter)
    print(f"booking to ready: {time.monotonic() - started:.1f} s")

    # Ray reports three alive nodes, one per member, on their overlay addresses (the mesh);
    # the head's dashboard is where the coordinator (the job proxy) reaches it.
    ray = renter.cluster_ray(cluster.id)
    assert [n.state for n in ray.nodes] == ["joined"] * 3
    assert sorted(n.role for n in ray.nodes) == ["head", "worker", "worker"]
    addresses = {n.address for n in ray.nodes}
    assert len(addresses) == 3 and all(a.startswith("100.") for a in addresses), addresses
    overlay = ipaddress.ip_network("100.64.0.0/10")
    assert all(ipaddress.ip_address(a) in overlay for a in addresses)
    assert ray.mesh is True and ray.gcs_address and ray.gcs_address.startswith("100.")
    head_host = raynet.host_of(next(n.worker_id for n in ray.nodes if n.role == "head"))
    assert ray.dashboard_url and ray.dashboard_url.startswith(
        f"http://{raynet.host(head_host).address}:"
    )
    node_ids = sorted(n.node_id for n in ray.nodes if n.node_id)
    assert len(set(node_ids)) == 3

    show = _gpupool(raynet, renter_key(renter), "cluster", "show", cluster.id)
    assert show.returncode == 0, show.stderr
    assert ray.dashboard_url in show.stdout and "over the mesh" in show.stdout

    # A job with a working directory, through the CLI: tasks on every member, logs streamed.
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "job.py").write_text(JOB)
    devices = json.dumps([m.device_id for m in cluster.members])
    done = _gpupool(
        raynet, renter_key(renter), "job", "submit", cluster.id, "--working-dir", str(job_dir),
        "--env", f"LEASE_DEVICES={devices}", "--", "python", "job.py",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["alive"] == node_ids, "Ray does not report the members' three nodes alive"
    assert result["ran_on"] == node_ids, "the job's tasks did not run on every member"
    jobs = renter.jobs(cluster.id)
    assert [j.status for j in jobs] == ["SUCCEEDED"]
    assert "RESULT" in renter.job_logs(cluster.id, jobs[0].submission_id or "")

    # Every file the job wrote is ciphertext on the supplier's disk: the lease's one writable
    # folder is its encrypted disk (plaintext only through the live mount, ciphertext in the
    # lease folder), the scratch helper's sealed file included.
    copies = []
    for name in AGENTS:
        state = raynet.agent_dir(name)
        home = temp_dir_for(state, load(state / "identity.key").worker_id, cluster.lease_id)
        assert (home / "plain.txt").read_text().startswith("plaintext of ")  # root, mounted
        cipher = state / "leases" / cluster.lease_id / "disk.cipher"
        on_disk = [f for f in cipher.rglob("*") if f.is_file()]
        assert on_disk and all(b"plaintext" not in f.read_bytes() for f in on_disk)
        assert not list(cipher.rglob("plain.txt")) and not list(cipher.rglob("secret.bin"))
        sealed = (home / "scratch" / "secret.bin").read_bytes()
        assert b"plaintext" not in sealed
        assert Scratch(home / "scratch", home / "scratch.key").read("secret.bin")
        copy = tmp_path / f"copy-{name}"
        shutil.copytree(cipher, copy / "disk")
        (copy / "secret.bin").write_bytes(sealed)
        copies.append((copy, home / "scratch.key"))

    renter.terminate(cluster.id)
    ended = wait_state(renter, cluster.id, "ended", timeout=60)
    assert {m.state for m in ended.members} == {"released"}
    assert _lease_leftovers(raynet, cluster) == []
    # The keys are gone with the lease: a copy of the ciphertext taken during it is
    # unreadable (tests/unit/agent/test_cryptdisk.py tries to open such a copy of the disk).
    for copy, key_file in copies:
        assert not key_file.exists()
        with pytest.raises(ScratchError):
            Scratch(copy, key_file).read("secret.bin")
        assert (copy / "disk" / "gocryptfs.conf").exists()  # the copy, the wrapped key in it
        assert not any(b"plaintext" in f.read_bytes() for f in copy.rglob("*") if f.is_file())


def renter_key(client: Client) -> str:
    return client._http.headers["authorization"].removeprefix("Bearer ")


def test_another_renter_cannot_reach_this_clusters_ray_or_jobs(raynet: RayNet) -> None:
    owner = raynet.renter("owner")
    cluster = _book(owner)
    job = owner.submit_job(cluster.id, "echo hello-from-the-owner")
    other = raynet.renter("intruder")
    for attempt in (
        lambda: other.cluster_ray(cluster.id),
        lambda: other.submit_job(cluster.id, "echo pwned"),
        lambda: other.jobs(cluster.id),
        lambda: other.job(cluster.id, job.submission_id or ""),
        lambda: other.job_logs(cluster.id, job.submission_id or ""),
        lambda: other.stop_job(cluster.id, job.submission_id or ""),
        lambda: other.upload_package(cluster.id, "_ray_pkg_" + "0" * 32 + ".zip", b"x"),
    ):
        with pytest.raises(ApiError) as refused:
            attempt()
        assert refused.value.status == 404
    assert [j.entrypoint for j in owner.jobs(cluster.id)] == ["echo hello-from-the-owner"]
    owner.terminate(cluster.id)
    wait_state(owner, cluster.id, "ended", timeout=60)


def _ray_pid(net: RayNet, worker_id: str, lease_id: str, comm: str) -> int:
    from gpupool.agent.sandbox.cgroup import find_cgroup2_root

    root = find_cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 on this machine")
    procs = (root / f"gpupool-{worker_id}" / lease_id / "cgroup.procs").read_text().split()
    for pid in procs:
        if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
            return int(pid)
    raise AssertionError(f"no {comm} in the lease sandbox of {worker_id}")


def test_a_dead_member_degrades_the_cluster_and_a_dead_head_fails_it(raynet: RayNet) -> None:
    renter = raynet.renter("failures")
    cluster = _book(renter)
    ray = renter.cluster_ray(cluster.id)
    head = next(n for n in ray.nodes if n.role == "head")
    worker = next(n for n in ray.nodes if n.role == "worker")

    os.kill(_ray_pid(raynet, worker.worker_id, cluster.lease_id, "raylet"), signal.SIGKILL)
    degraded = wait_state(renter, cluster.id, "degraded", timeout=30)
    lost = next(m for m in degraded.members if m.worker_id == worker.worker_id)
    assert lost.state == "failed" and "Ray worker node died" in lost.reason

    os.kill(_ray_pid(raynet, head.worker_id, cluster.lease_id, "gcs_server"), signal.SIGKILL)
    failed = wait_state(renter, cluster.id, "failed", timeout=30)
    assert "the Ray head died" in failed.reason

    eventually(lambda: _lease_leftovers(raynet, cluster) == [], 30, "the lease's Ray to be gone")


def test_a_restarted_agent_takes_its_ray_node_back_and_still_reports_its_death(
    raynet: RayNet,
) -> None:
    renter = raynet.renter("restarts")
    cluster = _book(renter)
    worker = next(n for n in renter.cluster_ray(cluster.id).nodes if n.role == "worker")
    host = raynet.host_of(worker.worker_id)
    raylet = _ray_pid(raynet, worker.worker_id, cluster.lease_id, "raylet")

    raynet.kill_agent(host)  # a crash: the lease's Ray runs on without its agent
    raynet.start_agent(host)
    eventually(
        lambda: any(
            "event=lease_adopted" in line
            for line in raynet.agent_log(host).read_text().splitlines()[-200:]
        ),
        30,
        "the restarted agent to adopt the lease",
    )
    assert _ray_pid(raynet, worker.worker_id, cluster.lease_id, "raylet") == raylet
    assert renter.cluster(cluster.id).state == "ready"

    os.kill(raylet, signal.SIGKILL)  # watched again after the restart
    degraded = wait_state(renter, cluster.id, "degraded", timeout=30)
    assert any("Ray worker node died" in m.reason for m in degraded.members)
    renter.terminate(cluster.id)
    wait_state(renter, cluster.id, "ended", timeout=60)
    eventually(lambda: _lease_leftovers(raynet, cluster) == [], 30, "the lease's Ray to be gone")


def test_a_restarted_head_agent_forwards_the_dashboard_again(raynet: RayNet) -> None:
    """A sealed head's dashboard is reached through its agent's forwarder, which dies with
    the agent: the restarted agent makes it again and reports where, so the renter's jobs
    still go through the coordinator."""
    renter = raynet.renter("head-restarts")
    cluster = _book(renter)
    head = next(n for n in renter.cluster_ray(cluster.id).nodes if n.role == "head")
    host = raynet.host_of(head.worker_id)
    assert renter.jobs(cluster.id) == []  # through the proxy and the forwarder
    raynet.kill_agent(host)
    raynet.start_agent(host)

    def jobs_answer() -> bool | None:
        try:
            return renter.jobs(cluster.id) == []
        except ApiError:  # the old forwarder's port: nobody listens there any more
            return None

    assert eventually(jobs_answer, 60, "the job proxy to reach the head again")
    renter.terminate(cluster.id)
    wait_state(renter, cluster.id, "ended", timeout=60)
