"""The `gpupool` command line (Typer + Rich).

`app` assembles the command groups; `serve` starts the long-running programs (and is the
only module that imports the coordinator or the agent, lazily); every other command talks to
the coordinator through `gpupool.client`.
"""
