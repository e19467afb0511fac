"""Run one shell command on every alive node of the job's Ray cluster: the `setup` step of
`gpupool launch` (a task file's setup runs on each member, as SkyPilot's does).

    python every_node.py COMMAND

One Ray task per alive node, pinned to it (node affinity, not soft), runs `bash -c COMMAND`
in the job's working directory on that node. Each node's output is printed under a
`[node <id>]` header, then one line `EVERY_NODE {json}` with every node's exit status; the
script exits 1 when any node's command failed, so the job ends FAILED and `launch` stops.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote(num_cpus=0)  # setup must run even where the node's cores are all taken
def run_here(command: str) -> dict[str, Any]:
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False)
    return {
        "node": ray.get_runtime_context().get_node_id(),
        "status": done.returncode,
        "output": done.stdout + done.stderr,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: every_node.py COMMAND", file=sys.stderr)
        return 2
    ray.init()
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])  # type: ignore[no-untyped-call]
    refs = [
        run_here.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
        ).remote(argv[1])
        for node in nodes
    ]
    results = ray.get(refs)
    for result in results:
        print(f"[node {result['node'][:12]}] exit {result['status']}")
        print(result["output"], end="" if result["output"].endswith("\n") else "\n")
    summary = {r["node"]: r["status"] for r in results}
    print("EVERY_NODE " + json.dumps(summary, sort_keys=True), flush=True)
    return 0 if all(status == 0 for status in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
