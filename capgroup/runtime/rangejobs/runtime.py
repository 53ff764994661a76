"""Range jobs inside a :class:`~capgroup.runtime.consumer.BatchingConsumer` run
(``range_jobs_enabled``): the clients and topics, the scheduler of the member's lagging
partitions, the worker that takes the group's jobs, and the controller that moves partitions
between the ordinary path and range jobs.

The worker goes through the member's own ``flush`` (with ``deserialize`` first, as fetched
records do, under the member's ``deserialize_failure_policy``), its flush retry policy and its
``flush_failure_policy`` (a job whose flush fails for good is dead-lettered when that is
``dead_letter``), and a job in progress costs its slot's bytes
(:func:`~capgroup.runtime.rangejobs.worker.job_reservation_bytes`) in the member's memory
ledger, under :data:`RANGE_JOBS_LEDGER_KEY`, so the budget and the fetch backpressure see it.
The member advertises its budget minus its slots' bytes (:func:`reserved_bytes`), so the
assignor never counts on memory a job may take.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio

from capgroup.log import get_logger
from capgroup.protocol.completed_ranges import decode_completed
from capgroup.runtime.backpressure import Backpressure
from capgroup.runtime.batch import Batch, Record, record_sizes
from capgroup.runtime.clients import DeadLetterSink
from capgroup.runtime.ingest import UndecodablePolicy, log_undecodable
from capgroup.runtime.memory import MemoryLedger
from capgroup.runtime.rangejobs.controller import (
    EndOffsets,
    HandOff,
    RangeJobsController,
    Switch,
)
from capgroup.runtime.rangejobs.scheduler import (
    CommittedWithMetadata,
    CommitWithMetadata,
    RangeJobScheduler,
)
from capgroup.runtime.rangejobs.service import (
    RangeJobClients,
    range_job_clients,
)
from capgroup.runtime.rangejobs.worker import RangeJobWorker, job_reservation_bytes
from capgroup.runtime.retry import RetryPolicy, UndecodableRecordError, run_with_retries
from capgroup.runtime.stats import Counters, PartitionLag, RangeJobsProgress
from capgroup.settings import CapgroupSettings
from capgroup.types import TopicPartition

__all__ = ["RANGE_JOBS_LEDGER_KEY", "RangeJobsRuntime", "reserved_bytes"]

_log = get_logger("rangejobs")

#: The ledger entry the bytes of jobs in progress are counted under (no real partition).
RANGE_JOBS_LEDGER_KEY = TopicPartition("__capgroup_range_jobs", 0)


def reserved_bytes(settings: CapgroupSettings) -> int:
    """Budget set aside for range jobs this member may hold at once (0 when disabled)."""
    if not settings.range_jobs_enabled:
        return 0
    return settings.range_jobs_worker_slots * job_reservation_bytes(settings)


class RangeJobsRuntime:
    """Range jobs of one consumer run; create inside the event loop, :meth:`start` before
    :meth:`run`, :meth:`stop` at the end."""

    def __init__(
        self,
        settings: CapgroupSettings,
        *,
        flush: Callable[[Batch[Any]], Awaitable[None]],
        deserialize: Callable[[Record], Record[Any] | None] | None,
        retry: RetryPolicy,
        ledger: MemoryLedger,
        backpressure: Backpressure,
        counters: Counters | None = None,
        undecodable: UndecodablePolicy = UndecodablePolicy.STOP_PARTITION,
        dead_letter: DeadLetterSink | None = None,
        undecodable_dead_letter: DeadLetterSink | None = None,
    ) -> None:
        self._settings = settings
        self._counters = Counters() if counters is None else counters
        self._undecodable = UndecodablePolicy(undecodable)
        #: Where jobs whose flush failed for good go (flush_failure_policy=dead_letter).
        self._dead_letter_sink = dead_letter
        #: Where records deserialize raised on go (deserialize_failure_policy=dead_letter).
        self._undecodable_sink = undecodable_dead_letter
        self._member: Callable[[], tuple[str, int]] = lambda: ("", -1)
        self._flush = flush
        self._deserialize = deserialize
        self._retry = retry
        self._ledger = ledger
        self._backpressure = backpressure
        self._stack = contextlib.AsyncExitStack()
        self._clients: RangeJobClients | None = None
        self.scheduler: RangeJobScheduler | None = None
        #: The group's committed offsets with metadata, once attached.
        self._committed: CommittedWithMetadata | None = None
        self.worker: RangeJobWorker | None = None
        self.controller: RangeJobsController | None = None

    async def start(self) -> None:
        """Create the topics if needed and start the clients."""
        self._clients = await self._stack.enter_async_context(range_job_clients(self._settings))

    async def stop(self) -> None:
        """Close the clients."""
        await self._stack.aclose()

    # ------------------------------------------------------------------ memory ----------
    def reserve(self, nbytes: int) -> bool:
        """Count ``nbytes`` of a claimed job in the ledger; False (nothing counted) when the
        budget has no room for them now."""
        ledger = self._ledger
        if ledger.total_bytes + nbytes > ledger.budget_bytes:
            return False
        ledger.add(RANGE_JOBS_LEDGER_KEY, nbytes)
        self._backpressure.update_fetch_hold()
        return True

    def release(self, nbytes: int) -> None:
        """Stop counting ``nbytes`` of a settled job."""
        self._ledger.release(RANGE_JOBS_LEDGER_KEY, nbytes)
        self._backpressure.update_fetch_hold()

    async def prepare(self, batch: Batch[Any]) -> Batch[Any] | None:
        """A job's fetched records after ``deserialize``, as fetched records are handled: one
        it returns None for is skipped; one it raises on gets ``deserialize_failure_policy``
        (``skip``: dropped; ``dead_letter``: produced raw to the dead-letter topic;
        ``stop_partition``: :class:`UndecodableRecordError`, the job fails there). None when
        nothing is left to flush."""
        decode = self._deserialize
        if decode is None:
            return batch
        records: list[Record[Any]] = []
        kept_bytes = 0  # the raw size of what is kept, as a partition's buffer counts it
        for record, size in zip(batch.records, record_sizes(batch.records), strict=True):
            try:
                decoded = decode(record)
            except Exception as exc:
                await self._undecodable_record(batch, record, exc)
                continue
            if decoded is None:
                self._counters.records_skipped += 1
            else:
                records.append(decoded)
                kept_bytes += size
        if not records:
            return None
        return Batch.of(batch.tp, records, started_at=batch.started_at, size_bytes=kept_bytes)

    async def _undecodable_record(self, batch: Batch[Any], record: Record, exc: Exception) -> None:
        policy = self._undecodable
        self._counters.records_undecodable += 1
        log_undecodable(record, exc, policy)
        if policy is UndecodablePolicy.SKIP:
            self._counters.records_skipped += 1
            return
        sink = self._undecodable_sink
        if policy is UndecodablePolicy.STOP_PARTITION or sink is None:
            raise UndecodableRecordError(exc)
        one = Batch.of(batch.tp, [record], started_at=batch.started_at)
        await self._send_dead_letter(sink, one, UndecodableRecordError(exc), 1)
        self._counters.records_dead_lettered += 1

    async def dead_letter_job(self, batch: Batch[Any], error: BaseException, attempts: int) -> None:
        """Produce a job's raw records to the dead-letter topic (its flush failed for good)."""
        if self._dead_letter_sink is None:
            raise RuntimeError("no dead-letter topic for range jobs")
        await self._send_dead_letter(self._dead_letter_sink, batch, error, attempts)

    async def _send_dead_letter(
        self, sink: DeadLetterSink, batch: Batch[Any], error: BaseException, attempts: int
    ) -> None:
        member_id = self._member()[0]

        async def send() -> None:
            await sink.send(batch, error=error, attempts=attempts, member_id=member_id)

        await run_with_retries(send, self._retry)

    # ------------------------------------------------------------------ wiring ----------
    def attach(
        self,
        *,
        commit: CommitWithMetadata,
        committed: CommittedWithMetadata,
        member: Callable[[], tuple[str, int]],
        owned: Callable[[], Iterable[TopicPartition]],
        lag_figures: Callable[[], Mapping[TopicPartition, PartitionLag]],
        end_offsets: EndOffsets,
        hand_off: HandOff,
        take_back: Switch,
    ) -> None:
        """Build the scheduler, worker and controller over the started clients. ``committed``
        reads the group's committed offsets with their metadata (the engine's OffsetFetch)."""
        clients = self._clients
        if clients is None:
            raise RuntimeError("start() the range jobs first")
        settings = self._settings
        self._committed = committed
        self._member = member
        self.scheduler = RangeJobScheduler(
            settings,
            reader=clients.scheduler_reader,
            completions=clients.completions,
            producer=clients.producer,
            commit=commit,
            committed=committed,
            member=member,
        )
        self.worker = RangeJobWorker(
            settings,
            jobs=clients.jobs,
            reader=clients.worker_reader,
            producer=clients.producer,
            flush=self._flush,
            prepare=self.prepare,
            dead_letter=None if self._dead_letter_sink is None else self.dead_letter_job,
            worker_id=lambda: member()[0],
            reserve=self.reserve,
            release=self.release,
            retry=self._retry,
            counters=self._counters,
        )
        self.controller = RangeJobsController(
            settings,
            self.scheduler,
            owned=owned,
            lag_figures=lag_figures,
            end_offsets=end_offsets,
            hand_off=hand_off,
            take_back=take_back,
        )

    @property
    def running(self) -> int:
        """Range jobs this member's worker holds now (claimed or being processed)."""
        return 0 if self.worker is None else self.worker.busy

    def progress(self) -> dict[TopicPartition, RangeJobsProgress]:
        """Where the range jobs of each partition this member schedules stand."""
        if self.scheduler is None:
            return {}
        return {
            tp: RangeJobsProgress(
                frontier=ps.window.frontier,
                outstanding=ps.window.outstanding,
                finished_ahead_offsets=sum(end - start for start, end in ps.window.finished.ranges),
            )
            for tp, ps in self.scheduler.partitions.items()
        }

    async def run(self) -> None:
        """Run the worker and the controller until cancelled."""
        if self.worker is None or self.controller is None:
            raise RuntimeError("attach() the range jobs first")
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.worker.run)
            tg.start_soon(self.controller.run, self._settings.lag_sample_interval_ms / 1000)

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Before a revoke: commit the finished jobs of revoked partitions, stop them."""
        if self.controller is not None:
            await self.controller.revoked(partitions)

    async def divert(self, gained: frozenset[TopicPartition]) -> frozenset[TopicPartition]:
        """Of newly gained partitions, those whose commit records finished range jobs beyond
        it: range jobs take them over at once, so the ordinary path never starts for them (it
        would redo those jobs, and its first commit would drop the metadata). Any failure to
        read the commit leaves a partition to the ordinary path (only redone jobs)."""
        scheduler = self.scheduler
        topics = self._settings.effective_range_jobs_topics
        wanted = sorted(tp for tp in gained if tp.topic in topics)
        if scheduler is None or self._committed is None or not wanted:
            return frozenset()
        try:
            found = await self._committed(wanted)
        except Exception as exc:
            _log.warning("range_jobs_divert_failed", error=repr(exc))
            return frozenset()
        taken: set[TopicPartition] = set()
        for tp in wanted:
            commit = found.get(tp)
            if commit is None or not decode_completed(commit[1], commit[0]).ranges.ranges:
                continue
            try:
                await scheduler.take(tp)
            except Exception as exc:
                _log.warning(
                    "range_jobs_divert_failed",
                    error=repr(exc),
                    partition=f"{tp.topic}-{tp.partition}",
                )
                continue
            taken.add(tp)
        return frozenset(taken)

    async def shutdown(self) -> None:
        """At shutdown: commit the finished jobs of every scheduled partition, stop them."""
        if self.controller is not None:
            await self.controller.revoked(self.controller.scheduling)

    def lost(self, partitions: Iterable[TopicPartition]) -> None:
        """On a loss: stop scheduling the partitions (nothing is committed)."""
        if self.controller is not None:
            self.controller.lost(partitions)
