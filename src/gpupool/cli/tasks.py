"""`gpupool task` (protocol-mode jobs), `gpupool validator` (re-running a sample of them)
and `gpupool stake` (suppliers' stake per device)."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Annotated

import typer

from gpupool.cli.common import (
    DEFAULT_COORDINATOR,
    CliError,
    CoordinatorOpt,
    JsonOpt,
    KeyOpt,
    client,
    err,
    money,
    out,
    print_json,
    table,
    wait_with_progress,
)
from gpupool.domain.replication import escape_probability
from gpupool.wire.tasks import TaskOut

task_app = typer.Typer(help="Protocol-mode jobs: independent, deterministic.", no_args_is_help=True)
validator_app = typer.Typer(help="Re-run a random sample of finished jobs.", no_args_is_help=True)
stake_app = typer.Typer(help="Stake per device (suppliers).", no_args_is_help=True)


COLUMNS = ["task", "state", "validation", "sha256", "command"]


def _row(t: TaskOut) -> tuple[object, ...]:
    return (t.id, t.state, t.validation, t.output_hash or "-", t.command[:40])


@task_app.command("submit")
def submit(
    command: Annotated[str, typer.Option(help="Shell command: reads the input on stdin.")],
    input_file: Annotated[
        Path | None, typer.Option("--input", help="Input file (default: empty).")
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="Container image to run the command in (needs Docker).")
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(min=0, max=0.999, help="Numeric outputs agree within this (relative)."),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the result and print it.")] = False,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Submit a job; a worker runs it and returns the output with its sha256."""
    try:
        data = input_file.read_bytes() if input_file else b""
    except OSError as exc:
        raise CliError(f"cannot read the input: {exc}", 2) from exc
    with client(coordinator, key) as gp:
        task = gp.submit_task(command, data, image, tolerance)
        if wait:
            task = wait_with_progress(
                f"waiting for {task.id}",
                lambda: t if (t := gp.task(task.id)).state in ("done", "failed") else None,
                600,
                json_out,
            )
    if json_out:
        print_json(task)
        return
    out.print(f"{task.id}: {task.state} (input sha256 {task.input_hash})", highlight=False)
    if task.output_b64 is not None:
        out.print(base64.b64decode(task.output_b64).decode(errors="replace"), end="")


@task_app.command("list")
def list_tasks(
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR, key: KeyOpt = None, json_out: JsonOpt = False
) -> None:
    """Your jobs with their state, validation and output hash."""
    with client(coordinator, key) as gp:
        tasks = gp.tasks()
    if json_out:
        print_json(tasks)
    else:
        out.print(
            table("tasks", ["task", "state", "validation", "sha256", "command"], map(_row, tasks))
        )


