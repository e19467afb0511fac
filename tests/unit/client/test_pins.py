"""The pin file: trust on first use, a changed key refused with both keys named, 0600."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gpupool.client.pins import (
    REPIN_HINT,
    CoordinatorKeyChanged,
    KnownCoordinators,
    PinError,
    normalize,
    pin_file,
)
from gpupool.crypto.identity import Identity

URL = "http://127.0.0.1:8420"


@pytest.fixture
def store(tmp_path: Path) -> KnownCoordinators:
    return KnownCoordinators(tmp_path / "config" / "gpupool" / "known_coordinators")


def test_the_first_key_is_pinned_0600_and_the_same_key_passes_after(
    store: KnownCoordinators,
) -> None:
    key = Identity.generate().public_key_b64
    assert store.check(URL, key) is True
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert store.check(URL, key) is False
    assert store.get(URL) == key
    left = sorted(p.name for p in store.path.parent.iterdir())
    assert left == ["known_coordinators", "known_coordinators.lock"]  # no temporary file


def test_only_a_first_contact_is_announced(tmp_path: Path) -> None:
    told: list[tuple[str, str]] = []
    store = KnownCoordinators(tmp_path / "pins", on_pin=lambda url, key: told.append((url, key)))
    key = Identity.generate().public_key_b64
    store.check(URL + "/", key)
    store.check(URL, key)
    assert told == [(URL, key)]


def test_another_key_is_refused_naming_both_and_the_pin_stays(store: KnownCoordinators) -> None:
    pinned, other = Identity.generate().public_key_b64, Identity.generate().public_key_b64
    store.check(URL, pinned)
    before = store.path.read_bytes()
    with pytest.raises(CoordinatorKeyChanged) as caught:
        store.check(URL, other)
    message = str(caught.value)
    assert pinned in message and other in message and REPIN_HINT in message
    assert "\n" not in message
    with pytest.raises(CoordinatorKeyChanged, match="did not present its key"):
        store.check(URL, None)
    assert store.path.read_bytes() == before


def test_a_coordinator_naming_no_key_pins_nothing(store: KnownCoordinators) -> None:
    assert store.check(URL, None) is False
    assert not store.path.exists()


def test_replacing_needs_to_be_asked_for(store: KnownCoordinators) -> None:
    old, new = Identity.generate().public_key_b64, Identity.generate().public_key_b64
    store.pin(URL, old)
    with pytest.raises(CoordinatorKeyChanged):
        store.pin(URL, new)
    assert store.pin(URL, new, replace=True) == old
    assert store.get(URL) == new
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_pins_are_per_coordinator_and_spellings_of_one_url_share_a_pin(
    store: KnownCoordinators,
) -> None:
    a, b = Identity.generate().public_key_b64, Identity.generate().public_key_b64
    store.check("http://LOCALHOST:8420/", a)
    store.check("http://localhost:8421", b)
    assert store.get("http://localhost:8420") == a
    assert store.get("http://localhost:8421") == b
    assert normalize("http://example.org") == normalize("http://example.org:80/")
    assert normalize("http://[::1]:8420") == "http://[::1]:8420"
    assert normalize("http://a:1") != normalize("https://a:1")


def test_concurrent_first_contacts_keep_every_pin(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "pins"
    keys = [Identity.generate().public_key_b64 for _ in range(8)]
    jobs = [(str(path), f"http://127.0.0.1:{9000 + i}", key) for i, key in enumerate(keys)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.starmap(_pin_in_another_process, jobs * 3)
    assert KnownCoordinators(path).read() == {normalize(url): key for _, url, key in jobs}


def _pin_in_another_process(path: str, url: str, key: str) -> None:
    KnownCoordinators(Path(path)).check(url, key)


def test_a_pin_file_others_may_write_is_refused(store: KnownCoordinators) -> None:
    store.check(URL, Identity.generate().public_key_b64)
    store.path.chmod(0o622)
    with pytest.raises(PinError, match="chmod 600"):
        store.get(URL)


def test_a_malformed_line_is_a_clear_error(store: KnownCoordinators) -> None:
    store.check(URL, Identity.generate().public_key_b64)
    with store.path.open("a") as f:
        f.write("http://x:1\n")
    with pytest.raises(PinError, match="line 3"):
        store.get(URL)


def test_the_file_is_found_by_environment_then_xdg_then_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert pin_file({}, home) == home / ".config/gpupool/known_coordinators"
    xdg = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert pin_file(xdg, home) == tmp_path / "xdg/gpupool/known_coordinators"
    chosen = {**xdg, "GPUPOOL_KNOWN_COORDINATORS": str(tmp_path / "pins")}
    assert pin_file(chosen, home) == tmp_path / "pins"
