"""Flush retries (pure schedule and the anyio runner), failure policy and dead-letter records."""

from __future__ import annotations

from itertools import pairwise

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from capgroup.runtime.batch import Batch
from capgroup.runtime.retry import (
    DEAD_LETTER_HEADER_PREFIX,
    FailurePolicy,
    RetriesExhaustedError,
    RetryPolicy,
    dead_letter_records,
    run_with_retries,
)
from capgroup.settings import CapgroupSettings
from tests.runtime._records import TP, rec


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


class Flaky:
    """An async callable failing ``failures`` times, then returning ``"ok"``."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(f"boom {self.calls}")
        return "ok"


def test_base_delays_grow_exponentially_to_the_ceiling() -> None:
    policy = RetryPolicy(initial=0.1, max_delay=1.0, multiplier=3.0, jitter=0.0)
    delays = [policy.base_delay(n) for n in range(1, 6)]
    assert delays == pytest.approx([0.1, 0.3, 0.9, 1.0, 1.0])
    assert policy.base_delay(10_000) == 1.0


def test_jitter_shortens_by_at_most_its_fraction() -> None:
    policy = RetryPolicy(initial=2.0, max_delay=2.0, jitter=0.25)
    assert policy.delay(1, rand=0.0) == 2.0
    assert policy.delay(1, rand=0.5) == pytest.approx(1.75)


def test_next_delay_gives_up_after_max_attempts() -> None:
    policy = RetryPolicy(initial=1.0, max_delay=8.0, jitter=0.0, max_attempts=3)
    assert policy.next_delay(1, elapsed=0.0, rand=0.0) == 1.0
    assert policy.next_delay(2, elapsed=1.0, rand=0.0) == 2.0
    assert policy.next_delay(3, elapsed=3.0, rand=0.0) is None


def test_next_delay_gives_up_when_the_wait_would_pass_max_elapsed() -> None:
    policy = RetryPolicy(initial=1.0, max_delay=8.0, jitter=0.0, max_attempts=None, max_elapsed=5)
    assert policy.next_delay(2, elapsed=3.0, rand=0.0) == 2.0
    assert policy.next_delay(2, elapsed=3.5, rand=0.0) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0},
        {"initial": 5.0, "max_delay": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"max_attempts": 0},
        {"max_elapsed": -1.0},
    ],
)
def test_policy_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_from_settings_converts_milliseconds() -> None:
    settings = CapgroupSettings(
        flush_retry_initial_ms=50,
        flush_retry_max_ms=2_000,
        flush_retry_multiplier=1.5,
        flush_retry_jitter=0.1,
        flush_retry_max_attempts=7,
        flush_retry_max_elapsed_ms=60_000,
    )
    assert RetryPolicy.from_settings(settings) == RetryPolicy(
        initial=0.05, max_delay=2.0, multiplier=1.5, jitter=0.1, max_attempts=7, max_elapsed=60.0
    )
    assert RetryPolicy.from_settings(CapgroupSettings()).max_elapsed is None


policies = st.builds(
    RetryPolicy,
    initial=st.floats(0.001, 10.0),
    max_delay=st.floats(10.0, 600.0),
    multiplier=st.floats(1.0, 10.0),
    jitter=st.floats(0.0, 1.0),
)


@given(policy=policies, rands=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=40))
def test_schedule_is_monotone_and_bounded(policy: RetryPolicy, rands: list[float]) -> None:
    bases = [policy.base_delay(n) for n in range(1, 41)]
    assert all(a <= b for a, b in pairwise(bases))
    assert all(policy.initial <= b <= policy.max_delay for b in bases)
    for n, (base, rand) in enumerate(zip(bases, rands, strict=False), start=1):
        jittered = policy.delay(n, rand)
        assert base * (1.0 - policy.jitter) <= jittered <= base


@given(
    max_attempts=st.integers(1, 20),
    max_elapsed=st.none() | st.floats(0.0, 100.0),
    rand=st.floats(0.0, 1.0, exclude_max=True),
)
def test_schedule_stops_within_its_budgets(
    max_attempts: int, max_elapsed: float | None, rand: float
) -> None:
    policy = RetryPolicy(
        initial=0.5, max_delay=4.0, max_attempts=max_attempts, max_elapsed=max_elapsed
    )
    attempts, elapsed = 1, 0.0
    while (wait := policy.next_delay(attempts, elapsed, rand)) is not None:
        elapsed += wait
        attempts += 1
    assert attempts <= max_attempts
    if max_elapsed is not None:
        assert elapsed <= max_elapsed


def test_run_with_retries_returns_after_transient_failures() -> None:
    fake, flaky = FakeTime(), Flaky(failures=2)
    seen: list[tuple[int, str, float]] = []
    policy = RetryPolicy(initial=1.0, max_delay=10.0, jitter=0.5, max_attempts=5)

    async def main() -> str:
        return await run_with_retries(
            flaky,
            policy,
            sleep=fake.sleep,
            clock=fake.clock,
            rand=lambda: 0.5,
            on_retry=lambda n, e, d: seen.append((n, str(e), d)),
        )

    assert anyio.run(main) == "ok"
    assert flaky.calls == 3
    assert fake.sleeps == [0.75, 1.5]
    assert seen == [(1, "boom 1", 0.75), (2, "boom 2", 1.5)]


def test_run_with_retries_raises_the_last_error_when_exhausted() -> None:
    fake, flaky = FakeTime(), Flaky(failures=10)
    policy = RetryPolicy(initial=1.0, max_delay=10.0, jitter=0.0, max_attempts=3)

    async def main() -> str:
        return await run_with_retries(flaky, policy, sleep=fake.sleep, clock=fake.clock)

    with pytest.raises(RetriesExhaustedError) as caught:
        anyio.run(main)
    assert caught.value.attempts == flaky.calls == 3
    assert str(caught.value.last_error) == "boom 3"
    assert caught.value.__cause__ is caught.value.last_error


def test_run_with_retries_measures_elapsed_time_with_the_given_clock() -> None:
    fake, flaky = FakeTime(), Flaky(failures=10)
    policy = RetryPolicy(initial=2.0, max_delay=2.0, jitter=0.0, max_attempts=None, max_elapsed=5)

    async def main() -> str:
        return await run_with_retries(flaky, policy, sleep=fake.sleep, clock=fake.clock)

    with pytest.raises(RetriesExhaustedError):
        anyio.run(main)
    assert fake.sleeps == [2.0, 2.0]


def test_cancellation_during_backoff_stops_retrying() -> None:
    flaky = Flaky(failures=10)
    policy = RetryPolicy(initial=1.0, max_delay=1.0, max_attempts=None)
    outcome: list[str] = []

    async def main() -> None:
        with anyio.CancelScope() as scope:

            async def cancelling_sleep(_: float) -> None:
                scope.cancel()
                await anyio.lowlevel.checkpoint()

            await run_with_retries(flaky, policy, sleep=cancelling_sleep)
            outcome.append("returned")
        outcome.append("cancelled" if scope.cancelled_caught else "not cancelled")

    anyio.run(main)
    assert outcome == ["cancelled"]
    assert flaky.calls == 1


def test_cancellation_inside_the_call_is_not_retried() -> None:
    calls: list[int] = []
    retried: list[int] = []

    async def main() -> None:
        with anyio.CancelScope() as scope:

            async def flush() -> None:
                calls.append(1)
                scope.cancel()
                await anyio.lowlevel.checkpoint()

            await run_with_retries(
                flush, RetryPolicy(max_attempts=None), on_retry=lambda n, e, d: retried.append(n)
            )
        assert scope.cancelled_caught

    anyio.run(main)
    assert (len(calls), retried) == (1, [])


def test_failure_policy_values_match_the_setting() -> None:
    for value in ("dead_letter", "stop_partition"):
        settings = CapgroupSettings(flush_failure_policy=value, dead_letter_topic="dlq")
        assert FailurePolicy(settings.flush_failure_policy).value == value


def test_dead_letter_records_keep_payload_and_carry_error_and_origin() -> None:
    records = [rec(40, key=b"a", value=b"1", headers=(("trace", b"t1"),)), rec(42, key=None)]
    batch = Batch.of(TP, records, started_at=0.0)
    error = ValueError("disk é full")
    out = dead_letter_records(
        batch, topic="events.dlq", error=error, attempts=5, member_id="m-1", failed_at_ms=1234
    )
    assert [r.topic for r in out] == ["events.dlq"] * 2
    assert [(r.key, r.value, r.timestamp_ms) for r in out] == [
        (x.key, x.value, x.timestamp) for x in records
    ]
    assert out[0].headers[0] == ("trace", b"t1")
    ours = dict(h for h in out[1].headers if h[0].startswith(DEAD_LETTER_HEADER_PREFIX))
    p = DEAD_LETTER_HEADER_PREFIX
    assert ours == {
        p + "stage": b"flush",
        p + "error.type": b"builtins.ValueError",
        p + "error.message": "disk é full".encode(),
        p + "origin.topic": TP.topic.encode(),
        p + "origin.partition": str(TP.partition).encode(),
        p + "origin.offset": b"42",
        p + "origin.first_offset": b"40",
        p + "origin.last_offset": b"42",
        p + "member.id": b"m-1",
        p + "attempts": b"5",
        p + "failed_at_ms": b"1234",
    }


def test_dead_letter_error_message_is_cut_on_a_character_boundary() -> None:
    batch = Batch.of(TP, [rec(0)], started_at=0.0)
    error = RuntimeError("é" * 2000)
    (record,) = dead_letter_records(
        batch, topic="dlq", error=error, attempts=1, member_id="m", failed_at_ms=0
    )
    message = dict(record.headers)[DEAD_LETTER_HEADER_PREFIX + "error.message"]
    assert len(message) == 1024
    assert message.decode("utf-8") == "é" * 512
