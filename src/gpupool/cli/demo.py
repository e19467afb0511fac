"""`gpupool demo`: the whole product on this machine, end to end.

Starts a coordinator (SQLite in a temporary state folder) and three agents as separate
processes, books a 2-device cluster as a renter, watches it become ready (its Ray cluster
joined), shows each member sealed in its container (cli/sealdemo.py), runs a distributed Ray
job on it (cli/raydemo.py) and a job that writes a file the supplier finds only as
ciphertext, plays a supplier process that pushes onto a leased core, extends the cluster,
terminates it, shows the file's copy cannot be opened, watches every device come back, and
prints a summary. The devices are CPU core groups: this
machine has no GPU, and gpupool never pretends one.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console

from gpupool.cli.clusters import wait_for_state
from gpupool.cli.common import err, out, print_json, table, when
from gpupool.cli.ledger import settlement_summary, settlement_table
from gpupool.cli.proof import summary as proof_summary
from gpupool.cli.raydemo import run_rtt_search
from gpupool.cli.sealdemo import after_the_lease, intrude, show_members, write_secret
from gpupool.client import Client
from gpupool.localnet import LocalNetwork


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def demo(
    agents: Annotated[int, typer.Option(min=1, max=5, help="Agent processes to start.")] = 3,
    devices: Annotated[int, typer.Option(min=1, help="Devices to book.")] = 2,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Keep state and logs here (default: a temporary folder, removed at the end)."
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="End with one line of JSON (progress goes to stderr).")
    ] = False,
) -> None:
    """Run a coordinator and agents locally, book a cluster, and end it."""
    say: Console = err if json_out else out
    folder = state_dir or Path(tempfile.mkdtemp(prefix="gpupool-demo-"))
    signal.signal(signal.SIGTERM, _interrupt)
    # One device per agent (all its cores): each agent stands for one machine, so the Ray
    # cluster has as many nodes as devices booked.
    net = LocalNetwork(
        folder, agents=agents, heartbeat_seconds=2.0, cpu_group_size=os.cpu_count() or 1
    )
    try:
        net.start(on_step=lambda text: say.print(f"• {text}"))
        summary = _run(net, devices, say, json_out)
    finally:
        net.stop()
        say.print("• stopped the coordinator and every agent")
        if state_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    if json_out:
        print_json(summary)


def _run(net: LocalNetwork, devices: int, say: Console, quiet: bool) -> dict[str, Any]:
    renter_key = net.create_renter("demo-renter")
    with net.admin() as admin:
        workers = admin.workers()
    say.print(
        table(
            f"{len(workers)} workers up",
            ["worker", "region", "devices", "model"],
            [
                (
                    w.id,
                    w.region,
                    ", ".join(d.local_name for d in w.devices),
                    w.devices[0].model if w.devices else "-",
                )
                for w in workers
            ],
        )
    )
    with Client(net.url, renter_key) as gp:
        started = time.monotonic()
        cluster = gp.create_cluster(devices=devices, kind="cpu", hours=1, max_price_per_hour="1.00")
        say.print(f"• booked {cluster.id}: {devices} CPU devices for 1 h, {cluster.total_price}")
        cluster = wait_for_state(gp, cluster.id, ("ready",), 120, quiet)
        to_ready = time.monotonic() - started
        say.print(
            f"• {cluster.id} is [bold]{cluster.state}[/bold] after {to_ready:.1f} s "
            f"(head {cluster.head_device_id})"
        )
        members = show_members(cluster, workers, say)
        ray_summary = run_rtt_search(gp, cluster.id, say)
        evidence = write_secret(gp, net, cluster, say)
        cluster = gp.extend(cluster.id, 1)
        say.print(f"• extended by 1 h: now ends {when(cluster.t2)}")
        intrusion = intrude(net, cluster, workers, say)
        stopping = time.monotonic()
        gp.terminate(cluster.id)
        cluster = wait_for_state(gp, cluster.id, ("ended",), 120, quiet)
        to_end = time.monotonic() - stopping
        say.print(
            f"• terminated: {cluster.id} is [bold]{cluster.state}[/bold] after "
            f"{to_end:.1f} s; every device is back in the pool"
        )
        cert = gp.proof(cluster.id)
    disk = after_the_lease(evidence, say)
    say.print(
        table(
            "lease history",
            ["at", "state", "note"],
            [(when(e.at), e.state, e.note) for e in cluster.events],
        )
    )
    potl = proof_summary(cert.body)
    say.print(
        f"• Proof of Time-Lock: verdict [bold]{potl['verdict']}[/bold], coverage "
        f"{potl['coverage']:.4f}, {potl['violations']} violation(s), payout fraction "
        f"{potl['payout_fraction']:.4f} (signed by the coordinator)"
    )
    for reason in cert.body.get("reasons", []):
        say.print(f"  - {reason}")
    with net.admin() as admin:
        ledger = settlement_summary(admin, cluster.lease_id, 60)
    say.print(settlement_table(ledger))
    return {
        "ledger": ledger,
        "cluster_id": cluster.id,
        "lease_id": cluster.lease_id,
        "lease_state": cluster.state.value,
        "devices": [m.device_id for m in cluster.members],
        "device_kind": "cpu",
        "note": "CPU devices: this machine has no GPU",
        "workers": len(workers),
        "seconds_to_ready": round(to_ready, 3),
        "seconds_to_ended": round(to_end, 3),
        "potl": {**potl, "foreign_process": intrusion},
        "ray": ray_summary,
        "sealed": {"members": members, "disk": disk},
    }
