"""gpupool: an open, decentralized GPU cloud.

Suppliers run the agent on their machines; renters book clusters of the devices those agents
offer; the coordinator places bookings, tracks leases and (in later layers) proves and pays
for them. See docs/architecture.md for the map of packages.
"""

__version__ = "0.1.0"
