"""Batch acceptance: each refusal code from a minimal batch, and batches that continue."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gpupool.domain.timelock.chain import (
    ChainHead,
    HashedSample,
    Refusal,
    RefusalCode,
    _Rules,
    check_batch,
    check_chain,
    current_beacon,
    head_after,
)
from gpupool.domain.timelock.samples import ZERO_HASH
from tests.unit.domain.timelock.conftest import (
    DEVICE,
    EPOCH,
    LEASE,
    T1,
    beacon_value,
    chain_dicts,
    hashed,
    relink,
    sample_dict,
)

T_END = T1 + 3_600_000
B0 = T1 // EPOCH


def check(
    dicts: list[dict[str, Any]],
    head: ChainHead | None = None,
    now_ms: int | None = None,
    **overrides: Any,
) -> Refusal | None:
    batch = hashed(dicts)
    now = now_ms if now_ms is not None else max(d["time_ms"] for d in dicts) + 200
    args: dict[str, Any] = {
        "lease_id": LEASE,
        "device_id": DEVICE,
        "t1_ms": T1,
        "t_end_ms": T_END,
        "samples": batch,
        "current_beacon": current_beacon(now, EPOCH),
        "beacons": beacon_value,
        "now_ms": now,
        "epoch_ms": EPOCH,
        "max_skew_ms": 0,
    } | overrides
    return check_batch(head, **args)


def code(refusal: Refusal | None) -> str | None:
    return None if refusal is None else refusal.code.value


def first_batch() -> list[dict[str, Any]]:
    return chain_dicts([T1 + 500, T1 + 1_500, T1 + 2_500])


def test_a_first_batch_from_seq_zero_is_accepted() -> None:
    assert check(first_batch()) is None


def test_a_batch_that_continues_the_head_is_accepted() -> None:
    first = first_batch()
    head = head_after(hashed(first))
    assert head == ChainHead(2, hashed(first)[-1].hash, T1 + 2_500)
    second = chain_dicts([T1 + 3_500, T1 + 4_500], start_seq=3, prev=head.hash)
    assert check(second, head) is None


def test_beacons_may_be_given_as_a_mapping() -> None:
    assert check(first_batch(), beacons={B0: beacon_value(B0)}) is None
    assert code(check(first_batch(), beacons={})) == "beacon-mismatch"


def test_an_empty_batch_is_refused() -> None:
    refusal = check_batch(
        None,
        lease_id=LEASE,
        device_id=DEVICE,
        t1_ms=T1,
        t_end_ms=T_END,
        samples=[],
        current_beacon=B0,
        beacons=beacon_value,
        now_ms=T1,
    )
    assert code(refusal) == "empty"


def test_a_sample_replayed_from_another_lease_is_refused() -> None:
    refusal = check(chain_dicts([T1 + 500], lease="l-other"))
    assert code(refusal) == "wrong-lease"
    assert refusal is not None and refusal.seq == 0 and "l-other" in refusal.message


def test_a_sample_of_another_device_is_refused() -> None:
    assert code(check(chain_dicts([T1 + 500], device="w-abc:gpu1"))) == "wrong-lease"


def test_a_first_chain_must_start_at_seq_zero_with_the_zero_prev() -> None:
    assert code(check(chain_dicts([T1 + 500], start_seq=1))) == "chain-broken"
    assert code(check(chain_dicts([T1 + 500], prev="ab" * 32))) == "chain-broken"


def test_a_batch_that_does_not_continue_the_head_is_refused() -> None:
    head = ChainHead(2, "cd" * 32, T1 + 2_500)
    wrong_prev = chain_dicts([T1 + 3_500], start_seq=3, prev="ab" * 32)
    skipped_seq = chain_dicts([T1 + 3_500], start_seq=4, prev=head.hash)
    assert code(check(wrong_prev, head)) == "chain-broken"
    refusal = check(skipped_seq, head)
    assert code(refusal) == "chain-broken" and refusal is not None
    assert refusal.message == "sample seq 4: expected seq 3"


def test_samples_of_a_batch_must_chain_to_each_other() -> None:
    broken = first_batch()
    broken[1]["prev"] = ZERO_HASH
    relinked_gap = relink(first_batch())
    relinked_gap[2]["seq"] = 5
    assert code(check(broken)) == "chain-broken"
    assert code(check(relinked_gap)) == "chain-broken"


def test_a_beacon_after_the_current_one_is_refused() -> None:
    dicts = [sample_dict(0, T1 + 500, beacon=B0 + 1)]
    assert code(check(dicts, now_ms=T1 + 600)) == "beacon-future"


def test_a_beacon_older_than_the_one_before_current_is_refused() -> None:
    # Made during beacon B0, held back until B0 + 2 was issued.
    assert code(check(first_batch(), now_ms=T1 + 2 * EPOCH + 100)) == "beacon-stale"
    assert check(first_batch(), now_ms=T1 + EPOCH + 100) is None  # one before is fine


def test_a_wrong_beacon_value_is_refused() -> None:
    dicts = [sample_dict(0, T1 + 500, beacon_value="ee" * 32)]
    assert code(check(dicts)) == "beacon-mismatch"


def test_a_sample_timed_before_its_beacon_was_issued_is_refused() -> None:
    dicts = [sample_dict(0, T1 + EPOCH - 1, beacon=B0 + 1)]
    assert code(check(dicts, now_ms=T1 + EPOCH + 100)) == "before-beacon"
    assert check(dicts, now_ms=T1 + EPOCH + 100, max_skew_ms=5) is None  # within skew


def test_times_must_increase_strictly() -> None:
    assert code(check(chain_dicts([T1 + 500, T1 + 500]))) == "time-order"
    head = ChainHead(2, "cd" * 32, T1 + 2_500)
    earlier = chain_dicts([T1 + 2_000], start_seq=3, prev=head.hash)
    assert code(check(earlier, head)) == "time-order"


def test_times_outside_the_lease_or_in_the_future_are_refused() -> None:
    before = [sample_dict(0, T1 - 1, beacon=B0 - 1)]
    assert code(check(before)) == "out-of-lease"
    late = [sample_dict(0, T_END + EPOCH + 1)]
    assert code(check(late)) == "out-of-lease"
    future = chain_dicts([T1 + 500])
    assert code(check(future, now_ms=T1 + 400)) == "out-of-lease"


def test_the_last_epoch_after_the_lease_end_is_accepted() -> None:
    assert check([sample_dict(0, T_END + EPOCH)]) is None


def test_check_chain_applies_every_rule_but_freshness() -> None:
    kwargs: dict[str, Any] = {
        "lease_id": LEASE,
        "device_id": DEVICE,
        "t1_ms": T1,
        "t_end_ms": T_END,
        "beacons": beacon_value,
        "epoch_ms": EPOCH,
    }
    long_chain = chain_dicts([T1 + 500 + i * 7_000 for i in range(6)])  # spans 5 beacons
    assert check_chain(None, samples=hashed(long_chain), **kwargs) is None
    tampered = hashed(long_chain)
    tampered[3] = tampered[3].__class__(tampered[3].sample, "00" * 32)
    assert code(check_chain(None, samples=tampered, **kwargs)) == "chain-broken"


def test_refusal_codes_are_the_documented_strings() -> None:
    assert {c.value for c in RefusalCode} == {
        "wrong-lease",
        "chain-broken",
        "beacon-future",
        "beacon-stale",
        "beacon-mismatch",
        "before-beacon",
        "time-order",
        "out-of-lease",
        "empty",
    }


def _one_rule_at_a_time(
    head: ChainHead | None, batch: list[HashedSample], now: int | None
) -> Refusal | None:
    """The rules applied sample by sample, as `_Rules._sample` states them."""
    rules = _Rules(LEASE, DEVICE, T1, T_END, beacon_value, EPOCH, 2_000)
    previous = head
    for item in batch:
        refusal = rules._sample(
            previous, item.sample, None if now is None else current_beacon(now, EPOCH), now
        )
        if refusal is not None:
            return refusal
        previous = ChainHead(item.sample.seq, item.hash, item.sample.time_ms)
    return None


@settings(max_examples=300)
@given(
    index=st.integers(0, 11),
    key=st.sampled_from(["lease", "device", "seq", "time_ms", "beacon", "prev", "beacon_value"]),
    delta=st.sampled_from([-20_001, -10_000, -2_001, -2_000, -1, 1, 2_000, 10_000, 3_600_000]),
    fix_links=st.booleans(),
    with_head=st.booleans(),
    late=st.sampled_from([None, 0, 5_000, 12_000, 25_000]),
)
def test_the_batch_check_refuses_exactly_as_the_rules_one_at_a_time(
    index: int, key: str, delta: int, fix_links: bool, with_head: bool, late: int | None
) -> None:
    start = T1 + 3_000 if with_head else T1 + 500
    dicts = chain_dicts([start + i * 1_000 for i in range(12)], start_seq=3 if with_head else 0)
    d = dicts[index]
    if key in ("seq", "time_ms", "beacon"):
        d[key] = max(0, d[key] + delta)
    elif key == "beacon_value":
        d[key] = beacon_value(d["beacon"] + 1)
    else:
        d[key] = "ab" * 32 if key == "prev" else "other"
    if fix_links:
        relink(dicts)
    head = ChainHead(2, dicts[0]["prev"], start - 1_000) if with_head else None
    batch = hashed(dicts)
    now = None if late is None else dicts[-1]["time_ms"] + late
    expected = _one_rule_at_a_time(head, batch, now)
    common: dict[str, Any] = {
        "lease_id": LEASE,
        "device_id": DEVICE,
        "t1_ms": T1,
        "t_end_ms": T_END,
        "samples": batch,
        "beacons": beacon_value,
        "epoch_ms": EPOCH,
        "max_skew_ms": 2_000,
    }
    if now is None:
        assert check_chain(head, **common) == expected
    else:
        assert (
            check_batch(head, current_beacon=current_beacon(now, EPOCH), now_ms=now, **common)
            == expected
        )
