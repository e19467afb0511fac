"""Pinned coordinator keys, trust on first use (like SSH's known_hosts).

The first answer from a coordinator names its public key (the `X-Gpupool-Coordinator-Key`
header); that key is written to the pin file under the coordinator's URL. Every later
answer must name the same key, and proofs are verified against it. A different key is
refused: the coordinator was reinstalled, or something else answers at that URL, and only
the user can tell which (`gpupool coordinator pin --replace` re-pins deliberately).

The file holds one `URL KEY` line per coordinator, mode 0600. One that others may write is
refused: whoever can edit it chooses which proofs verify.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx

PIN_FILE_ENV = "GPUPOOL_KNOWN_COORDINATORS"
REPIN_HINT = "gpupool coordinator pin --replace"
_HEADER_LINE = (
    "# gpupool: pinned coordinator keys (URL, Ed25519 public key); delete a line to forget"
)


class PinError(Exception):
    """A pin cannot be used or does not match; the message is one line for the user."""


class CoordinatorKeyChanged(PinError):
    def __init__(self, url: str, pinned: str, presented: str | None, path: Path) -> None:
        self.url, self.pinned, self.presented, self.path = url, pinned, presented, path
        seen = f"presents the key {presented}" if presented else "did not present its key"
        super().__init__(
            f"the coordinator at {url} {seen}, but {pinned} is pinned for it in {path}; "
            f"if its key was changed on purpose, re-pin with: {REPIN_HINT} -c {url}"
        )


def pin_file(environ: Mapping[str, str], home: Path) -> Path:
    """$GPUPOOL_KNOWN_COORDINATORS, else known_coordinators in the XDG config folder."""
    if environ.get(PIN_FILE_ENV):
        return Path(environ[PIN_FILE_ENV])
    config = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    return config / "gpupool" / "known_coordinators"


def normalize(url: str) -> str:
    """One spelling per coordinator: http://Host:80/ and http://host are the same one."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise PinError(f"not a coordinator URL: {url!r} ({exc})") from exc
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}:{port}{parsed.path.rstrip('/')}"


PinNotice = Callable[[str, str], None]
"""Told (normalised URL, key) when a first contact pins a key, to say so to the user."""


class KnownCoordinators:
    def __init__(self, path: Path, on_pin: PinNotice | None = None) -> None:
        self.path = path
        self._on_pin = on_pin

    def read(self) -> dict[str, str]:
        try:
            mode = self.path.stat().st_mode
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise PinError(f"cannot read the pinned coordinator keys: {exc}") from exc
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PinError(
                f"{self.path} may be written by others (mode {stat.S_IMODE(mode):04o}), "
                f"so its pins cannot be trusted; run: chmod 600 {self.path}"
            )
        pins = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 2:
                raise PinError(f"{self.path} line {number}: expected 'URL KEY', got {line!r}")
            pins[fields[0]] = fields[1]
        return pins

    def get(self, url: str) -> str | None:
        return self.read().get(normalize(url))

    def check(self, url: str, presented: str | None) -> bool:
        """Pin `presented` if `url` has no pin yet (True: it was pinned now). Raises
        CoordinatorKeyChanged when another key is pinned; `None` (no key named) pins
        nothing and passes only while nothing is pinned."""
        pinned = self.get(url)
        if pinned is None:
            if presented is None:
                return False
            self.pin(url, presented)
            if self._on_pin is not None:
                self._on_pin(normalize(url), presented)
            return True
        if presented != pinned:
            raise CoordinatorKeyChanged(normalize(url), pinned, presented, self.path)
        return False

    def pin(self, url: str, key: str, replace: bool = False) -> str | None:
        """Pin `key` for `url`; returns the key it replaced. Without `replace`, refuses to
        overwrite a different pin."""
        where = normalize(url)
        with self._locked():
            pins = self.read()
            old = pins.get(where)
            if old is not None and old != key and not replace:
                raise CoordinatorKeyChanged(where, old, key, self.path)
            pins[where] = key
            self._write(pins)
        return old

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Two CLI calls pinning two coordinators at once must not drop either pin."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, pins: dict[str, str]) -> None:
        text = "".join(f"{url} {key}\n" for url, key in sorted(pins.items()))
        # mkstemp makes the file 0600 before a byte is written; the rename is atomic, so a
        # reader sees the old pins or the new ones, never half a file
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".known_coordinators.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{_HEADER_LINE}\n{text}")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
