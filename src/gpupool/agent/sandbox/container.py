"""The sealed lease container: every process of a lease member runs under bubblewrap, in its
own user, mount, PID, IPC, UTS, cgroup and (unless told otherwise) network namespaces, as an
unprivileged host uid of its own, with no capabilities, no_new_privs and no way to make
another user namespace. docs/sandbox.md says why bubblewrap and what the container sees.

A spawn is one command line, entered in this order, each step before it can be undone:
the lease's cgroups (CgroupSandbox, then the v1 memory/pids limits of `limits.py`), the
named netns (`nsenter`, root), the reach step (a root bwrap that only makes root-only
folders on the way to the Python or the lease folder traversable), the uid drop (`setpriv`),
and the container itself (an unprivileged bwrap). Inside, the lease init runs the command
and stays, so the container (its PID namespace) outlives a command that daemonises, such as
`ray start`.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from gpupool.agent.sandbox.cgroup import CgroupSandbox, SandboxError, Sandboxes
from gpupool.agent.sandbox.limits import Limits

# Per-lease host uids (gid = uid): inside 1879048192-2147352575, which systemd leaves
# unassigned (its nspawn and mountfsd ranges lie below and above), and below 2^31, which
# some tools read as signed. No passwd entry and no host file has one of these owners.
UID_BASE = 1_900_000_000
UID_SPAN = 1 << 20
HOSTNAME = "gpupool-lease"
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/alternatives",
)


@dataclass(frozen=True)
class Bind:
    """A host path seen at the same path inside the container."""

    path: Path
    writable: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    """What one lease member's container gets; the netns, disk and GPU parts fill it."""

    lease_id: str
    lease_dir: Path  # the lease's folder, owned by uid, seen at the same path (its HOME)
    uid: int
    gid: int
    netns: Path | None = None  # join this named netns (/run/netns/NAME); None: a fresh one
    share_host_network: bool = False  # leases without a mesh: Ray over the host's loopback
    device_nodes: tuple[str, ...] = ()  # e.g. /dev/nvidia3, bound in read-write
    env: Mapping[str, str] = field(default_factory=dict)
    writable_dir: Path | None = None  # the encrypted disk's plaintext mount, seen at lease_dir
    memory_bytes: int | None = None
    pids_max: int | None = None
    binds: tuple[Bind, ...] = ()  # more of the lease's own folders (its Ray temp dir)
    resolv_conf: Path | None = None  # seen as /etc/resolv.conf (egress: slirp4netns' DNS)

    def __post_init__(self) -> None:
        for name, value in (("uid", self.uid), ("gid", self.gid)):
            if not UID_BASE <= value < UID_BASE + UID_SPAN:
                raise ValueError(f"{name} {value} is outside the lease range {UID_BASE}+")
        if self.netns is not None and self.share_host_network:
            raise ValueError("a container joins a named netns or the host's network, not both")
        for node in self.device_nodes:
            if not node.startswith("/dev/") or ".." in node:
                raise ValueError(f"device node {node!r} is not a path under /dev")
        if not self.lease_dir.is_absolute():
            raise ValueError(f"lease_dir {self.lease_dir} must be absolute")


def bwrap_path() -> str | None:
    """bubblewrap, where the agent can run containers (it must be root to change uid)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    return shutil.which("bwrap")


def lease_uid(lease_id: str, taken: set[int]) -> int:
    """The lease's host uid: from its id, stepping past uids a process holds now."""
    import hashlib

    start = int.from_bytes(hashlib.sha256(lease_id.encode()).digest()[:8], "big") % UID_SPAN
    for step in range(UID_SPAN):
        uid = UID_BASE + (start + step) % UID_SPAN
        if uid not in taken:
            return uid
    raise SandboxError("no free lease uid")


def uids_in_use() -> set[int]:
    """The real uids of the live (not zombie) processes on this machine."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = dict(
                    line.split(":", 1) for line in (entry / "status").read_text().splitlines()
                )
            except (OSError, ValueError):
                continue
            if not fields.get("State", "").strip().startswith("Z"):
                found.add(int(fields["Uid"].split()[0]))
    return found


def _traversable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & 0o001)
    except OSError:
        return False


def _closed_top(path: Path) -> Path | None:
    """The topmost folder above `path` that others may not enter (the lease uid cannot
    reach `path` through it), or None."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not _traversable(parent):
            return parent
    return None


