"""Ray on a booked cluster: what each member's Ray node offers, and when the cluster has
joined. Pure rules; the agent's Ray adapter (`agent/ray/node.py`) and the coordinator's Ray
service (`services/raycluster.py`) apply them.

One Ray node runs per worker and lease (a worker may hold several devices of one lease); the
node of the worker that holds the lease's head device is the Ray head. A node offers its
devices as Ray resources: `num_gpus` for GPUs, `num_cpus` for the cores of CPU devices, and a
custom resource `device:<device id>` of 1 per device, so work can be placed on one device.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from gpupool.domain.models import DeviceKind

# Ray's own floor for the object store is 75 MiB; this machine's default stays near it.
MIN_OBJECT_STORE_BYTES = 78_643_200
DEVICE_RESOURCE_PREFIX = "device:"


class RayRole(StrEnum):
    HEAD = "head"
    WORKER = "worker"


class RayNodeState(StrEnum):
    """A member's Ray node as its agent reports it."""

    STARTING = "starting"  # `ray start` running (a worker: waiting for the head's address)
    STARTED = "started"  # the node runs; not yet seen in the head's node list
    JOINED = "joined"  # seen alive in the head's node list (the head: every node seen)
    FAILED = "failed"  # could not start, or died
    STOPPED = "stopped"  # torn down at lease end


@dataclass(frozen=True, slots=True)
class LocalDevice:
    """A device of this lease on this worker, as Ray should see it."""

    device_id: str
    kind: DeviceKind
    cores: int


@dataclass(frozen=True, slots=True)
class NodeResources:
    num_cpus: int
    num_gpus: int
    custom: dict[str, float]


def device_resource(device_id: str) -> str:
    return DEVICE_RESOURCE_PREFIX + device_id


def node_resources(devices: Sequence[LocalDevice]) -> NodeResources:
    """The resources one Ray node offers for its lease devices. A GPU-only node still gets
    one CPU, so that its GPU tasks have somewhere to run their Python."""
    cpus = sum(d.cores for d in devices if d.kind is DeviceKind.CPU)
    gpus = sum(1 for d in devices if d.kind is DeviceKind.GPU)
    return NodeResources(
        num_cpus=cpus if cpus else (1 if gpus else 0),
        num_gpus=gpus,
        custom={device_resource(d.device_id): 1.0 for d in devices},
    )


def role_of(worker_id: str, head_worker_id: str) -> RayRole:
    return RayRole.HEAD if worker_id == head_worker_id else RayRole.WORKER


@dataclass(frozen=True, slots=True)
class SeenNode:
    """One entry of the head's node list."""

    node_id: str
    alive: bool
    resources: frozenset[str]


def node_of_device(nodes: Iterable[SeenNode], device_id: str) -> SeenNode | None:
    """The alive node that offers `device_id`'s resource, if the head's list has one."""
    wanted = device_resource(device_id)
    return next((n for n in nodes if n.alive and wanted in n.resources), None)


def missing_devices(nodes: Iterable[SeenNode], device_ids: Iterable[str]) -> list[str]:
    """The lease devices that no alive node offers yet: empty when every member joined."""
    nodes = list(nodes)
    return [d for d in device_ids if node_of_device(nodes, d) is None]


def _usable_ip(value: str) -> bool:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return False
    return not (ip.is_link_local or ip.is_multicast or ip.is_unspecified)


def check_head_addresses(
    address: str,
    gcs_address: str | None,
    dashboard_url: str | None,
    peer: str | None = None,
) -> str | None:
    """Why a head's reported addresses are refused, or None. The coordinator proxies renters'
    job requests to the dashboard URL, so an agent may only name its own node: an IP literal
    equal to the address it binds to, never a link-local (cloud metadata), multicast or
    unspecified one, on an explicit port. A head on the mesh binds its node to the overlay
    address, which the coordinator cannot reach; its dashboard may instead sit at `peer`, the
    address the agent's own request came from."""
    if not _usable_ip(address):
        return f"the node address {address!r} is not a usable IP address"
    if peer is not None and not _usable_ip(peer):
        peer = None
    for what, value, scheme in (("GCS", gcs_address, ""), ("dashboard", dashboard_url, "http://")):
        if value is None:
            continue
        host, sep, port = value.removeprefix(scheme).rpartition(":")
        allowed = {address, peer} if what == "dashboard" and peer else {address}
        if not value.startswith(scheme) or not sep or host not in allowed or not port.isdigit():
            hosts = " or ".join(sorted(allowed))
            return f"the {what} address must be {scheme}{hosts}:<port>, not {value!r}"
        if not 0 < int(port) < 65536:
            return f"the {what} port {port} is out of range"
    return None
