"""The images a Docker lease container runs.

The default image is made here, with no registry (a supplier's machine may reach none): a
`docker import` of a root filesystem of empty mount points, laid out like the host's (its
/bin a link to usr/bin where the host's is). The host's system folders and the agent's own
Python are bound into it read-only at run time, as the bubblewrap container binds them
(container.py), so the lease init, Ray and the renter's Python programs run the agent's
exact versions. Its tag is a hash of that layout: a host whose layout changes gets a new one.

A renter's image (`gpupool cluster create --image`) is used as it is: present on the engine
or pulled within PULL_TIMEOUT; it brings its own Python and Ray (docker.py checks the Ray
version before `ray start`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import sys
import tarfile
from pathlib import Path

from gpupool.agent.sandbox.container import _ETC, _SYSTEM, python_paths
from gpupool.agent.sandbox.dockerapi import DockerEngine, DockerError

IMAGE_REPO = "gpupool-lease"
# The pull runs inside the agent's reconciliation, which it holds: bounded well below the
# provisioning deadline. A supplier serving big images pulls them ahead (docs/supplier.md).
PULL_TIMEOUT = 30.0
MOUNT_POINTS = ("etc", "proc", "sys", "dev", "tmp", "run", "var", "home", "sbin")
INIT_DIR = "/sbin"
# The engine writes these itself (its own /etc/hosts and resolv.conf for the container).
_ENGINE_ETC = ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname")


def _layout() -> list[tuple[str, str | None]]:
    """(path in the image, link target or None for a folder), sorted."""
    entries: dict[str, str | None] = {name: None for name in MOUNT_POINTS}
    for path in _SYSTEM:
        p = Path(path)
        if path == INIT_DIR:
            continue  # a folder of its own: the engine mounts its docker-init there
        if p.is_symlink():
            entries[path.lstrip("/")] = os.readlink(p)
        elif p.is_dir():
            entries[path.lstrip("/")] = None
    for p in python_paths():
        for parent in [*reversed(p.parents), p]:
            if parent != Path("/"):
                entries.setdefault(str(parent).lstrip("/"), None)
    return sorted(entries.items())


def rootfs_tar() -> bytes:
    """The default image's root filesystem, byte for byte the same on every call."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, target in _layout():
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if target is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            else:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
    return buffer.getvalue()


@functools.cache
def default_image() -> str:
    digest = hashlib.sha256(rootfs_tar()).hexdigest()[:12]
    return f"{IMAGE_REPO}:{digest}"


def default_image_binds() -> list[str]:
    """The host's read-only folders the default image runs with (`src:dst:ro`)."""
    binds = [
        f"{d}:{d}:ro"
        for d in _SYSTEM
        if d != INIT_DIR and Path(d).is_dir() and not Path(d).is_symlink()
    ]
    binds += [f"{p}:{p}:ro" for p in python_paths()]
    binds += [f"{e}:{e}:ro" for e in _ETC if e not in _ENGINE_ETC and Path(e).exists()]
    return binds


def default_init() -> list[str]:
    """The default image's long-lived process (docker-init runs it as pid 2)."""
    return [sys.executable, "-m", "gpupool.agent.sandbox.lease_init"]


def ensure_image(engine: DockerEngine, image: str | None) -> None:
    """Make the default image if the engine lacks it; a renter's image must be there or
    come within PULL_TIMEOUT (DockerError says which image and why not)."""
    if image is None:
        name = default_image()
        if not engine.has_image(name):
            repo, _, tag = name.partition(":")
            engine.import_image(rootfs_tar(), repo, tag)
        return
    if engine.has_image(image):
        return
    try:
        engine.pull(image, timeout=PULL_TIMEOUT)
    except DockerError as exc:
        raise DockerError(
            f"image {image} is not on this worker and cannot be pulled: {exc}"
        ) from exc
    if not engine.has_image(image):
        raise DockerError(f"image {image} is not on this worker after a pull")
