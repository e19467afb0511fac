"""`gpupool bench`: measure gpupool's algorithms on real data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpupool.cli.common import CliError, JsonOpt, out, print_json, table

app = typer.Typer(help="Benchmarks on real data.", no_args_is_help=True)


@app.command("placement")
def placement(
    matrix: Annotated[
        Path,
        typer.Option(
            help="Square RTT matrix in ms (whitespace or comma separated; 0, negative or NaN "
            "off the diagonal mean not measured)."
        ),
    ],
    size: Annotated[int, typer.Option(help="Devices in the cluster.")] = 8,
    probes: Annotated[int, typer.Option(help="Random peers each node measures (K).")] = 16,
    seed: Annotated[int, typer.Option(help="Seed for the probe choice.")] = 1,
    sites: Annotated[
        Path | None,
        typer.Option(help="CSV index,name,latitude,longitude,region per matrix row."),
    ] = None,
    shortlist: Annotated[
        bool, typer.Option(help="Measure real RTTs among the short list before choosing.")
    ] = True,
    json_out: JsonOpt = False,
) -> None:
    """Coordinates from K probes per node, then one cluster: predicted vs true diameter."""
    from gpupool.services.netsim import MatrixError, bench_placement, load_matrix, load_sites

    try:
        rtt = load_matrix(matrix)
        places = load_sites(sites) if sites is not None else None
        if places is not None and len(places) != len(rtt):
            raise MatrixError(f"{sites} has {len(places)} sites for {len(rtt)} matrix rows")
        result = bench_placement(rtt, size, probes, seed, places, shortlist)
    except MatrixError as exc:
        raise CliError(str(exc), 2) from exc
    if json_out:
        print_json(result)
        return
    names = [places[i].name for i in result["members"]] if places else result["members"]
    out.print(
        table(
            f"cluster of {size} from {len(rtt)} nodes, K = {probes}",
            ["figure", "value"],
            [
                ["members", ", ".join(str(n) for n in names)],
                ["head", places[result["head"]].name if places else result["head"]],
                ["predicted diameter", f"{result['predicted_diameter_ms']:.1f} ms"],
                ["true diameter", f"{result['true_diameter_ms']:.1f} ms"],
                ["placement time", f"{result['elapsed_ms']:.1f} ms"],
                [
                    "probes",
                    f"{result['probes']} ({result['coordinate_probes']} for coordinates, "
                    f"{result['shortlist_probes']} on the short list)",
                ],
                ["Vivaldi median relative error", f"{result['vivaldi_median_relative_error']:.1%}"],
            ],
        )
    )
