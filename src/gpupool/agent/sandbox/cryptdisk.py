"""The lease's encrypted disk: a gocryptfs (FUSE) filesystem that the lease's container binds
as its writable folder, so whatever the renter's programs write with plain `open()` is
ciphertext on the supplier's disk (file contents and names alike).

Life of the key. At bring-up the agent draws a random 256-bit password, hands it to
`gocryptfs -init` and to the mount on stdin, and forgets it: it is never on a command line,
in an environment, in a log or on disk. gocryptfs.conf in the cipher folder holds the master
key wrapped by that password. The gocryptfs daemon keeps the master key in its memory for the
life of the mount, and the mount outlives an agent restart, so a restarted agent `adopt`s the
live mount instead of needing the password again. At lease end `destroy` unmounts (the
daemon exits, and the master key with it), deletes gocryptfs.conf and removes the
ciphertext. A copy of the disk taken at any time, conf included, needs the password to open.

scrypt cost: gocryptfs's default logN=16 exists to slow down guessing of human passwords.
Ours is 256 random bits, so guessing is hopeless at any cost and the lowest cost gocryptfs
accepts (logN=10) loses nothing while keeping the mount off a lease's start-up time
(benchmarks/cryptdisk.py measures it).

`PlainDisk` is the explicit opt-out (`gpupool agent run --no-encrypted-disk`): the same
interface over an ordinary folder, for machines without FUSE whose supplier says so.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpupool.agent.files import shred

PLAIN_DIR = "disk"
CIPHER_DIR = "disk.cipher"
CONF_FILE = "gocryptfs.conf"
SCRYPT_LOG_N = 10
FUSE_DEVICE = Path("/dev/fuse")
UNMOUNT_WAIT_SECONDS = 3.0
_FSTYPE = "fuse.gocryptfs"
# The daemon gets no part of the agent's environment (the supplier key lives there).
_DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


class CryptDiskError(Exception):
    """The encrypted disk could not be made, mounted or destroyed."""


class CryptDiskUnavailable(CryptDiskError):
    """This machine cannot encrypt lease disks (gocryptfs or FUSE missing)."""


class LeaseDisk(Protocol):
    @property
    def plain(self) -> Path:
        """The folder the lease's container binds as its writable disk."""
        ...

    @property
    def encrypted(self) -> bool: ...

    def destroy(self) -> None:
        """Make the lease's data unreadable and remove it; a no-op once done."""
        ...


def check_available() -> None:
    """Raise CryptDiskUnavailable saying what is missing, or return."""
    if shutil.which("gocryptfs") is None:
        raise CryptDiskUnavailable(
            "gocryptfs is not installed (package gocryptfs): lease disks cannot be encrypted"
        )
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        raise CryptDiskUnavailable(
            f"{FUSE_DEVICE} is missing or not usable (load the fuse module; in a container, "
            "pass the device in): lease disks cannot be encrypted"
        )


def _new_password() -> bytearray:
    return bytearray(secrets.token_hex(32).encode())


