"""`gpupool account`: create accounts (admin), show your own, verify a supplier's SOC2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpupool.cli.common import (
    DEFAULT_COORDINATOR,
    CoordinatorOpt,
    JsonOpt,
    KeyOpt,
    client,
    err,
    out,
    print_json,
    read_admin_key,
    when,
)
from gpupool.domain.models import Role

app = typer.Typer(help="Accounts and API keys.", no_args_is_help=True)

AdminKeyFileOpt = Annotated[
    Path | None,
    typer.Option(help="File with the coordinator's admin key (or set GPUPOOL_ADMIN_KEY)."),
]


@app.command("create")
def create(
    role: Annotated[
        Role,
        typer.Option(
            help="renter books clusters and submits jobs; supplier runs agents; "
            "validator re-runs a sample of jobs."
        ),
    ],
    name: Annotated[str, typer.Option(help="A name to recognise the account by.")],
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_key_file: AdminKeyFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an account and print its API key (shown this once only)."""
    with client(coordinator, read_admin_key(admin_key_file)) as gp:
        created = gp.create_account(role.value, name)
    if json_out:
        print_json(created)
        return
    out.print(f"created {created.role} account [bold]{created.id}[/bold] ({created.name})")
    out.print(f"API key: {created.api_key}", highlight=False, soft_wrap=True)
    err.print("[yellow]the key is shown once; the coordinator keeps only its hash[/yellow]")


@app.command("show")
def show(
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR, key: KeyOpt = None, json_out: JsonOpt = False
) -> None:
    """Show the account of your API key."""
    with client(coordinator, key) as gp:
        me = gp.me()
    if json_out:
        print_json(me)
        return
    out.print(
        f"{me.id}  {me.role}  {me.name}  created {when(me.created_at)}"
        f"{'  SOC2 verified' if me.soc2_verified else ''}"
    )


@app.command("verify-soc2")
def verify_soc2(
    account_id: Annotated[str, typer.Argument(help="The supplier's account id.")],
    revoke: Annotated[bool, typer.Option(help="Withdraw the verification.")] = False,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_key_file: AdminKeyFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Mark a supplier's SOC2 claim as verified (admin)."""
    with client(coordinator, read_admin_key(admin_key_file)) as gp:
        account = gp.set_soc2_verified(account_id, not revoke)
    if json_out:
        print_json(account)
    else:
        out.print(f"{account.id}: SOC2 {'verified' if account.soc2_verified else 'not verified'}")
