"""Ray rules on plain values: node resources, roles, and when every member has joined."""

from __future__ import annotations

from gpupool.domain.models import DeviceKind
from gpupool.domain.ray import (
    LocalDevice,
    RayRole,
    SeenNode,
    check_head_addresses,
    missing_devices,
    node_of_device,
    node_resources,
    role_of,
)


def test_cpu_devices_offer_their_cores_and_gpus_their_count_each_with_a_device_resource() -> None:
    cpu = node_resources(
        [LocalDevice("w:cpu0", DeviceKind.CPU, 2), LocalDevice("w:cpu1", DeviceKind.CPU, 2)]
    )
    assert (cpu.num_cpus, cpu.num_gpus) == (4, 0)
    assert cpu.custom == {"device:w:cpu0": 1.0, "device:w:cpu1": 1.0}
    gpu = node_resources([LocalDevice("w:gpu0", DeviceKind.GPU, 1)])
    assert (gpu.num_cpus, gpu.num_gpus) == (1, 1)


def test_the_worker_holding_the_head_device_runs_the_head() -> None:
    assert role_of("w1", "w1") is RayRole.HEAD
    assert role_of("w2", "w1") is RayRole.WORKER


def test_joined_only_when_an_alive_node_offers_every_device() -> None:
    nodes = [
        SeenNode("n1", True, frozenset({"CPU", "device:a:cpu0"})),
        SeenNode("n2", False, frozenset({"CPU", "device:b:cpu0"})),
    ]
    assert missing_devices(nodes, ["a:cpu0", "b:cpu0"]) == ["b:cpu0"]  # n2 is dead
    assert node_of_device(nodes, "a:cpu0") == nodes[0]
    nodes.append(SeenNode("n3", True, frozenset({"device:b:cpu0"})))
    assert missing_devices(nodes, ["a:cpu0", "b:cpu0"]) == []


def test_a_mesh_head_may_put_its_dashboard_where_its_agent_connects_from_and_nowhere_else() -> None:
    overlay, peer = "100.64.0.7", "10.77.0.3"
    gcs = f"{overlay}:6379"
    # the dashboard at the address the coordinator saw the agent's request come from
    assert check_head_addresses(overlay, gcs, f"http://{peer}:8265", peer=peer) is None
    # the GCS stays on the node's own (overlay) address; the peer is for the dashboard only
    assert check_head_addresses(overlay, f"{peer}:6379", f"http://{peer}:8265", peer=peer)
    # without a peer (not on the mesh), or elsewhere: refused
    assert check_head_addresses(overlay, gcs, f"http://{peer}:8265") is not None
    assert check_head_addresses(overlay, gcs, "http://10.77.0.9:8265", peer=peer) is not None
    # a peer that is no usable IP literal widens nothing (cloud metadata, test clients' names)
    for bad in ("169.254.169.254", "testclient", "0.0.0.0"):
        assert check_head_addresses(overlay, gcs, f"http://{bad}:80", peer=bad) is not None
