"""Docker leases end to end, as a supplier and a renter use them: agents run with
`--container-engine docker` on a private engine (tests/dockerd.py), each in its own network
namespace with the mesh on, and the renter books, runs jobs and reads results through the
coordinator and the CLI only.

Hosts `a` and `b` run Docker leases; `c` (started in the last step) runs bubblewrap only.
The steps share one network (starting it costs most of the time) and run in file order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpupool.agent.sandbox.container import UID_BASE, UID_SPAN
from gpupool.agent.sandbox.docker import HOSTNAME, LABEL_LEASE
from gpupool.agent.sandbox.dockerapi import DockerEngine
from gpupool.client import Client
from gpupool.testing.meshnet import MeshWorld, mesh_world
from tests.dockerd import busybox_missing, busybox_rootfs
from tests.integration.conftest import eventually, wait_state
from tests.integration.ray.conftest import _why_not

pytestmark = pytest.mark.integration

HOSTS = ["a", "b", "c"]
NO_RAY_IMAGE = "gpd-busybox:noray"
MARKER = "gpd-plaintext-marker-5e1f"

JOB = f"""
import json, os, socket, ray

def me():
    status = open("/proc/self/status").read().splitlines()
    caps = {{k: v.strip() for k, _, v in (x.partition(":") for x in status) if k.startswith("Cap")}}
    return {{"hostname": socket.gethostname(), "uid": os.getuid(), "cap_eff": caps["CapEff"],
            "cap_bnd": caps["CapBnd"], "cap_prm": caps["CapPrm"]}}

ray.init()
devices = json.loads(os.environ["LEASE_DEVICES"])
where = ray.remote(num_cpus=1)(me)
members = ray.get([where.options(resources={{"device:" + d: 1}}).remote() for d in devices])
with open(os.path.join(os.environ["HOME"], "plain.txt"), "w") as f:  # no gpupool API
    f.write("{MARKER}")
print("RESULT " + json.dumps({{"entrypoint": me(), "members": members,
                               "alive": sum(n["Alive"] for n in ray.nodes())}}))
