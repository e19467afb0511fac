"""Workloads that run on a booked cluster as Ray jobs (shipped as files, not imported)."""
