"""The range-job worker's claims without a broker: it claims while it has free slots and room
in the budget, skips stale offers, works only what is assigned to it, and frees the slot (and
the reserved bytes) when another worker wins, the job is done elsewhere, or nobody answers."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from capgroup.runtime.batch import make_record
from capgroup.runtime.rangejobs import worker as worker_module
from capgroup.runtime.rangejobs.jobs_wire import (
    JobMessage,
    JobState,
    Outcome,
    decode_outcome,
    job_key,
)
from capgroup.runtime.rangejobs.worker import RangeJobWorker, job_reservation_bytes
from capgroup.runtime.retry import UndecodableRecordError
from capgroup.settings import load_settings
from capgroup.types import TopicPartition

pytestmark = [pytest.mark.anyio]

TP = TopicPartition("t", 0)
SETTINGS = load_settings(
    group_id="g", topics="t", range_jobs_enabled=True, range_jobs_worker_slots=2
)
SLOT = job_reservation_bytes(SETTINGS)


class Producer:
    """Keeps what would be produced; ``send`` returns an awaitable acknowledgement."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, *, key: bytes, value: bytes, partition: int) -> Any:
        self.sent.append((topic, key, value))

        async def ack() -> None:
            return None

        return ack()


class Budget:
    def __init__(self, slots: int) -> None:
        self.free = slots * SLOT

    def reserve(self, n: int) -> bool:
        if n > self.free:
            return False
        self.free -= n
        return True

    def release(self, n: int) -> None:
        self.free += n


def offer(start: int, attempt: int = 1, deadline_ms: int = 10_000) -> JobMessage:
    return JobMessage(JobState.OFFER, TP, start, start + 10, attempt, "s", 1, 10, 100, deadline_ms)


def make(budget: Budget, producer: Producer) -> RangeJobWorker:
    async def flush(batch: Any) -> None:
        raise AssertionError("nothing is assigned in these tests")

    return RangeJobWorker(
        SETTINGS,
        jobs=None,
        reader=None,
        producer=producer,
        flush=flush,
        worker_id=lambda: "me",
        reserve=budget.reserve,
        release=budget.release,
        wall_ms=lambda: 5_000,
    )


def claims(producer: Producer) -> list[int]:
    out = [decode_outcome(value) for _, _, value in producer.sent]
    return [m.start for m in out if m is not None and m.outcome is Outcome.CLAIM]


async def test_claims_up_to_its_slots_and_skips_stale_offers() -> None:
    budget, producer = Budget(slots=5), Producer()
    w = make(budget, producer)
    async with anyio.create_task_group() as tg:
        for start in (0, 10, 20):
            w._observe(job_key(TP, start, start + 10), offer(start), tg)
        w._observe(job_key(TP, 90, 100), offer(90, deadline_ms=4_000), tg)  # stale
        await w._claim_some(0.0)
    assert claims(producer) == [0, 10]  # two slots
    assert w.busy == 2
    assert budget.free == 3 * SLOT


async def test_no_room_in_the_budget_no_claim() -> None:
    budget, producer = Budget(slots=1), Producer()
    w = make(budget, producer)
    async with anyio.create_task_group() as tg:
        w._observe(job_key(TP, 0, 10), offer(0), tg)
        w._observe(job_key(TP, 10, 20), offer(10), tg)
        await w._claim_some(0.0)
    assert claims(producer) == [0]
    assert budget.free == 0


async def test_a_lost_race_a_tombstone_or_silence_frees_the_slot() -> None:
    budget, producer = Budget(slots=4), Producer()
    w = make(budget, producer)
    async with anyio.create_task_group() as tg:
        for start in (0, 10):
            w._observe(job_key(TP, start, start + 10), offer(start), tg)
        await w._claim_some(0.0)
        assert w.busy == 2
        # Job 0 went to another worker; job 10 was done elsewhere (tombstone).
        won = JobMessage(JobState.ASSIGN, TP, 0, 10, 1, "s", 1, worker="other")
        w._observe(job_key(TP, 0, 10), won, tg)
        w._observe(job_key(TP, 10, 20), None, tg)
        assert w.busy == 0
        assert budget.free == 4 * SLOT
        w._observe(job_key(TP, 20, 30), offer(20), tg)
        await w._claim_some(1.0)
        assert w.busy == 1
        await w._claim_some(1.0 + worker_module.CLAIM_TIMEOUT_SECONDS + 0.1)  # nobody answered
    assert w.busy == 0
    assert budget.free == 4 * SLOT


