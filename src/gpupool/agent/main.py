"""Starting the agent process: lock the state folder, load the identity, find the devices,
and run the loops until SIGTERM or SIGINT; and `cleanup`, which removes what a stopped agent
left on the host (docs/supplier.md, "Uninstall")."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from gpupool.agent.daemon import Agent, FatalAgentError
from gpupool.agent.devices import discover
from gpupool.agent.link import CoordinatorLink
from gpupool.agent.mesh.bandwidth import BandwidthMeter
from gpupool.agent.mesh.egress import LeaseEgress
from gpupool.agent.mesh.leasenet import LeaseNetns, netns_of_interface
from gpupool.agent.mesh.manager import MeshManager, lease_interface_name, local_address_towards
from gpupool.agent.mesh.netprobe import NetProbe
from gpupool.agent.mesh.wireguard import WireGuardError, WireGuardUnavailable, remove_interface
from gpupool.agent.nvml import load_nvml
from gpupool.agent.proof.challenger import Challenger
from gpupool.agent.proof.prover import Prover
from gpupool.agent.proof.recorder import ChainStore, Recorder
from gpupool.agent.ray.cmd import temp_dir_for
from gpupool.agent.ray.node import RayNodes
from gpupool.agent.sandbox.cgroup import Sandboxes, find_cgroup2_root, find_cpuset_root
from gpupool.agent.sandbox.container import Containers, bwrap_path
from gpupool.agent.sandbox.cpusets import find_partition
from gpupool.agent.sandbox.cryptdisk import CIPHER_DIR, CryptDisk
from gpupool.agent.sandbox.disks import LeaseDisks
from gpupool.agent.sandbox.docker import DockerContainers
from gpupool.agent.sandbox.dockerapi import DockerEngine, socket_path
from gpupool.agent.sandbox.gpus import bind_gpus, gpu_indices, lease_gpu_env
from gpupool.agent.sandbox.guard import Guard
from gpupool.agent.sandbox.scratch import Scratch
from gpupool.agent.settings import AgentSettings
from gpupool.agent.state import AgentState, lock_state_dir
from gpupool.agent.tasks import TaskRunner
from gpupool.crypto.identity import load, load_or_create
from gpupool.domain.models import DeviceKind
from gpupool.domain.money import to_micros

log = logging.getLogger("gpupool.agent")

IDENTITY_FILE = "identity.key"
STATE_FILE = "leases.json"
CHAINS_FILE = "chains.json"
LEASES_DIR = "leases"


def run_agent(settings: AgentSettings) -> None:
    """Run until stopped. Raises FatalAgentError, KeyFileError or StateDirBusy on set-up
    problems the operator must fix."""
    lock = lock_state_dir(settings.state_dir)
    try:
        identity, created = load_or_create(settings.state_dir / IDENTITY_FILE)
        log.info("event=identity worker=%s created=%s", identity.worker_id, created)
        devices = discover(
            settings.cpu_group_size,
            settings.cpus,
            to_micros(settings.gpu_price),
            to_micros(settings.cpu_price),
        )
        if all(d.kind is DeviceKind.CPU for d in devices):
            log.info("event=no_gpu note=offering %d CPU devices (NVML found no GPU)", len(devices))
        cpuset_root = find_cpuset_root()
        sandboxes = Sandboxes(
            identity.worker_id, find_cgroup2_root(), cpuset_root, find_partition(cpuset_root)
        )
        if sandboxes.kind != "cgroup2":
            log.warning("event=no_cgroup2 note=leases are isolated by process group only")
        bwrap = bwrap_path()
        containers = (
            Containers(sandboxes, identity.worker_id, bwrap)
            if bwrap is not None and sandboxes.root is not None
            else None
        )
        if containers is None:
            log.warning("event=no_bwrap note=lease processes run as the agent's user")
        docker = docker_containers(settings, sandboxes, identity.worker_id)
        link = CoordinatorLink(settings.coordinator_url, identity, settings.supplier_key)
        agent = Agent(
            settings,
            identity,
            link,
            sandboxes,
            devices,
            AgentState.load(settings.state_dir / STATE_FILE),
            challenger=Challenger(link, devices),
            netprobe=(
                NetProbe(port=settings.probe_port, advertise=settings.probe_advertise)
                if settings.probe_port is not None
                else None
            ),
            bandwidth=(
                BandwidthMeter(link, settings.bandwidth_seconds)
                if settings.bandwidth_seconds
                else None
            ),
            mesh=(
                MeshManager(
                    link,
                    identity.worker_id,
                    settings.state_dir,
                    settings.coordinator_url,
                    settings.mesh_advertise,
                )
                if settings.mesh
                else None
            ),
            containers=containers,
            docker=docker,
        )
        if settings.ray:
            agent.ray = RayNodes(
                link,
                settings.state_dir,
                devices,
                identity.worker_id,
                lambda: local_address_towards(settings.coordinator_url),
                settings.ray_object_store_bytes,
            )
            # Ray binds each lease's nodes to its overlay address once the mesh is up there.
            agent.ray.overlay_address = agent.overlay_address
            mesh = agent.mesh
            agent.ray.mesh_unavailable = lambda: mesh is None or mesh.unavailable is not None
            if mesh is not None:  # sealed: Ray runs in the lease's namespace, behind a forwarder
                agent.ray.lease_netns = mesh.netns_path
                agent.ray.forward = mesh.forward
        recorder = Recorder(
            link,
            identity,
            ChainStore(settings.state_dir / CHAINS_FILE),
            now_ms=lambda: round(time.time() * 1000),
        )
        nvml = load_nvml() if any(d.kind is DeviceKind.GPU for d in devices) else None
        if nvml is not None:
            nvml.nvmlInit()  # the guard lists each GPU's processes through it
        if nvml is not None and agent.ray is not None:
            gpus = nvml  # a lease's Ray node sees exactly its GPUs, by UUID
            agent.ray.device_env = lambda specs: lease_gpu_env(gpus, specs)
        if nvml is not None:
            bound = nvml  # a lease's container gets only its GPUs' device nodes
            agent.gpu_binding = lambda specs: bind_gpus(bound, gpu_indices(specs))
        guard = Guard(
            allow_exes=settings.guard_allow_exes,
            allow_cgroups=settings.guard_allow_cgroups,
            nvml=nvml,
        )
        agent.prover = Prover(guard, recorder, devices, agent.snapshot)
        stop = threading.Event()
        runner = TaskRunner(link, sandboxes, devices, identity.worker_id)
        threading.Thread(target=runner.run, args=(stop,), name="tasks", daemon=True).start()

        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("event=agent_stopping signal=%s", signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            agent.run(stop)
        finally:
            link.close()
    finally:
        lock.close()


def docker_containers(
    settings: AgentSettings, sandboxes: Sandboxes, worker_id: str
) -> DockerContainers | None:
    """The Docker lease containers, where the supplier allows them and an engine answers;
    FatalAgentError where the supplier asked for Docker and none answers."""
    if settings.container_engine == "bwrap":
        return None
    engine = DockerEngine(socket_path(settings.docker_host))
    if engine.answers() and sandboxes.root is not None:
        log.info("event=docker_ready socket=%s", engine.socket)
        return DockerContainers(sandboxes, worker_id, engine)
    engine.close()
    if settings.container_engine == "docker":
        raise FatalAgentError(
            f"container engine docker: no Docker engine answers at {engine.socket} "
            "(or no writable cgroup v2)"
        )
    log.info("event=no_docker socket=%s note=image bookings are not offered", engine.socket)
    return None


def cleanup(
    state_dir: Path,
    cgroup_root: Path | None,
    cpuset_root: Path | None = None,
    docker_host: str | None = None,
) -> list[str]:
    """Remove what the stopped agent of `state_dir` left on the host, and nothing of any
    other agent: its worker's lease cgroups (killing their processes), the lease disks,
    scratch keys and Ray folders under its state folder, and the WireGuard interfaces named
    for its worker's leases. Keeps the identity (the worker, and what it staked). Returns
    what it removed; StateDirBusy while the agent runs."""
    lock = lock_state_dir(state_dir)
    try:
        state = AgentState.load(state_dir / STATE_FILE)
        identity_file = state_dir / IDENTITY_FILE
        worker = load(identity_file).worker_id if identity_file.exists() else None
        lease_root = state_dir / LEASES_DIR
        leases = set(state.leases)
        if lease_root.is_dir():
            leases |= {d.name for d in lease_root.iterdir() if d.is_dir()}
        removed: list[str] = []
        if worker is not None:
            sandboxes = Sandboxes(worker, cgroup_root, cpuset_root)
            engine = DockerEngine(socket_path(docker_host))
            if engine.answers() and sandboxes.root is not None:  # before the cgroups they are in
                for container in DockerContainers(sandboxes, worker, engine).leftovers(set()):
                    container.destroy()
                    removed.append(f"container {container.path}")
            engine.close()
            for box in sandboxes.leftovers(set()):  # cgroups only: a pgid may be reused
                box.destroy()
                removed.append(f"cgroup {box.path}")
            sandboxes.release()
        for lease in sorted(leases):
            lease_dir = lease_root / lease
            if worker is not None:  # its disk, where the agent mounts it (sandbox/disks.py)
                LeaseDisks(state_dir, worker).destroy(lease)
            Scratch.at(lease_dir).destroy()
            shutil.rmtree(lease_dir, ignore_errors=True)
            removed.append(f"lease folder {lease_dir}")
            if worker is not None:
                shutil.rmtree(temp_dir_for(state_dir, worker, lease), ignore_errors=True)
                interface = lease_interface_name(worker, lease)
                with contextlib.suppress(WireGuardUnavailable, WireGuardError):
                    remove_interface(interface)
                leasenet = LeaseNetns(netns_of_interface(interface))
                with contextlib.suppress(WireGuardUnavailable, WireGuardError):
                    LeaseEgress(leasenet, None, state_dir).down()  # its slirp4netns
                    leasenet.destroy()
        state.leases.clear()
        state.save()
        return removed
    finally:
        lock.close()


def lease_report(state_dir: Path) -> list[dict[str, object]]:
    """What the agent in `state_dir` runs, as its supplier sees it on the host: each lease's
    sandbox, devices, cpuset and disk (where the ciphertext and the plaintext mount are, and
    whether it is encrypted and mounted). Reads only; the agent may be running."""
    identity_file = state_dir / IDENTITY_FILE
    if not identity_file.exists():
        return []
    worker = load(identity_file).worker_id
    state = AgentState.load(state_dir / STATE_FILE)
    disks = LeaseDisks(state_dir, worker)
    cpusets = find_cpuset_root()
    out: list[dict[str, object]] = []
    for lease_id, record in sorted(state.leases.items()):
        lease_dir, plain = disks.paths(lease_id)
        mounted = CryptDisk.at(lease_dir, plain).mounted
        out.append(
            {
                "lease_id": lease_id,
                "worker_id": worker,
                "sandbox": record.sandbox,
                "devices": record.devices,
                "egress": record.egress,
                "cpuset": str(cpusets / f"gpupool-{worker}" / lease_id) if cpusets else None,
                "disk": {
                    "encrypted": (lease_dir / CIPHER_DIR).is_dir(),
                    "mounted": mounted,
                    "ciphertext": str(lease_dir / CIPHER_DIR),
                    "plaintext": str(plain),
                },
            }
        )
    return out
