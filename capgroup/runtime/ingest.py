"""Ingest: the fetch loop, which moves fetched records into partition buffers.

Records are counted against the ledger as fetched (payload plus per-record overhead, before
any deserializer), each touched partition's worker is woken, and backpressure is re-evaluated
once per fetch. Records of partitions that are closing, stopped or no longer owned, and every
record fetched while the generation is lost, are dropped: a regained partition restarts from
its committed offset.

``deserialize`` runs on each new record (records already seen after a seek are not decoded
again). A record it fails on never stops the fetch loop: it is contained to that record and
handled by ``deserialize_failure_policy`` (:class:`UndecodablePolicy`), with one
``record_undecodable`` event naming topic, partition, offset, exception and policy:

- ``stop_partition``: buffered raw in its place; its partition worker flushes the records before
  it, then stops the partition there (nothing is committed past it);
- ``dead_letter``: buffered raw in its place; the worker produces it, untouched, to the
  dead-letter topic in offset order, and the offset then moves past it like a flushed record;
- ``skip``: dropped and counted; the offset moves past it once the records before it settled.

A ``deserialize`` that returns None skips the record on purpose (a filter): it is counted in
``records_skipped`` and its offset is committed like a ``skip``ped one, with no log event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any

import anyio
import anyio.lowlevel
from aiokafka.errors import KafkaError

from capgroup.log import get_logger
from capgroup.runtime.backpressure import Backpressure
from capgroup.runtime.batch import Record, record_sizes
from capgroup.runtime.clients import Fetcher
from capgroup.runtime.memory import MemoryLedger
from capgroup.runtime.offsets import CommitTracker
from capgroup.runtime.partition import PartitionState, footprint
from capgroup.runtime.stats import Counters
from capgroup.types import TopicPartition

__all__ = [
    "FETCH_WAIT_MS",
    "Deserialize",
    "Ingest",
    "UndecodablePolicy",
    "log_undecodable",
]

#: The service's ``deserialize``: a record to buffer, or None to skip the record.
Deserialize = Callable[[Record], Record[Any] | None]


class UndecodablePolicy(StrEnum):
    """What happens to a record ``deserialize`` raised on (``deserialize_failure_policy``)."""

    #: Stop the partition at the record; nothing is committed past it.
    STOP_PARTITION = "stop_partition"
    #: Produce the raw record to the dead-letter topic, then commit past it.
    DEAD_LETTER = "dead_letter"
    #: Drop it (counted and logged), then commit past it.
    SKIP = "skip"


_log = get_logger("consumer")

#: Longest wait of one fetch; also how quickly the fetch loop notices a shutdown.
FETCH_WAIT_MS = 200
#: Scheduler turns the fetch loop gives up after buffering a fetch: a woken partition worker
#: needs one to run and one more to take its flush slot before it cuts (measured: with fewer,
#: partitions full only until their cut lose their prefetched records to the next fetch).
CUT_YIELDS = 3


def log_undecodable(record: Record, exc: Exception, policy: UndecodablePolicy) -> None:
    """The one ``record_undecodable`` event of a record ``deserialize`` raised on."""
    _log.error(
        "record_undecodable",
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        error=str(exc)[:1024],
        policy=policy.value,
    )


class Ingest:
    """Fetches and buffers records until ``stopping()`` says so.

    ``generation_valid`` tells whether the member is in a live generation; ``deserialize`` is
    the user's hook, or None when it is the identity (the per-record call is then skipped).
    ``undecodable`` is the policy for records ``deserialize`` raises on; ``tracker`` and
    ``request_commit`` let skipped records' offsets be committed.
    """

    def __init__(
        self,
        *,
        fetcher: Fetcher,
        generation_valid: Callable[[], bool],
        partitions: Mapping[TopicPartition, PartitionState],
        ledger: MemoryLedger,
        counters: Counters,
        backpressure: Backpressure,
        deserialize: Deserialize | None,
        stopping: Callable[[], bool],
        clock: Callable[[], float] = anyio.current_time,
        undecodable: UndecodablePolicy = UndecodablePolicy.STOP_PARTITION,
        tracker: CommitTracker | None = None,
        request_commit: Callable[[], None] | None = None,
        max_records: Callable[[], int | None] | None = None,
    ) -> None:
        self._fetcher = fetcher
        #: Records to take per fetch (None: all); the rest wait in the fetch buffer.
        self._max_records = max_records
        self._generation_valid = generation_valid
        self._partitions = partitions
        self._ledger = ledger
        self._counters = counters
        self._backpressure = backpressure
        self._deserialize = deserialize
        self._stopping = stopping
        self._clock = clock
        self._undecodable = UndecodablePolicy(undecodable)
        self._tracker = tracker
        self._request_commit = request_commit

    async def run(self) -> None:
        """Fetch until stopping; a failed fetch is retried with backoff."""
        failures = 0
        while not self._stopping():
            try:
                limit = None if self._max_records is None else self._max_records()
                if limit is None:
                    chunks = await self._fetcher.fetch(timeout_ms=FETCH_WAIT_MS)
                else:
                    chunks = await self._fetcher.fetch(timeout_ms=FETCH_WAIT_MS, max_records=limit)
            except KafkaError as exc:
                failures += 1
                _log.warning("fetch_failed", error=repr(exc), consecutive_failures=failures)
                await anyio.sleep(min(0.1 * 2**failures, 5.0))
                continue
            failures = 0
            if chunks:
                self.absorb(chunks)
                # Let the partition workers cut what just became due before fetching again: a
                # partition held only until its cut is resumed first, where the next fetch
                # would otherwise drop the client's prefetched records for it (aiokafka
                # discards a paused partition's fetched data) and fetch them again.
                for _ in range(CUT_YIELDS):
                    await anyio.lowlevel.checkpoint()

    def absorb(self, chunks: Mapping[TopicPartition, list[Any]]) -> None:
        """Buffer fetched records (synchronously: no revoke can interleave)."""
        if not self._generation_valid():
            # The generation is lost and the engine has yet to hand us the loss: these
            # partitions may already be someone else's, so their records are not ours to
            # process. Dropping them is safe: a regained partition restarts from its commit.
            return
        now = self._clock()
        touched = []
        deserialize = self._deserialize
        for tp, raw in chunks.items():
            state = self._partitions.get(tp)
            if state is None or state.closing or state.stopped or state.buffer.halted:
                continue
            buffer = state.buffer
            before_bytes, before_count = buffer.size_bytes, len(buffer)
            # Budgets count the payload as fetched, before any deserializer touches it.
            sizes = record_sizes(raw)
            if deserialize is None:
                # The fetcher hands over one partition's records in increasing offsets.
                buffer.extend(raw, now, sizes, ordered=True)
            else:
                self._decode_into(state, raw, sizes, now, deserialize)
            added = buffer.size_bytes - before_bytes
            accepted = len(buffer) - before_count
            self._ledger.add(tp, footprint(added, accepted))
            self._counters.records_in += accepted
            self._counters.bytes_in += added
            touched.append(state)
            state.poke()
        self._backpressure.update_holds(touched)

    def _decode_into(
        self,
        state: PartitionState,
        raw: Sequence[Record],
        sizes: Sequence[int],
        now: float,
        deserialize: Deserialize,
    ) -> None:
        """Deserialize ``raw`` into ``state``'s buffer, containing every failure to its record."""
        buffer = state.buffer
        seen = buffer.last_offset
        good: list[Record[Any]] = []
        good_sizes: list[int] = []
        for record, size in zip(raw, sizes, strict=True):
            if record.offset <= seen:
                continue  # buffered or handled already (a re-fetch after a seek)
            try:
                decoded = deserialize(record)
            except Exception as exc:
                buffer.extend(good, now, good_sizes, ordered=True)
                good, good_sizes = [], []
                if self._undecodable_record(state, record, size, now, exc):
                    return  # the partition stops at this record: nothing past it is wanted
                continue
            if decoded is None:
                buffer.extend(good, now, good_sizes, ordered=True)
                good, good_sizes = [], []
                self._skip(state, record)
                continue
            good.append(decoded)
            good_sizes.append(size)
        buffer.extend(good, now, good_sizes, ordered=True)

    def _undecodable_record(
        self, state: PartitionState, record: Record, size: int, now: float, exc: Exception
    ) -> bool:
        """Handle a record ``deserialize`` raised on; True when its partition stops there."""
        policy = self._undecodable
        self._counters.records_undecodable += 1
        log_undecodable(record, exc, policy)
        if policy is UndecodablePolicy.SKIP:
            self._skip(state, record)
            return False
        halts = policy is UndecodablePolicy.STOP_PARTITION
        state.buffer.append_undecodable(record, size, now, exc, halts=halts)
        return halts

    def _skip(self, state: PartitionState, record: Record) -> None:
        """Drop ``record`` for good: count it, and let the offset move past it."""
        self._counters.records_skipped += 1
        buffer = state.buffer
        after = buffer.last_offset
        buffer.skip_to(record.offset)
        tracker = self._tracker
        if (
            tracker is not None
            and tracker.skip(state.tp, state.epoch, record.offset, after)
            and self._request_commit is not None
        ):
            self._request_commit()
