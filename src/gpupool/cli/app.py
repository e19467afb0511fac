"""The root `gpupool` command: assembles the groups and turns errors into one-line messages.

Importing this module must stay cheap: `gpupool --help` imports neither Ray, NVML nor any
database driver (a test checks).
"""

from __future__ import annotations

import sys

import typer

from gpupool import __version__
from gpupool.cli import (
    accounts,
    bench,
    clusters,
    demo,
    jobs,
    keys,
    ledger,
    proof,
    serve,
    tasks,
    workers,
)
from gpupool.cli.common import CliError, api_error_message, err
from gpupool.client import ApiError, PinError

app = typer.Typer(
    name="gpupool",
    help="gpupool: book clusters of GPUs (or CPU devices) that suppliers' agents offer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
app.add_typer(serve.coordinator_app, name="coordinator")
serve.coordinator_app.command("key")(keys.key)
serve.coordinator_app.command("pin")(keys.pin)
app.add_typer(serve.agent_app, name="agent")
app.add_typer(accounts.app, name="account")
app.add_typer(workers.app, name="workers")
app.add_typer(clusters.app, name="cluster")
app.add_typer(jobs.app, name="job")
app.add_typer(proof.app, name="proof")
app.add_typer(bench.app, name="bench")
app.command("demo")(demo.demo)
app.add_typer(ledger.app, name="ledger")
app.command("balance")(ledger.balance)
app.add_typer(tasks.stake_app, name="stake")
app.add_typer(tasks.task_app, name="task")
app.add_typer(tasks.validator_app, name="validator")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"gpupool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """gpupool: book clusters of GPUs (or CPU devices) that suppliers' agents offer."""


def main() -> None:
    try:
        app()
    except CliError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except ApiError as exc:
        err.print(f"[red]error:[/red] {api_error_message(exc)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except PinError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
