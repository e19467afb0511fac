"""The agent's Ray adapter: one Ray node per lease on this worker, inside the lease sandbox.

When a lease starts, the worker that holds the head device runs `ray start --head`; the others
ask the coordinator for the head's address and run `ray start --address`. Every node gets its
own temp dir, ports, an object-store limit and its devices as resources (domain/ray.py); its
processes are started through the lease sandbox, so the guard counts them as the lease's own
and the sandbox's end kills them all. A node is `joined` once the head's node list shows it
alive (the head: once it shows every device of the lease); only then does the agent report
its members ready, so a ready lease is a joined Ray cluster, checked rather than assumed.
Afterwards a monitor watches the node's own processes and reports a member whose Ray died.

`overlay_address` is the seam for the mesh: `lease_id -> this worker's overlay IPv4 in the
lease's mesh, or None` (the mesh not up, or off). A node binds to that address, waiting up to
MESH_WAIT_SECONDS for it, else to the worker's ordinary address (the one its route to the
coordinator leaves from), and reports which one it uses. See docs/ray.md.

`lease_netns` and `forward` are the seams for a sealed mesh (docs/mesh.md): where the lease has
its own network namespace the node starts inside it (`nsenter --net=PATH`), its dashboard
listens on the overlay address there, and the head reports the agent's forwarder to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gpupool.agent.files import write_json
from gpupool.agent.link import CoordinatorLink, LinkError
from gpupool.agent.mesh.wireguard import WireGuardError
from gpupool.agent.ray.cmd import (
    comm,
    kill_processes_using,
    list_nodes,
    start_argv,
    temp_dir_for,
)
from gpupool.agent.sandbox.cgroup import Sandbox, SandboxError
from gpupool.agent.sandbox.docker import SEALED, DockerSandbox
from gpupool.agent.sandbox.scratch import Scratch
from gpupool.domain.leases import MemberState
from gpupool.domain.models import DeviceSpec
from gpupool.domain.ray import (
    MIN_OBJECT_STORE_BYTES,
    LocalDevice,
    RayNodeState,
    RayRole,
    missing_devices,
    node_of_device,
    role_of,
)
from gpupool.wire import models as w
from gpupool.wire.ray import RayNodeReport

log = logging.getLogger("gpupool.agent.ray")

START_TIMEOUT = 90.0
JOIN_TIMEOUT = 240.0
POLL_SECONDS = 0.25
MONITOR_SECONDS = 1.0
MESH_WAIT_SECONDS = 20.0
RECORD_FILE = "ray.json"
# Secrets of the agent never reach a lease's processes.
_HIDDEN_ENV = ("GPUPOOL_KEY", "GPUPOOL_ADMIN_KEY")
CONTAINER_RAY_TEMP = Path("/tmp/ray")  # noqa: S108 (inside the container: its own tmpfs)


def _read_no_follow(path: Path, limit: int = 1 << 16) -> str:
    """The last `limit` bytes of a regular file, refusing a symbolic link (O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RayStartError(f"{path.name} is not a regular file")
        os.lseek(fd, max(0, info.st_size - limit), os.SEEK_SET)
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


class RayStartError(Exception):
    pass


@dataclass
class LeaseNode:
    """This worker's Ray node on one lease."""

    lease_id: str
    role: RayRole
    address: str
    mesh: bool
    temp_dir: Path
    scratch: Scratch
    local_devices: list[str]
    lease_devices: list[str]
    sandbox: Sandbox
    stop: threading.Event = field(default_factory=threading.Event)
    state: RayNodeState = RayNodeState.STARTING
    node_id: str | None = None
    gcs_address: str | None = None
    dashboard_url: str | None = None
    ports: dict[str, int] = field(default_factory=dict)
    thread: threading.Thread | None = None

    @property
    def joined(self) -> bool:
        return self.state is RayNodeState.JOINED


class RayNodes:
    """Brings up, watches and tears down the Ray nodes of this worker's leases."""

    def __init__(
        self,
        link: CoordinatorLink,
        state_dir: Path,
        devices: Sequence[DeviceSpec],
        worker_id: str,
        ordinary_address: Callable[[], str],
        object_store_bytes: int = MIN_OBJECT_STORE_BYTES,
    ) -> None:
        self.link = link
        self.state_dir = state_dir
        self.devices = {f"{worker_id}:{d.local_name}": d for d in devices}
        self.worker_id = worker_id
        self.ordinary_address = ordinary_address
        # lease -> overlay IPv4 or None; None here: no mesh on this agent (see the docstring)
        self.overlay_address: Callable[[str], str | None] | None = None
        # True once the mesh is known to be off on this machine: stop waiting for it
        self.mesh_unavailable: Callable[[], bool] = lambda: False
        # the environment that pins a member's processes to its leased GPUs (sandbox/gpus.py)
        self.device_env: Callable[[Sequence[DeviceSpec]], dict[str, str]] = lambda _: {}
        # lease -> the path of its own network namespace, or None (run in the agent's)
        self.lease_netns: Callable[[str], str | None] = lambda _lease: None
        # (lease, host, port inside, listen host) -> "host:port" forwarded from the agent's
        self.forward: Callable[[str, str, int, str], str] | None = None
        self.object_store_bytes = object_store_bytes
        self.nodes: dict[str, LeaseNode] = {}
        self._lock = threading.Lock()

    # the daemon's calls -------------------------------------------------------------------

    def joined(self, lease_id: str) -> bool:
        node = self.nodes.get(lease_id)
        return node is not None and node.joined

    def start(self, a: w.AssignmentOut, sandbox: Sandbox) -> None:
        """Start this worker's node of the lease in the background (idempotent)."""
        with self._lock:
            if a.lease_id in self.nodes:
                return
            head_worker = next(m.worker_id for m in a.members if m.device_id == a.head_device_id)
            # The scratch helper lives on the lease's disk, the one folder its container writes
            scratch = Scratch.create(temp_dir_for(self.state_dir, self.worker_id, a.lease_id))
            if isinstance(sandbox, SEALED):  # the lease's uid reads its own key
                sandbox.give(scratch.directory)
                sandbox.give(scratch.key_file)
            node = LeaseNode(
                lease_id=a.lease_id,
                role=role_of(self.worker_id, head_worker),
                address="",  # chosen by the node's thread: the mesh may take a moment
                mesh=False,
                temp_dir=temp_dir_for(self.state_dir, self.worker_id, a.lease_id),
                scratch=scratch,
                local_devices=list(a.local_devices),
                lease_devices=[m.device_id for m in a.members],
                sandbox=sandbox,
            )
            self.nodes[a.lease_id] = node
            node.thread = threading.Thread(
                target=self._run, args=(node,), name=f"ray-{a.lease_id}", daemon=True
            )
            node.thread.start()

    def stop(self, lease_id: str) -> None:
        """Stop watching the lease's node (its sandbox is destroyed next)."""
        node = self.nodes.get(lease_id)
        if node is not None:
            node.stop.set()
            if node.thread is not None and node.thread is not threading.current_thread():
                node.thread.join(timeout=5)

    def adopt(self, lease_id: str, sandbox: Sandbox) -> None:
        """After an agent restart: take back the lease's node from its record, and watch it
        again if it had joined (a bring-up cut short by the restart is reported failed)."""
        record = self._record(lease_id)
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            return  # no node was started: cleanup() still removes what the lease left
        node = LeaseNode(
            lease_id=lease_id,
            role=RayRole(data["role"]),
            address=data["address"],
            mesh=bool(data["mesh"]),
            temp_dir=Path(data["temp_dir"]),
            scratch=Scratch.at(Path(data["temp_dir"])),
            local_devices=list(data["local_devices"]),
            lease_devices=list(data["lease_devices"]),
            sandbox=sandbox,
            state=RayNodeState(data["state"]),
            node_id=data.get("node_id"),
            gcs_address=data.get("gcs_address"),
            dashboard_url=data.get("dashboard_url"),
            ports={str(k): int(v) for k, v in (data.get("ports") or {}).items()},
        )
        with self._lock:
            self.nodes[lease_id] = node
        if node.joined:
            node.thread = threading.Thread(
                target=self._readopt, args=(node,), name=f"ray-{lease_id}", daemon=True
            )
            node.thread.start()
        elif node.state is not RayNodeState.FAILED:
            self._fail(node, "the agent restarted while Ray was starting")

    def cleanup(self, lease_id: str) -> None:
        """After the sandbox is gone: kill any Ray process that escaped it, remove the temp
        dir, destroy the scratch key and folder, and say so to the coordinator. Also for a
        lease whose node this agent no longer knows: its files go all the same."""
        node = self.nodes.pop(lease_id, None)
        lease_dir = self._lease_dir(lease_id)
        temp_dir = node.temp_dir if node else temp_dir_for(self.state_dir, self.worker_id, lease_id)
        scratch = node.scratch if node else Scratch.at(temp_dir)
        kill_processes_using(temp_dir, "=".join(next(iter(scratch.env().items()))))
        shutil.rmtree(temp_dir, ignore_errors=True)
        scratch.destroy()
        shutil.rmtree(lease_dir, ignore_errors=True)
        self._record(lease_id).unlink(missing_ok=True)
        if node is not None:
            with contextlib.suppress(LinkError):
                self._report(node, RayNodeState.STOPPED, "the lease ended")
        log.info("event=ray_stopped lease=%s", lease_id)

    def _lease_dir(self, lease_id: str) -> Path:
        return self.state_dir / "leases" / lease_id

    def _record(self, lease_id: str) -> Path:
        # Not in the lease's folder: a lease container writes there, and the record names
        # the folders the agent removes as root.
        return self.state_dir / "ray" / f"{lease_id}.{RECORD_FILE}"

    # a node's life ------------------------------------------------------------------------

    def _run(self, node: LeaseNode) -> None:
        try:
            self._bring_up(node)
            if node.joined:
                self._monitor(node)
        except (RayStartError, LinkError, httpx.HTTPError, OSError) as exc:
            if not node.stop.is_set():
                self._fail(node, f"Ray {node.role} did not start: {exc}")
        finally:
            if node.stop.is_set():  # the lease ended while this thread still worked
                shutil.rmtree(node.temp_dir, ignore_errors=True)

    def _bind_address(self, node: LeaseNode) -> tuple[str, bool]:
        """The lease's overlay address once its mesh is up, else the ordinary address."""
        if self.overlay_address is not None:
            deadline = time.monotonic() + MESH_WAIT_SECONDS
            while not node.stop.is_set():
                overlay = self.overlay_address(node.lease_id)
                if overlay:
                    return overlay, True
                if self.mesh_unavailable() or time.monotonic() > deadline:
                    log.warning("event=ray_without_mesh lease=%s", node.lease_id)
                    break
                node.stop.wait(POLL_SECONDS)
        return self.ordinary_address(), False

    def _bring_up(self, node: LeaseNode) -> None:
        started = time.monotonic()
        node.address, node.mesh = self._bind_address(node)
        self._report(node, RayNodeState.STARTING)
        head_gcs = None
        if node.role is RayRole.WORKER:
            head_gcs, node.dashboard_url = self._wait_for_head(node)
            if head_gcs is None:
                return
        if node.stop.is_set():
            return
        devices = [self._local(d) for d in node.local_devices]
        netns = self.lease_netns(node.lease_id) if node.mesh else None
        # On the mesh the nodes talk over overlay addresses, which the coordinator (the job
        # proxy) cannot reach: the head's dashboard then listens on the ordinary address, or,
        # in the lease's own namespace, on the overlay one behind the agent's forwarder on the
        # ordinary address (the coordinator checks that its agent's requests come from there).
        dashboard_host = self.ordinary_address() if node.mesh and not netns else node.address
        argv, node.ports = start_argv(
            node.role,
            node.address,
            # In a container, Ray's own files (its sockets, logs, spilled objects, jobs'
            # working dirs) go to the container's private /tmp, memory that is never the
            # supplier's disk and that dies with the container: gocryptfs refused some of
            # Ray's dashboard sockets (EPERM) under load. Without one, the lease's folder.
            CONTAINER_RAY_TEMP if isinstance(node.sandbox, SEALED) else node.temp_dir,
            devices,
            self.object_store_bytes,
            head_gcs,
            dashboard_host=dashboard_host,
            netns=netns,
        )
        if isinstance(node.sandbox, DockerSandbox):  # a renter's image runs its own Ray
            try:
                argv[0] = node.sandbox.ray_executable()
            except SandboxError as exc:
                raise RayStartError(str(exc)) from exc
        node.temp_dir.mkdir(parents=True, exist_ok=True)
        enter = ["nsenter", f"--net={netns}"] if netns else []
        if netns and isinstance(node.sandbox, SEALED):
            node.sandbox.join_network(Path(netns))  # the container's next spawns run there
            enter = []
        self._ray_start(node, [*enter, *argv])
        if node.role is RayRole.HEAD:
            node.gcs_address = f"{node.address}:{node.ports['port']}"
            dashboard = f"{dashboard_host}:{node.ports['dashboard-port']}"
            if netns and self.forward is not None:
                port = node.ports["dashboard-port"]
                dashboard = self.forward(node.lease_id, node.address, port, self.ordinary_address())
            node.dashboard_url = f"http://{dashboard}"
        node.state = RayNodeState.STARTED
        self._report(node, RayNodeState.STARTED)
        log.info(
            "event=ray_started lease=%s role=%s address=%s mesh=%s seconds=%.2f",
            node.lease_id,
            node.role,
            node.address,
            node.mesh,
            time.monotonic() - started,
        )
        self._wait_joined(node)

    def _local(self, device_id: str) -> LocalDevice:
        spec = self.devices[device_id]
        return LocalDevice(device_id, spec.kind, max(len(spec.cores), 1))

    def _wait_for_head(self, node: LeaseNode) -> tuple[str | None, str | None]:
        deadline = time.monotonic() + JOIN_TIMEOUT
        while not node.stop.is_set():
            head = self.link.ray_head(node.lease_id)
            if head.head is not None and head.head.state in (RayNodeState.FAILED,):
                raise RayStartError(f"the Ray head failed: {head.head.reason}")
            if (
                head.gcs_address
                and head.head is not None
                and head.head.state
                in (
                    RayNodeState.STARTED,
                    RayNodeState.JOINED,
                )
            ):
                return head.gcs_address, head.dashboard_url
            if time.monotonic() > deadline:
                raise RayStartError(f"no Ray head address within {JOIN_TIMEOUT:.0f} s")
            node.stop.wait(POLL_SECONDS)
        return None, None

    def _ray_start(self, node: LeaseNode, argv: list[str]) -> None:
        """Run `ray start` inside the lease sandbox; its output goes to the node's log."""
        log_file = node.temp_dir / "ray-start.log"
        rc_file = node.temp_dir / "ray-start.rc"
        script = '"$@" > "$0" 2>&1; echo $? > "$0.rc.tmp"; mv "$0.rc.tmp" "$0.rc"'
        log_file.unlink(missing_ok=True)
        rc_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _HIDDEN_ENV}
        env.update(node.scratch.env())
        env.update(self.device_env([self.devices[d] for d in node.local_devices]))
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        node.sandbox.spawn(["/bin/sh", "-c", script, str(log_file), *argv], env=env)
        deadline = time.monotonic() + START_TIMEOUT
        rc_path = Path(f"{log_file}.rc")
        while not rc_path.exists():
            if node.stop.wait(0.1):
                raise RayStartError("the lease ended during bring-up")
            if time.monotonic() > deadline:
                raise RayStartError(f"`ray start` did not finish within {START_TIMEOUT:.0f} s")
        # The lease's uid owns this folder: read as root without following a link it planted
        rc = _read_no_follow(rc_path).strip()
        if rc != "0":
            tail = _read_no_follow(log_file).strip().splitlines()[-3:]
            raise RayStartError(f"`ray start` exited {rc}: {' | '.join(tail)[-600:]}")

    def _wait_joined(self, node: LeaseNode) -> None:
        """Until the head's node list shows this node (the head: every device of the lease)."""
        assert node.dashboard_url is not None
        wanted = node.lease_devices if node.role is RayRole.HEAD else node.local_devices
        deadline = time.monotonic() + JOIN_TIMEOUT
        last = ""
        while not node.stop.is_set():
            try:
                nodes = list_nodes(node.dashboard_url)
                missing = missing_devices(nodes, wanted)
                last = f"waiting for {', '.join(missing)}" if missing else ""
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                missing, last = wanted, f"node list: {exc}"
            if not missing:
                own = node_of_device(nodes, node.local_devices[0])
                node.node_id = own.node_id if own else None
                node.state = RayNodeState.JOINED
                self._report(node, RayNodeState.JOINED)
                self._report_members(node, MemberState.READY)
                log.info("event=ray_joined lease=%s node=%s", node.lease_id, node.node_id)
                return
            if time.monotonic() > deadline:
                raise RayStartError(f"not joined within {JOIN_TIMEOUT:.0f} s ({last})")
            node.stop.wait(POLL_SECONDS)

    def _readopt(self, node: LeaseNode) -> None:
        """After a restart: make a sealed head's forwarder again, then watch the node."""
        if node.role is RayRole.HEAD and node.mesh:
            self._restore_forwarder(node)
        self._monitor(node)

    def _restore_forwarder(self, node: LeaseNode) -> None:
        """The head's dashboard forwarder lived in the old agent: make it again once the
        lease's mesh is back, and report where it listens now."""
        port = node.ports.get("dashboard-port")
        if self.forward is None or not port:
            return
        deadline = time.monotonic() + MESH_WAIT_SECONDS
        while self.lease_netns(node.lease_id) is None:
            if node.stop.is_set() or time.monotonic() > deadline:
                log.warning("event=forwarder_not_restored lease=%s", node.lease_id)
                return
            node.stop.wait(POLL_SECONDS)
        try:
            listen = self.forward(node.lease_id, node.address, port, self.ordinary_address())
            node.dashboard_url = f"http://{listen}"
            self._report(node, node.state)
        except (OSError, LinkError, WireGuardError) as exc:
            log.warning("event=forwarder_not_restored lease=%s reason=%s", node.lease_id, exc)

    def _monitor(self, node: LeaseNode) -> None:
        """Report the node's death: its raylet (and, on the head, its GCS) gone."""
        needed = {"raylet"} | ({"gcs_server"} if node.role is RayRole.HEAD else set())
        while not node.stop.wait(MONITOR_SECONDS):
            running = {comm(pid) for pid in node.sandbox.pids()}
            gone = needed - running
            if gone and not node.stop.is_set():
                what = "the Ray head" if node.role is RayRole.HEAD else "a Ray worker node"
                self._fail(
                    node,
                    f"{what} died on {', '.join(node.local_devices)} "
                    f"({', '.join(sorted(gone))} exited)",
                )
                return

    def _fail(self, node: LeaseNode, reason: str) -> None:
        log.error("event=ray_failed lease=%s reason=%s", node.lease_id, reason)
        node.state = RayNodeState.FAILED
        with contextlib.suppress(LinkError):
            self._report(node, RayNodeState.FAILED, reason)
        self._report_members(node, MemberState.FAILED, reason)

    def _report(self, node: LeaseNode, state: RayNodeState, reason: str = "") -> None:
        if not node.address:
            return  # failed before it had an address: the members' reports say why
        if state is not RayNodeState.STOPPED:
            self._save(node, state)
        self.link.ray_report(
            node.lease_id,
            RayNodeReport(
                role=node.role,
                state=state,
                address=node.address,
                mesh=node.mesh,
                node_id=node.node_id,
                # a worker knows the head's addresses too, but speaks only for its own node
                gcs_address=node.gcs_address if node.role is RayRole.HEAD else None,
                dashboard_url=node.dashboard_url if node.role is RayRole.HEAD else None,
                reason=reason[:2000],
            ),
        )

    def _save(self, node: LeaseNode, state: RayNodeState) -> None:
        """Record the node beside the lease's scratch, for `adopt` after a restart."""
        record = {
            "role": node.role.value,
            "address": node.address,
            "mesh": node.mesh,
            "temp_dir": str(node.temp_dir),
            "local_devices": node.local_devices,
            "lease_devices": node.lease_devices,
            "state": state.value,
            "node_id": node.node_id,
            "gcs_address": node.gcs_address,
            "dashboard_url": node.dashboard_url,
            "ports": node.ports,
        }
        path = self._record(node.lease_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)

    def _report_members(self, node: LeaseNode, state: MemberState, reason: str = "") -> None:
        for device in node.local_devices:
            try:
                self.link.report(node.lease_id, device, state.value, reason[:2000])
            except LinkError as exc:
                log.warning(
                    "event=report_failed lease=%s device=%s state=%s reason=%s",
                    node.lease_id,
                    device,
                    state,
                    exc.message,
                )
