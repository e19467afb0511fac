"""Fakes for tests, and only for tests: a manual clock and an NVML double.

Product code never imports this package (an import-linter contract checks); the real parts
(SQLite or PostgreSQL, real processes, real NVML) are used everywhere else.
"""

from gpupool.testing.clock import ManualClock
from gpupool.testing.nvml import FakeGpu, FakeNvml

__all__ = ["FakeGpu", "FakeNvml", "ManualClock"]