def python_paths() -> list[Path]:
    """The interpreter, the virtual environment and the import path the agent runs from:
    what the lease init and `ray start` need inside."""
    import gpupool

    found: list[Path] = []
    # gpupool's own folder: outside the environment when it is an editable install
    for entry in (sys.base_prefix, sys.prefix, Path(gpupool.__file__).parent.parent):
        p = Path(entry).resolve()
        if str(p).startswith(_SYSTEM):
            continue
        if not any(p == q or q in p.parents for q in found):
            found = [q for q in found if p not in q.parents] + [p]
    return sorted(found)


def reach_argv(bwrap: str, paths: Sequence[tuple[Path, bool]]) -> list[str]:
    """The root bwrap that lays a tmpfs over each closed folder and binds back only the
    paths the container needs under it, so the lease uid can reach them and nothing else
    there (empty when every path is reachable already)."""
    argv: list[str] = []
    for top in sorted({t for p, _ in paths if (t := _closed_top(p)) is not None}):
        argv += ["--tmpfs", str(top)]
        for path, writable in paths:
            if top in path.parents:
                # bwrap makes missing mount points 0700: open the way for the lease uid
                for between in reversed(path.parents):
                    if top in between.parents:
                        argv += ["--perms", "0755", "--dir", str(between)]
                argv += ["--bind" if writable else "--ro-bind", str(path), str(path)]
    if not argv:
        return []
    # Root here only to mount; it keeps the capabilities setpriv needs to drop the uid.
    caps = ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    return [bwrap, "--dev-bind", "/", "/", *argv, *caps, "--"]


def container_argv(bwrap: str, spec: ContainerSpec, argv: Sequence[str]) -> list[str]:
    """The unprivileged bwrap of the container, running `argv` under the lease init."""
    out = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--disable-userns",
        "--new-session",
        "--hostname",
        HOSTNAME,
    ]
    if spec.netns is None and not spec.share_host_network:
        out.append("--unshare-net")
    for path in _SYSTEM:
        p = Path(path)
        if p.is_symlink():
            out += ["--symlink", os.readlink(p), path]
        elif p.is_dir():
            out += ["--ro-bind", path, path]
    for p in python_paths():
        out += ["--ro-bind", str(p), str(p)]
    for path in _ETC:
        out += ["--ro-bind-try", path, path]
    if spec.resolv_conf is not None:  # over the host's, bound just before
        out += ["--ro-bind", str(spec.resolv_conf), "/etc/resolv.conf"]
    # private tmpfs, not the host's: nothing another lease or the host put there is seen
    out += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]  # noqa: S108
    for node in spec.device_nodes:
        out += ["--dev-bind", node, node]
    source = spec.writable_dir or spec.lease_dir
    out += ["--bind", str(source), str(spec.lease_dir)]
    for b in spec.binds:
        out += ["--bind" if b.writable else "--ro-bind", str(b.path), str(b.path)]
    # the root itself is a tmpfs of bwrap's: read-only, so writes land only in lease folders
    out += ["--remount-ro", "/", "--chdir", str(spec.lease_dir), "--"]
    return [*out, sys.executable, "-m", "gpupool.agent.sandbox.lease_init", *argv]


