"""`gpupool cluster`: book, list, show, extend and terminate clusters, and connect to
their mesh."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gpupool.cli.common import (
    DEFAULT_COORDINATOR,
    BookingKeyOpt,
    CliError,
    CoordinatorOpt,
    JsonOpt,
    KeyOpt,
    client,
    err,
    out,
    print_json,
    table,
    wait_with_progress,
    when,
)
from gpupool.client import Client
from gpupool.client.wgconfig import BringUpError, bring_up, default_name, render, write_config
from gpupool.crypto.wgkeys import KeyPair
from gpupool.domain.models import DeviceKind, SecurityTier
from gpupool.wire.models import ClusterOut, QuoteOut
from gpupool.wire.ray import ClusterRayOut

app = typer.Typer(help="Clusters: book devices by the hour.", no_args_is_help=True)

TERMINAL = ("ended", "failed")


def wait_for_state(
    gp: Client, cluster_id: str, states: tuple[str, ...], timeout: float, quiet: bool
) -> ClusterOut:
    last: list[ClusterOut] = []

    def check() -> ClusterOut | None:
        cluster = gp.cluster(cluster_id)
        last[:] = [cluster]
        if cluster.state in states or (cluster.state in TERMINAL and cluster.state not in states):
            return cluster
        return None

    return wait_with_progress(
        f"waiting for {cluster_id} to be {' or '.join(states)}",
        check,
        timeout,
        quiet,
        lambda: f"it is {last[0].state}" if last else "",
    )


def wait_for_ray(gp: Client, cluster: ClusterOut, timeout: float, quiet: bool) -> ClusterRayOut:
    """Wait until every member worker's Ray node (one per worker, whatever its devices) has
    joined the head: a lease is `ready` when its sandboxes are, and a worker's Ray node may
    still be connecting then."""
    workers = {m.worker_id for m in cluster.members}
    last: list[ClusterRayOut] = []

    def check() -> ClusterRayOut | None:
        ray = gp.cluster_ray(cluster.id)
        last[:] = [ray]
        for node in ray.nodes:
            if node.state == "failed":
                why = f"the Ray node on {node.worker_id} failed: {node.reason}"
                raise CliError(f"{cluster.id}: {why}")
        joined = sum(n.state == "joined" for n in ray.nodes)
        return ray if joined >= len(workers) else None

    return wait_with_progress(
        f"waiting for {len(workers)} Ray nodes of {cluster.id} to join",
        check,
        timeout,
        quiet,
        lambda: f"{sum(n.state == 'joined' for n in last[0].nodes)} joined" if last else "",
    )


def show_cluster(c: ClusterOut) -> None:
    out.print(
        f"[bold]{c.id}[/bold]  lease {c.lease_id}  state [bold]{c.state}[/bold]"
        + (f"  ({c.reason})" if c.reason else "")
    )
    out.print(
        f"  T1 {when(c.t1)}   T2 {when(c.t2)}   {c.hours} h   "
        f"{c.price_per_hour}/h, {c.total_price} in all   head {c.head_device_id}"
    )
    image = c.request.get("image")
    sandbox = f"image {image}" if image else "the agent's own"
    egress = "yes" if c.request.get("egress") else "no"
    out.print(f"  sandbox: {sandbox}   Internet egress: {egress}")
    out.print(
        table(
            "members",
            ["device", "worker", "state", "note"],
            [(m.device_id, m.worker_id, m.state, m.reason) for m in c.members],
        )
    )
    out.print(
        table("events", ["at", "state", "note"], [(when(e.at), e.state, e.note) for e in c.events])
    )


def show_ray(ray: ClusterRayOut) -> None:
    if not ray.nodes:
        out.print("  Ray: not started")
        return
    out.print(
        f"  Ray dashboard {ray.dashboard_url or '-'}   GCS {ray.gcs_address or '-'}   "
        f"{sum(n.state == 'joined' for n in ray.nodes)}/{len(ray.nodes)} nodes joined"
    )
    if ray.mesh:
        out.print("  over the mesh: the members' Ray talks over their WireGuard overlay addresses")
    else:
        out.print(
            "  [yellow]without the mesh:[/yellow] the members' Ray talks over their ordinary "
            "addresses, unencrypted"
        )
    out.print(
        table(
            "Ray nodes",
            ["worker", "role", "state", "address", "node", "note"],
            [
                (n.worker_id, n.role, n.state, n.address, (n.node_id or "")[:12], n.reason)
                for n in ray.nodes
            ],
        )
    )


def with_ray(cluster: ClusterOut, ray: ClusterRayOut) -> dict[str, Any]:
    """A cluster as `--json` prints it, create and show alike: the cluster with its `ray`."""
    return {**cluster.model_dump(mode="json"), "ray": ray.model_dump(mode="json")}


# A booking's hard constraints, shared by `cluster create` and `gpupool offers`.
GpuModelOpt = Annotated[list[str] | None, typer.Option(help="Accept this model (repeat).")]
MinMemoryOpt = Annotated[int, typer.Option(min=0, help="Least device memory, MB.")]
RegionOpt = Annotated[list[str] | None, typer.Option(help="Accept this region (repeat).")]
SecurityOpt = Annotated[SecurityTier, typer.Option(help="Supplier security tier.")]
DatacenterTierOpt = Annotated[int, typer.Option(min=0, max=4)]
ConnectivityTierOpt = Annotated[
    int,
    typer.Option(
        min=0,
        max=4,
        help="Measured bandwidth, slower direction: 1 >= 10 Mbit/s, 2 >= 100, "
        "3 >= 1000, 4 >= 10000.",
    ),
]
ImageOpt = Annotated[
    str | None,
    typer.Option(
        help="Run the members in this container image (workers whose agent runs Docker "
        "and has it); default: the agent's own sandbox."
    ),
]
EgressOpt = Annotated[
    bool,
    typer.Option(
        help="Let the lease reach the Internet (never the supplier's networks); only "
        "workers that offer it. Default: the members reach each other and nothing else."
    ),
]


def filters(
    gpu_model: list[str] | None,
    min_memory_mb: int,
    region: list[str] | None,
    security: SecurityTier,
    min_datacenter_tier: int,
    min_connectivity_tier: int,
    image: str | None,
    egress: bool,
) -> dict[str, Any]:
    """Those options as the client's booking fields (None: unset)."""
    return {
        "gpu_models": gpu_model or None,
        "min_memory_mb": min_memory_mb or None,
        "regions": region or None,
        "security_tier": security.value,
        "min_datacenter_tier": min_datacenter_tier or None,
        "min_connectivity_tier": min_connectivity_tier or None,
        "image": image,
        "egress": egress or None,
    }


