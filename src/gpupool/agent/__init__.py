"""The agent: runs on a supplier's machine, registers its devices, keeps its worker alive with
heartbeats, and brings each lease up in its own sandbox and down again at the end.

Modules: `identity` on disk (via `gpupool.crypto`), `devices` and `nvml` (what the machine
offers), `sandbox` (cgroups and process groups), `link` (signed requests to the coordinator),
`daemon` (the loops that tie them together).
"""
