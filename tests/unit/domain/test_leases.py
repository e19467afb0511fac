"""The lease life cycle rules, on plain values."""

from __future__ import annotations

import pytest

from gpupool.domain import leases as rules
from gpupool.domain.errors import Conflict, InvalidRequest
from gpupool.domain.leases import LeaseState as L
from gpupool.domain.leases import Member
from gpupool.domain.leases import MemberState as M


def members(*states: M, up: bool = True) -> list[Member]:
    """Members in these states; the first holds the Ray head."""
    return [Member(s, up, head=i == 0) for i, s in enumerate(states)]


@pytest.mark.parametrize(
    ("current", "reported", "expected"),
    [
        (L.PENDING, (M.ASSIGNED, M.ASSIGNED), L.PENDING),
        (L.PENDING, (M.PROVISIONING, M.ASSIGNED), L.PROVISIONING),
        (L.PROVISIONING, (M.READY, M.ASSIGNED), L.PROVISIONING),
        (L.PROVISIONING, (M.READY, M.READY), L.READY),
        (L.PROVISIONING, (M.READY, M.FAILED), L.FAILED),  # bring-up failed
        (L.READY, (M.READY, M.FAILED), L.DEGRADED),  # a worker member died: the rest run on
        (L.READY, (M.READY, M.RELEASED), L.DEGRADED),
        (L.READY, (M.FAILED, M.READY), L.FAILED),  # the Ray head died
        (L.DEGRADED, (M.READY, M.FAILED, M.READY), L.DEGRADED),
        (L.DEGRADED, (M.FAILED, M.FAILED), L.FAILED),
        (L.ENDING, (M.RELEASED, M.READY), L.ENDING),
        (L.ENDING, (M.RELEASED, M.RELEASED), L.ENDED),
        (L.ENDED, (M.READY, M.READY), L.ENDED),
        (L.FAILED, (M.READY,), L.FAILED),
    ],
)
def test_state_follows_member_reports(current: L, reported: tuple[M, ...], expected: L) -> None:
    assert rules.state_after_reports(current, members(*reported)) is expected


def test_ending_lease_does_not_wait_for_a_worker_that_is_down() -> None:
    mixed = [Member(M.RELEASED, True), Member(M.READY, False)]
    assert rules.state_after_reports(L.ENDING, mixed) is L.ENDED


def test_a_worker_that_stops_answering_does_not_by_itself_degrade_a_ready_lease() -> None:
    silent = [Member(M.READY, False, head=True), Member(M.READY, False)]
    assert rules.state_after_reports(L.READY, silent) is L.READY
    assert rules.state_after_reports(L.DEGRADED, members(M.READY, M.READY)) is L.READY


@pytest.mark.parametrize("state", [L.PENDING, L.PROVISIONING, L.READY, L.DEGRADED])
def test_active_leases_can_be_terminated(state: L) -> None:
    assert rules.terminate(state) is L.ENDING


@pytest.mark.parametrize("state", [L.ENDING, L.ENDED, L.FAILED])
def test_inactive_leases_cannot_be_terminated(state: L) -> None:
    with pytest.raises(Conflict):
        rules.terminate(state)


def test_extend_adds_whole_hours() -> None:
    assert rules.extend(L.READY, t2=1000.0, hours=3, hour_seconds=3600) == 1000.0 + 3 * 3600
    with pytest.raises(InvalidRequest):
        rules.extend(L.READY, 1000.0, 0, 3600)
    with pytest.raises(Conflict):
        rules.extend(L.ENDED, 1000.0, 1, 3600)


def test_due_to_end_exactly_at_t2() -> None:
    assert not rules.is_due_to_end(L.READY, t2=100.0, now=99.999)
    assert rules.is_due_to_end(L.READY, t2=100.0, now=100.0)
    assert not rules.is_due_to_end(L.ENDING, t2=100.0, now=200.0)


def test_provisioning_deadline_applies_before_ready_only() -> None:
    assert rules.missed_provisioning_deadline(L.PENDING, t1=0, now=301, deadline_seconds=300)
    assert not rules.missed_provisioning_deadline(L.PENDING, t1=0, now=300, deadline_seconds=300)
    assert not rules.missed_provisioning_deadline(L.READY, t1=0, now=999, deadline_seconds=300)


@pytest.mark.parametrize(
    ("current", "reported"),
    [
        (M.RELEASED, M.READY),
        (M.READY, M.PROVISIONING),
        (M.FAILED, M.READY),
    ],
)
def test_members_cannot_move_backwards(current: M, reported: M) -> None:
    with pytest.raises(Conflict):
        rules.check_member_move(current, reported)


def test_repeating_a_report_is_harmless() -> None:
    for state in (M.PROVISIONING, M.READY, M.RELEASED, M.FAILED):
        rules.check_member_move(state, state)
