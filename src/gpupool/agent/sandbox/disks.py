"""Which disk each lease of this agent has, and where: the ciphertext in the lease's folder
under the agent's state (root's, 0700, never seen inside the container), the plaintext mounted
at the lease's Ray temp dir, a short path Ray's Unix sockets fit in. That mount is the only
writable place a lease's container has on disk (its /tmp and /dev/shm are memory), so Ray's
session files, job working dirs and everything the renter's code writes there are ciphertext
on the supplier's disk (docs/sandbox.md, "The encrypted disk")."""

from __future__ import annotations

import threading
from pathlib import Path

from gpupool.agent.ray.cmd import temp_dir_for
from gpupool.agent.sandbox.cryptdisk import CryptDisk, LeaseDisk, lease_disk, reattach_disk

LEASES_DIR = "leases"


class LeaseDisks:
    def __init__(self, state_dir: Path, worker_id: str, encrypt: bool = True) -> None:
        self.state_dir = state_dir
        self.worker_id = worker_id
        self.encrypt = encrypt  # False only where the supplier opted out (--no-encrypted-disk)
        self._disks: dict[str, LeaseDisk] = {}
        self._lock = threading.Lock()

    def paths(self, lease_id: str) -> tuple[Path, Path]:
        """(the lease folder holding the ciphertext, where the plaintext is mounted)."""
        lease_dir = self.state_dir / LEASES_DIR / lease_id
        return lease_dir, temp_dir_for(self.state_dir, self.worker_id, lease_id)

    def create(self, lease_id: str, owner: tuple[int, int] | None = None) -> LeaseDisk:
        """The lease's disk, mounted and handed to `owner` (the container's uid). Raises
        CryptDiskError (CryptDiskUnavailable without gocryptfs or FUSE): never plaintext
        unless the supplier opted out."""
        lease_dir, plain = self.paths(lease_id)
        disk = lease_disk(lease_dir, self.encrypt, owner, plain)
        with self._lock:
            self._disks[lease_id] = disk
        return disk

    def adopt(self, lease_id: str) -> LeaseDisk | None:
        """After an agent restart: the live mount (the key lives in its daemon), if any."""
        disk = reattach_disk(*self.paths(lease_id))
        if disk is not None:
            with self._lock:
                self._disks[lease_id] = disk
        return disk

    def get(self, lease_id: str) -> LeaseDisk | None:
        with self._lock:
            return self._disks.get(lease_id)

    def destroy(self, lease_id: str) -> None:
        """Unmount and destroy the key and the ciphertext; the lease's processes must be gone
        (the sandbox is destroyed first). Also for a disk this agent no longer knows."""
        with self._lock:
            disk = self._disks.pop(lease_id, None)
        paths = self.paths(lease_id)
        if disk is None:
            disk = reattach_disk(*paths)
        if disk is None:  # a mount that died (a reboot) leaves only ciphertext to clear
            leftover = CryptDisk.at(*paths)
            disk = leftover if leftover.cipher.exists() else None
        if disk is not None:
            disk.destroy()
