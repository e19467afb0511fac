"""The lease container against an adversary: a real process inside a real bubblewrap
container tries each escape, and each test asserts the exact failure it meets."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.agent.sandbox.cgroup import Sandboxes, find_cgroup2_root
from gpupool.agent.sandbox.container import (
    Containers,
    ContainerSandbox,
    ContainerSpec,
    bwrap_path,
    give,
    lease_uid,
    uids_in_use,
)

BWRAP = bwrap_path()
CGROUP = find_cgroup2_root()
pytestmark = pytest.mark.skipif(
    BWRAP is None or CGROUP is None,
    reason="needs root, bwrap, setpriv and a writable cgroup v2",
)

# Runs inside the container: tries one thing, writes what happened to result.json.
ATTACK = """
import json, os, sys
out = {}
try:
    exec(sys.argv[1])
    out["ok"] = True
except OSError as exc:
    out["errno"] = exc.errno
    out["message"] = exc.strerror
except Exception as exc:
    out["error"] = repr(exc)
with open("result.json.tmp", "w") as f:
    json.dump(out, f)
os.rename("result.json.tmp", "result.json")
"""


class Lab:
    """Containers of one fake worker, under a cgroup and temp folder of its own."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.worker = f"gpc-{secrets.token_hex(3)}"
        assert CGROUP is not None and BWRAP is not None
        self.sandboxes = Sandboxes(self.worker, CGROUP)
        self.containers = Containers(self.sandboxes, self.worker, BWRAP)
        self.boxes: list[ContainerSandbox] = []

    def lease(self, name: str, **kw: object) -> ContainerSandbox:
        lease_dir = self.base / "leases" / name
        lease_dir.mkdir(parents=True, mode=0o700)
        uid = lease_uid(
            f"{self.worker}/{name}", uids_in_use() | {b.spec.uid for b in self.boxes if b.spec}
        )
        give(lease_dir, uid, uid)
        spec = ContainerSpec(name, lease_dir, uid, uid, **kw)  # type: ignore[arg-type]
        box = self.containers.create(spec)
        self.boxes.append(box)
        return box

    def close(self) -> None:
        for box in self.boxes:
            box.destroy()
        self.sandboxes.release()


@pytest.fixture
def lab() -> Iterator[Lab]:
    base = Path(tempfile.mkdtemp(prefix="gpc-"))
    lab = Lab(base)
    try:
        yield lab
    finally:
        lab.close()
        shutil.rmtree(base, ignore_errors=True)


def attempt(box: ContainerSandbox, code: str, timeout: float = 20.0) -> dict[str, object]:
    """Run `code` inside the container; what it raised (errno, message) or ok."""
    assert box.spec is not None
    result = box.spec.lease_dir / "result.json"
    result.unlink(missing_ok=True)
    box.spawn([sys.executable, "-c", ATTACK, code])
    deadline = time.monotonic() + timeout
    while not result.exists():
        assert time.monotonic() < deadline, "the attack never reported"
        time.sleep(0.05)
    answer: dict[str, object] = json.loads(result.read_text())
    return answer


def test_agent_identity_key_and_state_folder_are_out_of_sight(lab: Lab) -> None:
    state = lab.base / "agent-state"
    state.mkdir(mode=0o700)
    key = state / "identity.key"
    key.write_bytes(b"secret")
    key.chmod(0o600)
    box = lab.lease("l-a")
    assert attempt(box, f"open({str(key)!r}).read()")["errno"] == 2  # ENOENT
    assert attempt(box, f"os.listdir({str(state)!r})")["errno"] == 2


def test_processes_outside_cannot_be_signalled(lab: Lab) -> None:
    agent = subprocess.Popen(["sleep", "60"])  # stands for the agent
    try:
        other = lab.lease("l-b")
        box = lab.lease("l-a")
        other_pid = min(other.pids())
        for pid in (agent.pid, other_pid):
            answer = attempt(box, f"os.kill({pid}, 9)")
            assert answer["errno"] == 3, answer  # ESRCH: no such process in its PID namespace
        assert agent.poll() is None and other_pid in other.pids()
    finally:
        agent.kill()
        agent.wait()


def test_only_the_lease_own_processes_are_listed(lab: Lab) -> None:
    marker = f"{secrets.randbelow(10**6)}.5"
    outside = subprocess.Popen(["sleep", marker])
    try:
        box = lab.lease("l-a")
        code = (
            "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
            "seen = [open(f'/proc/{p}/cmdline').read() for p in pids]\n"
            "json.dump(seen, open('seen.json', 'w'))"
        )
        assert attempt(box, code)["ok"]
        assert box.spec is not None
        seen = json.loads((box.spec.lease_dir / "seen.json").read_text())
        assert seen and not any(marker in s for s in seen)
        assert len(seen) <= 5  # bwrap's init, the lease init, the attack and its wrapper
    finally:
        outside.kill()
        outside.wait()


def test_another_lease_files_are_out_of_sight(lab: Lab) -> None:
    other = lab.lease("l-b")
    assert other.spec is not None
    (other.spec.lease_dir / "model.bin").write_bytes(b"weights")
    box = lab.lease("l-a")
    answer = attempt(box, f"open({str(other.spec.lease_dir / 'model.bin')!r}).read()")
    assert answer["errno"] == 2  # ENOENT: not mounted in this container
    # and on the host its folder belongs to another uid, 0700
    assert other.spec.uid != (box.spec.uid if box.spec else None)