"""


class World(MeshWorld):
    renter: Client
    key: str
    engine: DockerEngine


@pytest.fixture(scope="module")
def world(docker_socket: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("docker-net")
    options: dict[str, Any] = {
        "container_engine": "docker",
        "agent_engines": {2: "bwrap"},
        "docker_host": str(docker_socket),
    }
    with mesh_world(state, HOSTS, agents_now=2, **options) as base:
        key = base.local.create_renter("docker-renter", funds="1000")
        engine = DockerEngine(docker_socket)
        try:
            with Client(base.local.url, key) as renter:
                world = World(base.net, base.local, base.state, base.coordinator_url)
                world.renter, world.key, world.engine = renter, key, engine
                yield world
        finally:
            engine.close()


def _gpupool(world: World, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUPOOL_KEY": world.key, "GPUPOOL_COORDINATOR": world.local.url}
    return subprocess.run(
        [sys.executable, "-m", "gpupool", *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip


def _containers(world: World, lease_id: str) -> list[dict[str, Any]]:
    return world.engine.list_labelled(f"{LABEL_LEASE}={lease_id}")


def test_a_docker_cluster_runs_the_renters_job_inside_its_containers(
    world: World, tmp_path: Path
) -> None:
    started = time.monotonic()
    cluster = world.renter.create_cluster(devices=2, kind="cpu", hours=1, max_price_per_hour="1")
    cluster = wait_state(world.renter, cluster.id, "ready", 150)
    print(f"\nbooking to ready, 2 Docker members: {time.monotonic() - started:.1f} s")
    lease = cluster.lease_id
    running = _containers(world, lease)
    assert len(running) == 2 and {c["State"] for c in running} == {"running"}

    # the supplier sees the Docker sandbox of each member in `gpupool agent leases --json`
    reports = {m.worker_id: world.local.agent_leases(m.worker_id) for m in cluster.members}
    ids = {c["Id"] for c in running}
    for worker, leases in reports.items():
        assert [x["lease_id"] for x in leases] == [lease], worker
        assert leases[0]["sandbox"].removeprefix("docker:") in ids
        assert leases[0]["disk"]["encrypted"] and leases[0]["disk"]["mounted"]

    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "job.py").write_text(JOB)
    devices = json.dumps([m.device_id for m in cluster.members])
    done = _gpupool(world, "job", "submit", cluster.id, "--working-dir", str(job_dir),
                    "--env", f"LEASE_DEVICES={devices}", "--", "python", "job.py")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    print(f"inside: {result}")
    assert result["alive"] == 2
    for seen in [result["entrypoint"], *result["members"]]:
        assert seen["hostname"] == HOSTNAME  # the container's, not the host's
        assert UID_BASE <= seen["uid"] < UID_BASE + UID_SPAN
        # no capability at all: none effective, none permitted, none to gain back
        assert seen["cap_eff"] == seen["cap_prm"] == seen["cap_bnd"] == "0000000000000000"
    assert len({m["uid"] for m in result["members"]}) == 1  # one lease, one uid

    jobs = world.renter.jobs(cluster.id)
    assert [j.status for j in jobs] == ["SUCCEEDED"]
    logs = _gpupool(world, "job", "logs", cluster.id, jobs[0].submission_id or "")
    assert logs.returncode == 0 and "RESULT " in logs.stdout, logs.stderr

    # the file the job wrote with plain open() is ciphertext on the head's disk
    head = next(m for m in cluster.members if m.device_id == cluster.head_device_id)
    disk = reports[head.worker_id][0]["disk"]
    assert (Path(disk["plaintext"]) / "plain.txt").read_text() == MARKER  # root, mounted
    on_disk = [f for f in Path(disk["ciphertext"]).rglob("*") if f.is_file()]
    assert on_disk and not any(MARKER.encode() in f.read_bytes() for f in on_disk)
    assert not list(Path(disk["ciphertext"]).rglob("plain.txt"))

    world.renter.terminate(cluster.id)
    ended = wait_state(world.renter, cluster.id, "ended", 60)
    assert {m.state for m in ended.members} == {"released"}
    assert _containers(world, lease) == []  # the containers are gone with the lease
    for worker in reports:
        assert world.local.agent_leases(worker) == []
    assert not Path(disk["ciphertext"]).exists()


def test_an_image_without_ray_fails_its_members_with_the_reason_and_refunds(
    world: World,
) -> None:
    missing = busybox_missing()
    if missing:
        pytest.skip(missing)
    repo, _, tag = NO_RAY_IMAGE.partition(":")
    world.engine.import_image(busybox_rootfs(), repo, tag)
    before = world.renter.balance()
    made = _gpupool(world, "cluster", "create", "--devices", "2", "--kind", "cpu",
                    "--max-price", "1", "--image", NO_RAY_IMAGE, "--no-wait", "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    cluster_id = json.loads(made.stdout)["id"]
    failed = wait_state(world.renter, cluster_id, "failed", 120)
    want = f"image {NO_RAY_IMAGE} has no Ray"
    assert want in failed.reason, failed.reason
    assert any(want in m.reason for m in failed.members), [m.reason for m in failed.members]

    shown = _gpupool(world, "cluster", "show", cluster_id)
    assert shown.returncode == 0 and want in shown.stdout, shown.stdout + shown.stderr
    as_json = json.loads(_gpupool(world, "cluster", "show", cluster_id, "--json").stdout)
    assert as_json["state"] == "failed" and want in as_json["reason"]
    eventually(lambda: _containers(world, failed.lease_id) == [], 30, "the containers to go")

    # a failed lease is settled like any other: from its certificate
    with world.local.admin() as admin:
        entry = admin.settle(failed.lease_id)
    proof = world.renter.proof(cluster_id).body
    after = world.renter.balance()
    print(f"\nfailed lease: verdict {proof['verdict']}, payout "
          f"{[d['payout_ppm'] for d in proof['devices']]}, renter {before.available_micros} "
          f"-> {after.available_micros} micros; postings {entry.postings}")  # fmt: skip
    assert after.held_micros == before.held_micros  # nothing of it left in escrow
    hour_ms = int(float(world.local.hour_seconds) * 1000)
    ran_ms = int(proof["t_end_ms"]) - int(proof["t1_ms"])
    # the renter pays at most the seconds it ran at its booked price, the rest comes back
    price = 2 * 50_000  # two CPU devices at the agents' default 0.05 an hour
    assert before.available_micros - after.available_micros <= price * ran_ms // hour_ms + 2


def test_an_image_booking_without_a_docker_worker_is_refused_naming_the_image(
    world: World,
) -> None:
    with world.local.admin() as admin:
        world.local.supplier_keys.append(admin.create_account("supplier", "c").api_key)
    world.local.start_agent(2)  # `--container-engine bwrap`: no +docker
    world.local.wait_workers_up(3, settled=False)
    world.local.stake_devices(world.local.supplier_keys[2])
    world.local.wait_workers_up(3)
    with world.local.admin() as admin:
        sandboxes = sorted(w.sandbox for w in admin.workers())
    assert sum("docker" in s for s in sandboxes) == 2, sandboxes
    done = _gpupool(world, "cluster", "create", "--devices", "3", "--kind", "cpu",
                    "--max-price", "1", "--image", "gpd-absent:1", "--no-wait")  # fmt: skip
    assert done.returncode != 0
    assert "1 on workers without Docker" in done.stderr, done.stderr
