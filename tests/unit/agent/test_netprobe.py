"""RTT probes over real UDP sockets on loopback: a probe answers with its coordinate, the
prober measures and moves its own coordinate; malformed packets get no answer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gpupool.agent.mesh.netprobe import MAGIC, REPLY_SIZE, NetProbe
from gpupool.domain.coordinates import Coordinate
from gpupool.wire import models as w


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def test_a_probe_measures_a_peer_and_learns_its_coordinate(stop: threading.Event) -> None:
    peer = NetProbe(host="127.0.0.1")
    peer.coordinate = Coordinate((30.0, 0.0, 0.0, 0.0), 2.0, 0.3)
    peer.start(stop)
    assert peer.port is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(1.0)
        measured = NetProbe.ping(client, "127.0.0.1", peer.port)
    assert measured is not None
    rtt, remote = measured
    assert 0 < rtt < 1000
    assert remote == peer.coordinate


def test_the_prober_moves_toward_what_it_measures(stop: threading.Event) -> None:
    """On loopback the RTT is a fraction of a millisecond: a node that a peer's coordinate
    puts 500 ms away moves closer."""
    peer = NetProbe(host="127.0.0.1")
    peer.coordinate = Coordinate((500.0, 0.0, 0.0, 0.0), 1.0, 0.1)
    me = NetProbe(host="127.0.0.1")
    peer.start(stop)
    me.start(stop)
    before = me.coordinate
    me.offer([w.ProbePeerOut(worker_id="w-peer", host="127.0.0.1", port=peer.port or 0)])
    deadline = time.monotonic() + 10
    while me.coordinate == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert me.coordinate.vec[0] > before.vec[0]
    report = me.report()
    assert report.probe_port == me.port and report.coordinate is not None


@pytest.mark.parametrize("packet", [b"hello", MAGIC + b"x" * 8, b"\0" * REPLY_SIZE])
def test_malformed_or_short_requests_get_no_answer(stop: threading.Event, packet: bytes) -> None:
    peer = NetProbe(host="127.0.0.1")
    peer.start(stop)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.3)
        client.sendto(packet, ("127.0.0.1", peer.port or 0))
        with pytest.raises(TimeoutError):
            client.recvfrom(2048)
