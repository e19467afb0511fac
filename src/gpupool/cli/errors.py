"""The CLI's one error path: every failure of every command ends here, once.

For people, one line on stderr (`error: ...`) and a non-zero exit, never a traceback. With
`--json` the same line goes to stderr and stdout gets exactly one JSON object, so a script
reads the cause from where it reads results:

    {"error": code, "message": text, "status": HTTP status (when the coordinator answered),
     ...the coordinator's details (excluded_by, shortfall_micros, ...)}

The codes: the coordinator's own (`not_found`, `insufficient_capacity`, ...), `unreachable`,
`usage` (a wrong command line, exit 2), `coordinator_key` (a pin refused), `failed` and
`timeout` (the CLI's own), `aborted`, `interrupted` (exit 130).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import typer

from gpupool.cli.common import CliError, err
from gpupool.client import ApiError, PinError

# typer (0.29 on) parses with a click of its own: its usage errors are TyperExceptions
Failure = CliError | ApiError | PinError | typer.TyperException | typer.Abort | KeyboardInterrupt


def wants_json(args: Sequence[str]) -> bool:
    """Whether the command line asks for JSON; read from the words themselves, so even an
    error in parsing an earlier option is answered in JSON. Words after `--` are a job's."""
    words = list(args)
    return "--json" in (words[: words.index("--")] if "--" in words else words)


def report(exc: Failure, as_json: bool) -> int:
    """Tell the user (and, with `--json`, the script) what failed; returns the exit code."""
    show = getattr(exc, "show", None)
    if isinstance(exc, typer.TyperException) and show is not None and not as_json:
        show()  # click's own usage text, with the command's usage line
        return exc.exit_code
    code, message, exit_code, details = _describe(exc)
    line = human_message(exc) if isinstance(exc, ApiError) else message
    err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write(
            json.dumps({**details, "error": code, "message": message}, sort_keys=True) + "\n"
        )
        sys.stdout.flush()
    return exit_code


def _describe(exc: Failure) -> tuple[str, str, int, dict[str, Any]]:
    """(code, message, exit code, details) of a failure."""
    if isinstance(exc, ApiError):
        extra = {k: v for k, v in exc.body.items() if k not in ("error", "message")}
        status = {"status": exc.status} if exc.status else {}
        return exc.code, exc.message, 1, {**extra, **status}
    if isinstance(exc, CliError):
        return exc.code, str(exc), exc.exit_code, {}
    if isinstance(exc, PinError):
        return "coordinator_key", str(exc), 1, {}
    if isinstance(exc, typer.TyperException):
        return "usage", exc.format_message(), exc.exit_code, {}
    if isinstance(exc, typer.Abort):
        return "aborted", "aborted", 1, {}
    return "interrupted", "interrupted", 130, {}


def human_message(exc: ApiError) -> str:
    """The coordinator's message with its status and code, and the causes of a shortfall
    one per constraint (the money is in the message itself, in decimal units)."""
    if exc.status == 0:
        return exc.message
    extra = ""
    if exc.code == "insufficient_capacity" and exc.body.get("excluded_by"):
        parts = ", ".join(f"{k}: {v}" for k, v in exc.body["excluded_by"].items())
        extra = f"\n  devices ruled out by each constraint: {parts}"
    return f"{exc.message} ({exc.status} {exc.code}){extra}"