def spawn_argv(bwrap: str, spec: ContainerSpec, argv: Sequence[str]) -> list[str]:
    """Everything after the cgroups: netns, reach, uid drop, container."""
    needed = [(p, False) for p in python_paths()]
    needed.append((spec.writable_dir or spec.lease_dir, True))
    needed += [(b.path, b.writable) for b in spec.binds]
    if spec.resolv_conf is not None:
        needed.append((spec.resolv_conf, False))
    out = ["nsenter", f"--net={spec.netns}"] if spec.netns is not None else []
    out += reach_argv(bwrap, needed)
    out += [
        "setpriv",
        f"--reuid={spec.uid}",
        f"--regid={spec.gid}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]
    return out + container_argv(bwrap, spec, argv)


def lease_identity_env(home: Path | str) -> dict[str, str]:
    """Who a lease process is, whatever environment its spawner passed (the agent's own
    HOME is not the lease's): its folder, its name, its private /tmp."""
    tmp = "/tmp"  # noqa: S108 (the container's own tmpfs)
    return {
        "HOME": str(home),
        "USER": "lease",
        "LOGNAME": "lease",
        "SHELL": "/bin/sh",
        "TMPDIR": tmp,
    }


def container_env(spec: ContainerSpec, env: Mapping[str, str] | None) -> dict[str, str]:
    merged = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"}
    merged.update(env or {})
    merged.update(spec.env)
    merged.update(lease_identity_env(spec.lease_dir))
    return merged


def give(path: Path, uid: int, gid: int) -> None:
    """Hand a folder (and what is in it) to the lease uid: the agent makes it as root."""
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


@dataclass
class ContainerSandbox:
    """A lease member's processes: its cgroup (what the guard and destroy() count) holding
    bubblewrap containers of the lease's uid."""

    lease_id: str
    cgroup: CgroupSandbox
    limits: Limits
    spec: ContainerSpec | None  # None: re-attached after a restart, can only be destroyed
    bwrap: str = "bwrap"

    @property
    def path(self) -> str:
        return self.cgroup.path

    @property
    def confinement(self) -> str:
        return self.cgroup.confinement

    def owns(self, pid: int) -> bool:
        return self.cgroup.owns(pid)

    def pids(self) -> set[int]:
        return self.cgroup.pids()

    def give(self, path: Path) -> None:
        if self.spec is not None:
            give(path, self.spec.uid, self.spec.gid)

    def join_network(self, netns: Path) -> None:
        """Run the next spawns in the lease's own network namespace (its mesh is up there,
        mesh/leasenet.py) instead of the one the container was made with."""
        if self.spec is None:
            raise SandboxError(f"lease {self.lease_id}: re-attached container takes no spawn")
        self.spec = replace(self.spec, netns=netns, share_host_network=False)

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        if self.spec is None:
            raise SandboxError(f"lease {self.lease_id}: re-attached container takes no spawn")
        inner = spawn_argv(self.bwrap, self.spec, argv)
        return self.cgroup.spawn(self.limits.enter(inner), container_env(self.spec, env))

    def destroy(self) -> None:
        self.cgroup.destroy()
        self.limits.remove()


class Containers:
    """Makes and re-attaches the lease containers of one worker, over the cgroups of its
    Sandboxes (so the guard and destroy() keep their notion of the lease's processes)."""

    def __init__(self, sandboxes: Sandboxes, worker_id: str, bwrap: str) -> None:
        if sandboxes.root is None:
            raise SandboxError("lease containers need a writable cgroup v2")
        self.sandboxes = sandboxes
        self.root: Path = sandboxes.root
        self.worker_id = worker_id
        self.bwrap = bwrap

    @property
    def kind(self) -> str:
        return f"bwrap+{self.sandboxes.kind}"

    def create(self, spec: ContainerSpec, cores: Sequence[int] = ()) -> ContainerSandbox:
        """The lease's container, its lease init running inside."""
        cgroup = CgroupSandbox.create(self.root, spec.lease_id, cores, self.sandboxes.cpuset_root)
        try:
            limits = Limits.create(
                cgroup.directory, self.worker_id, spec.lease_id, spec.memory_bytes, spec.pids_max
            )
        except SandboxError:
            cgroup.destroy()
            raise
        box = ContainerSandbox(spec.lease_id, cgroup, limits, spec, self.bwrap)
        try:
            box.spawn([])
        except (SandboxError, OSError):
            box.destroy()
            raise
        return box

    def attach(self, lease_id: str, path: str) -> ContainerSandbox | None:
        cgroup = self.sandboxes.attach(lease_id, path)
        if not isinstance(cgroup, CgroupSandbox):
            return None
        return ContainerSandbox(lease_id, cgroup, Limits.attach(self.worker_id, lease_id), None)
