"""Range jobs in a member's budget, without a broker: a job in progress costs its slot's bytes
in the memory ledger (and the fetch backpressure sees them), a member without room claims
nothing, and a job's records go through ``deserialize`` before ``flush``."""

from __future__ import annotations

from typing import Any

import pytest

from capgroup.runtime.backpressure import Backpressure
from capgroup.runtime.batch import Batch, Record, make_record, with_value
from capgroup.runtime.memory import MemoryLedger
from capgroup.runtime.rangejobs.runtime import (
    RANGE_JOBS_LEDGER_KEY,
    RangeJobsRuntime,
    reserved_bytes,
)
from capgroup.runtime.rangejobs.worker import job_reservation_bytes
from capgroup.runtime.retry import RetryPolicy
from capgroup.runtime.stats import Counters
from capgroup.settings import RECORD_OVERHEAD_BYTES, load_settings
from capgroup.types import TopicPartition

pytestmark = [pytest.mark.anyio]

SETTINGS = load_settings(
    group_id="g",
    topics="t",
    range_jobs_enabled=True,
    range_jobs_max_records=100,
    range_jobs_max_bytes=10_000,
    range_jobs_worker_slots=3,
)


def runtime(budget: int, flushed: list[Batch[Any]] | None = None, **kw: Any) -> RangeJobsRuntime:
    ledger = MemoryLedger(budget, 1_000)

    async def flush(batch: Batch[Any]) -> None:
        if flushed is not None:
            flushed.append(batch)

    return RangeJobsRuntime(
        SETTINGS,
        flush=flush,
        deserialize=kw.get("deserialize"),
        retry=RetryPolicy.from_settings(SETTINGS),
        ledger=ledger,
        backpressure=Backpressure(ledger, Counters(), {}),
    )


def test_a_slot_costs_a_full_job_and_the_advertisement_sets_the_slots_aside() -> None:
    assert job_reservation_bytes(SETTINGS) == 10_000 + 100 * RECORD_OVERHEAD_BYTES
    assert reserved_bytes(SETTINGS) == 3 * job_reservation_bytes(SETTINGS)
    assert reserved_bytes(load_settings(group_id="g", topics="t")) == 0


def test_a_job_in_progress_is_counted_in_the_ledger_until_released() -> None:
    jobs = runtime(budget=100_000)
    ledger = jobs._ledger
    assert jobs.reserve(48_400)
    assert ledger.held(RANGE_JOBS_LEDGER_KEY) == 48_400
    assert ledger.total_bytes == 48_400
    assert jobs.reserve(48_400)
    assert not jobs.reserve(48_400)  # no room: the worker claims nothing
    assert ledger.total_bytes == 96_800
    jobs.release(48_400)
    jobs.release(48_400)
    assert ledger.total_bytes == 0


def test_jobs_push_the_member_to_its_budget_and_fetching_pauses() -> None:
    jobs = runtime(budget=50_000)
    ledger = jobs._ledger
    ledger.add(TopicPartition("t", 0), 1_600)  # a partition's buffer
    assert jobs.reserve(48_400)
    assert ledger.should_pause_all()
    jobs.release(48_400)
    assert not ledger.should_pause_all()


async def test_a_jobs_records_are_deserialized_before_flush() -> None:
    flushed: list[Batch[Any]] = []

    def decode(record: Record) -> Record[Any] | None:
        if record.value == b"skip":
            return None
        return with_value(record, (record.value or b"").decode().upper())

    jobs = runtime(budget=100_000, flushed=flushed, deserialize=decode)
    records = [make_record("t", 0, o, 0, value=v) for o, v in enumerate([b"a", b"skip", b"c"])]
    await jobs.flush_decoded(Batch.of(TopicPartition("t", 0), records, started_at=0.0))
    assert [r.value for r in flushed[0].records] == ["A", "C"]
    await jobs.flush_decoded(
        Batch.of(TopicPartition("t", 0), [make_record("t", 0, 9, 0, value=b"skip")], started_at=0)
    )
    assert len(flushed) == 1  # nothing left to flush
