"""The Docker lease sandbox: where a Docker engine runs, each lease member is one long-lived
container (`docker run -d` with an init), and each spawn a `docker exec` inside it, as the
lease's own uid. docs/sandbox.md ("Docker") says what it sees and how it differs from the
bubblewrap container (container.py), whose interface it shares (path, confinement, owns,
pids, give, join_network, spawn, destroy).

The container's cgroup lies under the lease's own cgroup folders (`--cgroup-parent`, the
folders CgroupSandbox makes: v2 for membership, v1 cpuset for the lease's cores), so the
guard's and the cpuset partition's notion of "the lease" holds unchanged. Its network is
`none` and the agent names that namespace as the lease's (`ip netns attach`), so the mesh
(mesh/leasenet.py) adopts it and moves the lease's WireGuard interface in.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from gpupool.agent.ray.cmd import ray_executable
from gpupool.agent.sandbox.cgroup import (
    KILL_WAIT_SECONDS,
    CgroupSandbox,
    SandboxError,
    Sandboxes,
    cgroup2_mount,
    own_cgroup2_path,
)
from gpupool.agent.sandbox.container import (
    UID_BASE,
    UID_SPAN,
    ContainerSandbox,
    give,
    lease_identity_env,
)
from gpupool.agent.sandbox.dockerapi import DockerEngine, DockerError
from gpupool.agent.sandbox.dockerimage import (
    default_image,
    default_image_binds,
    default_init,
    ensure_image,
)

PATH_PREFIX = "docker:"
LABEL_WORKER = "io.gpupool.worker"
LABEL_LEASE = "io.gpupool.lease"
HOSTNAME = "gpupool-lease"
SHM_BYTES = 256 << 20  # Ray's object store falls back to /tmp above this


@dataclass(frozen=True)
class DockerSpec:
    """What one lease member's container gets (the daemon fills it as for ContainerSpec)."""

    lease_id: str
    worker_id: str
    lease_dir: Path  # the lease's one writable folder (the encrypted disk), at the same path
    uid: int
    gid: int
    image: str | None = None  # None: the agent's own image (dockerimage.py)
    netns_name: str | None = None  # name its namespace so; None: the host's network
    device_nodes: tuple[str, ...] = ()
    gpu_uuids: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    memory_bytes: int | None = None
    pids_max: int | None = None
    cores: tuple[int, ...] = ()
    dns: tuple[str, ...] = ()  # the container's resolvers (egress: slirp4netns' forwarder)

    def __post_init__(self) -> None:
        for name, value in (("uid", self.uid), ("gid", self.gid)):
            if not UID_BASE <= value < UID_BASE + UID_SPAN:
                raise ValueError(f"{name} {value} is outside the lease range {UID_BASE}+")
        for node in self.device_nodes:
            if not node.startswith("/dev/") or ".." in node:
                raise ValueError(f"device node {node!r} is not a path under /dev")
        if not self.lease_dir.is_absolute() or ":" in str(self.lease_dir):
            raise ValueError(f"lease_dir {self.lease_dir} must be absolute, without ':'")

    @property
    def name(self) -> str:
        """The container's name: one per worker and lease on the engine."""
        return f"gpupool-{self.worker_id}-{self.lease_id}"


def create_body(
    spec: DockerSpec, cgroup_parent: str | None, nvidia_runtime: bool = False
) -> dict[str, Any]:
    """The Engine API's container-create body (what `docker run` would send)."""
    binds = default_image_binds() if spec.image is None else []
    binds.append(f"{spec.lease_dir}:{spec.lease_dir}:rw")
    host: dict[str, Any] = {
        "Init": True,  # docker-init as pid 1 reaps the orphans `ray start` leaves
        "ReadonlyRootfs": True,
        "Tmpfs": {"/tmp": "rw,nosuid,nodev,mode=1777"},  # noqa: S108 (its own, in memory)
        "ShmSize": SHM_BYTES,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "IpcMode": "private",
        "PidMode": "",  # a PID namespace of its own
        "NetworkMode": "none" if spec.netns_name else "host",
        "Binds": binds,
        "Devices": [
            {"PathOnHost": n, "PathInContainer": n, "CgroupPermissions": "rwm"}
            for n in spec.device_nodes
        ],
        "RestartPolicy": {"Name": "no"},
    }
    if nvidia_runtime and spec.gpu_uuids:
        host["DeviceRequests"] = [
            {"Driver": "nvidia", "DeviceIDs": list(spec.gpu_uuids), "Capabilities": [["gpu"]]}
        ]
    if spec.pids_max is not None:
        host["PidsLimit"] = spec.pids_max
    if spec.memory_bytes is not None:
        host["Memory"] = host["MemorySwap"] = spec.memory_bytes  # no swap beyond it
    if spec.cores:
        host["CpusetCpus"] = ",".join(str(c) for c in sorted(spec.cores))
    if cgroup_parent is not None:
        host["CgroupParent"] = cgroup_parent
    if spec.dns:
        host["Dns"] = list(spec.dns)
    if spec.netns_name:
        # The engine turns IPv6 off in a `none` network; the mesh's interface, moved in
        # later, takes the namespace's defaults and needs its ULA address (docs/mesh.md).
        host["Sysctls"] = {f"net.ipv6.conf.{c}.disable_ipv6": "0" for c in ("all", "default")}
    env = lease_identity_env(spec.lease_dir)
    env.update(spec.env)
    return {
        "Image": spec.image or default_image(),
        "Cmd": default_init() if spec.image is None else ["sleep", "infinity"],
        "User": f"{spec.uid}:{spec.gid}",
        "WorkingDir": str(spec.lease_dir),
        "Hostname": HOSTNAME,
        "Env": [f"{k}={v}" for k, v in sorted(env.items())],
        "Labels": {LABEL_WORKER: spec.worker_id, LABEL_LEASE: spec.lease_id},
        "HostConfig": host,
    }