def test_writes_outside_the_lease_folders_fail(lab: Lab) -> None:
    box = lab.lease("l-a")
    # EROFS: a new file on a read-only bind; EACCES: the host's file is not the uid's
    expected = {"/usr/gpc-x": 30, f"{sys.prefix}/gpc-x": 30, "/etc/hosts": 13, "/gpc-x": 30}
    for path, errno in expected.items():
        answer = attempt(box, f"open({path!r}, 'a')")
        assert answer["errno"] == errno, (path, answer)
    assert attempt(box, "open('own-file', 'w').write('x')")["ok"]


def test_no_capability_can_be_gained(lab: Lab) -> None:
    box = lab.lease("l-a")
    code = (
        "st = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "assert int(st['CapEff'], 16) == 0 and int(st['CapBnd'], 16) == 0\n"
        "assert st['NoNewPrivs'].strip() == '1'\n"  # setuid bits give nothing
        "os.setuid(0)"
    )
    assert attempt(box, code)["errno"] == 22  # EINVAL: uid 0 does not exist in its namespace
    # no new user namespace (bwrap --disable-userns leaves the kernel's count at its limit)
    code = (
        "import ctypes\n"
        "if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:\n"  # CLONE_NEWUSER
        "    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))"
    )
    assert attempt(box, code)["errno"] == 28  # ENOSPC


def test_setuid_binary_runs_as_the_lease_uid(lab: Lab) -> None:
    su = shutil.which("su")
    if su is None or not os.stat(su).st_mode & 0o4000:
        pytest.skip("no setuid su on this machine")
    box = lab.lease("l-a")
    code = (
        f"r = subprocess.run([{su!r}, '-c', 'id -u'], capture_output=True, text=True, input='')\n"
        "assert r.returncode != 0, r.stdout\n"
        "raise PermissionError(1, r.stderr.strip())"
    )
    answer = attempt(box, "import subprocess\n" + code)
    assert answer["errno"] == 1 and answer["message"]


@pytest.fixture
def test_netns() -> Iterator[tuple[str, str]]:
    """A namespace the test made, with an address of its own."""
    name = f"gpc-n{secrets.token_hex(3)}"
    address = "10.251.7.1"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip = ["ip", "-n", name]
        link = ["link", "add", "gpc-a0", "type", "veth", "peer", "name", "gpc-b0"]
        subprocess.run([*ip, *link], check=True)
        subprocess.run([*ip, "addr", "add", f"{address}/24", "dev", "gpc-a0"], check=True)
        for dev in ("gpc-a0", "gpc-b0"):
            subprocess.run([*ip, "link", "set", dev, "up"], check=True)
        subprocess.run([*ip, "link", "set", "lo", "up"], check=True)
        yield name, address
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_fresh_network_namespace_reaches_nothing(lab: Lab, test_netns: tuple[str, str]) -> None:
    _, address = test_netns
    box = lab.lease("l-a")
    answer = attempt(box, f"import socket; socket.create_connection(({address!r}, 18101), 2)")
    assert answer["errno"] == 101  # ENETUNREACH: only loopback inside


def test_named_network_namespace_is_joined(lab: Lab, test_netns: tuple[str, str]) -> None:
    name, address = test_netns
    box = lab.lease("l-a", netns=Path(f"/run/netns/{name}"))
    answer = attempt(box, f"import socket; socket.create_connection(({address!r}, 18102), 2)")
    assert answer["errno"] == 111  # ECONNREFUSED: the address is there, nothing listens


def test_pids_limit_holds(lab: Lab) -> None:
    box = lab.lease("l-a", pids_max=24)
    code = (
        "kids = []\n"
        "try:\n"
        "    for _ in range(100):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            import time; time.sleep(30); os._exit(0)\n"
        "        kids.append(pid)\n"
        "finally:\n"
        "    [os.kill(k, 9) for k in kids]"
    )
    assert attempt(box, code)["errno"] == 11  # EAGAIN: fork refused at the limit


def test_memory_limit_kills_the_hog(lab: Lab) -> None:
    box = lab.lease("l-a", memory_bytes=64 << 20)
    assert box.spec is not None
    result = box.spec.lease_dir / "result.json"
    box.spawn(
        [
            sys.executable,
            "-c",
            ATTACK,
            "b = bytearray(256 << 20); b[::4096] = b'x' * (len(b) // 4096)",
        ]
    )
    time.sleep(3)
    assert not result.exists()  # the OOM killer ended it before it could report
    assert box.limits.v1_dirs or (Path(box.path) / "memory.max").exists()


def test_destroy_leaves_no_process_of_the_lease_uid(lab: Lab) -> None:
    box = lab.lease("l-a")
    assert box.spec is not None
    uid = box.spec.uid
    assert attempt(
        box, "import subprocess; subprocess.Popen(['sleep', '300'], start_new_session=True)"
    )["ok"]
    assert uid in uids_in_use()
    box.destroy()
    lab.boxes.remove(box)
    assert uid not in uids_in_use()
    assert not Path(box.path).exists()
    assert all(not d.exists() for d in box.limits.v1_dirs)
