"""Pure rules and algorithms of gpupool.

Nothing in this package performs I/O, reads the clock or the environment, or sets up logging:
every function takes its inputs (the current time included) as plain values. The
import-linter contracts in pyproject.toml enforce this.
"""
