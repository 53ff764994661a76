"""Ingest: the fetch loop, which moves fetched records into partition buffers.

Records are counted against the ledger as fetched (payload plus per-record overhead, before
any deserializer), each touched partition's worker is woken, and backpressure is re-evaluated
once per fetch. Records of partitions that are closing, stopped or no longer owned, and every
record fetched while the generation is lost, are dropped: a regained partition restarts from
its committed offset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
from aiokafka.errors import KafkaError

from capgroup.log import get_logger
from capgroup.runtime.backpressure import Backpressure
from capgroup.runtime.batch import Record, record_sizes
from capgroup.runtime.clients import Fetcher
from capgroup.runtime.memory import MemoryLedger
from capgroup.runtime.partition import PartitionState, footprint
from capgroup.runtime.stats import Counters
from capgroup.types import TopicPartition

__all__ = ["FETCH_WAIT_MS", "Ingest"]

_log = get_logger("consumer")

#: Longest wait of one fetch; also how quickly the fetch loop notices a shutdown.
FETCH_WAIT_MS = 200


class Ingest:
    """Fetches and buffers records until ``stopping()`` says so.

    ``generation_valid`` tells whether the member is in a live generation; ``deserialize`` is
    the user's hook, or None when it is the identity (the per-record call is then skipped).
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
        deserialize: Callable[[Record], Record] | None,
        stopping: Callable[[], bool],
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._fetcher = fetcher
        self._generation_valid = generation_valid
        self._partitions = partitions
        self._ledger = ledger
        self._counters = counters
        self._backpressure = backpressure
        self._deserialize = deserialize
        self._stopping = stopping
        self._clock = clock

    async def run(self) -> None:
        """Fetch until stopping; a failed fetch is retried with backoff."""
        failures = 0
        while not self._stopping():
            try:
                chunks = await self._fetcher.fetch(timeout_ms=FETCH_WAIT_MS)
            except KafkaError as exc:
                failures += 1
                _log.warning("fetch_failed", error=repr(exc), consecutive_failures=failures)
                await anyio.sleep(min(0.1 * 2**failures, 5.0))
                continue
            failures = 0
            if chunks:
                self.absorb(chunks)

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
            if state is None or state.closing or state.stopped:
                continue
            buffer = state.buffer
            before_bytes, before_count = buffer.size_bytes, len(buffer)
            # Budgets count the payload as fetched, before any deserializer touches it.
            sizes = record_sizes(raw)
            records = raw if deserialize is None else [deserialize(r) for r in raw]
            buffer.extend(records, now, sizes)
            added = buffer.size_bytes - before_bytes
            accepted = len(buffer) - before_count
            self._ledger.add(tp, footprint(added, accepted))
            self._counters.records_in += accepted
            self._counters.bytes_in += added
            touched.append(state)
            state.poke()
        self._backpressure.update_holds(touched)