def show_quote(q: QuoteOut) -> None:
    out.print(
        table(
            f"{len(q.devices)} devices placement would pick now (head {q.head_device_id})",
            ["device", "kind", "model", "region", "link tier", "price/h"],
            [
                (
                    d.device_id,
                    d.kind.value,
                    d.model,
                    d.region,
                    d.connectivity_tier,
                    d.price_per_hour,
                )
                for d in q.devices
            ],
        )
    )
    diameter = "-" if q.predicted_diameter_ms is None else f"{q.predicted_diameter_ms:.1f} ms"
    out.print(
        f"predicted diameter {diameter}   {q.price_per_hour}/h   "
        f"{q.total_price} for {q.hours} h   your balance {q.balance}",
        highlight=False,
    )
    if not q.affordable:
        out.print(
            f"[yellow]your balance does not cover {q.total_price}: "
            "booking now would be refused[/yellow]"
        )
    out.print("nothing booked (--dry-run)")


@app.command("create")
def create(
    devices: Annotated[int, typer.Option("--devices", "-n", min=1, help="How many devices.")],
    max_price: Annotated[str, typer.Option(help="Highest price per device-hour you accept.")],
    kind: Annotated[DeviceKind, typer.Option(help="gpu or cpu.")] = DeviceKind.GPU,
    hours: Annotated[int, typer.Option(min=1, help="Whole hours.")] = 1,
    gpu_model: GpuModelOpt = None,
    min_memory_mb: MinMemoryOpt = 0,
    region: RegionOpt = None,
    security: SecurityOpt = SecurityTier.ANY,
    min_datacenter_tier: DatacenterTierOpt = 0,
    min_connectivity_tier: ConnectivityTierOpt = 0,
    image: ImageOpt = None,
    egress: EgressOpt = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            help="Show the devices placement would pick now, the predicted diameter and the "
            "price; book nothing."
        ),
    ] = False,
    wait: Annotated[bool, typer.Option(help="Wait until the cluster is ready.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 300.0,
    idempotency_key: BookingKeyOpt = None,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Book a cluster of devices for whole hours (its full price moves into escrow)."""
    booking = {
        "devices": devices,
        "kind": kind.value,
        "hours": hours,
        "max_price_per_hour": max_price,
        **filters(
            gpu_model,
            min_memory_mb,
            region,
            security,
            min_datacenter_tier,
            min_connectivity_tier,
            image,
            egress,
        ),
    }
    with client(coordinator, key) as gp:
        if dry_run:
            quote = gp.quote(**booking)
            if json_out:
                print_json(quote)
            else:
                show_quote(quote)
            return
        cluster = gp.create_cluster(idempotency_key=idempotency_key, **booking)
        if not json_out:
            err.print(
                f"booked {cluster.id}: {len(cluster.members)} devices, "
                f"{cluster.total_price} for {cluster.hours} h"
            )
        if wait:
            cluster = wait_for_state(gp, cluster.id, ("ready",), timeout, json_out)
            if cluster.state != "ready":
                raise CliError(f"{cluster.id} is {cluster.state}: {cluster.reason}")
        ray = gp.cluster_ray(cluster.id) if wait or json_out else None
    if json_out and ray is not None:
        print_json(with_ray(cluster, ray))
    else:
        show_cluster(cluster)
        if ray is not None:
            show_ray(ray)


@app.command("list")
def list_clusters(
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR, key: KeyOpt = None, json_out: JsonOpt = False
) -> None:
    """List your clusters."""
    with client(coordinator, key) as gp:
        clusters = gp.clusters()
    if json_out:
        print_json(clusters)
        return
    out.print(
        table(
            f"{len(clusters)} clusters",
            ["cluster", "state", "devices", "T1", "T2", "price/h"],
            [
                (c.id, c.state, len(c.members), when(c.t1), when(c.t2), c.price_per_hour)
                for c in clusters
            ],
        )
    )


@app.command("show")
def show(
    cluster_id: str,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one cluster: its lease, members, history and Ray cluster."""
    with client(coordinator, key) as gp:
        cluster = gp.cluster(cluster_id)
        ray = gp.cluster_ray(cluster_id)
    if json_out:
        print_json(with_ray(cluster, ray))
    else:
        show_cluster(cluster)
        show_ray(ray)


@app.command("extend")
def extend(
    cluster_id: str,
    hours: Annotated[int, typer.Option(min=1, help="Whole hours to add.")] = 1,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add whole hours to a running cluster's lease."""
    with client(coordinator, key) as gp:
        cluster = gp.extend(cluster_id, hours)
    if json_out:
        print_json(cluster)
    else:
        out.print(f"{cluster.id} now ends at {when(cluster.t2)} ({cluster.hours} h in all)")


@app.command("terminate")
def terminate(
    cluster_id: str,
    wait: Annotated[bool, typer.Option(help="Wait until every device is released.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 120.0,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """End a cluster's lease now."""
    with client(coordinator, key) as gp:
        cluster = gp.terminate(cluster_id)
        if wait:
            cluster = wait_for_state(gp, cluster_id, TERMINAL, timeout, json_out)
    if json_out:
        print_json(cluster)
    else:
        out.print(f"{cluster.id} is {cluster.state}")


@app.command("connect")
def connect(
    cluster_id: str,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the WireGuard config (default gpcXXXX.conf)."),
    ] = None,
    up: Annotated[
        bool, typer.Option("--up", help="Bring the interface up with wg-quick (needs root).")
    ] = False,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Give this machine a peer entry in the cluster's private mesh.

    A WireGuard key is made here (the private key never leaves this machine); the
    coordinator adds its public key to every member's peer map. The config file is written
    mode 0600; `--up` also brings it up.
    """
    pair = KeyPair.generate()
    with client(coordinator, key) as gp:
        peer_map = gp.mesh_connect(cluster_id, pair.public_key)
    path = out_file or Path(f"{default_name(cluster_id)}.conf")
    write_config(path, render(peer_map, pair))
    interface = None
    if up:
        try:
            interface = bring_up(path)
        except BringUpError as exc:
            raise CliError(f"{exc} (the config is in {path})") from exc
    if json_out:
        print_json(
            {
                "cluster_id": cluster_id,
                "address": peer_map.address,
                "config": str(path),
                "interface": interface,
                "peers": [
                    {"worker_id": p.worker_id, "address": p.address, "endpoint": p.endpoint}
                    for p in peer_map.peers
                ],
            }
        )
        return
    out.print(f"this machine is {peer_map.address} in {cluster_id}'s mesh; config in {path}")
    for p in peer_map.peers:
        out.print(f"  {p.worker_id}  {p.address}  via {p.endpoint or '(no endpoint yet)'}")
    if interface:
        out.print(f"interface {interface} is up")
    else:
        out.print(f"bring it up with: wg-quick up {path.resolve()}")
