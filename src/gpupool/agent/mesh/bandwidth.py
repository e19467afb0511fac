"""The agent's bandwidth meter: measures download and upload against the coordinator now and
then, so the coordinator can give the worker a connectivity tier (domain/connectivity.py).

The download is timed here; the upload is timed by the coordinator, which stores both. Each
direction starts with a small payload and grows it until one transfer lasts long enough to
stand as the measurement, so a slow home link spends a second, not minutes, and a fast one is
not judged on TCP slow start.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from gpupool.agent.link import CoordinatorLink, LinkError
from gpupool.domain.connectivity import (
    GROWTH,
    MAX_PROBE_BYTES,
    MIN_PROBE_BYTES,
    mbit_per_second,
    next_probe_size,
)
from gpupool.wire import models as w

log = logging.getLogger("gpupool.agent.mesh.bandwidth")

INTERVAL_SECONDS = 6 * 3600.0  # links change rarely; each measurement costs up to 64 MiB
RETRY_SECONDS = 300.0
MAX_ATTEMPTS = 8  # per direction; sizes grow at least GROWTH-fold until MAX_PROBE_BYTES


class BandwidthError(Exception):
    """The measurement could not be completed."""


class BandwidthMeter:
    def __init__(
        self,
        link: CoordinatorLink,
        interval_seconds: float = INTERVAL_SECONDS,
        payload: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.link = link
        self.interval_seconds = interval_seconds
        self._payload = payload
        self.latest: w.BandwidthOut | None = None

    def download_mbps(self) -> float:
        size = MIN_PROBE_BYTES
        for _ in range(MAX_ATTEMPTS):
            timed, seconds = self.link.bandwidth_download(size)
            if timed == 0 or seconds <= 0:  # it came in one piece: not timeable yet
                if size >= MAX_PROBE_BYTES:
                    raise BandwidthError("the download arrived in one piece; cannot time it")
                size = min(size * GROWTH, MAX_PROBE_BYTES)
                continue
            wanted = next_probe_size(size, seconds)
            if wanted is None:
                return mbit_per_second(timed, seconds)
            size = wanted
        raise BandwidthError("the download never lasted long enough to time")

    def measure(self) -> w.BandwidthOut:
        """Measure both directions; the coordinator's answer (rates and tier)."""
        down = self.download_mbps()
        size = MIN_PROBE_BYTES
        for _ in range(MAX_ATTEMPTS):
            answer = self.link.bandwidth_upload(self._payload(size), down)
            if answer.stored:
                self.latest = answer
                return answer
            if answer.next_bytes is None or answer.next_bytes <= size:
                raise BandwidthError("the coordinator asked for no larger upload")
            size = answer.next_bytes
        raise BandwidthError("the upload never lasted long enough to time")

    def run(self, stop: threading.Event) -> None:
        """Measure at once, then every `interval_seconds`, until `stop`."""
        while not stop.is_set():
            wait = self.interval_seconds
            try:
                m = self.measure()
                log.info(
                    "event=bandwidth up_mbps=%.1f down_mbps=%.1f tier=%s",
                    m.upload_mbps or 0.0,
                    m.download_mbps or 0.0,
                    m.connectivity_tier,
                )
            except (LinkError, BandwidthError) as exc:
                log.warning("event=bandwidth_failed reason=%s", exc)
                wait = min(RETRY_SECONDS, self.interval_seconds)
            stop.wait(wait)
