"""Range jobs in a member's advertisement: the bytes of its job slots are left out of the
budget it advertises (and of the partitions it may hold), so the assignor never counts on
memory a job in progress takes; with range jobs off nothing changes."""

from __future__ import annotations

from typing import Any

from capgroup import Batch, BatchingConsumer
from capgroup.runtime.rangejobs.worker import job_reservation_bytes
from capgroup.settings import load_settings


class Sink(BatchingConsumer):
    async def flush(self, batch: Batch) -> None:
        """Nothing to keep."""


BASE: dict[str, Any] = {
    "group_id": "g",
    "topics": "t",
    "batch_max_records": 100,
    "batch_max_bytes": 100_000,
    "max_partition_fetch_bytes": 64 * 1024,
    "range_jobs_max_records": 100,
    "range_jobs_max_bytes": 200_000,
}


def test_job_slots_are_left_out_of_the_advertised_budget() -> None:
    settings = load_settings(**BASE)
    cost = settings.partition_cost_bytes
    slot = job_reservation_bytes(settings)
    budget = 10 * cost + 2 * slot
    off = Sink(**BASE, memory_budget_bytes=budget)
    on = Sink(
        **BASE, memory_budget_bytes=budget, range_jobs_enabled=True, range_jobs_worker_slots=2
    )
    assert off._capacity().memory_budget_bytes == budget
    assert off.max_partitions == budget // cost
    assert on._capacity().memory_budget_bytes == 10 * cost
    assert on.max_partitions == 10
    assert on.budget_bytes == budget  # the ledger still has it all: jobs are counted in it
