"""Revoke policy: throughput estimate, flush-or-discard decision and the revoke deadline."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capgroup.runtime.policy import (
    DEFAULT_SEED_BYTES_PER_SECOND,
    FlushThroughput,
    RevokeAction,
    deadline_from_settings,
    decide,
    revoke_deadline,
)
from capgroup.settings import CapgroupSettings

MIB = 1024 * 1024


@dataclass(frozen=True)
class Sized:
    size_bytes: int


def test_estimator_starts_from_a_conservative_seed() -> None:
    estimator = FlushThroughput()
    assert estimator.bytes_per_second == DEFAULT_SEED_BYTES_PER_SECOND
    assert estimator.estimate(3 * MIB) == pytest.approx(3.0)


def test_estimator_moves_towards_measured_throughput() -> None:
    estimator = FlushThroughput(bytes_per_second=1 * MIB, alpha=0.5)
    estimator.observe(10 * MIB, duration=1.0)
    assert estimator.bytes_per_second == pytest.approx(5.5 * MIB)
    assert estimator.samples == 1
    for _ in range(30):
        estimator.observe(10 * MIB, duration=1.0)
    assert estimator.bytes_per_second == pytest.approx(10 * MIB, rel=1e-6)


def test_estimator_ignores_empty_flushes_and_clamps_zero_durations() -> None:
    estimator = FlushThroughput(bytes_per_second=1000.0, alpha=1.0)
    estimator.observe(0, duration=5.0)
    assert (estimator.bytes_per_second, estimator.samples) == (1000.0, 0)
    estimator.observe(10, duration=0.0)
    # Counted as a 1 ms flush, not an infinite throughput.
    assert estimator.bytes_per_second == pytest.approx(10_000.0)


@pytest.mark.parametrize(("seed", "alpha"), [(0.0, 0.5), (1.0, 0.0), (1.0, 1.5)])
def test_estimator_rejects_bad_parameters(seed: float, alpha: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        FlushThroughput(bytes_per_second=seed, alpha=alpha)


def test_estimator_seed_comes_from_settings() -> None:
    settings = CapgroupSettings(flush_throughput_seed_bytes_per_s=123.0)
    assert FlushThroughput.from_settings(settings).bytes_per_second == 123.0


def test_decide_flushes_when_the_estimate_with_safety_fits() -> None:
    estimator = FlushThroughput(bytes_per_second=1 * MIB)
    batch = Sized(2 * MIB)  # 2 s estimated, 4 s with the default factor of 2
    assert decide(batch, deadline=14.0, now=10.0, estimator=estimator) is RevokeAction.FLUSH
    assert decide(batch, deadline=13.9, now=10.0, estimator=estimator) is RevokeAction.DISCARD
    assert (
        decide(batch, deadline=12.5, now=10.0, estimator=estimator, safety_factor=1.0)
        is RevokeAction.FLUSH
    )


def test_decide_discards_after_the_deadline() -> None:
    estimator = FlushThroughput()
    assert decide(Sized(0), deadline=5.0, now=6.0, estimator=estimator) is RevokeAction.DISCARD


@given(
    size=st.integers(0, 1 << 32),
    rate=st.floats(1.0, 1e10),
    now=st.floats(0, 1e6),
    slack=st.floats(0, 1e4),
    extra=st.floats(0, 1e4),
)
def test_decide_is_monotone_in_time_left(
    size: int, rate: float, now: float, slack: float, extra: float
) -> None:
    estimator = FlushThroughput(bytes_per_second=rate)
    tight = decide(Sized(size), now + slack, now, estimator)
    loose = decide(Sized(size), now + slack + extra, now, estimator)
    if tight is RevokeAction.FLUSH:
        assert loose is RevokeAction.FLUSH


def test_revoke_deadline_subtracts_the_margin() -> None:
    assert revoke_deadline(100.0, rebalance_timeout_ms=30_000, margin_ms=5_000) == 125.0
    assert revoke_deadline(100.0, rebalance_timeout_ms=3_000, margin_ms=5_000) == 100.0


def test_deadline_from_settings() -> None:
    settings = CapgroupSettings(rebalance_timeout_ms=20_000, revoke_safety_margin_ms=2_500)
    assert deadline_from_settings(1.0, settings) == 18.5
