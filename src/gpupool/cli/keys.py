"""`gpupool coordinator key` and `gpupool coordinator pin`: the coordinator's public key, the
one that signs every Proof of Time-Lock certificate.

Every other command pins the key on first contact (client/pins.py); these two show it, so
it can be compared out of band (on the coordinator's host, `key --state-dir` reads it from
the key file), and pin it on purpose, which is the only way to replace a pin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpupool.cli.common import (
    DEFAULT_COORDINATOR,
    CliError,
    CoordinatorOpt,
    JsonOpt,
    err,
    known_coordinators,
    print_json,
)
from gpupool.client import Client
from gpupool.client.pins import normalize


def _note(text: str) -> None:
    err.print(text, highlight=False, soft_wrap=True)


def _presented(coordinator: str) -> str:
    # no pins on this client: showing or re-pinning a changed key must not fail on it
    with Client(coordinator) as gp:
        return gp.coordinator_key()


def _from_state(state_dir: Path) -> str:
    from gpupool.crypto.identity import KeyFileError, load

    try:
        return load(state_dir / "coordinator.key").public_key_b64
    except FileNotFoundError as exc:
        raise CliError(
            f"no coordinator key in {state_dir}: the coordinator writes coordinator.key "
            "there on its first start",
            2,
        ) from exc
    except (KeyFileError, OSError) as exc:
        raise CliError(str(exc), 2) from exc


def key(
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Read the key from this coordinator state folder instead of asking the "
            "coordinator (run on the coordinator's host)."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the coordinator's public key (on stdout, alone), and whether it is pinned."""
    public_key = _from_state(state_dir) if state_dir else _presented(coordinator)
    url = normalize(coordinator)
    pinned = known_coordinators().get(url)
    if json_out:
        print_json(
            {
                "coordinator": url,
                "public_key": public_key,
                "source": str(state_dir / "coordinator.key") if state_dir else "api",
                "pinned": pinned,
            }
        )
        return
    print(public_key)
    if pinned == public_key:
        _note(f"pinned for {url}")
    elif pinned is None:
        _note(f"not pinned for {url} yet: gpupool coordinator pin -c {url}")
    else:
        _note(f"[red]differs from the key pinned for {url}:[/red] {pinned}")


def pin(
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    expect: Annotated[
        str | None,
        typer.Option(help="Pin only if the coordinator presents this key (learned out of band)."),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a different key pinned for this URL.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Ask the coordinator for its key and pin it; proofs then verify against it."""
    url = normalize(coordinator)
    public_key = _presented(coordinator)
    if expect is not None and public_key != expect:
        raise CliError(
            f"the coordinator at {url} presents the key {public_key}, not the expected "
            f"{expect}; nothing was pinned"
        )
    store = known_coordinators()
    old = store.pin(url, public_key, replace=replace)
    replaced = old if old != public_key else None
    if json_out:
        print_json(
            {
                "coordinator": url,
                "public_key": public_key,
                "replaced": replaced,
                "file": str(store.path),
            }
        )
        return
    how = f", replacing {replaced}" if replaced else (" (it was pinned already)" if old else "")
    _note(f"pinned {public_key} for {url} in {store.path}{how}")