def _container_cgroup(pid: int) -> Path | None:
    """The unified-hierarchy folder holding the container's processes (from its init)."""
    try:
        mount = cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        own = own_cgroup2_path(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return None
    return mount / own.lstrip("/") if mount is not None else None


def _v1_mounts() -> list[Path]:
    """Every v1 cgroup hierarchy's mount point: the engine makes the container's parent
    folders in each, and leaves them behind when it removes the container."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup":
            found.append(Path(left.split()[4]))
    return found


def remove_parent_folders(parent: str) -> None:
    """Remove `parent` (/gpupool-<worker>/<lease>) from every v1 hierarchy, and its worker
    folder where no other lease is left in it."""
    for mount in _v1_mounts():
        lease = mount / parent.lstrip("/")
        for folder in (lease, lease.parent):
            with contextlib.suppress(OSError):  # absent, or still another lease's
                folder.rmdir()


@dataclass
class DockerSandbox:
    """A lease member's container: its processes are those of the container's cgroup."""

    lease_id: str
    engine: DockerEngine
    container: str  # the engine's id
    cgroup: CgroupSandbox  # the lease's folders, parent of the container's own
    procs_dir: Path | None  # the container's v2 cgroup
    user: str
    workdir: str
    spec: DockerSpec | None = None  # None: re-attached after a restart
    netns: Path | None = None
    image: str | None = None
    parent: str | None = None  # --cgroup-parent, in every hierarchy

    @property
    def path(self) -> str:
        return PATH_PREFIX + self.container

    @property
    def confinement(self) -> str:
        return self.cgroup.confinement

    def owns(self, pid: int) -> bool:
        return pid in self.pids()

    def pids(self) -> set[int]:
        if self.procs_dir is None:
            return set()
        try:
            return {int(p) for p in (self.procs_dir / "cgroup.procs").read_text().split()}
        except FileNotFoundError:
            return set()

    def give(self, path: Path) -> None:
        uid, _, gid = self.user.partition(":")
        give(path, int(uid), int(gid or uid))

    def join_network(self, netns: Path) -> None:
        """The container lives in the lease's namespace from its start: only check it."""
        if self.netns is None or Path(netns) != self.netns:
            raise SandboxError(
                f"lease {self.lease_id}: the container's network is {self.netns}, not {netns}"
            )

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        merged = dict(env or {})
        if self.image is not None:
            merged.pop("PATH", None)  # the image's own PATH finds its Python and Ray
        merged.update(lease_identity_env(self.workdir))  # an exec's env overrides the container's
        return self.engine.exec(self.container, list(argv), merged, self.user, self.workdir)

    def ray_executable(self) -> str:
        """`ray` as the container runs it: the agent's own in its image; in a renter's
        image the image's, which must be the agent's Ray version (SandboxError if not)."""
        if self.image is None:
            return ray_executable()
        want = version("ray")
        code, out = self.engine.run_to_end(self.container, ["ray", "--version"], self.user)
        if code != 0:
            raise SandboxError(f"image {self.image} has no Ray (`ray --version`: {out[-200:]})")
        have = out.strip().rsplit(" ", 1)[-1]
        if have != want:
            raise SandboxError(f"image {self.image} brings Ray {have}; this agent needs {want}")
        return "ray"

    def destroy(self) -> None:
        """Remove the container, wait until none of its processes is left, then the
        lease's cgroup folders."""
        self.engine.remove(self.container)
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while self.pids():
            if time.monotonic() > deadline:
                raise SandboxError(f"container {self.container} survives removal")
            time.sleep(0.02)
        self.cgroup.destroy()
        if self.parent is not None:
            remove_parent_folders(self.parent)


# Both keep a lease's processes in a container of the lease's uid (ray/node.py asks).
SEALED: tuple[type[ContainerSandbox], type[DockerSandbox]] = (ContainerSandbox, DockerSandbox)


def attach_netns(name: str, pid: int) -> Path:
    """Name the network namespace of `pid` (`ip netns attach`): the lease netns."""
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    done = subprocess.run(
        ["ip", "netns", "attach", name, str(pid)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SandboxError(f"cannot name the container's netns {name}: {done.stderr.strip()}")
    return Path("/run/netns") / name


class DockerContainers:
    """Makes, re-attaches and finds the Docker lease containers of one worker."""

    def __init__(self, sandboxes: Sandboxes, worker_id: str, engine: DockerEngine) -> None:
        if sandboxes.root is None:
            raise SandboxError("Docker lease containers need a writable cgroup v2")
        self.sandboxes = sandboxes
        self.root: Path = sandboxes.root
        self.worker_id = worker_id
        self.engine = engine
        info = engine.info()
        # --cgroup-parent names a path in each hierarchy only with the cgroupfs driver
        self.cgroupfs = info.get("CgroupDriver") == "cgroupfs"
        self.nvidia = "nvidia" in (info.get("Runtimes") or {})

    @property
    def kind(self) -> str:
        return f"docker+{self.sandboxes.kind}"

    def _parent(self, cgroup: CgroupSandbox) -> str | None:
        mount = cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        if not self.cgroupfs or mount is None:
            return None
        return "/" + str(cgroup.directory.relative_to(mount))

    def create(self, spec: DockerSpec) -> DockerSandbox:
        """The lease's container, running; the lease's image pulled where it is missing."""
        ensure_image(self.engine, spec.image)
        cgroup = CgroupSandbox.create(
            self.root, spec.lease_id, spec.cores, self.sandboxes.cpuset_root
        )
        if spec.cores:
            self.sandboxes.repartition()
        self.engine.remove(spec.name)  # a leftover of a crash between create and record
        box: DockerSandbox | None = None
        try:
            parent = self._parent(cgroup)
            body = create_body(spec, parent, self.nvidia)
            container = self.engine.create(spec.name, body)
            box = DockerSandbox(
                spec.lease_id,
                self.engine,
                container,
                cgroup,
                None,
                user=body["User"],
                workdir=str(spec.lease_dir),
                spec=spec,
                image=spec.image,
                parent=parent,
            )
            self.engine.start(container)
            pid = int((self.engine.inspect(container) or {}).get("State", {}).get("Pid") or 0)
            if not pid:
                raise DockerError(f"container {spec.name} did not start")
            box.procs_dir = _container_cgroup(pid)
            if spec.netns_name is not None:
                box.netns = attach_netns(spec.netns_name, pid)
        except (SandboxError, OSError, ValueError):
            if box is not None:
                box.destroy()
            else:
                cgroup.destroy()
            raise
        return box

    def attach(self, lease_id: str, path: str) -> DockerSandbox | None:
        """The container of a lease recorded before a restart, if the engine still has it."""
        container = path.removeprefix(PATH_PREFIX)
        seen = self.engine.inspect(container)
        if seen is None:
            return None
        cgroup = self.sandboxes.attach(lease_id, str(self.root / lease_id))
        if not isinstance(cgroup, CgroupSandbox):
            cgroup = CgroupSandbox(lease_id, self.root / lease_id)
        pid = int(seen.get("State", {}).get("Pid") or 0)
        config = seen.get("Config", {})
        image = None if config.get("Image") == default_image() else config.get("Image")
        parent = (seen.get("HostConfig") or {}).get("CgroupParent") or None
        return DockerSandbox(
            lease_id,
            self.engine,
            str(seen["Id"]),
            cgroup,
            _container_cgroup(pid) if pid else None,
            user=str(config.get("User", "")),
            workdir=str(config.get("WorkingDir", "/")),
            image=image,
            parent=parent,
        )

    def leftovers(self, known: set[str]) -> list[DockerSandbox]:
        """This worker's containers that no open lease names (a crash, a lost record)."""
        found = []
        for row in self.engine.list_labelled(f"{LABEL_WORKER}={self.worker_id}"):
            lease = str((row.get("Labels") or {}).get(LABEL_LEASE, ""))
            if lease and lease not in known:
                box = self.attach(lease, PATH_PREFIX + str(row["Id"]))
                if box is not None:
                    found.append(box)
        return found