def _unescape(field: str) -> str:
    """A mountinfo path: the kernel writes space, tab, newline and backslash as \\ooo."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def gocryptfs_mounts(mountinfo: str) -> dict[Path, Path]:
    """Mount point -> cipher folder of every gocryptfs mount, from /proc/self/mountinfo."""
    found: dict[Path, Path] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if len(fields) >= 2 and fields[0] == _FSTYPE:
            found[Path(_unescape(left.split()[4]))] = Path(_unescape(fields[1]))
    return found


def _mounts() -> dict[Path, Path]:
    return gocryptfs_mounts(Path("/proc/self/mountinfo").read_text())


def _gocryptfs(args: list[str], password: bytearray) -> None:
    # stderr goes to a file, not a pipe: the daemon inherits it and would hold a pipe open.
    with tempfile.TemporaryFile() as errors:
        try:
            done = subprocess.run(
                ["gocryptfs", "-q", *args],
                input=bytes(password) + b"\n",
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env=_DAEMON_ENV,
                timeout=60,
                check=False,
            )
        except FileNotFoundError:
            raise CryptDiskUnavailable("gocryptfs is not installed (package gocryptfs)") from None
        except subprocess.TimeoutExpired:
            raise CryptDiskError(f"gocryptfs {args[0]} did not finish in 60 s") from None
        if done.returncode != 0:
            errors.seek(0)
            text = " ".join(errors.read().decode(errors="replace").split())
            raise CryptDiskError(f"gocryptfs {args[0]} failed (exit {done.returncode}): {text}")


def _daemon_pids(cipher: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"gocryptfs") and os.fsencode(cipher) in argv:
                    pids.append(int(entry.name))
    return pids


@dataclass(frozen=True, slots=True)
class CryptDisk:
    plain: Path
    cipher: Path

    @property
    def encrypted(self) -> bool:
        return True

    @classmethod
    def at(cls, lease_dir: Path, plain: Path | None = None) -> CryptDisk:
        """The disk of the lease whose folder is `lease_dir`, mounted or not: its ciphertext
        in the lease folder, its plaintext at `plain` (default: `lease_dir/disk`; the agent
        mounts it at the lease's short Ray temp dir path, Ray's sockets live there)."""
        return cls(plain or lease_dir / PLAIN_DIR, lease_dir / CIPHER_DIR)

    @classmethod
    def create(
        cls, lease_dir: Path, owner: tuple[int, int] | None = None, plain: Path | None = None
    ) -> CryptDisk:
        """A fresh encrypted disk, mounted at `.plain` for every uid (allow_other) but with
        its root owned by `owner` (uid, gid) and mode 0700, so the lease's uid and root, and
        no other, may enter it. Raises CryptDiskUnavailable or CryptDiskError."""
        check_available()
        disk = cls.at(lease_dir, plain)
        if disk.mounted:
            raise CryptDiskError(f"{disk.plain} is already mounted: adopt it instead")
        lease_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for folder in (disk.cipher, disk.plain):
            if folder.exists() and any(folder.iterdir()):
                raise CryptDiskError(f"{folder} is not empty: a previous disk was not destroyed")
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        password = _new_password()
        try:
            _gocryptfs(["-init", "-scryptn", str(SCRYPT_LOG_N), str(disk.cipher)], password)
            _gocryptfs(["-allow_other", str(disk.cipher), str(disk.plain)], password)
        except CryptDiskError:
            disk.destroy()
            raise
        finally:
            password[:] = bytes(len(password))
        try:
            if owner is not None:
                os.chown(disk.plain, *owner)
            disk.plain.chmod(0o700)
        except OSError as exc:
            disk.destroy()
            raise CryptDiskError(f"cannot hand {disk.plain} to uid {owner}: {exc}") from exc
        return disk

    @classmethod
    def adopt(cls, lease_dir: Path, plain: Path | None = None) -> CryptDisk | None:
        """The live disk of a lease after an agent restart; None if it is not mounted (the
        machine rebooted, say: the key is gone and so is the data; `destroy` still clears
        the ciphertext)."""
        disk = cls.at(lease_dir, plain)
        return disk if disk.mounted else None

    @property
    def mounted(self) -> bool:
        return _mounts().get(self.plain) == self.cipher

    def destroy(self) -> None:
        """Unmount, wait until the daemon (and the master key in its memory) is gone, delete
        gocryptfs.conf and the ciphertext. Kill the lease's processes first: a mount still
        busy after a few seconds is detached and its daemon killed."""
        if self.plain in _mounts():
            self._unmount()
        # What protects the data is that the password was never stored; this is tidiness.
        shred(self.cipher / CONF_FILE)
        shutil.rmtree(self.cipher, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: files written while unmounted
            self.plain.rmdir()
        if self.cipher.exists() or self.plain.exists():
            raise CryptDiskError(f"cannot remove the lease disk {self.plain}: not empty")

    def _unmount(self) -> None:
        deadline = time.monotonic() + UNMOUNT_WAIT_SECONDS
        while self.plain in _mounts():
            umount = subprocess.run(["umount", str(self.plain)], capture_output=True, check=False)
            if umount.returncode == 0:
                break
            if time.monotonic() > deadline:  # still busy: detach it from the tree
                subprocess.run(["umount", "-l", str(self.plain)], capture_output=True, check=False)
                break
            time.sleep(0.05)
        if self.plain in _mounts():
            raise CryptDiskError(f"cannot unmount the lease disk {self.plain}")
        # The daemon exits by itself once unmounted; one a detached mount keeps alive is
        # ended, so no open file keeps the master key in memory.
        while pids := _daemon_pids(self.cipher):
            if time.monotonic() > deadline:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)


@dataclass(frozen=True, slots=True)
class PlainDisk:
    """The opt-out: an unencrypted folder, used only where the supplier asked for it."""

    plain: Path

    @property
    def encrypted(self) -> bool:
        return False

    @classmethod
    def create(
        cls, lease_dir: Path, owner: tuple[int, int] | None = None, plain: Path | None = None
    ) -> PlainDisk:
        disk = cls(plain or lease_dir / PLAIN_DIR)
        disk.plain.mkdir(parents=True, exist_ok=True, mode=0o700)
        if owner is not None:
            os.chown(disk.plain, *owner)
        return disk

    def destroy(self) -> None:
        shutil.rmtree(self.plain, ignore_errors=True)


def lease_disk(
    lease_dir: Path,
    encrypt: bool,
    owner: tuple[int, int] | None = None,
    plain: Path | None = None,
) -> LeaseDisk:
    """The lease's writable disk at bring-up: encrypted unless the supplier opted out.
    Encryption that cannot be had raises CryptDiskUnavailable; it never falls back."""
    if encrypt:
        return CryptDisk.create(lease_dir, owner, plain)
    return PlainDisk.create(lease_dir, owner, plain)


def reattach_disk(lease_dir: Path, plain: Path | None = None) -> LeaseDisk | None:
    """The disk of a lease found after an agent restart: the live encrypted mount, or the
    plain folder of an opted-out lease, or None if neither survives."""
    disk = CryptDisk.adopt(lease_dir, plain)
    if disk is not None:
        return disk
    if (lease_dir / CIPHER_DIR).exists():
        return None  # an encrypted disk whose mount (and key) is gone
    folder = PlainDisk(plain or lease_dir / PLAIN_DIR)
    return folder if folder.plain.is_dir() else None
