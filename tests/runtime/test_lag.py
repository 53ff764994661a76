"""Lag and retention risk without a broker: the pure arithmetic, the loss ledger, and the
sampler driven through the scripted fetcher with stub committed offsets and clocks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import anyio
import pytest
from aiokafka.errors import KafkaConnectionError
from structlog.testing import capture_logs

from capgroup.runtime.lag import (
    LagSampler,
    LossLedger,
    deleted_unconsumed,
    lag_records,
    lag_seconds,
    retention_margin_seconds,
)
from capgroup.runtime.stats import Counters
from capgroup.types import TopicPartition
from tests.scripted.runtime_clients import ScriptedFetcher

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

T0_MS = 1_700_000_000_000
OWNED = TopicPartition("t", 0)
FREE = TopicPartition("t", 1)


# ------------------------------------------------------------------ arithmetic -------
def test_lag_records_is_end_minus_committed_never_negative() -> None:
    assert lag_records(100, 40) == 60
    assert lag_records(100, 100) == 0
    assert lag_records(5, 9) == 0  # a recreated or truncated partition


def test_lag_seconds_is_the_age_of_the_oldest_unconsumed_record() -> None:
    now = T0_MS / 1000 + 90
    assert lag_seconds(10, T0_MS, now) == 90
    assert lag_seconds(0, T0_MS, now) == 0  # nothing unconsumed
    assert lag_seconds(10, None, now) is None  # timestamp not read yet
    assert lag_seconds(10, T0_MS + 5_000_000, now) == 0  # a producer clock ahead


def test_retention_margin() -> None:
    now = T0_MS / 1000 + 30
    assert retention_margin_seconds(60_000, 5, T0_MS, now) == 30
    assert retention_margin_seconds(60_000, 5, T0_MS, now + 45) == -15  # eligible, not deleted
    assert retention_margin_seconds(60_000, 0, T0_MS, now) == 60  # no lag: all of it
    assert retention_margin_seconds(-1, 5, T0_MS, now) is None  # infinite retention
    assert retention_margin_seconds(None, 5, T0_MS, now) is None  # unknown retention
    assert retention_margin_seconds(60_000, 5, None, now) is None  # unknown timestamp


def test_deleted_unconsumed_is_the_gap_below_the_log_start() -> None:
    assert deleted_unconsumed(10, 25) == 15
    assert deleted_unconsumed(30, 25) == 0
    assert deleted_unconsumed(None, 25) == 0


def test_loss_ledger_counts_each_gap_once() -> None:
    ledger = LossLedger()
    assert ledger.observe(OWNED, 10, 5) == 0
    assert ledger.observe(OWNED, 10, 25) == 15
    assert ledger.observe(OWNED, 10, 25) == 0  # the same gap again
    assert ledger.observe(OWNED, 10, 40) == 15  # retention deleted 15 more
    assert ledger.observe(OWNED, 40, 40) == 0  # a new owner reset to the log start
    assert ledger.observe(OWNED, 40, 50) == 10
    assert ledger.observe(OWNED, 60, 70) == 10  # committed jumped past the counted mark
    assert ledger.observe(FREE, None, 70) == 0  # nothing committed: nothing to lose
    assert ledger.observe(FREE, 0, 70) == 70


# ------------------------------------------------------------------ sampler ----------
class Stub:
    """Committed offsets, clocks and the engine's unassigned partitions for a sampler."""

    def __init__(self) -> None:
        self.owned: set[TopicPartition] = {OWNED}
        self.unassigned: set[TopicPartition] = set()
        self.tracker: dict[TopicPartition, int] = {}
        self.group: dict[TopicPartition, int | None] = {}
        self.group_calls = 0
        self.group_error: Exception | None = None
        self.retention_calls = 0
        self.wall = T0_MS / 1000
        self.mono = 0.0

    async def committed(
        self, partitions: Iterable[TopicPartition]
    ) -> Mapping[TopicPartition, int | None]:
        self.group_calls += 1
        if self.group_error is not None:
            raise self.group_error
        return {tp: self.group.get(tp) for tp in partitions}


