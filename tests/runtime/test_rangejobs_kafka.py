"""Range jobs against a real broker: the owner's scheduler offers a partition's backlog as
jobs on a jobs topic created on demand, two workers claim, fetch by offset and flush them, the
commit is gap-free with the finished jobs beyond it in the commit metadata (a real
OffsetCommit through the membership engine, read back with OffsetFetch), a failed job is
offered again, and a new owner taking over from such a commit does not redo finished jobs."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from capgroup import Batch, TopicPartition
from capgroup.protocol.completed_ranges import CompletedRanges, encode_completed
from capgroup.runtime.rangejobs.service import range_job_clients
from capgroup.runtime.rangejobs.worker import RangeJobWorker
from capgroup.settings import CapgroupSettings
from tests.runtime.harness import produce, wait_until
from tests.runtime.rangejobs_harness import owner, rangejobs_settings, scheduler_over, tg_enter

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

RECORDS = 300


class Flushed:
    """Every record flushed, by worker, and a job to fail once."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.by_worker: dict[str, int] = {}
        self.fail_once: set[int] = set()
        #: Jobs (by first offset) that wait for ``release`` before they flush.
        self.held: set[int] = set()
        self.release = anyio.Event()

    def flush_for(self, worker: str) -> Any:
        async def flush(batch: Batch) -> None:
            if batch.first_offset in self.fail_once:
                self.fail_once.discard(batch.first_offset)
                raise RuntimeError("planted flush failure")
            if batch.first_offset in self.held:
                await self.release.wait()
            await anyio.sleep(0.001 * len(batch))
            self.offsets.extend(r.offset for r in batch.records)
            self.by_worker[worker] = self.by_worker.get(worker, 0) + len(batch)

        return flush


async def start_workers(
    tg: TaskGroup, settings: CapgroupSettings, flushed: Flushed, names: list[str]
) -> list[RangeJobWorker]:
    workers = []
    for name in names:
        clients = await tg_enter(tg, range_job_clients(settings))
        worker = RangeJobWorker(
            settings,
            jobs=clients.jobs,
            reader=clients.worker_reader,
            producer=clients.producer,
            flush=flushed.flush_for(name),
            worker_id=lambda name=name: name,
        )
        tg.start_soon(worker.run)
        workers.append(worker)
    return workers


async def test_jobs_are_shared_committed_gap_free_and_a_failed_one_is_redone(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=1)
    settings = rangejobs_settings(bootstrap, unique_id("g"), topic, unique_id)
    tp = TopicPartition(topic, 0)
    await produce(bootstrap, topic, 0, RECORDS)
    flushed = Flushed()
    flushed.fail_once.add(50)  # the job starting at 50 fails once: offered again
    flushed.held.add(0)  # the first job straggles until jobs beyond it are done
    async with owner(settings) as engine, anyio.create_task_group() as tg:
        assert tp in engine.assignment
        clients = await tg_enter(tg, range_job_clients(settings))
        commits: list[tuple[int, str]] = []

        async def commit(offsets: Any, metadata: str) -> object:
            commits.append((offsets[tp], metadata))
            return await engine.commit(offsets, metadata)

        scheduler = scheduler_over(settings, clients, engine, commit=commit)
        await scheduler.take(tp)
        workers = await start_workers(tg, settings, flushed, ["w1", "w2"])
        tg.start_soon(scheduler.run)
        window = scheduler.partitions[tp].window
        await wait_until(lambda: len(window.finished.ranges) > 0, 30, "jobs beyond the straggler")
        await wait_until(lambda: any(m for _, m in commits), 30, "a commit with metadata")
        assert all(offset == 0 for offset, _ in commits), "never past the straggler"
        flushed.release.set()

        async def committed() -> tuple[int, str] | None:
            return (await engine.committed_with_metadata([tp]))[tp]

        deadline = anyio.current_time() + 60
        while await committed() != (RECORDS, ""):
            assert anyio.current_time() < deadline, f"committed {await committed()}"
            await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    assert set(flushed.offsets) == set(range(RECORDS)), "no record lost"
    assert len(flushed.offsets) == RECORDS, "the failed job flushed nothing: no duplicate"
    assert set(flushed.by_worker) == {"w1", "w2"}, "both workers took jobs"
    assert sum(w.counters.range_jobs_done for w in workers) == RECORDS // 25
    assert sum(w.counters.range_job_records for w in workers) == RECORDS
    assert sum(w.counters.range_jobs_failed for w in workers) == 1, "the planted failure"
    # Every commit was gap-free: nothing committed past a record not yet flushed then.
    offsets = [offset for offset, _ in commits]
    assert offsets == sorted(offsets)


async def test_a_new_owner_does_not_redo_jobs_the_metadata_records(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=1)
    settings = rangejobs_settings(bootstrap, unique_id("g"), topic, unique_id)
    tp = TopicPartition(topic, 0)
    await produce(bootstrap, topic, 0, RECORDS)
    flushed = Flushed()
    async with owner(settings) as engine, anyio.create_task_group() as tg:
        # A previous owner committed 100, with [150, 250) finished beyond it.
        previous = encode_completed(CompletedRanges(100, ((150, 250),)))
        await engine.commit({tp: 100}, previous)
        assert (await engine.committed_with_metadata([tp]))[tp] == (100, previous)
        clients = await tg_enter(tg, range_job_clients(settings))
        scheduler = scheduler_over(settings, clients, engine)
        took = await scheduler.take(tp)
        assert took.window.finished.ranges == ((150, 250),)
        await start_workers(tg, settings, flushed, ["w1"])
        tg.start_soon(scheduler.run)
        await wait_until(lambda: took.window.frontier == RECORDS, 60, "every job done")
        deadline = anyio.current_time() + 20
        while (await engine.committed_with_metadata([tp]))[tp] != (RECORDS, ""):
            assert anyio.current_time() < deadline
            await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    assert sorted(flushed.offsets) == [*range(100, 150), *range(250, RECORDS)]
