"""The agent's challenge queue: a spot check on a leased device is answered before idle
devices' challenges that arrived earlier, and nothing is queued twice."""

from __future__ import annotations

from typing import Any

from gpupool.agent.proof.challenger import Challenger
from gpupool.wire import models as w


def _challenge(cid: str, lease_id: str | None = None) -> w.ChallengeOut:
    return w.ChallengeOut(
        id=cid, device_id="w-x:gpu0", n=8, seed_a="0" * 16, seed_b="1" * 16, lease_id=lease_id
    )


def test_spot_checks_jump_the_queue_and_repeats_are_dropped() -> None:
    link: Any = None  # offering never touches the link
    challenger = Challenger(link)
    challenger.offer([_challenge("idle-1"), _challenge("idle-2")])
    challenger.offer([_challenge("spot", lease_id="l-1"), _challenge("idle-1")])
    order = [challenger._queue.get_nowait()[2].id for _ in range(challenger._queue.qsize())]
    assert order == ["spot", "idle-1", "idle-2"]
