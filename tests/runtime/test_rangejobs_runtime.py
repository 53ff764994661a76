"""Range jobs in a member's budget, without a broker: a job in progress costs its slot's bytes
in the memory ledger (and the fetch backpressure sees them), a member without room claims
nothing, and a job's records go through ``deserialize`` (under the member's
``deserialize_failure_policy``) before ``flush``."""

from __future__ import annotations

from typing import Any

import pytest

from capgroup.runtime.backpressure import Backpressure
from capgroup.runtime.batch import Batch, Record, make_record, with_value
from capgroup.runtime.ingest import UndecodablePolicy
from capgroup.runtime.memory import MemoryLedger
from capgroup.runtime.rangejobs.runtime import (
    RANGE_JOBS_LEDGER_KEY,
    RangeJobsRuntime,
    reserved_bytes,
)
from capgroup.runtime.rangejobs.worker import job_reservation_bytes
from capgroup.runtime.retry import RetryPolicy, UndecodableRecordError
from capgroup.runtime.stats import Counters
from capgroup.settings import RECORD_OVERHEAD_BYTES, load_settings
from capgroup.types import TopicPartition
from tests.scripted.runtime_clients import ScriptedDeadLetterSink

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
        undecodable=kw.get("undecodable", UndecodablePolicy.STOP_PARTITION),
        undecodable_dead_letter=kw.get("undecodable_dead_letter"),
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
    def decode(record: Record) -> Record[Any] | None:
        if record.value == b"skip":
            return None
        return with_value(record, (record.value or b"").decode().upper())

    jobs = runtime(budget=100_000, deserialize=decode)
    records = [make_record("t", 0, o, 0, value=v) for o, v in enumerate([b"a", b"skip", b"c"])]
    ready = await jobs.prepare(Batch.of(TopicPartition("t", 0), records, started_at=0.0))
    assert ready is not None
    assert [r.value for r in ready.records] == ["A", "C"]
    assert ready.size_bytes == 2, "the kept records' raw size, as fetched"
    nothing = await jobs.prepare(
        Batch.of(TopicPartition("t", 0), [make_record("t", 0, 9, 0, value=b"skip")], started_at=0)
    )
    assert nothing is None  # nothing left to flush
    assert jobs._counters.records_skipped == 2


def poison(record: Record) -> Record[Any] | None:
    if record.value == b"bad":
        raise ValueError("not JSON")
    return record


def job_batch() -> Batch[Any]:
    values = [b"a", b"bad", b"c"]
    records = [make_record("t", 0, 10 + o, 0, value=v) for o, v in enumerate(values)]
    return Batch.of(TopicPartition("t", 0), records, started_at=0.0)


@pytest.mark.parametrize("policy", ["skip", "dead_letter"])
async def test_a_record_deserialize_raises_on_in_a_job_gets_the_member_s_policy(
    policy: str,
) -> None:
    """The job's other records are flushed; the bad one is dropped (skip) or produced raw
    to the dead-letter topic with its origin (dead_letter), never retried for ever."""
    sink = ScriptedDeadLetterSink()
    jobs = runtime(
        budget=100_000,
        deserialize=poison,
        undecodable=policy,
        undecodable_dead_letter=sink if policy == "dead_letter" else None,
    )
    ready = await jobs.prepare(job_batch())
    assert ready is not None
    assert [r.offset for r in ready.records] == [10, 12]
    counters = jobs._counters
    assert counters.records_undecodable == 1
    if policy == "skip":
        assert counters.records_skipped == 1
        assert sink.sent == []
    else:
        assert counters.records_dead_lettered == 1
        (sent,) = sink.sent
        assert [r.offset for r in sent.batch.records] == [11]
        assert sent.batch.records[0].value == b"bad", "raw, as fetched"
        assert isinstance(sent.error, UndecodableRecordError)


async def test_under_stop_partition_a_bad_record_fails_the_job_there() -> None:
    jobs = runtime(budget=100_000, deserialize=poison)
    with pytest.raises(UndecodableRecordError):
        await jobs.prepare(job_batch())
    assert jobs._counters.records_undecodable == 1