def outcomes(producer: Producer) -> list[Outcome]:
    out = [decode_outcome(value) for _, _, value in producer.sent]
    return [m.outcome for m in out if m is not None]


def working(
    producer: Producer,
    *,
    flush: Any,
    prepare: Any = None,
    dead_letter: Any = None,
) -> RangeJobWorker:
    """A worker whose ``_fetch`` returns three records of the job's range (no broker)."""
    w = RangeJobWorker(
        load_settings(
            group_id="g",
            topics="t",
            range_jobs_enabled=True,
            flush_retry_max_attempts=2,
            flush_retry_initial_ms=1,
            flush_retry_max_ms=1,
        ),
        jobs=None,
        reader=None,
        producer=producer,
        flush=flush,
        worker_id=lambda: "me",
        prepare=prepare,
        dead_letter=dead_letter,
    )

    async def fetch(job: JobMessage) -> list[Any]:
        return [make_record("t", 0, o, 0, value=b"v") for o in range(job.start, job.start + 3)]

    w._fetch = fetch  # type: ignore[method-assign]
    return w


def assigned(start: int) -> JobMessage:
    return JobMessage(JobState.ASSIGN, TP, start, start + 3, 1, "s", 1, 3, 3, worker="me")


async def test_a_job_whose_flush_fails_for_good_is_dead_lettered_and_done() -> None:
    producer = Producer()
    dead: list[tuple[list[int], str, int]] = []

    async def flush(batch: Any) -> None:
        raise RuntimeError("sink down")

    async def dead_letter(batch: Any, error: BaseException, attempts: int) -> None:
        dead.append(([r.offset for r in batch.records], repr(error), attempts))

    w = working(producer, flush=flush, dead_letter=dead_letter)
    await w._work(b"k", assigned(30))
    assert dead == [([30, 31, 32], "RuntimeError('sink down')", 2)]
    assert outcomes(producer) == [Outcome.DONE]
    c = w.counters
    assert (c.range_jobs_dead_lettered, c.records_dead_lettered, c.range_jobs_done) == (1, 3, 0)


async def test_without_a_dead_letter_topic_or_when_it_fails_the_job_fails() -> None:
    for dead_letter in (None, "failing"):
        producer = Producer()

        async def flush(batch: Any) -> None:
            raise RuntimeError("sink down")

        async def failing(batch: Any, error: BaseException, attempts: int) -> None:
            raise RuntimeError("dead-letter topic down")

        w = working(producer, flush=flush, dead_letter=failing if dead_letter else None)
        await w._work(b"k", assigned(30))
        assert outcomes(producer) == [Outcome.FAILED], dead_letter
        assert (w.counters.range_jobs_failed, w.counters.range_jobs_dead_lettered) == (1, 0)


async def test_decoding_runs_once_and_a_stop_at_a_record_fails_the_job_without_retries() -> None:
    producer = Producer()
    calls: list[int] = []
    flushed: list[Any] = []

    async def flush(batch: Any) -> None:
        flushed.append(batch)
        if len(flushed) == 1:
            raise RuntimeError("first flush fails")

    async def prepare(batch: Any) -> Any:
        calls.append(batch.first_offset)
        return batch

    w = working(producer, flush=flush, prepare=prepare)
    await w._work(b"k", assigned(0))
    assert calls == [0], "a retried flush does not decode (nor dead-letter) again"
    assert len(flushed) == 2
    assert outcomes(producer) == [Outcome.DONE]
    assert (w.counters.range_jobs_done, w.counters.range_job_records) == (1, 3)

    async def stop(batch: Any) -> Any:
        calls.append(batch.first_offset)
        raise UndecodableRecordError(ValueError("bad"))

    producer, calls = Producer(), []
    w = working(producer, flush=flush, prepare=stop)
    await w._work(b"k", assigned(6))
    assert calls == [6], "not retried"
    assert outcomes(producer) == [Outcome.FAILED]
    assert w.counters.range_jobs_failed == 1