def sampler(fetcher: ScriptedFetcher, stub: Stub, counters: Counters) -> LagSampler:
    async def retention(topics: Iterable[str]) -> Mapping[str, int | None]:
        stub.retention_calls += 1
        return await fetcher.topic_retention_ms(topics)

    return LagSampler(
        fetcher,
        owned=lambda: stub.owned,
        owned_committed=stub.tracker.get,
        unassigned=lambda: stub.unassigned,
        group_committed=stub.committed,
        retention=retention,
        counters=counters,
        wall_clock=lambda: stub.wall,
        clock=lambda: stub.mono,
        committed_refresh_s=30,
        retention_refresh_s=300,
    )


def log(fetcher: ScriptedFetcher, tp: TopicPartition, count: int, every_ms: int = 1000) -> None:
    """``count`` records on ``tp``, one every ``every_ms`` from ``T0_MS``."""
    for i in range(count):
        fetcher.timestamp_ms = T0_MS + i * every_ms
        fetcher.append(tp, b"x")


async def test_owned_partition_lag_and_margin_from_the_tracker() -> None:
    fetcher, stub, counters = ScriptedFetcher(), Stub(), Counters()
    fetcher.retention_ms["t"] = 60_000
    log(fetcher, OWNED, 10)
    stub.tracker[OWNED] = 4  # records 0..3 consumed and committed
    stub.wall = T0_MS / 1000 + 20
    lag = sampler(fetcher, stub, counters)
    await lag.sample()
    figure = lag.figures[OWNED]
    assert figure.owned
    assert (figure.end_offset, figure.log_start_offset) == (10, 0)
    assert (figure.committed, figure.lag_records) == (4, 6)
    assert figure.lag_seconds == 16  # record 4 was written at T0 + 4 s
    assert figure.retention_margin_seconds == 44  # 4 + 60 - 20
    assert stub.group_calls == 0  # nothing unassigned: no OffsetFetch

    stub.tracker[OWNED] = 10
    await lag.sample()
    assert (lag.figures[OWNED].lag_records, lag.figures[OWNED].lag_seconds) == (0, 0)
    assert lag.figures[OWNED].retention_margin_seconds == 60
    assert stub.retention_calls == 1  # cached


async def test_a_partition_not_yet_in_the_tracker_is_skipped() -> None:
    fetcher, stub, counters = ScriptedFetcher(), Stub(), Counters()
    log(fetcher, OWNED, 3)
    lag = sampler(fetcher, stub, counters)
    await lag.sample()
    assert lag.figures == {}


async def test_unassigned_partition_on_the_leader_and_the_rate_limited_offset_fetch() -> None:
    fetcher, stub, counters = ScriptedFetcher(), Stub(), Counters()
    fetcher.retention_ms["t"] = 60_000
    log(fetcher, OWNED, 2)
    log(fetcher, FREE, 8)
    stub.tracker[OWNED] = 2
    stub.unassigned = {FREE}
    stub.group[FREE] = 3
    stub.wall = T0_MS / 1000 + 10
    lag = sampler(fetcher, stub, counters)
    await lag.sample()
    free = lag.figures[FREE]
    assert not free.owned
    assert (free.committed, free.lag_records) == (3, 5)
    assert free.lag_seconds == 7
    assert free.retention_margin_seconds == 53
    assert stub.group_calls == 1

    stub.group[FREE] = 5  # not seen until the refresh
    stub.mono = 10
    await lag.sample()
    assert (lag.figures[FREE].lag_records, stub.group_calls) == (5, 1)
    stub.mono = 31
    await lag.sample()
    assert (lag.figures[FREE].lag_records, stub.group_calls) == (3, 2)

    # A failed OffsetFetch keeps the last answer for the same set.
    stub.group_error = KafkaConnectionError("coordinator away")
    stub.mono = 70
    await lag.sample()
    assert (lag.figures[FREE].lag_records, stub.group_calls) == (3, 3)

    # Once owned elsewhere (not unassigned any more), the leader stops exporting it.
    stub.unassigned = set()
    await lag.sample()
    assert set(lag.figures) == {OWNED}


