"""The root `gpupool` command: assembles the groups and turns errors into one-line messages.

Importing this module must stay cheap: `gpupool --help` imports neither Ray, NVML nor any
database driver (a test checks).
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from gpupool import __version__
from gpupool.cli import (
    accounts,
    bench,
    clusters,
    demo,
    jobs,
    keys,
    launch,
    ledger,
    offers,
    proof,
    serve,
    tasks,
    workers,
)
from gpupool.cli.common import CliError
from gpupool.cli.errors import report, wants_json
from gpupool.client import ApiError, PinError

app = typer.Typer(
    name="gpupool",
    help="gpupool: book clusters of GPUs (or CPU devices) that suppliers' agents offer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's plain help: it wraps every option's help to the terminal and never cuts it
    # (typer's rich panels cut option names and defaults with "…" at 80 columns)
    rich_markup_mode=None,
    context_settings={"max_content_width": 100},
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
app.command("launch")(launch.launch)
app.command("offers")(offers.offers)
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
    args = sys.argv[1:]
    try:
        # not standalone: click would print its own errors, and never as JSON
        rv = command().main(args, prog_name="gpupool", standalone_mode=False)
    except (CliError, ApiError, PinError, typer.TyperException, typer.Abort) as exc:
        sys.exit(report(exc, wants_json(args)))
    except KeyboardInterrupt as exc:
        sys.exit(report(exc, wants_json(args)))
    sys.exit(rv if isinstance(rv, int) else 0)  # an int is typer.Exit's code


def command() -> Any:  # typer's own click Command
    """The click command tree, with each command's whole first paragraph as its line in
    its group's list: click would cut it to fit the line, and a cut sentence says less."""
    root = typer.main.get_command(app)
    stack = [root]
    while stack:
        cmd = stack.pop()
        if cmd.help and not cmd.short_help:
            cmd.short_help = " ".join(cmd.help.split("\n\n")[0].split())
        stack.extend(getattr(cmd, "commands", {}).values())
    return root
