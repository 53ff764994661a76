"""The range-job scheduler: the owner of a lagging partition cuts its backlog into jobs, offers
them to the group through Kafka, and commits the gap-free frontier with the finished jobs
beyond it in the commit's metadata.

:class:`PartitionScheduler` is the decision core of one partition, pure (messages in, records
to publish out, time as a parameter): it takes over from the committed offset and its metadata
(:func:`~capgroup.protocol.completed_ranges.decode_completed`, so finished jobs are not redone;
unusable metadata is logged once as ``range_jobs_metadata_ignored`` and costs only redone
jobs), answers the first claim of each attempt with an assignment, reoffers failed and
timed-out jobs, and says when and what to commit.

:class:`RangeJobScheduler` is its Kafka shell for the partitions a member owns: it reads the
backlog (offsets and sizes only, with an ``assign()``-ed consumer: reading a partition needs no
group ownership), publishes offers and assignments on the jobs topic, reads claims and outcomes
from the completions topic, and commits through ``commit`` (the membership engine's
generation-fenced commit in production: a scheduler that lost the partition cannot commit, and
stops scheduling it on :class:`~capgroup.errors.CommitFencedError`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from capgroup.errors import CommitFailedError, CommitFencedError
from capgroup.log import get_logger
from capgroup.protocol.completed_ranges import decode_completed
from capgroup.runtime.batch import record_sizes
from capgroup.runtime.rangejobs.jobs_wire import (
    JobMessage,
    JobState,
    Outcome,
    OutcomeMessage,
    decode_outcome,
    encode_job,
    job_key,
)
from capgroup.runtime.rangejobs.window import CompletionWindow, JobLimits, Lease
from capgroup.settings import CapgroupSettings
from capgroup.types import TopicPartition

__all__ = ["CommitWithMetadata", "PartitionScheduler", "Publish", "RangeJobScheduler"]

_log = get_logger("rangejobs")

#: Commits ``{tp: offset}`` with ``metadata`` under the member's current generation; raises
#: :class:`~capgroup.errors.CommitFencedError` when the member no longer owns ``tp``.
CommitWithMetadata = Callable[[Mapping[TopicPartition, int], str], Awaitable[object]]
#: The committed offset and metadata of each partition (None: no commit yet).
CommittedWithMetadata = Callable[
    [Iterable[TopicPartition]], Awaitable[Mapping[TopicPartition, tuple[int, str] | None]]
]


@dataclass(frozen=True, slots=True)
class Publish:
    """A record for the jobs topic: ``value`` None is a tombstone."""

    key: bytes
    value: bytes | None


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}-{tp.partition}"


class PartitionScheduler:
    """Range jobs of one owned partition; see the module docs. ``member_id`` and
    ``generation`` stamp the offers; ``wall_ms`` gives the wall clock for offer deadlines."""

    def __init__(
        self,
        tp: TopicPartition,
        committed: int,
        metadata: str,
        settings: CapgroupSettings,
        *,
        member_id: str,
        generation: int,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        decoded = decode_completed(metadata, committed)
        if decoded.reason is not None and metadata:
            _log.warning(
                "range_jobs_metadata_ignored",
                partition=_name(tp),
                committed=committed,
                reason=decoded.reason,
                detail=decoded.detail,
            )
        self.tp = tp
        self.window = CompletionWindow(
            tp,
            committed,
            decoded.ranges,
            max_in_flight=settings.range_jobs_max_in_flight,
            job_timeout=settings.range_jobs_timeout_ms / 1000,
            metadata_limit=settings.range_jobs_metadata_max_bytes,
        )
        self.limits = JobLimits(settings.range_jobs_max_records, settings.range_jobs_max_bytes)
        self._member_id = member_id
        self._generation = generation
        self._wall_ms = wall_ms
        self._timeout_ms = settings.range_jobs_timeout_ms
        #: Leases whose attempt was assigned, by range: the worker holding it.
        self._assigned: dict[tuple[int, int], str] = {}
        self._committed = (committed, metadata)
        #: Finished jobs known at takeover (from the metadata): their count, for the logs.
        self.known_at_takeover = len(decoded.ranges.ranges)

    # ------------------------------------------------------------------ messages --------
    def _job(self, lease: Lease, state: JobState, worker: str = "") -> Publish:
        job = lease.job
        message = JobMessage(
            state=state,
            tp=self.tp,
            start=job.start,
            end=job.end,
            attempt=lease.attempt,
            scheduler=self._member_id,
            generation=self._generation,
            records=job.records,
            size_bytes=job.size_bytes,
            deadline_ms=self._wall_ms() + self._timeout_ms,
            worker=worker,
        )
        return Publish(job_key(self.tp, job.start, job.end), encode_job(message))

    def offers(self, now: float) -> list[Publish]:
        """Give back timed-out leases, then offer queued jobs while slots and the metadata
        budget allow; the records to publish."""
        out: list[Publish] = []
        for lease in self.window.expire(now):
            self._assigned.pop((lease.job.start, lease.job.end), None)
            _log.warning(
                "range_job_timed_out",
                partition=_name(self.tp),
                start=lease.job.start,
                end=lease.job.end,
                attempt=lease.attempt,
            )
        while (offered := self.window.offer(now)) is not None:
            out.append(self._job(offered, JobState.OFFER))
        return out

    def on_outcome(self, message: OutcomeMessage) -> list[Publish]:
        """Fold in a claim or outcome for this partition; the records to publish."""
        key = (message.start, message.end)
        lease = next((x for x in self.window.leases if (x.job.start, x.job.end) == key), None)
        if message.outcome is Outcome.CLAIM:
            if lease is None or lease.attempt != message.attempt or key in self._assigned:
                return []  # late, stale or lost the race: the worker's claim times out
            self._assigned[key] = message.worker
            _log.debug(
                "range_job_assigned",
                partition=_name(self.tp),
                start=message.start,
                attempt=message.attempt,
                worker=message.worker,
            )
            return [self._job(lease, JobState.ASSIGN, message.worker)]
        if message.outcome is Outcome.FAILED:
            if lease is not None and lease.attempt == message.attempt:
                self._assigned.pop(key, None)
                self.window.fail(*key)
                _log.warning(
                    "range_job_failed",
                    partition=_name(self.tp),
                    start=message.start,
                    end=message.end,
                    attempt=message.attempt,
                    worker=message.worker,
                    error=message.error,
                )
            return []
        # DONE, of any attempt (every record of the range was flushed).
        self._assigned.pop(key, None)
        self.window.complete(*key)
        return [Publish(job_key(self.tp, *key), None)]

    # ------------------------------------------------------------------ commits ---------
    def commit_due(self) -> tuple[int, str] | None:
        """``(offset, metadata)`` to commit when either changed since the last commit."""
        wanted = (self.window.frontier, self.window.metadata())
        return None if wanted == self._committed else wanted

    def committed(self, offset: int, metadata: str) -> None:
        """``offset`` and ``metadata`` were committed."""
        self._committed = (offset, metadata)

    @property
    def idle(self) -> bool:
        """Nothing leased or queued: the partition may go back to ordinary consumption."""
        return self.window.outstanding == 0


class RangeJobScheduler:
    """Schedules range jobs for the partitions this member owns and whose lag passed
    ``range_jobs_lag_records``; see the module docs.

    ``reader`` is an ``assign()``-ed aiokafka consumer (no group) for the backlog,
    ``completions`` one assigned to the completions topic, ``producer`` publishes to the jobs
    topic; ``commit`` and ``committed`` are the group's (fenced) commit and OffsetFetch with
    metadata; ``member`` gives ``(member_id, generation)``.
    """

    def __init__(
        self,
        settings: CapgroupSettings,
        *,
        reader: Any,
        completions: Any,
        producer: Any,
        commit: CommitWithMetadata,
        committed: CommittedWithMetadata,
        member: Callable[[], tuple[str, int]],
    ) -> None:
        self._settings = settings
        self._reader = reader
        self._completions = completions
        self._producer = producer
        self._commit = commit
        self._committed = committed
        self._member = member
        self._jobs_topic = settings.effective_range_jobs_topic
        self.partitions: dict[TopicPartition, PartitionScheduler] = {}
        self._commit_lock = anyio.Lock()

    async def take(self, tp: TopicPartition) -> PartitionScheduler:
        """Start scheduling ``tp`` from its committed offset and metadata (a takeover)."""
        found = (await self._committed([tp])).get(tp)
        committed, metadata = found if found is not None else (0, "")
        if found is None:
            begins = await self._reader.beginning_offsets([_kafka(tp)])
            committed = int(begins[_kafka(tp)])
        member_id, generation = self._member()
        scheduler = PartitionScheduler(
            tp, committed, metadata, self._settings, member_id=member_id, generation=generation
        )
        self.partitions[tp] = scheduler
        _log.info(
            "range_jobs_started",
            partition=_name(tp),
            committed=committed,
            finished_beyond=scheduler.known_at_takeover,
        )
        return scheduler

    def drop(self, tp: TopicPartition) -> None:
        """Stop scheduling ``tp`` (revoked, lost, or fenced): nothing more is committed."""
        if self.partitions.pop(tp, None) is not None:
            _log.info("range_jobs_stopped", partition=_name(tp))

    async def read_backlog(self, scheduler: PartitionScheduler, timeout_ms: int = 500) -> None:
        """Read records from the window's cursor (offsets and sizes only) and cut them."""
        window = scheduler.window
        if not window.wants_more():
            return
        ktp = _kafka(scheduler.tp)
        self._reader.assign([ktp])
        self._reader.seek(ktp, window.cursor)
        want = window.max_in_flight * scheduler.limits.max_records
        got: list[tuple[int, int]] = []
        with anyio.move_on_after(timeout_ms / 1000):
            while len(got) < want:
                batches = await self._reader.getmany(ktp, timeout_ms=timeout_ms, max_records=want)
                records = batches.get(ktp, [])
                if not records:
                    break
                got.extend(zip((r.offset for r in records), record_sizes(records), strict=True))
        upto = int(await self._reader.position(ktp))
        end = (await self._reader.end_offsets([ktp]))[ktp]
        # The tail is cut only when the read reached the end of the log (nothing follows yet).
        window.cut(got, scheduler.limits, upto=upto if upto >= end else None)

    async def publish(self, records: Iterable[Publish]) -> None:
        """Produce ``records`` to the jobs topic and wait for their acknowledgements."""
        pending = [
            await self._producer.send(self._jobs_topic, key=p.key, value=p.value, partition=0)
            for p in records
        ]
        for delivery in pending:
            await delivery

    async def poll_outcomes(self, timeout_ms: int = 50) -> None:
        """Read claims and outcomes and fold them into the schedulers they concern."""
        batches = await self._completions.getmany(timeout_ms=timeout_ms)
        out: list[Publish] = []
        for records in batches.values():
            for record in records:
                message = decode_outcome(record.value)
                if message is None:
                    continue
                scheduler = self.partitions.get(message.tp)
                if scheduler is not None:
                    out.extend(scheduler.on_outcome(message))
        await self.publish(out)

    async def commit_due(self) -> None:
        """Commit each partition whose frontier or metadata changed (one call each: the
        metadata belongs to its partition)."""
        async with self._commit_lock:
            for tp, scheduler in list(self.partitions.items()):
                due = scheduler.commit_due()
                if due is None:
                    continue
                offset, metadata = due
                try:
                    await self._commit({tp: offset}, metadata)
                except CommitFencedError as exc:
                    _log.warning("range_jobs_commit_fenced", partition=_name(tp), reason=str(exc))
                    self.drop(tp)
                    continue
                except CommitFailedError as exc:
                    _log.warning("range_jobs_commit_failed", partition=_name(tp), error=str(exc))
                    continue
                scheduler.committed(offset, metadata)
                _log.info(
                    "range_jobs_committed",
                    partition=_name(tp),
                    offset=offset,
                    metadata_chars=len(metadata),
                    finished_beyond=len(scheduler.window.finished.ranges),
                )

    async def step(self) -> None:
        """One round: read backlogs, offer, read outcomes, commit."""
        now = anyio.current_time()
        for scheduler in list(self.partitions.values()):
            await self.read_backlog(scheduler)
            await self.publish(scheduler.offers(now))
        await self.poll_outcomes()
        await self.commit_due()

    async def run(self, interval: float = 0.05) -> None:
        """Step until cancelled."""
        while True:
            await self.step()
            await anyio.sleep(interval)


def _kafka(tp: TopicPartition) -> Any:
    from aiokafka.structs import TopicPartition as KafkaTopicPartition

    return KafkaTopicPartition(tp.topic, tp.partition)
