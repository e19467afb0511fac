"""The lease's encrypted disk, on real gocryptfs and FUSE: plaintext never reaches the host
disk, the data is unreadable after the lease, other uids cannot enter it, and a restarted
agent keeps using the live mount."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.agent.sandbox import cryptdisk
from gpupool.agent.sandbox.cryptdisk import (
    CryptDisk,
    CryptDiskError,
    CryptDiskUnavailable,
    PlainDisk,
    gocryptfs_mounts,
    lease_disk,
    reattach_disk,
)

try:
    cryptdisk.check_available()
    _MISSING = ""
except CryptDiskUnavailable as exc:
    _MISSING = str(exc)
needs_fuse = pytest.mark.skipif(
    bool(_MISSING) or os.geteuid() != 0, reason=_MISSING or "needs root (allow_other)"
)

LEASE_UID = 61401  # stand-ins for the container's unprivileged uid and a stranger's
OTHER_UID = 61402
# Other uids cannot run the venv's interpreter (it lives under /root): they get the system's.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


@pytest.fixture
def lease_dir() -> Iterator[Path]:
    # Under /tmp with mode 0711, not pytest's 0700 tmp_path, so that other uids can reach the
    # mount point and only the disk's own permissions stand in their way (in the product the
    # lease folder is 0700 and only the container's bind makes the disk reachable).
    base = Path(tempfile.mkdtemp(prefix="gpd-cryptdisk-"))
    base.chmod(0o711)
    (base / "lease").mkdir(mode=0o711)
    try:
        yield base / "lease"
    finally:
        for mount in gocryptfs_mounts(Path("/proc/self/mountinfo").read_text()):
            if mount.is_relative_to(base):
                subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def _all_bytes(folder: Path) -> bytes:
    """Every name and every file's contents under `folder`, as one haystack."""
    parts = []
    for path in folder.rglob("*"):
        parts.append(path.name.encode())
        if path.is_file():
            parts.append(path.read_bytes())
    return b"\0".join(parts)


def _as_uid(uid: int, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEM_PYTHON, "-c", code, *args],
        user=uid,
        group=uid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@needs_fuse
def test_a_file_written_with_open_is_ciphertext_on_the_host_disk(lease_dir: Path) -> None:
    disk = CryptDisk.create(lease_dir)
    try:
        secret = b"model-weights-of-the-renter " * 1000
        with open(disk.plain / "checkpoint-renter-7.pt", "wb") as f:
            f.write(secret)
        (disk.plain / "runs").mkdir()
        (disk.plain / "runs" / "loss-history.txt").write_text("epoch 1 loss 0.25\n")
        assert (disk.plain / "checkpoint-renter-7.pt").read_bytes() == secret
        on_disk = _all_bytes(disk.cipher)
        assert len(on_disk) > len(secret)  # the data is there, in some form
        for needle in (b"model-weights", b"checkpoint-renter", b"runs", b"loss-history", b"epoch"):
            assert needle not in on_disk
    finally:
        disk.destroy()


