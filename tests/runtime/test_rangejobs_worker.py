"""The range-job worker's claims without a broker: it claims while it has free slots and room
in the budget, skips stale offers, works only what is assigned to it, and frees the slot (and
the reserved bytes) when another worker wins, the job is done elsewhere, or nobody answers."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from capgroup.runtime.rangejobs import worker as worker_module
from capgroup.runtime.rangejobs.jobs_wire import (
    JobMessage,
    JobState,
    Outcome,
    decode_outcome,
    job_key,
)
from capgroup.runtime.rangejobs.worker import RangeJobWorker, job_reservation_bytes
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