@task_app.command("show")
def show(
    task_id: Annotated[str, typer.Argument(help="The task.")],
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A job, its runs, and its output."""
    with client(coordinator, key) as gp:
        task = gp.task(task_id)
    if json_out:
        print_json(task)
        return
    out.print(table(task.id, ["task", "state", "validation", "sha256", "command"], [_row(task)]))
    runs = [
        (r.id, r.purpose, r.device_id or "-", r.state, r.output_hash or r.error) for r in task.runs
    ]
    out.print(table("runs", ["run", "purpose", "device", "state", "sha256 / error"], runs))
    if task.output_b64 is not None:
        out.print(base64.b64decode(task.output_b64).decode(errors="replace"), end="")


@validator_app.command("run")
def validator_run(
    p: Annotated[
        float, typer.Option(min=0, max=1, help="Chance each finished job is re-run.")
    ] = 0.1,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for verdicts.")] = 600,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sample finished jobs with probability p, have each re-run on another supplier's device,
    and wait for the verdicts (a mismatch gets a third run; the minority is slashed)."""
    with client(coordinator, key) as gp:
        sampled = gp.validate(p)
        err.print(f"sampled {len(sampled)} job(s) with p = {p}")
        done = ("confirmed", "caught", "no-majority")
        deadline = time.monotonic() + timeout
        views = gp.validations(sampled) if sampled else []
        while sampled and any(v.validation not in done for v in views):
            if time.monotonic() > deadline:
                stuck = sum(any(r.state == "waiting" for r in v.runs) for v in views)
                raise CliError(
                    f"timed out after {timeout:.0f} s waiting for the re-runs; {stuck} still "
                    "wait for a device of another supplier and network"
                )
            time.sleep(0.5)
            views = gp.validations(sampled)
    counts = {outcome: sum(v.validation == outcome for v in views) for outcome in done}
    if json_out:
        tasks = [v.model_dump(mode="json") for v in views]
        print_json({"p": p, "sampled": sampled, **counts, "tasks": tasks})
        return
    out.print(
        table("validation", ["task", "state", "verdict", "sha256", "command"], map(_row, views))
    )
    out.print(
        f"{len(sampled)} re-run: {counts['confirmed']} confirmed, {counts['caught']} caught "
        f"(slashed, you were rewarded), {counts['no-majority']} without a majority"
    )


@validator_app.command("odds")
def odds(
    p: Annotated[float, typer.Option("--p", min=0, max=1, help="Sampling probability.")],
    jobs: Annotated[int, typer.Option("--jobs", min=0, help="Jobs a supplier cheats on.")],
    share: Annotated[
        float,
        typer.Option("--share", min=0, max=1, help="Colluders' share of the re-run pool."),
    ] = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """The chance that a supplier cheating on M jobs escapes: (1 - p (1 - s))^M, where
    colluders holding share s of the re-run pool copy its output."""
    chance = escape_probability(p, jobs, share)
    if json_out:
        print_json({"p": p, "jobs": jobs, "share": share, "escape_probability": chance})
    else:
        out.print(
            f"(1 - {p} x (1 - {share}))^{jobs} = {chance:.6g}: "
            f"the chance a cheat on {jobs} jobs escapes"
        )


def _utc(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


@stake_app.command("list")
def stake_list(
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR, key: KeyOpt = None, json_out: JsonOpt = False
) -> None:
    """Your devices with their required and held stake."""
    with client(coordinator, key) as gp:
        stakes = gp.stakes()
    if json_out:
        print_json(stakes)
        return
    rows = [
        (
            s.device_id,
            money(s.required_micros),
            money(s.held_micros),
            "yes" if s.in_pool else "no",
            "-"
            if s.unstake_at is None
            else time.strftime("%Y-%m-%d %H:%M", time.gmtime(s.unstake_at)),
        )
        for s in stakes
    ]
    out.print(table("stake", ["device", "required", "held", "in pool", "unstake at (UTC)"], rows))


@stake_app.command("add")
def stake_add(
    device_id: Annotated[str | None, typer.Argument(help="Your device.")] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every device of yours whose stake is short.")
    ] = False,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Top the device's stake up to its required amount from your balance."""
    if (device_id is None) == (not every):
        raise CliError("name one device, or pass --all", 2)
    with client(coordinator, key) as gp:
        if every:
            devices = [s.device_id for s in gp.stakes() if s.held_micros < s.required_micros]
        else:
            devices = [device_id or ""]
        entries = [(d, gp.stake(d)) for d in devices]
    if json_out:
        print_json([entry for _, entry in entries] if every else entries[0][1])
        return
    for device, entry in entries:
        moved = sum(p.amount_micros for p in entry.postings if p.amount_micros > 0)
        out.print(f"{device}: staked {money(moved)} more (entry {entry.seq})")
    if every and not entries:
        out.print("every device of yours is fully staked")


@stake_app.command("remove")
def stake_remove(
    device_id: Annotated[str, typer.Argument(help="Your device.")],
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Unstake: the first call starts the cooldown, a call after it pays the stake back."""
    with client(coordinator, key) as gp:
        view = gp.unstake(device_id)
    if json_out:
        print_json(view)
    elif view.unstake_at is not None:
        out.print(f"{device_id} left the pool; run this again after {_utc(view.unstake_at)} UTC")
    else:
        out.print(f"{device_id}: stake paid back")
