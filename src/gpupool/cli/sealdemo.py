"""The demo's sealed lease (docs/sandbox.md): which sandbox each member runs in and which
devices it holds, a file the renter's job writes with plain `open()` that is ciphertext on
the supplier's disk and cannot be opened once the lease is over, and a supplier process that
pushes itself onto a leased core and is killed.

This reads the agents' state folders as the supplier of this machine would: the demo plays
both the renter (through the API) and the supplier (on the host)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from gpupool.client import Client
from gpupool.localnet import LocalNetwork
from gpupool.wire.models import ClusterOut, WorkerOut

RENTER_FILE = "renter-secret.txt"
JOB = (
    "python -c \"import os; open(os.path.join(os.environ['HOME'], '{name}'), 'w')"
    ".write('{marker}')\""
)


@dataclass
class DiskEvidence:
    cipher: Path  # the lease's ciphertext on the supplier's disk
    copy: Path  # what a thief copied during the lease
    marker: str
    summary: dict[str, Any]


def _lease(net: LocalNetwork, worker_id: str, lease_id: str) -> dict[str, Any]:
    """The lease as `gpupool agent leases` on its member's host reports it."""
    [lease] = [x for x in net.agent_leases(worker_id) if x["lease_id"] == lease_id]
    return lease


def show_members(cluster: ClusterOut, workers: list[WorkerOut], say: Console) -> list[Any]:
    devices = {d.id: (w, d) for w in workers for d in w.devices}
    rows = []
    for m in cluster.members:
        worker, device = devices[m.device_id]
        cores = ",".join(map(str, device.cores)) or "-"
        rows.append({"device": m.device_id, "sandbox": worker.sandbox, "cores": device.cores})
        say.print(f"• sealed member {m.device_id}: sandbox {worker.sandbox}, cores {cores}")
    return rows


def write_secret(gp: Client, net: LocalNetwork, cluster: ClusterOut, say: Console) -> DiskEvidence:
    """The renter's job writes a file with plain open(); the supplier looks at its disk."""
    marker = f"renter-secret-{secrets.token_hex(8)}"
    job = gp.submit_job(cluster.id, JOB.format(name=RENTER_FILE, marker=marker))
    deadline = time.monotonic() + 120
    while (status := gp.job(cluster.id, job.submission_id or "").status) not in (
        "SUCCEEDED",
        "FAILED",
        "STOPPED",
    ):
        if time.monotonic() > deadline:
            raise TimeoutError("the demo's disk job did not finish in 120 s")
        time.sleep(0.5)
    head = next(m for m in cluster.members if m.device_id == cluster.head_device_id)
    lease = _lease(net, head.worker_id, cluster.lease_id)
    cipher, plain = (
        Path(lease["disk"]["ciphertext"]),
        Path(lease["disk"]["plaintext"]) / RENTER_FILE,
    )
    stored = [f for f in cipher.rglob("*") if f.is_file()]
    in_cipher = any(marker.encode() in f.read_bytes() for f in stored)
    named = any(RENTER_FILE in f.name for f in stored)
    copy = Path(tempfile.mkdtemp(prefix="gpupool-demo-thief-")) / "disk"
    shutil.copytree(cipher, copy)
    through_mount = plain.read_text() == marker if plain.exists() else False
    say.print(
        f"• the job ({status.lower()}) wrote {RENTER_FILE} with plain open(): on the "
        f"supplier's disk it is ciphertext ({len(stored)} files under {cipher.name}, the "
        f"secret {'FOUND' if in_cipher else 'not found'} in them, its name "
        f"{'visible' if named else 'encrypted'}); readable only through the live mount"
    )
    return DiskEvidence(
        cipher,
        copy,
        marker,
        {
            "job": status,
            "encrypted": True,
            "files_on_disk": len(stored),
            "secret_in_ciphertext": in_cipher,
            "name_in_ciphertext": named,
            "readable_through_mount": through_mount,
        },
    )


def after_the_lease(evidence: DiskEvidence, say: Console) -> dict[str, Any]:
    """The lease is over: its ciphertext is gone, and a copy taken during it is useless."""
    mount = Path(tempfile.mkdtemp(prefix="gpupool-demo-mount-"))
    try:  # the thief's best try: the copy with its conf, and any password but the one
        tried = subprocess.run(
            ["gocryptfs", "-q", "-passfile", "/dev/stdin", str(evidence.copy), str(mount)],
            input=secrets.token_hex(32) + "\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        opened = tried.returncode == 0
        if opened:
            subprocess.run(["fusermount3", "-u", str(mount)], check=False)
    finally:
        shutil.rmtree(evidence.copy.parent, ignore_errors=True)
        shutil.rmtree(mount, ignore_errors=True)
    gone = not evidence.cipher.exists()
    say.print(
        f"• after the lease: its ciphertext {'is gone' if gone else 'is STILL THERE'}; a copy "
        f"taken during it {'OPENED' if opened else 'does not open'} (gocryptfs exit "
        f"{tried.returncode}): the key lived only in the mount, which is gone"
    )
    return {**evidence.summary, "ciphertext_removed": gone, "copy_decrypted": opened}


def intrude(net: LocalNetwork, cluster: ClusterOut, workers: list[WorkerOut], say: Console) -> Any:
    """Play a cheating supplier: the machine's own processes are off the leased cores (the
    cpuset partition), so a process must push itself into the lease's cpuset to run there;
    time how long the guard lets it live."""
    devices = {d.id: (w, d) for w in workers for d in w.devices}
    worker, device = devices[cluster.members[0].device_id]
    lease = _lease(net, worker.id, cluster.lease_id)
    if lease["cpuset"] is None:
        say.print("• no cpuset hierarchy here: the intrusion step is skipped")
        return {"skipped": "no cpuset hierarchy"}
    started = time.monotonic()
    intruder = subprocess.Popen(
        ["sleep", "600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    (Path(lease["cpuset"]) / "cgroup.procs").write_text(f"{intruder.pid}\n")  # as root
    say.print(
        f"• a supplier process (pid {intruder.pid}) moved itself into {device.id}'s cpuset "
        f"(cores {','.join(map(str, device.cores))})"
    )
    try:
        intruder.wait(timeout=15)
    except subprocess.TimeoutExpired:
        intruder.kill()
        intruder.wait()
        say.print("• [red]the guard did not kill it within 15 s[/red]; killed it myself")
        return {"pid": intruder.pid, "killed_by_guard": False}
    lived = time.monotonic() - started
    say.print(f"• the guard killed it after {lived:.2f} s (signal {-intruder.returncode})")
    time.sleep(1.5)  # let the lease run on a little after the intrusion
    return {"pid": intruder.pid, "killed_by_guard": True, "lived_seconds": round(lived, 3)}
