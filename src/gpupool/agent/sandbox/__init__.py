"""Lease sandboxes: cgroups and cpusets, the lease init, the guard, process listing and
encrypted scratch."""
