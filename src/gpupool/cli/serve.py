"""`gpupool coordinator serve` and `gpupool agent run`: the two long-running programs.

The coordinator and agent packages are imported inside the commands, so that the rest of the
CLI (and `--help`) never loads SQLAlchemy, uvicorn or NVML.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from gpupool.cli.common import CliError, KeyOpt, err, out, print_json

coordinator_app = typer.Typer(
    help="Run the coordinator; show or pin its public key.", no_args_is_help=True
)
agent_app = typer.Typer(help="Run the agent on a supplier's machine.", no_args_is_help=True)

DEFAULT_STATE = Path.home() / ".local" / "state" / "gpupool"


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"--listen wants HOST:PORT, not {listen!r}", 2)
    return host.strip("[]"), int(port)


@coordinator_app.command("serve")
def coordinator_serve(
    db: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB. "
            "Default: SQLite in the state folder."
        ),
    ] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT to serve on.")] = "127.0.0.1:8420",
    state_dir: Annotated[Path, typer.Option(help="State folder (SQLite file, admin key).")] = (
        DEFAULT_STATE / "coordinator"
    ),
    admin_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the admin key; created (mode 0600) if missing. "
            "Default: STATE_DIR/admin.key."
        ),
    ] = None,
    heartbeat_seconds: Annotated[
        float,
        typer.Option(min=0.1, help="Heartbeat interval announced to agents; 3 missed = down."),
    ] = 10.0,
    hour_seconds: Annotated[
        float,
        typer.Option(min=0.1, hidden=True, help="Length of a billing hour (tests and demo only)."),
    ] = 3600.0,
    provision_deadline: Annotated[
        float, typer.Option(min=1, help="Seconds a lease may take to become ready before it fails.")
    ] = 300.0,
    epoch_seconds: Annotated[
        float, typer.Option(min=0.5, help="Proof of Time-Lock: a new beacon every epoch.")
    ] = 10.0,
    sample_interval: Annotated[
        float, typer.Option(min=0.05, help="Proof of Time-Lock: agents sample this often.")
    ] = 1.0,
    challenge_size: Annotated[
        int, typer.Option(min=16, max=4096, help="Capability challenge matrix size n.")
    ] = 2048,
    challenge_seconds: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="Size GPU challenges so an honest device of its model computes this long.",
        ),
    ] = 3.0,
    challenge_every: Annotated[
        float, typer.Option(min=0, help="Re-challenge idle devices this often (s; 0: never).")
    ] = 6 * 3600.0,
    unstake_cooldown: Annotated[
        float, typer.Option(min=0, help="Seconds between asking to unstake and the payout.")
    ] = 7 * 24 * 3600.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the coordinator's /v1 API (migrating the database first)."""
    _logging(verbose)
    from gpupool.coordinator.server import serve
    from gpupool.coordinator.settings import CoordinatorSettings
    from gpupool.crypto.apikeys import new_api_key
    from gpupool.crypto.identity import KeyFileError, load_or_create, read_secret, write_secret

    host, port = _host_port(listen)
    key_file = admin_key_file or state_dir / "admin.key"
    if not key_file.exists():
        write_secret(key_file, new_api_key("admin").encode())
        err.print(f"created the admin key in {key_file} (mode 0600)")
    try:
        admin_key = read_secret(key_file).decode().strip()
        signer, created = load_or_create(state_dir / "coordinator.key")
    except (KeyFileError, OSError) as exc:
        raise CliError(str(exc), 2) from exc
    settings = CoordinatorSettings(
        db_url=db or f"sqlite:///{state_dir / 'coordinator.db'}",
        admin_key=admin_key,
        heartbeat_seconds=heartbeat_seconds,
        hour_seconds=hour_seconds,
        provision_deadline_seconds=provision_deadline,
        signing_key=signer.private_bytes(),
        epoch_seconds=epoch_seconds,
        sample_interval_seconds=sample_interval,
        challenge_size=challenge_size,
        challenge_every_seconds=challenge_every,
        challenge_seconds=challenge_seconds,
        unstake_cooldown_seconds=unstake_cooldown,
    )
    if created:
        err.print(f"created the coordinator's signing key in {state_dir / 'coordinator.key'}")
    try:
        serve(settings, host, port)
    except Exception as exc:  # a bad URL, an unreachable database: say so, briefly
        if verbose:
            raise
        raise CliError(f"the coordinator stopped: {type(exc).__name__}: {exc}") from exc


