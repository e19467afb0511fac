"""The Docker lease sandbox: its container-create body (pure), and an adversary inside a
real container of a private engine (tests/dockerd.py) that tries each escape, each test
asserting the exact failure it meets (modelled on test_container.py)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.agent.sandbox.cgroup import Sandboxes, find_cgroup2_root, find_cpuset_root
from gpupool.agent.sandbox.container import UID_BASE, give, lease_uid, uids_in_use
from gpupool.agent.sandbox.cryptdisk import CryptDiskUnavailable, check_available
from gpupool.agent.sandbox.disks import LeaseDisks
from gpupool.agent.sandbox.docker import DockerContainers, DockerSandbox, DockerSpec, create_body
from gpupool.agent.sandbox.dockerapi import DockerEngine, socket_path
from gpupool.agent.sandbox.dockerimage import default_image, rootfs_tar
from tests.unit.agent.test_container import ATTACK  # the same adversary as for bwrap

CGROUP = find_cgroup2_root()
UID = UID_BASE + 7
needs_cgroup = pytest.mark.skipif(CGROUP is None, reason="needs a writable cgroup v2 (root)")


# the create body, without an engine ------------------------------------------------------


def test_body_drops_every_privilege_and_binds_only_the_lease_folder_writable() -> None:
    spec = DockerSpec("l1", "w1", Path("/srv/l1"), UID, UID, pids_max=64, memory_bytes=1 << 30)
    body = create_body(spec, "/gpupool-w1/l1")
    host = body["HostConfig"]
    assert body["User"] == f"{UID}:{UID}" and body["Image"] == default_image()
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] and host["Init"] and host["IpcMode"] == "private"
    assert host["PidsLimit"] == 64 and host["Memory"] == host["MemorySwap"] == 1 << 30
    assert host["CgroupParent"] == "/gpupool-w1/l1" and host["NetworkMode"] == "host"
    writable = [b for b in host["Binds"] if not b.endswith(":ro")]
    assert writable == ["/srv/l1:/srv/l1:rw"]
    assert f"{sys.prefix}:{sys.prefix}:ro" in host["Binds"]  # the agent's Python, read-only
    assert "Privileged" not in host and "DeviceRequests" not in host
    assert "Sysctls" not in host  # the engine refuses net.* sysctls in the host network


def test_body_of_a_gpu_lease_in_its_own_network() -> None:
    spec = DockerSpec(
        "l1", "w1", Path("/srv/l1"), UID, UID, netns_name="gpltest", cores=(3, 2),
        device_nodes=("/dev/nvidia3", "/dev/nvidiactl"), gpu_uuids=("GPU-a",),
        env={"CUDA_VISIBLE_DEVICES": "GPU-a"}, image="python:3.11",
    )  # fmt: skip
    body = create_body(spec, None, nvidia_runtime=True)
    host = body["HostConfig"]
    assert host["NetworkMode"] == "none" and host["CpusetCpus"] == "2,3"
    assert [d["PathOnHost"] for d in host["Devices"]] == ["/dev/nvidia3", "/dev/nvidiactl"]
    assert host["DeviceRequests"][0]["DeviceIDs"] == ["GPU-a"]
    assert "CUDA_VISIBLE_DEVICES=GPU-a" in body["Env"] and body["Image"] == "python:3.11"
    assert host["Binds"] == ["/srv/l1:/srv/l1:rw"]  # a renter's image gets no host folder
    assert "CgroupParent" not in host
    assert host["Sysctls"]["net.ipv6.conf.default.disable_ipv6"] == "0"  # the mesh's ULA


def test_bad_specs_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="outside the lease range"):
        DockerSpec("l1", "w1", Path("/srv/l1"), 0, 0)
    with pytest.raises(ValueError, match="not a path under /dev"):
        DockerSpec("l1", "w1", Path("/srv/l1"), UID, UID, device_nodes=("/etc/shadow",))
    with pytest.raises(ValueError, match="only a unix:// socket"):
        socket_path("tcp://10.0.0.1:2375")
    assert socket_path("unix:///run/x.sock") == Path("/run/x.sock")


def test_default_image_is_the_same_on_every_build() -> None:
    assert rootfs_tar() == rootfs_tar()
    assert default_image().startswith("gpupool-lease:")


def test_an_engine_that_is_absent_does_not_answer(tmp_path: Path) -> None:
    assert not DockerEngine(tmp_path / "none.sock").answers()


# an adversary in a real container ----------------------------------------------------------


class Lab:
    def __init__(self, base: Path, engine: DockerEngine) -> None:
        self.base = base
        self.worker = f"gpd-{secrets.token_hex(3)}"
        assert CGROUP is not None
        self.sandboxes = Sandboxes(self.worker, CGROUP, find_cpuset_root())
        self.containers = DockerContainers(self.sandboxes, self.worker, engine)
        self.boxes: list[DockerSandbox] = []
        self.netns: list[str] = []

    def lease(self, name: str, lease_dir: Path | None = None, **kw: object) -> DockerSandbox:
        if lease_dir is None:
            lease_dir = self.base / "leases" / name
            lease_dir.mkdir(parents=True, mode=0o700)
        taken = uids_in_use() | {int(b.user.split(":")[0]) for b in self.boxes}
        uid = lease_uid(f"{self.worker}/{name}", taken)
        give(lease_dir, uid, uid)
        if kw.get("netns_name"):
            self.netns.append(str(kw["netns_name"]))
        spec = DockerSpec(name, self.worker, lease_dir, uid, uid, **kw)  # type: ignore[arg-type]
        box = self.containers.create(spec)
        self.boxes.append(box)
        return box

    def close(self) -> None:
        for box in self.boxes:
            box.destroy()
        for name in self.netns:
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
        self.sandboxes.release()


@pytest.fixture
def lab(docker_socket: Path) -> Iterator[Lab]:
    if CGROUP is None:
        pytest.skip("needs a writable cgroup v2 (root)")
    base = Path(tempfile.mkdtemp(prefix="gpd-"))
    engine = DockerEngine(docker_socket)
    lab = Lab(base, engine)
    try:
        yield lab
    finally:
        lab.close()
        engine.close()
        shutil.rmtree(base, ignore_errors=True)


def attempt(box: DockerSandbox, code: str, timeout: float = 20.0) -> dict[str, object]:
    result = Path(box.workdir) / "result.json"
    result.unlink(missing_ok=True)
    box.spawn([sys.executable, "-c", ATTACK, code])
    deadline = time.monotonic() + timeout
    while not result.exists():
        assert time.monotonic() < deadline, "the attack never reported"
        time.sleep(0.05)
    answer: dict[str, object] = json.loads(result.read_text())
    return answer


def test_agent_state_and_another_lease_files_are_out_of_sight(lab: Lab) -> None:
    state = lab.base / "agent-state"
    state.mkdir(mode=0o700)
    (state / "identity.key").write_bytes(b"secret")
    other = lab.lease("l-b")
    (Path(other.workdir) / "model.bin").write_bytes(b"weights")
    box = lab.lease("l-a")
    assert attempt(box, f"open({str(state / 'identity.key')!r}).read()")["errno"] == 2
    assert attempt(box, f"os.listdir({str(state)!r})")["errno"] == 2  # ENOENT: not there
    assert attempt(box, f"open({other.workdir + '/model.bin'!r}).read()")["errno"] == 2


def test_processes_outside_cannot_be_signalled_nor_listed(lab: Lab) -> None:
    marker = f"{secrets.randbelow(10**6)}.5"
    agent = subprocess.Popen(["sleep", marker])  # stands for the agent
    try:
        other = lab.lease("l-b")
        box = lab.lease("l-a")
        other_pid = min(other.pids())
        for pid in (agent.pid, other_pid):
            assert attempt(box, f"os.kill({pid}, 9)")["errno"] == 3  # ESRCH
        assert agent.poll() is None and other_pid in other.pids()
        code = (
            "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
            "seen = [open(f'/proc/{p}/cmdline').read() for p in pids]\n"
            "json.dump(seen, open('seen.json', 'w'))"
        )
        assert attempt(box, code)["ok"]
        seen = json.loads((Path(box.workdir) / "seen.json").read_text())
        assert seen and not any(marker in s for s in seen)
        assert len(seen) <= 4  # docker-init, the lease init, the attack
    finally:
        agent.kill()
        agent.wait()


def test_writes_outside_the_lease_folder_fail(lab: Lab) -> None:
    box = lab.lease("l-a")
    for path in ("/usr/gpd-x", f"{sys.prefix}/gpd-x", "/gpd-x", "/etc/passwd", "/sbin/gpd-x"):
        answer = attempt(box, f"open({path!r}, 'a')")
        assert answer["errno"] == 30, (path, answer)  # EROFS
    assert attempt(box, "open('own-file', 'w').write('x')")["ok"]
    assert attempt(box, "open('/tmp/scratch', 'w').write('x')")["ok"]  # its own tmpfs


def test_no_capability_can_be_gained(lab: Lab) -> None:
    box = lab.lease("l-a")
    code = (
        "st = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "assert int(st['CapEff'], 16) == 0 and int(st['CapBnd'], 16) == 0, st\n"
        "assert st['NoNewPrivs'].strip() == '1'\n"
        "os.setuid(0)"
    )
    assert attempt(box, code)["errno"] == 1  # EPERM
    code = (
        "import ctypes\n"
        "if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:\n"  # CLONE_NEWUSER
        "    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))"
    )
    assert attempt(box, code)["errno"] == 1  # EPERM: the engine's seccomp profile


def test_host_and_lan_addresses_are_unreachable_from_the_lease_netns(lab: Lab) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 18317))  # on the host's loopback, which the lease must not see
    listener.listen()
    try:
        box = lab.lease("l-a", netns_name=f"gpd{secrets.token_hex(4)}")
        assert box.netns is not None and box.netns.exists()
        links = subprocess.run(
            ["ip", "-n", box.netns.name, "-o", "link"], capture_output=True, text=True, check=True
        ).stdout
        assert [x.split(":")[1].strip() for x in links.splitlines()] == ["lo"]
        connect = "import socket; socket.create_connection(({!r}, {}), timeout=3)"
        assert attempt(box, connect.format("127.0.0.1", 18317))["errno"] == 111  # ECONNREFUSED
        assert attempt(box, connect.format("10.213.0.1", 18317))["errno"] == 101  # ENETUNREACH
    finally:
        listener.close()


def test_the_lease_processes_are_the_container_and_end_with_it(lab: Lab) -> None:
    box = lab.lease("l-a", cores=(0,), pids_max=64)
    pid = box.spawn(["sleep", "30"])
    assert box.owns(pid) and len(box.pids()) >= 3
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    assert fields["Cpus_allowed_list"].strip() == "0"
    again = lab.containers.attach("l-a", box.path)  # as a restarted agent finds it
    assert again is not None and again.pids() == box.pids()
    assert [b.path for b in lab.containers.leftovers(set())] == [box.path]
    again.destroy()
    assert not box.pids() and not os.path.exists(f"/proc/{pid}")
    assert lab.containers.attach("l-a", box.path) is None
    assert not (lab.containers.root / "l-a").exists()
    lab.boxes.remove(box)


def test_a_file_written_with_plain_open_is_ciphertext_on_the_host(lab: Lab) -> None:
    try:
        check_available()
    except CryptDiskUnavailable as exc:
        pytest.skip(str(exc))
    disks = LeaseDisks(lab.base / "state", lab.worker)
    uid = lease_uid(f"{lab.worker}/l-c", uids_in_use())
    disk = disks.create("l-c", (uid, uid))
    try:
        box = lab.lease("l-c", lease_dir=disk.plain)
        secret = secrets.token_hex(16)
        assert attempt(box, f"open('weights.txt', 'w').write({secret!r})")["ok"]
        stored = b"".join(p.read_bytes() for p in disk.cipher.rglob("*") if p.is_file())
        assert (disk.plain / "weights.txt").read_text() == secret
        assert secret.encode() not in stored and len(stored) > len(secret)
        box.destroy()
        lab.boxes.remove(box)
    finally:
        disks.destroy("l-c")
    assert not disk.cipher.exists()


def test_a_spawn_is_the_lease_whatever_environment_its_caller_passes(lab: Lab) -> None:
    box = lab.lease("l-e")
    out = Path(box.workdir) / "env.json"
    dump = f"import json, os; json.dump(dict(os.environ), open({str(out)!r} + '.t', 'w')); "
    dump += f"os.rename({str(out)!r} + '.t', {str(out)!r})"
    # what Ray's start passes: the agent's own environment, HOME=/root among it
    box.spawn([sys.executable, "-c", dump], {"HOME": "/root", "USER": "root", "TMPDIR": "/x"})
    deadline = time.monotonic() + 20
    while not out.exists():
        assert time.monotonic() < deadline, "the spawn never wrote its environment"
        time.sleep(0.05)
    env = json.loads(out.read_text())
    assert (env["HOME"], env["USER"], env["TMPDIR"]) == (box.workdir, "lease", "/tmp")
