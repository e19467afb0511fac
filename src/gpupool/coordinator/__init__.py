"""The coordinator: the HTTP API (`api`), its storage (`storage`), the background ticker and
the server that runs them (`server`). Only `server.serve` is meant to be called from outside.
"""