@agent_app.command("run")
def agent_run(
    coordinator: Annotated[
        str,
        typer.Option("--coordinator", "-c", envvar="GPUPOOL_COORDINATOR", help="Coordinator URL."),
    ] = ("http://127.0.0.1:8420"),
    key: KeyOpt = None,
    state_dir: Annotated[
        Path, typer.Option(help="Folder for the agent's identity and lease records.")
    ] = DEFAULT_STATE / "agent",
    region: Annotated[str, typer.Option(help="Region name this machine is in.")] = "local",
    latitude: Annotated[float, typer.Option(min=-90, max=90)] = 0.0,
    longitude: Annotated[float, typer.Option(min=-180, max=180)] = 0.0,
    datacenter_tier: Annotated[
        int, typer.Option(min=0, max=4, help="Uptime tier of the site, 0 for none (home, office).")
    ] = 0,
    soc2: Annotated[
        bool,
        typer.Option(
            "--soc2-claimed", help="Claim SOC2 compliance (the coordinator's admin verifies it)."
        ),
    ] = False,
    cpu_group_size: Annotated[
        int, typer.Option(min=1, help="Cores per CPU device (machines without a GPU).")
    ] = 1,
    cpus: Annotated[
        str | None,
        typer.Option(help="Cores to offer, e.g. 0-3,6 (default: all this process may use)."),
    ] = None,
    gpu_price: Annotated[str, typer.Option(help="Price per GPU-hour.")] = "1.00",
    cpu_price: Annotated[str, typer.Option(help="Price per CPU-device-hour.")] = "0.05",
    heartbeat_seconds: Annotated[
        float | None, typer.Option(min=0.1, help="Override the coordinator's heartbeat interval.")
    ] = None,
    teardown_on_exit: Annotated[
        bool,
        typer.Option(hidden=True, help="End running leases when the agent stops (local network)."),
    ] = False,
    guard_allow_exe: Annotated[
        list[str] | None,
        typer.Option(help="Never kill this executable (absolute path; repeat) on leased devices."),
    ] = None,
    guard_allow_cgroup: Annotated[
        list[str] | None,
        typer.Option(help="Never kill processes in cgroups under this v2 path (repeat)."),
    ] = None,
    probe_port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="UDP port for RTT probes from peers (0: any free)."),
    ] = 0,
    probe_advertise: Annotated[
        str | None,
        typer.Option(help="Address peers probe (default: the one the coordinator sees)."),
    ] = None,
    no_probe: Annotated[
        bool, typer.Option("--no-probe", help="Neither answer nor send RTT probes.")
    ] = False,
    bandwidth_interval: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds between bandwidth measurements against the coordinator (0: never).",
        ),
    ] = 6 * 3600.0,
    ray: Annotated[bool, typer.Option(help="Run a Ray node for every lease (docs/ray.md).")] = True,
    ray_object_store_mb: Annotated[
        int, typer.Option(min=75, help="Ray object-store limit per lease node, MiB.")
    ] = 100,
    mesh: Annotated[
        bool,
        typer.Option(
            "--mesh/--no-mesh",
            help="Join each lease's WireGuard mesh (needs root and wireguard-tools).",
        ),
    ] = True,
    mesh_advertise: Annotated[
        str | None,
        typer.Option(
            help="Address mesh peers reach this machine at (default: the one used "
            "to reach the coordinator)."
        ),
    ] = None,
    encrypted_disk: Annotated[
        bool,
        typer.Option(
            "--encrypted-disk/--no-encrypted-disk",
            help="Encrypt each lease's disk with gocryptfs (needs FUSE). --no-encrypted-disk "
            "stores renters' files in plaintext on this machine.",
        ),
    ] = True,
    offer_egress: Annotated[
        bool,
        typer.Option(
            "--offer-egress/--no-egress",
            help="Offer Internet egress to leases that book it (needs slirp4netns and "
            "iptables; never the host or LAN). Their traffic leaves from this machine's address.",
        ),
    ] = False,
    container_engine: Annotated[
        str,
        typer.Option(
            envvar="GPUPOOL_CONTAINER_ENGINE",
            help="Which container runs a lease: auto (bubblewrap, Docker for a booking that "
            "names an image), docker (every lease) or bwrap (never Docker). docs/supplier.md.",
        ),
    ] = "auto",
    docker_host: Annotated[
        str | None,
        typer.Option(
            envvar="GPUPOOL_DOCKER_HOST",
            help="The Docker engine's socket, a path or unix:// URL (default: Docker's own).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Register this machine's devices and run the leases the coordinator assigns."""
    _logging(verbose)
    if not key:
        raise CliError("no supplier key: set GPUPOOL_KEY or pass --key", 2)
    from gpupool.agent.daemon import FatalAgentError
    from gpupool.agent.main import run_agent
    from gpupool.agent.settings import AgentSettings
    from gpupool.agent.state import StateDirBusy
    from gpupool.crypto.identity import KeyFileError
    from gpupool.domain.errors import InvalidRequest
    from gpupool.domain.money import to_micros

    try:
        to_micros(gpu_price)
        to_micros(cpu_price)
    except InvalidRequest as exc:
        raise CliError(exc.message, 2) from exc
    if container_engine not in ("auto", "docker", "bwrap"):
        raise CliError(f"--container-engine {container_engine!r}: use auto, docker or bwrap", 2)
    settings = AgentSettings(
        coordinator_url=coordinator,
        supplier_key=key,
        state_dir=state_dir,
        region=region,
        latitude=latitude,
        longitude=longitude,
        datacenter_tier=datacenter_tier,
        soc2_claimed=soc2,
        cpu_group_size=cpu_group_size,
        cpus=cpus,
        gpu_price=gpu_price,
        cpu_price=cpu_price,
        heartbeat_seconds=heartbeat_seconds,
        teardown_on_exit=teardown_on_exit,
        guard_allow_exes=tuple(guard_allow_exe or ()),
        guard_allow_cgroups=tuple(guard_allow_cgroup or ()),
        probe_port=None if no_probe else probe_port,
        probe_advertise=probe_advertise,
        bandwidth_seconds=bandwidth_interval or None,
        ray=ray,
        ray_object_store_bytes=ray_object_store_mb << 20,
        mesh=mesh,
        mesh_advertise=mesh_advertise,
        encrypted_disk=encrypted_disk,
        egress=offer_egress,
        container_engine=container_engine,
        docker_host=docker_host,
    )
    try:
        run_agent(settings)
    except (FatalAgentError, KeyFileError, StateDirBusy, ValueError) as exc:
        raise CliError(str(exc)) from exc


@agent_app.command("cleanup")
def agent_cleanup(
    state_dir: Annotated[
        Path, typer.Option(help="State folder of the stopped agent whose leftovers to remove.")
    ] = DEFAULT_STATE / "agent",
    docker_host: Annotated[
        str | None,
        typer.Option(envvar="GPUPOOL_DOCKER_HOST", help="The Docker engine's socket."),
    ] = None,
) -> None:
    """Remove what a stopped agent left on this machine: its lease containers, cgroups and
    processes, lease disks, WireGuard interfaces. Keeps its identity. See docs/supplier.md."""
    from gpupool.agent.main import cleanup
    from gpupool.agent.sandbox.cgroup import SandboxError, find_cgroup2_root, find_cpuset_root
    from gpupool.agent.sandbox.cryptdisk import CryptDiskError
    from gpupool.agent.state import StateDirBusy
    from gpupool.crypto.identity import KeyFileError

    if not state_dir.is_dir():
        raise CliError(f"no agent state folder at {state_dir}", 2)
    try:
        removed = cleanup(state_dir, find_cgroup2_root(), find_cpuset_root(), docker_host)
    except StateDirBusy as exc:
        raise CliError(f"{exc}: stop it first (systemctl stop gpupool-agent)") from exc
    except (SandboxError, CryptDiskError, KeyFileError, OSError) as exc:
        raise CliError(f"cleanup stopped: {exc}") from exc
    for line in removed:
        err.print(f"removed {line}")
    err.print(f"{len(removed)} leftovers removed; the identity in {state_dir} is kept")


@agent_app.command("leases")
def agent_leases(
    state_dir: Annotated[Path, typer.Option(help="The agent's state folder.")] = DEFAULT_STATE
    / "agent",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What this machine's agent runs: each lease's sandbox, devices, cpuset and encrypted
    disk (ciphertext and mount paths). Reads the state folder; the agent may be running."""
    from gpupool.agent.main import lease_report
    from gpupool.crypto.identity import KeyFileError

    if not state_dir.is_dir():
        raise CliError(f"no agent state folder at {state_dir}", 2)
    try:
        leases = lease_report(state_dir)
    except (KeyFileError, OSError, ValueError) as exc:
        raise CliError(f"cannot read {state_dir}: {exc}") from exc
    if json_out:
        print_json(leases)
        return
    if not leases:
        out.print("no leases")
    for lease in leases:
        disk, devices = lease["disk"], lease["devices"]
        assert isinstance(disk, dict) and isinstance(devices, list)
        state = ("encrypted" if disk["encrypted"] else "NOT encrypted") + (
            ", mounted" if disk["mounted"] else ", not mounted"
        )
        out.print(
            f"{lease['lease_id']}: sandbox {lease['sandbox']}, devices "
            f"{', '.join(map(str, devices))}; disk {state} at {disk['plaintext']}"
        )
