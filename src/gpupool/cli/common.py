"""What every command shares: connection options, output for people (Rich) and for scripts
(`--json`), and waiting with progress."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from gpupool.client import Client, KnownCoordinators
from gpupool.client.pins import PinNotice, pin_file
from gpupool.domain.money import format_micros

DEFAULT_COORDINATOR = "http://127.0.0.1:8420"

out = Console()
err = Console(stderr=True)

T = TypeVar("T")

CoordinatorOpt = Annotated[
    str,
    typer.Option(
        "--coordinator",
        "-c",
        envvar="GPUPOOL_COORDINATOR",
        help="Coordinator URL.",
        show_default=True,
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="GPUPOOL_KEY",
        show_default=False,
        show_envvar=True,
        help="Your API key (prefer the environment variable: command lines are visible to others).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
BookingKeyOpt = Annotated[
    str | None,
    typer.Option(help="Run the command again with the same key: it books and pays once."),
]


class CliError(Exception):
    """A problem to report to the user in one line, with a non-zero exit; `code` names it
    for scripts (`--json`), "usage" by default for exit 2 (a wrong command line)."""

    def __init__(self, message: str, exit_code: int = 1, code: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code or ("usage" if exit_code == 2 else "failed")


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """`--env NAME=VALUE` options as a mapping (a usage error for anything else)."""
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not ENV_NAME.fullmatch(name):
            raise CliError(f"--env takes NAME=VALUE, not {pair!r}", 2)
        values[name] = value
    return values


def client(coordinator: str, key: str | None, need_key: bool = True) -> Client:
    if need_key and not key:
        raise CliError("no API key: set GPUPOOL_KEY or pass --key", 2)
    return Client(coordinator, key, pins=known_coordinators(on_pin=_say_pinned))


def known_coordinators(on_pin: PinNotice | None = None) -> KnownCoordinators:
    """The user's pinned coordinator keys ($GPUPOOL_KNOWN_COORDINATORS overrides the file)."""
    return KnownCoordinators(pin_file(os.environ, Path.home()), on_pin)


def _say_pinned(url: str, key: str) -> None:
    # as ssh says "Permanently added": the user can still compare the key out of band
    err.print(
        f"pinned the coordinator key {key} for {url} (first contact; compare it with "
        "`gpupool coordinator key --state-dir` on the coordinator's host)",
        highlight=False,
        soft_wrap=True,
    )


def read_admin_key(admin_key_file: Path | None) -> str:
    key = os.environ.get("GPUPOOL_ADMIN_KEY")
    if admin_key_file is not None:
        try:
            key = admin_key_file.read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read the admin key file: {exc}", 2) from exc
    if not key:
        raise CliError("no admin key: set GPUPOOL_ADMIN_KEY or pass --admin-key-file", 2)
    return key


def print_json(value: Any) -> None:
    def encode(v: Any) -> Any:
        if isinstance(v, BaseModel):
            return v.model_dump(mode="json")
        if isinstance(v, list):
            return [encode(x) for x in v]
        return v

    sys.stdout.write(json.dumps(encode(value), sort_keys=True) + "\n")
    sys.stdout.flush()


def when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*(str(c) for c in row))
    return t


def wait_with_progress(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    quiet: bool = False,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll `check` (every 0.25 s) until it returns a value, showing a spinner to people."""
    deadline = time.monotonic() + timeout
    with err.status(what, spinner="dots") if not quiet else _nothing():
        while time.monotonic() < deadline:
            value = check()
            if value is not None:
                return value
            time.sleep(0.25)
    detail = f" ({describe()})" if describe else ""
    raise CliError(f"timed out after {timeout:.0f} s waiting: {what}{detail}")


class _nothing:  # noqa: N801 - a stand-in context manager
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def money(micros: int) -> str:
    """Micro-units as the decimal amount users see ("6.20"); scripts get the integers."""
    return format_micros(micros)
