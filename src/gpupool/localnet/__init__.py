"""The product's own local network: a coordinator and several agents as real processes on one
machine, for `gpupool demo` and the integration tests."""

from gpupool.localnet.network import LocalNetwork, NetworkError

__all__ = ["LocalNetwork", "NetworkError"]
