"""RTT probes between agents over UDP, and the worker's Vivaldi coordinate.

Every agent answers probes on a UDP port (reported in heartbeats) and, each round, measures
the RTT to the few peers the coordinator named in its last heartbeat answer, updating its
coordinate with the rule in `gpupool.domain.coordinates`.

Wire format (network byte order):
    request: MAGIC (12 bytes) | nonce (8 bytes) | zero padding to REPLY_SIZE
    reply:   MAGIC | nonce | vec[4], height, error as 6 IEEE doubles
The responder answers only requests of exactly REPLY_SIZE bytes, so a reply is never larger
than the request that caused it (no amplification for spoofed sources). The RTT of a peer is
the smallest of PINGS tries (queueing only ever adds delay).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Sequence

from gpupool.domain.coordinates import DIMENSIONS, Coordinate, update
from gpupool.wire import models as w

log = logging.getLogger(__name__)

MAGIC = b"gpupool-rtt1"
_COORD = struct.Struct(f"!{DIMENSIONS + 2}d")
REPLY_SIZE = len(MAGIC) + 8 + _COORD.size
PINGS = 3
TIMEOUT_S = 1.0
ROUND_S = 2.0


class NetProbe:
    def __init__(self, host: str = "0.0.0.0", port: int = 0, advertise: str | None = None) -> None:  # noqa: S104 (peers must reach it)
        self.host, self.requested_port, self.advertise = host, port, advertise
        self.coordinate = Coordinate.origin()
        self._peers: list[w.ProbePeerOut] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._rng = random.Random()  # noqa: S311 (tie directions, not secrets)

    @property
    def port(self) -> int | None:
        return self._server.getsockname()[1] if self._server is not None else None

    def report(self) -> w.HeartbeatIn:
        with self._lock:
            c = self.coordinate
        return w.HeartbeatIn(
            coordinate=w.CoordinateIn(vec=list(c.vec), height=c.height, error=c.error),
            probe_port=self.port,
            probe_host=self.advertise,
        )

    def offer(self, peers: Sequence[w.ProbePeerOut]) -> None:
        """The peers to measure next (from a heartbeat answer)."""
        if peers:
            with self._lock:
                self._peers = list(peers)

    # the responder ----------------------------------------------------------------------

    def start(self, stop: threading.Event) -> list[threading.Thread]:
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind((self.host, self.requested_port))
        server.settimeout(0.5)
        self._server = server
        log.info("event=probe_listening port=%d", self.port)
        threads = [
            threading.Thread(target=self._answer, args=(stop,), name="rtt-answer", daemon=True),
            threading.Thread(target=self._measure, args=(stop,), name="rtt-probe", daemon=True),
        ]
        for t in threads:
            t.start()
        return threads

    def _answer(self, stop: threading.Event) -> None:
        assert self._server is not None
        while not stop.is_set():
            try:
                data, sender = self._server.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) != REPLY_SIZE or not data.startswith(MAGIC):
                continue
            with self._lock:
                c = self.coordinate
            reply = data[: len(MAGIC) + 8] + _COORD.pack(*c.vec, c.height, c.error)
            try:
                self._server.sendto(reply, sender)
            except OSError:
                continue
        self._server.close()

    # the prober ---------------------------------------------------------------------------

    def _measure(self, stop: threading.Event) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT_S)
            while not stop.wait(ROUND_S):
                with self._lock:
                    peers = list(self._peers)
                for peer in peers:
                    measured = self.ping(client, peer.host, peer.port)
                    if measured is None:
                        continue
                    rtt, remote = measured
                    tie = [self._rng.gauss(0, 1) for _ in range(DIMENSIONS)]
                    with self._lock:
                        self.coordinate = update(self.coordinate, remote, rtt, tie)

    @staticmethod
    def ping(client: socket.socket, host: str, port: int) -> tuple[float, Coordinate] | None:
        """The smallest RTT of PINGS tries in ms and the peer's coordinate, or None."""
        best: float | None = None
        remote: Coordinate | None = None
        for _ in range(PINGS):
            nonce = os.urandom(8)
            request = (MAGIC + nonce).ljust(REPLY_SIZE, b"\0")
            started = time.perf_counter()
            try:
                client.sendto(request, (host, port))
                while True:
                    data, _ = client.recvfrom(2048)
                    if data[: len(MAGIC) + 8] == MAGIC + nonce and len(data) == REPLY_SIZE:
                        break
            except OSError:  # timeouts included
                continue
            rtt = (time.perf_counter() - started) * 1000
            values = _COORD.unpack(data[len(MAGIC) + 8 :])
            try:
                remote = Coordinate(tuple(values[:DIMENSIONS]), values[-2], values[-1])
            except ValueError:
                return None  # a peer sending nonsense is not measured
            best = rtt if best is None else min(best, rtt)
        if best is None or remote is None:
            return None
        return best, remote
