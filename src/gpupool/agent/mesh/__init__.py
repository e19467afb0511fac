"""The WireGuard mesh between a lease's members, and the network probes placement uses."""