@needs_fuse
def test_after_destroy_a_copy_of_the_disk_and_its_conf_cannot_be_opened(
    lease_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    drawn: list[bytes] = []
    real = cryptdisk._new_password

    def recording() -> bytearray:
        password = real()
        drawn.append(bytes(password))
        return password

    monkeypatch.setattr(cryptdisk, "_new_password", recording)
    caplog.set_level(logging.DEBUG)
    disk = CryptDisk.create(lease_dir)
    (disk.plain / "secret.txt").write_text("the renter's data")
    (password,) = drawn
    daemons = cryptdisk._daemon_pids(disk.cipher)
    assert daemons, "the gocryptfs daemon of the mount"
    for pid in daemons:  # never on a command line or in an environment
        assert password not in Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert password not in environ and b"GPUPOOL" not in environ
    assert password not in _all_bytes(lease_dir)  # nor on disk
    assert password.decode() not in caplog.text
    stolen = lease_dir.parent / "stolen"
    shutil.copytree(disk.cipher, stolen)  # conf included: an attacker with the disk

    disk.destroy()

    assert not disk.mounted and not disk.cipher.exists() and not disk.plain.exists()
    assert not cryptdisk._daemon_pids(disk.cipher), "the daemon holding the key has exited"
    target = lease_dir.parent / "attempt"
    target.mkdir()
    guess = subprocess.run(
        ["gocryptfs", "-q", str(stolen), str(target)],
        input=b"not-the-password\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert guess.returncode == 12  # gocryptfs: wrong password
    assert b"Password incorrect" in guess.stderr
    assert b"the renter's data" not in _all_bytes(stolen)
    assert not any(target.iterdir())


@needs_fuse
def test_only_the_leases_uid_may_enter_the_mount(lease_dir: Path) -> None:
    disk = CryptDisk.create(lease_dir, owner=(LEASE_UID, LEASE_UID))
    try:
        path = disk.plain / "mine.txt"
        wrote = _as_uid(LEASE_UID, f"open({str(path)!r}, 'w').write('lease data')")
        assert wrote.returncode == 0, wrote.stderr
        assert path.stat().st_uid == LEASE_UID  # created as the lease's uid, not root
        assert path.read_text() == "lease data"  # root, the supplier's agent, can
        probe = (
            "import errno, os, sys\n"
            "for attempt in (lambda: open(sys.argv[1]).read(), lambda: os.listdir(sys.argv[2]),"
            " lambda: open(sys.argv[2] + '/planted', 'w')):\n"
            "    try:\n        attempt()\n    except OSError as e:\n"
            "        print(errno.errorcode[e.errno])\n    else:\n        print('allowed')\n"
        )
        stranger = _as_uid(OTHER_UID, probe, str(path), str(disk.plain))
        assert stranger.stdout.split() == ["EACCES", "EACCES", "EACCES"], stranger.stderr
    finally:
        disk.destroy()


@needs_fuse
def test_a_restarted_agent_adopts_the_live_mount_and_can_still_destroy_it(
    lease_dir: Path,
) -> None:
    before = CryptDisk.create(lease_dir)
    (before.plain / "ckpt.bin").write_bytes(b"\1\2\3" * 100)
    del before  # the agent's memory is gone; the mount and its daemon are not

    adopted = reattach_disk(lease_dir)

    assert isinstance(adopted, CryptDisk) and adopted.mounted
    assert (adopted.plain / "ckpt.bin").read_bytes() == b"\1\2\3" * 100
    (adopted.plain / "after-restart.txt").write_text("still encrypted")
    assert b"still encrypted" not in _all_bytes(adopted.cipher)
    adopted.destroy()
    assert CryptDisk.adopt(lease_dir) is None
    assert reattach_disk(lease_dir) is None


@needs_fuse
def test_a_disk_whose_mount_died_is_not_adopted_and_its_ciphertext_is_cleared(
    lease_dir: Path,
) -> None:
    disk = CryptDisk.create(lease_dir)
    (disk.plain / "x").write_text("x")
    subprocess.run(["umount", str(disk.plain)], check=True)  # a reboot, in effect

    assert reattach_disk(lease_dir) is None  # never an unencrypted stand-in
    CryptDisk.at(lease_dir).destroy()
    assert not lease_dir.joinpath(cryptdisk.CIPHER_DIR).exists()


@needs_fuse
def test_a_disk_over_leftover_data_is_refused(lease_dir: Path) -> None:
    (lease_dir / cryptdisk.CIPHER_DIR).mkdir()
    (lease_dir / cryptdisk.CIPHER_DIR / "old").write_text("x")
    with pytest.raises(CryptDiskError, match="is not empty"):
        CryptDisk.create(lease_dir)


def test_missing_gocryptfs_fails_the_lease_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no gocryptfs on it
    with pytest.raises(CryptDiskUnavailable, match="gocryptfs is not installed"):
        lease_disk(tmp_path / "lease", encrypt=True)
    assert not (tmp_path / "lease").exists()  # nothing unencrypted was made instead


def test_missing_fuse_device_fails_the_lease_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("gocryptfs") is None:
        pytest.skip("gocryptfs is not installed")
    monkeypatch.setattr(cryptdisk, "FUSE_DEVICE", tmp_path / "fuse")
    with pytest.raises(CryptDiskUnavailable, match="fuse is missing or not usable"):
        lease_disk(tmp_path / "lease", encrypt=True)


def test_the_opt_out_is_a_plain_folder_that_says_so(tmp_path: Path) -> None:
    disk = lease_disk(tmp_path / "lease", encrypt=False)
    assert isinstance(disk, PlainDisk) and not disk.encrypted
    (disk.plain / "f").write_text("plain")
    assert reattach_disk(tmp_path / "lease") == disk
    disk.destroy()
    assert not disk.plain.exists()


def test_mountinfo_paths_are_unescaped() -> None:
    line = (
        "46 27 0:40 / /srv/a\\040b/disk rw,nosuid - fuse.gocryptfs /srv/a\\040b/disk.cipher "
        "rw,user_id=0\n47 27 0:41 / /mnt rw - ext4 /dev/sda1 rw\n"
    )
    assert gocryptfs_mounts(line) == {Path("/srv/a b/disk"): Path("/srv/a b/disk.cipher")}