async def test_unassigned_without_a_commit_starts_where_the_reset_policy_would() -> None:
    fetcher, stub, counters = ScriptedFetcher(), Stub(), Counters()
    log(fetcher, FREE, 4)
    fetcher.delete_before(FREE, 1)
    stub.owned, stub.unassigned = set(), {FREE}
    lag = sampler(fetcher, stub, counters)
    await lag.sample()
    free = lag.figures[FREE]
    assert (free.committed, free.lag_records, free.retention_margin_seconds) == (None, 3, None)
    assert counters.records_deleted_unconsumed == 0


async def test_retention_deleting_unconsumed_records_is_counted_once_and_logged() -> None:
    fetcher, stub, counters = ScriptedFetcher(), Stub(), Counters()
    fetcher.retention_ms["t"] = 5_000
    log(fetcher, FREE, 10)
    stub.owned, stub.unassigned, stub.group[FREE] = set(), {FREE}, 2
    stub.wall = T0_MS / 1000 + 4
    lag = sampler(fetcher, stub, counters)
    await lag.sample()
    assert lag.figures[FREE].retention_margin_seconds == 3  # record 2: T0 + 2 + 5 - 4
    stub.wall += 2
    await lag.sample()
    assert lag.figures[FREE].retention_margin_seconds == 1  # falling

    fetcher.delete_before(FREE, 6)  # the broker deleted a segment: records 2..5 unread
    with capture_logs() as logs:
        await lag.sample()
        await lag.sample()
    assert counters.records_deleted_unconsumed == 4
    errors = [e for e in logs if e["event"] == "records_deleted_unconsumed"]
    assert len(errors) == 1
    assert errors[0]["log_level"] == "error"
    assert (errors[0]["topic"], errors[0]["partition"]) == ("t", 1)
    assert (errors[0]["committed"], errors[0]["log_start"], errors[0]["records"]) == (2, 6, 4)
    # The margin now concerns the oldest record that still exists (offset 6, T0 + 6 s).
    assert lag.figures[FREE].retention_margin_seconds == 5
    assert lag.figures[FREE].lag_records == 8  # end - committed: the lost ones included


async def test_infinite_retention_gives_no_margin_and_a_failed_sample_is_skipped() -> None:
    fetcher, stub, counters = ScriptedFetcher(), Stub(), Counters()
    fetcher.retention_ms["t"] = -1
    log(fetcher, OWNED, 3)
    stub.tracker[OWNED] = 0
    lag = sampler(fetcher, stub, counters)
    await lag.sample()
    assert lag.figures[OWNED].retention_margin_seconds is None
    fetcher.end_offsets_error = KafkaConnectionError("broker away")
    with pytest.raises(KafkaConnectionError):
        await lag.sample()
    assert lag.figures[OWNED].lag_records == 3  # the last good sample stays


async def test_owned_records_fetched_before_deletion_are_not_lost() -> None:
    fetcher, stub, counters = ScriptedFetcher(), Stub(), Counters()
    log(fetcher, OWNED, 10)
    await fetcher.gain({OWNED: 0})
    await fetcher.fetch(0, max_records=6)  # records 0..5 fetched into the member's buffers
    stub.tracker[OWNED] = 0  # nothing committed yet
    lag = sampler(fetcher, stub, counters)
    fetcher.delete_before(OWNED, 4)
    await lag.sample()
    assert counters.records_deleted_unconsumed == 0  # all four were fetched
    fetcher.delete_before(OWNED, 8)
    await lag.sample()
    assert counters.records_deleted_unconsumed == 2  # 6 and 7 were deleted unfetched


async def test_the_loop_survives_failed_samples() -> None:
    fetcher, stub, counters = ScriptedFetcher(), Stub(), Counters()
    calls: list[int] = []

    def unassigned() -> set[TopicPartition]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in a sampler must not take the member down")
        if len(calls) == 2:
            raise KafkaConnectionError("broker away")
        return set()

    lag = sampler(fetcher, stub, counters)
    lag._unassigned = unassigned
    log(fetcher, OWNED, 2)
    stub.tracker[OWNED] = 1
    with capture_logs() as logs, anyio.move_on_after(0.5):
        await lag.run(0.001)  # forever
    assert len(calls) > 3
    assert lag.figures[OWNED].lag_records == 1
    assert [e["log_level"] for e in logs if e["event"] == "lag_sample_failed"][:2] == [
        "warning",
        "debug",
    ]
