"""`gpupool proof`: show, export and verify Proof of Time-Lock certificates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from gpupool.cli.common import (
    DEFAULT_COORDINATOR,
    CliError,
    CoordinatorOpt,
    JsonOpt,
    KeyOpt,
    client,
    err,
    known_coordinators,
    out,
    print_json,
    table,
)
from gpupool.client import ApiError
from gpupool.client.pins import normalize
from gpupool.wire.models import CertificateOut

T = TypeVar("T")

app = typer.Typer(help="Proof of Time-Lock certificates.", no_args_is_help=True)

LeaseArg = Annotated[str, typer.Argument(help="A lease id (l-...) or its cluster id (c-...).")]


def cluster_of(lease_or_cluster: str) -> str:
    """Lease l-X belongs to cluster c-X: both are named from one booking."""
    if lease_or_cluster.startswith("l-"):
        return "c-" + lease_or_cluster.removeprefix("l-")
    return lease_or_cluster


def _proof_of(lease_or_cluster: str, fetch: Callable[[str], T]) -> T:
    """`fetch` the proof by cluster id, saying "no lease l-X" when the user named a lease:
    the coordinator only knows the cluster id it was asked for."""
    try:
        return fetch(cluster_of(lease_or_cluster))
    except ApiError as exc:
        if exc.status == 404 and lease_or_cluster.startswith("l-"):
            raise ApiError(404, exc.code, f"no lease {lease_or_cluster}", exc.body) from exc
        raise


def summary(body: dict[str, Any]) -> dict[str, Any]:
    """The figures a renter looks at first (also the demo's `potl` object)."""
    return {
        "verdict": body.get("verdict"),
        "coverage": body.get("coverage_ppm", 0) / 1_000_000,
        "violations": body.get("violations", 0),
        "anomaly_score": body.get("anomaly_ppm", 0) / 1_000_000,
        "payout_fraction": body.get("payout_ppm", 0) / 1_000_000,
    }


def show_certificate(cert: CertificateOut) -> None:
    body = cert.body
    s = summary(body)
    out.print(
        f"[bold]{cert.lease_id}[/bold] ({cert.cluster_id})  verdict [bold]{s['verdict']}[/bold]  "
        f"coverage {s['coverage']:.4f}  violations {s['violations']}  "
        f"anomaly {s['anomaly_score']:.3f}  payout {s['payout_fraction']:.4f}"
    )
    for reason in body.get("reasons", []):
        out.print(f"  • {reason}")
    out.print(
        table(
            "devices",
            ["device", "samples", "coverage", "violations", "flags", "chain head"],
            [
                (
                    d.get("device"),
                    d.get("samples"),
                    f"{d.get('coverage_ppm', 0) / 1_000_000:.4f}",
                    len(d.get("violations", [])),
                    d.get("flags", 0),
                    str((d.get("head") or {}).get("hash") or "-")[:16],
                )
                for d in body.get("devices", [])
            ],
        )
    )
    out.print(f"signed by the coordinator key {cert.coordinator_key}")


@app.command("show")
def show(
    lease: LeaseArg,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the signed certificate of an ended lease."""
    with client(coordinator, key) as gp:
        cert = _proof_of(lease, gp.proof)
    if json_out:
        print_json(cert)
    else:
        show_certificate(cert)


@app.command("export")
def export(
    lease: LeaseArg,
    folder: Annotated[Path, typer.Argument(help="Folder to write (created if missing).")],
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the certificate, every sample and the public keys, for offline verification."""
    from gpupool.services.proof_files import write_folder

    with client(coordinator, key) as gp:
        bundle = _proof_of(lease, gp.proof_export)
    write_folder(
        folder,
        bundle.certificate.model_dump(mode="json"),
        bundle.samples,
        [b.model_dump(mode="json") for b in bundle.batches],
        bundle.worker_keys,
    )
    count = sum(len(v) for v in bundle.samples.values())
    if json_out:
        print_json({"folder": str(folder), "samples": count, "batches": len(bundle.batches)})
    else:
        err.print(
            f"wrote the certificate, {count} samples and {len(bundle.batches)} signed "
            f"batches to {folder}"
        )


@app.command("verify")
def verify(
    folder: Annotated[Path, typer.Argument(help="A folder written by `gpupool proof export`.")],
    coordinator_key: Annotated[
        str | None,
        typer.Option(help="Require this coordinator public key (base64), learned out of band."),
    ] = None,
    coordinator: CoordinatorOpt = DEFAULT_COORDINATOR,
    json_out: JsonOpt = False,
) -> None:
    """Re-check a proof offline: signatures, hash chains, coverage and verdict, against the
    key given with --coordinator-key or else the one pinned for --coordinator. Exits 1 on any
    problem, 2 when there is no key to check against."""
    from gpupool.services.proof_files import ProofFolderError, read_folder, verify_folder

    expected, source = expected_key(coordinator_key, coordinator)
    try:
        problems = verify_folder(folder, expected)
        cert = read_folder(folder).certificate
    except ProofFolderError as exc:
        raise CliError(str(exc), 2) from exc
    body = cert.get("body", {})
    if json_out:
        print_json(
            {
                "verified": not problems,
                "problems": problems,
                "coordinator_key": expected,
                "key_source": source,
                **summary(body),
            }
        )
    elif not problems:
        s = summary(body)
        out.print(
            f"[green]verified[/green]: {body.get('lease')} verdict {s['verdict']}, "
            f"coverage {s['coverage']:.4f}, {s['violations']} violations; signed by "
            f"{expected} ({source})",
            highlight=False,
            soft_wrap=True,
        )
    else:
        for problem in problems:
            err.print(f"[red]✗[/red] {problem}", highlight=False, soft_wrap=True)
        err.print(f"checked against {expected} ({source})", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)


def expected_key(given: str | None, coordinator: str) -> tuple[str, str]:
    """The key a proof must be signed by, and where it came from. Never the key the proof
    names itself: anyone can re-sign a consistent proof with a key of their own."""
    if given:
        return given, "given with --coordinator-key"
    url = normalize(coordinator)
    pinned = known_coordinators().get(url)
    if pinned is None:
        raise CliError(
            f"no coordinator key to verify against: none is pinned for {url}. Pin it with "
            f"`gpupool coordinator pin -c {url}` (compare it with `gpupool coordinator key "
            "--state-dir` on the coordinator's host), or pass --coordinator-key KEY",
            2,
        )
    return pinned, f"pinned for {url}"
