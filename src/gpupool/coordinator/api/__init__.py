"""The coordinator's versioned HTTP API (`/v1`), built with FastAPI over the services."""
