"""Delivery: cutting batches, flushing them with retries, dead-lettering or stopping, settling.

One :meth:`Delivery.partition_worker` task per owned partition cuts a batch when a limit is
reached (the age limit is its timer) and flushes it under a limiter shared by all partitions,
so a partition's batches flush one at a time, in offset order. A flush that fails after every
retry goes to the dead-letter sink, or else stops its partition (never committed past).
:meth:`Delivery.drain` is the final flush of a partition being revoked (the revoke hook decides)
or shut down, done by a deadline. Every batch ends in :meth:`Delivery.settle`, which tells the
commit tracker, releases its bytes from the ledger, re-evaluates backpressure and asks for a
commit.

A record ``deserialize`` failed on (buffered raw by the ingest, see
:mod:`capgroup.runtime.ingest`) is handled in offset order when it reaches the head of its
buffer: produced to the dead-letter topic (then committable like a flushed record) or, under
``stop_partition``, the partition stops there.

Nothing is flushed for a partition whose ownership is gone: once the generation is lost (the
engine has yet to deliver the loss), workers cut nothing and no ``flush`` call starts, not even
a retry; a batch already cut then counts as discarded, and the loss drops the buffers.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import anyio

from capgroup.log import get_logger
from capgroup.membership.model import Generation
from capgroup.runtime.backpressure import Backpressure
from capgroup.runtime.batch import Batch, FlushReason
from capgroup.runtime.clients import DeadLetterSink
from capgroup.runtime.memory import MemoryLedger
from capgroup.runtime.offsets import BatchOutcome, CommitTracker
from capgroup.runtime.partition import PartitionState, footprint
from capgroup.runtime.policy import FlushThroughput, RevokeAction
from capgroup.runtime.relay import TARGET_POLL_SECONDS, Relay
from capgroup.runtime.retry import (
    RetriesExhaustedError,
    RetryPolicy,
    UndecodableRecordError,
    run_with_retries,
)
from capgroup.runtime.stats import Counters
from capgroup.types import TopicPartition

__all__ = ["FLUSH_FAILED", "OWNERSHIP_POLL_SECONDS", "UNDECODABLE_RECORD", "Delivery"]

_log = get_logger("consumer")

#: Stop reasons (``ConsumerStats.stopped``): a flush failed after every retry (and was not
#: dead-lettered); a record ``deserialize`` failed on, under ``stop_partition`` (or whose
#: dead-lettering failed).
FLUSH_FAILED = "flush_failed"
UNDECODABLE_RECORD = "undecodable_record"
#: While the generation is lost, how often a worker with a due buffer looks again (the loss
#: normally cancels it first).
OWNERSHIP_POLL_SECONDS = 0.05


class _OwnershipGoneError(Exception):
    """The generation was lost: nothing more may be flushed for the partition."""


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}-{tp.partition}"


class Delivery:
    """The flush, retry, dead-letter and drain path of one consumer run.

    ``flush`` and ``on_revoke`` are the user's hooks; ``partitions`` is the consumer's live map
    of owned partitions and ``stopped`` its set of stopped partitions (both updated here);
    ``request_commit`` is called when a batch settled as flushed or dead-lettered;
    ``generation`` gives the current generation (for logs and dead-letter headers);
    ``dead_letter`` is None unless ``flush_failure_policy`` is ``dead_letter``;
    ``undecodable_dead_letter`` is None unless ``deserialize_failure_policy`` is
    ``dead_letter``; ``stop_reasons`` (the consumer's) gets why each partition stopped. Create
    inside the event loop. Time is the event loop's (``anyio.current_time``), as for the
    deadlines.
    """

    def __init__(
        self,
        *,
        flush: Callable[[Batch[Any]], Awaitable[None]],
        on_revoke: Callable[[Batch[Any], float], Awaitable[RevokeAction]],
        retry: RetryPolicy,
        throughput: FlushThroughput,
        tracker: CommitTracker,
        ledger: MemoryLedger,
        counters: Counters,
        partitions: Mapping[TopicPartition, PartitionState],
        stopped: set[TopicPartition],
        backpressure: Backpressure,
        limiter: anyio.CapacityLimiter,
        request_commit: Callable[[], None],
        generation: Callable[[], Generation],
        dead_letter: DeadLetterSink | None = None,
        undecodable_dead_letter: DeadLetterSink | None = None,
        stop_reasons: dict[TopicPartition, str] | None = None,
        relay: Relay | None = None,
    ) -> None:
        self._flush = flush if relay is None else partial(relay.deliver, flush=flush)
        self._relay = relay
        self._on_revoke = on_revoke
        self._retry = retry
        self._throughput = throughput
        self._tracker = tracker
        self._ledger = ledger
        self._counters = counters
        self._partitions = partitions
        self._stopped = stopped
        self._backpressure = backpressure
        self._limiter = limiter
        self._request_commit = request_commit
        self._generation = generation
        self._dead_letter = dead_letter
        self._undecodable_dead_letter = undecodable_dead_letter
        self._stop_reasons: dict[TopicPartition, str] = {} if stop_reasons is None else stop_reasons

    def _owned(self) -> bool:
        """Whether the member is in a live generation: False once it is lost, until the loss
        is delivered (which cancels the workers and drops the buffers)."""
        return self._generation().valid

    # ------------------------------------------------------------------ steady state ----
    async def partition_worker(self, state: PartitionState) -> None:
        """Cut and flush ``state``'s batches until it is closed or stopped."""
        try:
            with state.worker_scope:
                while not state.closing and not state.stopped:
                    wake = state.arm()
                    now = anyio.current_time()
                    reason = state.due(now)
                    if reason is None:
                        due_at = state.buffer.due_at()
                        with anyio.move_on_at(math.inf if due_at is None else due_at):
                            await wake.wait()
                        continue
                    relay = self._relay
                    if relay is not None and relay.must_wait(state.tp):
                        # Relay-only with no target: held, nothing cut or committed.
                        with anyio.move_on_after(TARGET_POLL_SECONDS):
                            await wake.wait()
                        continue
                    if not self._owned():
                        # Lost with the generation: cut nothing, wait for the loss.
                        with anyio.move_on_after(OWNERSHIP_POLL_SECONDS):
                            await wake.wait()
                        continue
                    async with self._limiter:
                        await self._cut_and_flush(state, reason)
        finally:
            state.worker_done.set()

    async def _cut_and_flush(self, state: PartitionState, reason: FlushReason) -> None:
        # Cut only once a flush slot is ours, so the batch holds what arrived meanwhile. The
        # batch lives in this frame alone: once settled (and released from the ledger) it must
        # be garbage, not held by a waiting worker loop outside the budget.
        if state.stopped or not state.buffer or not self._owned():
            return
        if state.buffer.head_undecodable() is not None:
            await self._handle_undecodable(state)
            return
        batch = state.buffer.take(anyio.current_time())
        self._tracker.batch_cut(state.tp, state.epoch, batch)
        state.flushing = True
        try:
            await self._flush_and_settle(state, batch, reason)
        finally:
            state.flushing = False

    async def _handle_undecodable(self, state: PartitionState) -> None:
        """Dead-letter the undecodable record at the head of ``state``'s buffer, or stop the
        partition at it; either way it is settled like a batch of its own."""
        batch, entry = state.buffer.take_undecodable(anyio.current_time())
        self._tracker.batch_cut(state.tp, state.epoch, batch)
        outcome = BatchOutcome.DISCARDED
        state.flushing = True
        try:
            sink = self._undecodable_dead_letter
            if not entry.halts and sink is not None:
                outcome = await self._dead_letter_undecodable(state, batch, entry.error, sink)
            if outcome is BatchOutcome.DISCARDED and self._owned():
                self._stop_partition(state, UNDECODABLE_RECORD, batch.first_offset)
        finally:
            state.flushing = False
            self.settle(state, batch, outcome)

    async def _dead_letter_undecodable(
        self, state: PartitionState, batch: Batch, error: BaseException, sink: DeadLetterSink
    ) -> BatchOutcome:
        where = {"partition": _name(batch.tp), "offset": batch.first_offset}

        async def send() -> None:
            if not self._owned():
                raise _OwnershipGoneError
            await sink.send(
                batch,
                error=UndecodableRecordError(error),
                attempts=1,
                member_id=self._generation().member_id,
            )

        try:
            await run_with_retries(send, self._retry, fatal=(_OwnershipGoneError,))
        except _OwnershipGoneError:
            return BatchOutcome.DISCARDED
        except RetriesExhaustedError as exc:
            _log.error("dead_letter_failed", error=repr(exc.last_error), **where)
            return BatchOutcome.DISCARDED
        self._counters.records_dead_lettered += 1
        _log.debug("record_dead_lettered", topic=sink.topic, **where)
        return BatchOutcome.DEAD_LETTERED

    async def _flush_and_settle(self, state: PartitionState, batch: Batch, reason: str) -> None:
        outcome = BatchOutcome.DISCARDED
        try:
            outcome = await self._deliver(state, batch, reason)
        finally:
            # Also on cancellation (overrun deadline, loss): the batch then counts as discarded.
            self.settle(state, batch, outcome)

    async def _deliver(self, state: PartitionState, batch: Batch, reason: str) -> BatchOutcome:
        """Flush with retries; after the last one, dead-letter or stop the partition."""
        began = anyio.current_time()

        def retrying(attempt: int, error: Exception, delay: float) -> None:
            self._counters.flush_retries += 1
            _log.warning(
                "flush_retry",
                partition=_name(batch.tp),
                attempt=attempt,
                error=repr(error),
                delay_s=round(delay, 3),
            )

        async def attempt() -> None:
            # Checked before every call, retries included: a lost member flushes nothing.
            if not self._owned():
                raise _OwnershipGoneError
            await self._flush(batch)

        try:
            await run_with_retries(
                attempt, self._retry, on_retry=retrying, fatal=(_OwnershipGoneError,)
            )
        except _OwnershipGoneError:
            _log.info(
                "flush_abandoned",
                partition=_name(batch.tp),
                first_offset=batch.first_offset,
                last_offset=batch.last_offset,
                reason="generation lost",
            )
            return BatchOutcome.DISCARDED
        except RetriesExhaustedError as exc:
            return await self._flush_failed(state, batch, exc)
        duration = anyio.current_time() - began
        self._throughput.observe(batch.size_bytes, duration)
        self._counters.batches_flushed += 1
        self._counters.records_flushed += len(batch)
        self._counters.bytes_flushed += batch.size_bytes
        _log.info(
            "batch_flushed",
            partition=_name(batch.tp),
            first_offset=batch.first_offset,
            last_offset=batch.last_offset,
            records=len(batch),
            bytes=batch.size_bytes,
            reason=reason,
            age_s=round(batch.age, 3),
            duration_s=round(duration, 3),
            generation=self._generation().generation_id,
        )
        return BatchOutcome.FLUSHED

    async def _flush_failed(
        self, state: PartitionState, batch: Batch, exc: RetriesExhaustedError
    ) -> BatchOutcome:
        self._counters.flush_failures += 1
        where = {
            "partition": _name(batch.tp),
            "first_offset": batch.first_offset,
            "last_offset": batch.last_offset,
        }
        _log.error("flush_failed", attempts=exc.attempts, error=repr(exc.last_error), **where)
        sink = self._dead_letter
        if sink is not None and self._owned():
            send = partial(
                sink.send,
                batch,
                error=exc.last_error,
                attempts=exc.attempts,
                member_id=self._generation().member_id,
            )
            try:
                await run_with_retries(send, self._retry)
            except RetriesExhaustedError as dlq_exc:
                _log.error("dead_letter_failed", error=repr(dlq_exc.last_error), **where)
            else:
                self._counters.records_dead_lettered += len(batch)
                _log.warning("batch_dead_lettered", topic=sink.topic, records=len(batch), **where)
                return BatchOutcome.DEAD_LETTERED
        # Neither flushed nor dead-lettered: never commit past it.
        if self._owned():
            self._stop_partition(state, FLUSH_FAILED, batch.first_offset)
        return BatchOutcome.DISCARDED

    def _stop_partition(self, state: PartitionState, reason: str, offset: int) -> None:
        state.stopped = True
        self._stopped.add(state.tp)
        self._stop_reasons[state.tp] = reason
        self._counters.partitions_stopped += 1
        dropped = len(state.buffer)
        if self._partitions.get(state.tp) is state:
            self._ledger.release(state.tp, footprint(state.buffer.discard(), dropped))
        self._counters.records_discarded += dropped
        self._backpressure.update_holds([state])
        _log.error(
            "partition_stopped",
            partition=_name(state.tp),
            reason=reason,
            offset=offset,
            committed=self._tracker.committed(state.tp),
            hint="the member is unhealthy while it owns the partition; nothing is committed "
            "past the offset (it resumes there on its next owner)",
        )

    def settle(self, state: PartitionState, batch: Batch, outcome: BatchOutcome) -> None:
        """``batch`` of ``state`` is over: record its outcome, free its bytes, ask to commit."""
        current = self._partitions.get(state.tp) is state
        self._tracker.batch_settled(state.tp, state.epoch, batch, outcome)
        if outcome is BatchOutcome.DISCARDED:
            self._counters.batches_discarded += 1
            self._counters.records_discarded += len(batch)
        if current:
            self._ledger.release(state.tp, footprint(batch.size_bytes, len(batch)))
            self._backpressure.update_holds([state])
        if outcome is not BatchOutcome.DISCARDED:
            self._request_commit()

    # ------------------------------------------------------------------ hand-off --------
    async def drain(self, state: PartitionState, deadline: float, reason: FlushReason) -> None:
        """Final flush of a partition being revoked (``on_revoke`` decides) or shut down (always
        flush), done by ``deadline``; a flush still running then is cancelled and discarded.
        Runs once per partition even if revoke and shutdown both ask."""
        if state.drain_done is not None:
            await state.drain_done.wait()
            return
        state.drain_done = anyio.Event()
        state.drain_scope = scope = anyio.CancelScope(deadline=deadline)
        try:
            with scope:
                await self._drain_in_scope(state, deadline, reason)
            overran = scope.cancelled_caught and anyio.current_time() >= deadline
            if overran and reason is FlushReason.REVOKE:
                self._counters.revoke_overrun += 1
                _log.warning("revoke_flush_overrun", partition=_name(state.tp))
        finally:
            state.drain_done.set()

    async def _drain_in_scope(
        self, state: PartitionState, deadline: float, reason: FlushReason
    ) -> None:
        state.close_worker()
        if not state.flushing:
            # Idle, or waiting for a flush slot behind other partitions: it holds no batch, and
            # the hand-off must not queue behind unrelated flushes.
            state.worker_scope.cancel()
        try:
            await state.worker_done.wait()
        finally:
            # The deadline passed during the worker's flush (or we were cancelled): stop it.
            if not state.worker_done.is_set():
                state.worker_scope.cancel()
        # Usually one pass; an undecodable record in the buffer splits it into runs, handled
        # in offset order.
        while not state.stopped and state.buffer and self._owned():
            if state.buffer.head_undecodable() is not None:
                await self._handle_undecodable(state)
                continue
            batch = state.buffer.take_all(anyio.current_time())
            self._tracker.batch_cut(state.tp, state.epoch, batch)
            if reason is FlushReason.REVOKE:
                action = await self._revoke_action(batch, deadline)
                if action is RevokeAction.DISCARD:
                    self.settle(state, batch, BatchOutcome.DISCARDED)
                    return
            # Not under the flush limiter: the hand-off deadline outranks the concurrency bound
            # (at most one extra flush per partition being revoked or shut down).
            await self._flush_and_settle(state, batch, reason)

    async def _revoke_action(self, batch: Batch, deadline: float) -> RevokeAction:
        action = RevokeAction.DISCARD
        try:
            action = RevokeAction(await self._on_revoke(batch, deadline))
        except Exception as exc:
            _log.error("revoke_action_failed", error=repr(exc), partition=_name(batch.tp))
        if action is RevokeAction.FLUSH:
            self._counters.revoke_flush += 1
        else:
            self._counters.revoke_discard += 1
        _log.info(
            "revoke_decision",
            partition=_name(batch.tp),
            action=action.value,
            records=len(batch),
            bytes=batch.size_bytes,
            seconds_left=round(deadline - anyio.current_time(), 3),
            flush_bytes_per_second=round(self._throughput.bytes_per_second),
        )
        return action
