"""How the agent starts and observes one Ray node: the address it binds to, its temp dir,
its `ray start` command line, the head's node list, and the processes a lease's Ray leaves
behind. `agent/ray/node.py` runs the node's life with these (docs/ray.md)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx

from gpupool.agent.mesh.forwarder import in_netns
from gpupool.domain.ray import (
    MIN_OBJECT_STORE_BYTES,
    LocalDevice,
    RayRole,
    SeenNode,
    node_resources,
)

WORKER_PORTS = 64  # ports for Ray worker processes, per node
WORKER_PORTS_FROM, WORKER_PORTS_TO = 10000, 32768 - WORKER_PORTS
# AF_UNIX paths stop at 107 bytes; Ray puts sockets at <temp>/session_<stamp>_<pid>/sockets/...
MAX_TEMP_DIR_CHARS = 40


def temp_dir_for(state_dir: Path, worker_id: str, lease_id: str) -> Path:
    """The Ray temp dir of a lease's node: under the agent's state folder when that path is
    short enough for Ray's Unix sockets, else a name in the system's temp folder."""
    local = state_dir / "ray" / lease_id
    if len(str(local)) <= MAX_TEMP_DIR_CHARS:
        return local
    digest = hashlib.sha256(f"{worker_id}/{lease_id}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"gpr-{digest}"


def _free_ports(address: str, count: int, netns: str | None = None) -> list[int]:
    """`count` distinct ports free on `address` now (all held open while choosing), in the
    network namespace at `netns` when given (a sealed lease's overlay address is only there)."""
    if netns is not None:
        return in_netns(netns, lambda: _free_ports(address, count))
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket())
            s.bind((address, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def start_argv(
    role: RayRole,
    address: str,
    temp_dir: Path,
    devices: Sequence[LocalDevice],
    object_store_bytes: int,
    head_gcs: str | None = None,
    dashboard_host: str | None = None,
    netns: str | None = None,
) -> tuple[list[str], dict[str, int]]:
    """The `ray start` command line of one node, and the ports it takes. The head's dashboard
    listens on `dashboard_host` (default: the node's address)."""
    res = node_resources(devices)
    names = [
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    ]
    if role is RayRole.HEAD:
        names += ["port", "dashboard-port", "ray-client-server-port"]
    ports = dict(zip(names, _free_ports(address, len(names), netns), strict=True))
    # Below Linux's ephemeral range (32768 and up), where the free ports above come from: the
    # two never overlap (Ray refuses a port used twice).
    first_worker_port = WORKER_PORTS_FROM + secrets.randbelow(WORKER_PORTS_TO - WORKER_PORTS_FROM)
    argv = [
        ray_executable(),
        "start",
        f"--node-ip-address={address}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={res.num_cpus}",
        f"--num-gpus={res.num_gpus}",
        f"--resources={json.dumps(res.custom, sort_keys=True)}",
        f"--object-store-memory={max(object_store_bytes, MIN_OBJECT_STORE_BYTES)}",
        f"--min-worker-port={first_worker_port}",
        f"--max-worker-port={first_worker_port + WORKER_PORTS - 1}",
        "--disable-usage-stats",
    ]
    if role is RayRole.HEAD:
        dashboard = dashboard_host or address
        argv += ["--head", "--include-dashboard=true", f"--dashboard-host={dashboard}"]
    else:
        assert head_gcs is not None
        argv += [f"--address={head_gcs}"]
    argv += [f"--{name}={port}" for name, port in sorted(ports.items())]
    return argv, ports


def list_nodes(dashboard_url: str, timeout: float = 5.0) -> list[SeenNode]:
    """The head's node list, through the dashboard's state API."""
    answer = httpx.get(f"{dashboard_url}/api/v0/nodes", params={"limit": 10000}, timeout=timeout)
    answer.raise_for_status()
    rows = answer.json()["data"]["result"]["result"]
    return [
        SeenNode(
            node_id=str(row["node_id"]),
            alive=row.get("state") == "ALIVE",
            resources=frozenset(row.get("resources_total") or {}),
        )
        for row in rows
    ]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def kill_processes_using(temp_dir: Path, environ_marker: str | None = None) -> list[int]:
    """Kill every process whose command line names `temp_dir` or whose environment holds
    `environ_marker`: a lease's Ray processes that left its process group (Ray's workers
    start their own sessions), where the sandbox is a process group and not a cgroup."""
    needles = [str(temp_dir).encode()]
    marker = environ_marker.encode() if environ_marker else None
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes() if marker else b""
        except OSError:
            continue
        if any(n in cmdline for n in needles) or (marker and marker in environ.split(b"\0")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed
