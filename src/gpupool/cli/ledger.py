"""`gpupool balance` and `gpupool ledger`: balances, the journal, the faucet, audits and
settlement (docs/ledger.md)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from gpupool.cli.accounts import AdminKeyFileOpt
from gpupool.cli.common import (
    DEFAULT_COORDINATOR,
    CoordinatorOpt,
    JsonOpt,
    KeyOpt,
    client,
    money,
    out,
    print_json,
    read_admin_key,
    table,
    wait_with_progress,
)
from gpupool.client import Client
from gpupool.wire.ledger import EntryOut

app = typer.Typer(help="The ledger: journal, faucet, audit, settlement.", no_args_is_help=True)


def balance(
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR, key: KeyOpt = None, json_out: JsonOpt = False
) -> None:
    """Your balance: what you can spend, and what escrow or stake holds."""
    with client(coordinator, key) as gp:
        b = gp.balance()
    if json_out:
        print_json(b)
        return
    held = "in escrow" if b.role == "renter" else "staked"
    out.print(f"{b.account_id} ({b.role}): available {b.available}, {held} {b.held}")
    for account, micros in sorted(b.held_by_account.items()):
        out.print(f"  {account}: {money(micros)}", highlight=False)


def _rows(entries: list[EntryOut]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for e in entries:
        at = datetime.fromtimestamp(e.at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        for i, p in enumerate(e.postings):
            head = (e.seq, at, e.kind, e.key) if i == 0 else ("", "", "", "")
            rows.append((*head, p.account, p.amount))
        if not e.postings:
            rows.append((e.seq, at, e.kind, e.key, "-", "0.00"))
    return rows


@app.command("show")
def show(
    after: Annotated[int, typer.Option(min=0, help="Start after this entry number.")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many entries.")] = 100,
    all_entries: Annotated[
        bool, typer.Option("--all", help="Every entry (admin key), not only your own.")
    ] = False,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    admin_key_file: AdminKeyFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The journal entries that touch your accounts (or all, with --all), in order."""
    use = read_admin_key(admin_key_file) if all_entries else key
    with client(coordinator, use) as gp:
        entries = gp.ledger_entries(after, limit)
    if json_out:
        print_json(entries)
        return
    out.print(
        table("ledger", ["#", "at (UTC)", "kind", "key", "account", "amount"], _rows(entries))
    )
    if entries:
        out.print(f"last hash {entries[-1].hash}", highlight=False)


@app.command("fund")
def fund(
    account_id: Annotated[str, typer.Argument(help="The account to fund.")],
    amount: Annotated[str, typer.Argument(help="How much, e.g. 25 or 0.50.")],
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="A retry with this key funds once.")
    ] = None,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_key_file: AdminKeyFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The faucet (admin): mint money into an account. There is no real payment rail."""
    with client(coordinator, read_admin_key(admin_key_file)) as gp:
        entry = gp.fund(account_id, amount, idempotency_key or uuid.uuid4().hex)
    if json_out:
        print_json(entry)
    else:
        out.print(f"entry {entry.seq}: funded {account_id} with {amount}")


@app.command("audit")
def audit(
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_key_file: AdminKeyFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check the journal's hash chain, the balances and the total against what was minted."""
    with client(coordinator, read_admin_key(admin_key_file)) as gp:
        a = gp.ledger_audit()
    if json_out:
        print_json(a)
    else:
        out.print(
            f"{a.entries} entries, chain {'ok' if a.chain_ok else a.chain_error}, "
            f"balances {'match' if a.balances_match else 'DIFFER'}, minted "
            f"{money(a.minted_micros)} = total {money(a.total_micros)}: "
            f"{'balanced' if a.balanced else 'NOT balanced'}"
        )
    if not a.balanced:
        raise typer.Exit(1)


@app.command("settle")
def settle(
    lease_id: Annotated[str, typer.Argument(help="An ended, certified lease.")],
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    admin_key_file: AdminKeyFileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Settle a lease now (admin; the coordinator does it by itself too). Idempotent."""
    with client(coordinator, read_admin_key(admin_key_file)) as gp:
        entry = gp.settle(lease_id)
    if json_out:
        print_json(entry)
    else:
        out.print(table(f"settlement of {lease_id}", ["account", "amount"], _rows([entry])))


def settlement_summary(admin: Client, lease_id: str, timeout: float = 60) -> dict[str, Any]:
    """What a lease cost and paid, from the journal (admin key): what the renter paid into
    escrow, what each supplier earned, what was refunded and slashed, and the audit."""

    def settled() -> list[EntryOut] | None:
        entries = _lease_entries(admin, lease_id)
        return entries if any(e.kind == "settle" for e in entries) else None

    entries = wait_with_progress(f"waiting for the settlement of {lease_id}", settled, timeout)
    paid = earned = refunded = slashed = 0
    suppliers: dict[str, int] = {}
    for e in entries:
        for p in e.postings:
            kind = p.account.partition(":")[0]
            if e.kind in ("escrow", "extend") and kind == "renter":
                paid -= p.amount_micros
            elif e.kind == "settle" and kind == "supplier":
                owner = p.account.partition(":")[2]
                suppliers[owner] = suppliers.get(owner, 0) + p.amount_micros
                earned += p.amount_micros
            elif e.kind == "settle" and kind == "renter":
                refunded += p.amount_micros
            elif e.kind == "slash" and kind == "stake":
                slashed -= p.amount_micros
    audit = admin.ledger_audit()
    return {
        "lease_id": lease_id,
        "renter_paid_micros": paid,
        "suppliers_earned_micros": suppliers,
        "earned_micros": earned,
        "refunded_micros": refunded,
        "slashed_micros": slashed,
        "entries": [e.seq for e in entries],
        "chain_ok": audit.chain_ok,
        "balanced": audit.balanced and paid == earned + refunded,
    }


def _lease_entries(admin: Client, lease_id: str) -> list[EntryOut]:
    found, after = [], 0
    while True:
        page = admin.ledger_entries(after, 1000)
        found += [e for e in page if e.memo.get("lease") == lease_id or _of_lease(e, lease_id)]
        if len(page) < 1000:
            return found
        after = page[-1].seq


def _of_lease(entry: EntryOut, lease_id: str) -> bool:
    return entry.kind == "slash" and entry.key.startswith(f"slash:{lease_id}:")


def settlement_table(summary: dict[str, Any]) -> Table:
    rows = [("renter paid into escrow", money(summary["renter_paid_micros"]))]
    rows += [
        (f"supplier {s} earned", money(v)) for s, v in summary["suppliers_earned_micros"].items()
    ]
    rows += [
        ("refunded to the renter", money(summary["refunded_micros"])),
        ("slashed from stake", money(summary["slashed_micros"])),
        ("journal balanced", "yes" if summary["balanced"] else "NO"),
    ]
    return table(f"settlement of {summary['lease_id']}", ["", "amount"], rows)
