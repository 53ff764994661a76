"""The range-job worker: a member with a free slot claims an offered job, and once the
partition's scheduler assigns it, fetches the job's records by offset and flushes them through
the service's ``flush``; it reports the job done only after ``flush`` returned.

Reading a partition needs no group ownership: the records come from an ``assign()``-ed
consumer (no group id) seeked to the job's start. A job in progress costs its bytes (payload
plus per-record overhead, as a partition's buffer does) in the member's memory ledger from the
claim until it is settled (``reserve`` / ``release``); ``range_jobs_worker_slots`` bounds how
many jobs a member holds at once, and the member's capacity advertisement is expected to set
that many jobs' bytes aside (see :func:`job_reservation_bytes`).

A job whose fetch or flush fails (after the flush retries of the member's retry policy) is
reported ``failed`` and offered again by its scheduler, unless the member's
``flush_failure_policy`` is ``dead_letter``: its raw records then go to the dead-letter topic
and the job is done, as a failed batch of an owned partition is. ``deserialize`` runs once per
job (``prepare``), under ``deserialize_failure_policy``. A worker that dies or freezes reports
nothing, and the scheduler reoffers the job after ``range_jobs_timeout_ms``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from capgroup.log import get_logger
from capgroup.runtime.batch import Batch, Record
from capgroup.runtime.rangejobs.jobs_wire import (
    JobMessage,
    JobState,
    Outcome,
    OutcomeMessage,
    decode_job,
    encode_outcome,
    job_key,
)
from capgroup.runtime.retry import (
    RetriesExhaustedError,
    RetryPolicy,
    UndecodableRecordError,
    run_with_retries,
)
from capgroup.runtime.stats import Counters
from capgroup.settings import RECORD_OVERHEAD_BYTES, CapgroupSettings

__all__ = [
    "CLAIM_TIMEOUT_SECONDS",
    "DeadLetterJob",
    "Prepare",
    "RangeJobWorker",
    "job_reservation_bytes",
]

_log = get_logger("rangejobs")

#: A claim the scheduler did not answer within this is given up (its slot is free again).
CLAIM_TIMEOUT_SECONDS = 5.0


def job_reservation_bytes(settings: CapgroupSettings) -> int:
    """Bytes one job slot may hold: a full job's payload and its records' overhead."""
    return settings.range_jobs_max_bytes + settings.range_jobs_max_records * RECORD_OVERHEAD_BYTES


#: Turns a job's fetched records into the batch ``flush`` gets (``deserialize`` with its failure
#: policy), or None when nothing is left to flush; raises :class:`UndecodableRecordError` to
#: stop at a record (the job fails, and is not retried by this worker).
Prepare = Callable[[Batch[Any]], Awaitable[Batch[Any] | None]]
#: Produces a job's raw records to the dead-letter topic (``flush_failure_policy=dead_letter``)
#: given the flush error and attempts; raises when they could not be written.
DeadLetterJob = Callable[[Batch[Any], BaseException, int], Awaitable[None]]


async def _as_is(batch: Batch[Any]) -> Batch[Any] | None:
    return batch


@dataclass
class _Claim:
    job: JobMessage
    at: float


@dataclass
class _Slots:
    """Jobs claimed (waiting for the assignment) and held (being processed)."""

    claims: dict[bytes, _Claim] = field(default_factory=dict)
    held: set[bytes] = field(default_factory=set)

    def used(self) -> int:
        return len(self.claims) + len(self.held)


class RangeJobWorker:
    """Takes range jobs from the group while it has free slots; see the module docs.

    ``jobs`` is an aiokafka consumer assigned to the jobs topic, ``reader`` one (no group) for
    the jobs' records, ``producer`` publishes to the completions topic; ``flush`` is the
    service's flush; ``reserve(nbytes) -> bool`` asks the memory ledger for a job's bytes
    (False: no room now) and ``release(nbytes)`` gives them back; ``worker_id`` names this
    member in claims.
    """

    def __init__(
        self,
        settings: CapgroupSettings,
        *,
        jobs: Any,
        reader: Any,
        producer: Any,
        flush: Callable[[Batch[Any]], Awaitable[None]],
        worker_id: Callable[[], str],
        reserve: Callable[[int], bool] = lambda nbytes: True,
        release: Callable[[int], None] = lambda nbytes: None,
        retry: RetryPolicy | None = None,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        counters: Counters | None = None,
        prepare: Prepare | None = None,
        dead_letter: DeadLetterJob | None = None,
    ) -> None:
        self._settings = settings
        self._jobs = jobs
        self._reader = reader
        self._producer = producer
        self._flush = flush
        self._prepare: Prepare = prepare if prepare is not None else _as_is
        self._dead_letter = dead_letter
        self._worker_id = worker_id
        self._reserve = reserve
        self._release = release
        self._retry = retry or RetryPolicy.from_settings(settings)
        self._wall_ms = wall_ms
        self._completions_topic = settings.effective_range_jobs_completions_topic
        self.slots = settings.range_jobs_worker_slots
        self._state = _Slots()
        #: Latest offer per key not yet claimed by us.
        self._offers: dict[bytes, JobMessage] = {}
        self._reader_lock = anyio.Lock()
        #: The member's counters (range_jobs_done, range_job_records, range_jobs_failed).
        self.counters = Counters() if counters is None else counters

    @property
    def busy(self) -> int:
        """Slots in use (claimed or held)."""
        return self._state.used()

    async def _report(self, job: JobMessage, outcome: Outcome, error: str = "") -> None:
        message = OutcomeMessage(
            outcome, job.tp, job.start, job.end, job.attempt, self._worker_id(), error
        )
        await (
            await self._producer.send(
                self._completions_topic,
                key=job_key(job.tp, job.start, job.end),
                value=encode_outcome(message),
                partition=0,
            )
        )

    def _observe(self, key: bytes, job: JobMessage | None, tg: Any) -> None:
        """Fold in one jobs-topic record."""
        claim = self._state.claims.get(key)
        if job is None:  # tombstone: done elsewhere
            self._offers.pop(key, None)
            if claim is not None:
                del self._state.claims[key]
                self._release(job_reservation_bytes(self._settings))
            return
        if job.state is JobState.OFFER:
            self._offers[key] = job
            return
        self._offers.pop(key, None)
        if claim is None or claim.job.attempt != job.attempt:
            return
        del self._state.claims[key]
        if job.worker == self._worker_id():
            self._state.held.add(key)
            tg.start_soon(self._work, key, job)
        else:
            self._release(job_reservation_bytes(self._settings))

    async def _claim_some(self, now: float) -> None:
        # Give up claims nobody answered (scheduler gone, or the offer was stale).
        for key, claim in list(self._state.claims.items()):
            if now - claim.at > CLAIM_TIMEOUT_SECONDS:
                del self._state.claims[key]
                self._release(job_reservation_bytes(self._settings))
        wall = self._wall_ms()
        for key, job in sorted(self._offers.items(), key=lambda kv: kv[1].start):
            if self._state.used() >= self.slots:
                return
            if key in self._state.held or key in self._state.claims:
                continue
            if job.deadline_ms and job.deadline_ms < wall:
                continue  # stale offer (its scheduler would reoffer it with a new attempt)
            if not self._reserve(job_reservation_bytes(self._settings)):
                return  # no room in the memory budget now
            self._state.claims[key] = _Claim(job, now)
            del self._offers[key]
            await self._report(job, Outcome.CLAIM)
            _log.debug(
                "range_job_claimed",
                partition=f"{job.tp.topic}-{job.tp.partition}",
                start=job.start,
                attempt=job.attempt,
                worker=self._worker_id(),
            )

    async def _fetch(self, job: JobMessage) -> list[Record[Any]]:
        """The records of ``[job.start, job.end)``, read by offset without group ownership."""
        from aiokafka.structs import TopicPartition as KafkaTopicPartition

        ktp = KafkaTopicPartition(job.tp.topic, job.tp.partition)
        async with self._reader_lock:
            self._reader.assign([ktp])
            self._reader.seek(ktp, job.start)
            out: list[Record[Any]] = []
            while True:
                position = int(await self._reader.position(ktp))
                if position >= job.end:
                    break
                batches = await self._reader.getmany(ktp, timeout_ms=500)
                records = batches.get(ktp, [])
                out.extend(r for r in records if job.start <= r.offset < job.end)
            return out

    async def _fail(self, job: JobMessage, error: BaseException) -> None:
        """Report ``job`` failed: its scheduler offers it again."""
        self.counters.range_jobs_failed += 1
        with contextlib.suppress(Exception):  # unreported: it times out anyway
            await self._report(job, Outcome.FAILED, repr(error))

    async def _work(self, key: bytes, job: JobMessage) -> None:
        began = anyio.current_time()
        where = {
            "partition": f"{job.tp.topic}-{job.tp.partition}",
            "start": job.start,
            "end": job.end,
        }
        raw: Batch[Any] | None = None
        ready: Batch[Any] | None = None
        fetched = False
        try:

            async def attempt() -> None:
                nonlocal raw, ready, fetched
                if not fetched:
                    # A range that cannot be read within the job timeout (a truncated log)
                    # fails the attempt rather than holding the slot for ever.
                    with anyio.fail_after(self._settings.range_jobs_timeout_ms / 1000):
                        records = await self._fetch(job)
                    fetched = True
                    # A range without records (transaction markers, compacted away) is done
                    # as is. Decoding runs once, so its policy (skip, dead-letter) acts once.
                    if records:
                        raw = Batch.of(job.tp, records, started_at=began)
                        ready = await self._prepare(raw)
                if ready is not None:
                    await self._flush(ready)

            outcome = "done"
            try:
                await run_with_retries(attempt, self._retry, fatal=(UndecodableRecordError,))
            except UndecodableRecordError as exc:
                # deserialize_failure_policy=stop_partition: nothing past the record is
                # processed; the job fails and the frontier waits there.
                _log.error("range_job_undecodable", error=repr(exc.error), **where)
                await self._fail(job, exc)
                return
            except RetriesExhaustedError as exc:
                _log.error("range_job_flush_failed", error=repr(exc.last_error), **where)
                if raw is None or self._dead_letter is None:
                    await self._fail(job, exc.last_error)
                    return
                try:
                    await self._dead_letter(raw, exc.last_error, exc.attempts)
                except Exception as dlq_exc:
                    _log.error("dead_letter_failed", error=repr(dlq_exc), **where)
                    await self._fail(job, exc.last_error)
                    return
                outcome = "dead_lettered"
                self.counters.records_dead_lettered += len(raw)
                _log.warning("range_job_dead_lettered", records=len(raw), **where)
            # Only now: every record of the range is durable (flushed or dead-lettered). A
            # report that cannot be sent leaves the job to time out and be done again (a
            # duplicate, never a loss).
            try:
                await self._report(job, Outcome.DONE)
            except Exception as exc:
                _log.warning("range_job_report_failed", error=repr(exc), start=job.start)
                return
            if outcome == "done":
                self.counters.range_jobs_done += 1
                self.counters.range_job_records += 0 if ready is None else len(ready)
            else:
                self.counters.range_jobs_dead_lettered += 1
            _log.info(
                "range_job_done",
                outcome=outcome,
                attempt=job.attempt,
                duration_s=round(anyio.current_time() - began, 3),
                **where,
            )
        finally:
            self._state.held.discard(key)
            self._release(job_reservation_bytes(self._settings))

    async def run(self, poll_ms: int = 50) -> None:
        """Read the jobs topic, claim while slots are free, work what is assigned; until
        cancelled."""
        failures = 0
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    await self._round(tg, poll_ms)
                    failures = 0
                except Exception as exc:
                    # A broker hiccup must not end the member: a claim not sent is not held,
                    # a job not reported done times out and is offered again.
                    failures += 1
                    _log.warning("range_jobs_worker_failed", error=repr(exc), failures=failures)
                    await anyio.sleep(min(0.1 * 2**failures, 5.0))

    async def _round(self, tg: Any, poll_ms: int) -> None:
        """Read what the jobs topic says, then claim while slots are free."""
        batches = await self._jobs.getmany(timeout_ms=poll_ms)
        for records in batches.values():
            for record in records:
                if record.key is None:
                    continue
                job = decode_job(record.value)
                if job is None and record.value is not None:
                    continue  # not ours to read (another version, garbage)
                self._observe(record.key, job, tg)
        if self.slots:
            await self._claim_some(anyio.current_time())
