"""A private Docker engine for the tests that need one: its own data, exec root, pid file
and socket under a temp folder, and nothing on the machine's network (no iptables, no
masquerading, no forwarding, no bridge). Never the machine's own engine or socket."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.processes import stop_group

DOCKERD = "/usr/sbin/dockerd"
START_SECONDS = 60.0
BUSYBOX = "/bin/busybox"
# What the host's (dynamically linked) Debian busybox loads.
BUSYBOX_LIBS = ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libresolv.so.2",
                "/lib64/ld-linux-x86-64.so.2")  # fmt: skip
APPLETS = ("sh", "sleep", "cat", "tr", "grep", "id", "wget", "nc")


def dockerd_missing() -> str | None:
    """Why the Docker tests cannot run here, or None."""
    if not os.path.exists(DOCKERD):
        return f"needs Debian's dockerd at {DOCKERD} (apt-get install docker.io)"
    if os.geteuid() != 0:
        return "needs root to run a private dockerd"
    return None


def busybox_missing() -> str | None:
    """Why a busybox image cannot be made here, or None."""
    for path in (BUSYBOX, *BUSYBOX_LIBS):
        if not os.path.exists(path):
            return f"needs {path} for a busybox test image (apt-get install busybox)"
    return None


def busybox_rootfs() -> bytes:
    """A root filesystem for `docker import`: the host's busybox with the libraries it
    links and a few applets, and no Python or Ray (a renter's image that brings none)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(os.path.realpath(BUSYBOX), "bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        for lib in BUSYBOX_LIBS:
            tar.add(os.path.realpath(lib), lib.lstrip("/"))
        for folder in ("tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
    return buffer.getvalue()


def _start(base: Path, driver: str) -> subprocess.Popen[bytes]:
    argv = [
        DOCKERD,
        f"--data-root={base / 'data'}",
        f"--exec-root={base / 'exec'}",
        f"--pidfile={base / 'dockerd.pid'}",
        f"--host=unix://{base / 'docker.sock'}",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
        "--ip-forward=false",
        "--bridge=none",
        f"--storage-driver={driver}",
        f"--containerd-namespace={base.name}",
        f"--containerd-plugins-namespace={base.name}-plugins",
    ]
    log = (base / f"dockerd-{driver}.log").open("wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.contextmanager
def private_dockerd() -> Iterator[Path]:
    """Start a private dockerd (overlay2, else vfs); yield its socket; stop it at the end."""
    from gpupool.agent.sandbox.dockerapi import DockerEngine

    base = Path(tempfile.mkdtemp(prefix="gpd-dockerd-", dir="/tmp"))  # short: socket paths
    proc = None
    try:
        for driver in ("overlay2", "vfs"):
            proc = _start(base, driver)
            engine = DockerEngine(base / "docker.sock")
            deadline = time.monotonic() + START_SECONDS
            while proc.poll() is None and time.monotonic() < deadline and not engine.answers():
                time.sleep(0.2)
            up = proc.poll() is None and engine.answers()
            engine.close()
            if up:
                break
            stop_group(proc)
            proc = None
        if proc is None:
            raise RuntimeError(f"no private dockerd started; see {base}/dockerd-*.log")
        yield base / "docker.sock"
    finally:
        if proc is not None:
            stop_group(proc)
        for mount in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            target = mount.split()[1]
            if target.startswith(str(base)):
                subprocess.run(["umount", "-l", target], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
