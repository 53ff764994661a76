"""The :class:`BatchingConsumer` runtime: what a service subclasses.

A service writes ``flush(batch)``; the runtime joins the group through the membership engine,
fetches, buffers per partition, flushes on count/bytes/age, commits after flush, handles
revoke/loss with the batching-aware hooks, keeps the memory budget, and shuts down gracefully.

Delivery is **at least once**. The committed offset of a partition is ``last_offset + 1`` of
its newest batch such that it and every earlier batch of the same ownership were flushed (or
produced to the dead-letter topic); nothing past an unflushed record is ever committed. A
record is flushed again by the next owner when the commit covering it did not reach the broker
(crash, SIGKILL, generation lost, fenced zombie, forced shutdown), when its batch was dropped
unflushed (revoke DISCARD, revoke/shutdown deadline overrun, loss, stopped partition), or when
it was flushed behind such a dropped batch of the same ownership.

Concurrency (all inside one anyio task group created by :meth:`BatchingConsumer.run`):

- the membership engine (``engine.run``), which calls the revoke/assign/lost callbacks from its
  own manage loop, so a long revoke never blocks the fetch loop;
- the fetch loop, which moves fetched records into partition buffers and applies backpressure;
- one worker per owned partition, which cuts batches when a limit is reached (the age limit is
  its timer) and flushes them one at a time under a limiter shared by all partitions;
- the committer, which commits what the tracker says is committable after each settled batch;
- the ingress-rate sampler, the RSS watchdog and the signal handler.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import anyio
import psutil
from aiokafka.errors import KafkaError
from anyio.abc import TaskGroup, TaskStatus

from capgroup.errors import (
    CapgroupError,
    CommitFailedError,
    CommitFencedError,
    leaf_exceptions,
)
from capgroup.log import bind_member, get_logger
from capgroup.membership.engine import MembershipEngine
from capgroup.membership.model import (
    NO_GENERATION,
    AssignmentChange,
    Generation,
    MembershipSnapshot,
)
from capgroup.operations.http import serve_operations
from capgroup.runtime.batch import (
    Batch,
    BatchLimits,
    FlushReason,
    PartitionBuffer,
    Record,
    record_sizes,
)
from capgroup.runtime.deadletter import DeadLetterProducer
from capgroup.runtime.fetcher import PartitionFetcher
from capgroup.runtime.memory import (
    MemoryLedger,
    MemoryLimitSource,
    RssWatchdog,
    WatchdogLevel,
    container_memory_limit,
    effective_max_partitions,
    memory_budget_from_settings,
    shed_capacity,
)
from capgroup.runtime.offsets import BatchOutcome, CommitTracker
from capgroup.runtime.partition import PartitionState
from capgroup.runtime.policy import FlushThroughput, RevokeAction, deadline_from_settings, decide
from capgroup.runtime.retry import FailurePolicy, RetriesExhaustedError, RetryPolicy
from capgroup.runtime.retry import run_with_retries as _run_with_retries
from capgroup.runtime.stats import ConsumerStats, Counters, IngressRates
from capgroup.settings import (
    RECORD_OVERHEAD_BYTES,
    CapgroupSettings,
    SettingsError,
    load_settings,
)
from capgroup.types import CapacityAdvertisement, TopicPartition

__all__ = ["RSS_SLACK_BYTES", "BatchingConsumer", "ShutdownForcedError", "rss_overhead_bytes"]

_log = get_logger("consumer")

#: Longest wait of one fetch; also how quickly the fetch loop notices a shutdown.
FETCH_WAIT_MS = 200
#: aiokafka's default fetch_max_bytes; a smaller budget lowers it (one response's size).
MAX_FETCH_BYTES = 50 * 1024 * 1024
#: Part of the shutdown deadline kept for the final commit after the last flush.
SHUTDOWN_COMMIT_SHARE = 0.2
#: Upper bound of that reserve, seconds.
SHUTDOWN_COMMIT_RESERVE_MAX = 3.0
#: Allocator slack and per-record objects on top of the buffers and fetch responses.
RSS_SLACK_BYTES = 4 * 1024 * 1024
#: How long the engine may take to leave the group after the shutdown's last commit.
ENGINE_STOP_GRACE_SECONDS = 5.0
#: Wait before a commit that failed (not fenced) is attempted again.
COMMIT_RETRY_SECONDS = 1.0


class ShutdownForcedError(CapgroupError):
    """A second SIGTERM/SIGINT forced the consumer to exit without finishing its flushes or
    committing them; the next owner re-reads what was not committed."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"forced shutdown by a second {signal.Signals(signum).name}")


class _StartRelay:
    """Passes the engine's "first assignment applied" on to our own caller."""

    def __init__(self, outer: TaskStatus[None]) -> None:
        self._outer = outer
        self.done = False

    def started(self, value: None = None) -> None:
        self.done = True
        self._outer.started()


@dataclass(eq=False)
class _Live:
    """What exists only while :meth:`BatchingConsumer.run` is active (bound to its loop)."""

    engine: MembershipEngine
    fetcher: PartitionFetcher
    dlq: DeadLetterProducer | None
    tg: TaskGroup
    flush_limiter: anyio.CapacityLimiter
    stop_requested: anyio.Event = field(default_factory=anyio.Event)
    commit_wanted: anyio.Event = field(default_factory=anyio.Event)
    commit_lock: anyio.Lock = field(default_factory=anyio.Lock)


class _Listener:
    """The engine's assignment listener, kept off the public class so subclasses' names cannot
    collide with it."""

    def __init__(self, consumer: BatchingConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, change: AssignmentChange) -> None:
        await self._consumer._on_revoked(change)

    async def on_partitions_assigned(self, change: AssignmentChange) -> None:
        await self._consumer._on_assigned(change)

    async def on_partitions_lost(self, change: AssignmentChange) -> None:
        await self._consumer._on_lost(change)


def rss_overhead_bytes(partitions: int, max_partition_fetch_bytes: int) -> int:
    """How far a member's RSS may grow beyond its buffer budget under a sustained burst.

    The ledger counts buffered and in-flight records against the budget. On top of it come the
    fetch responses aiokafka holds, up to one per owned partition, each once as raw bytes and
    once as decoded records (part of the advertised per-partition cost, not of the ledger), and
    :data:`RSS_SLACK_BYTES`. RSS grows from the idle member's baseline (interpreter, clients,
    group session) by at most ``budget + rss_overhead_bytes(...)``; the burst test checks it.
    """
    return 2 * partitions * max_partition_fetch_bytes + RSS_SLACK_BYTES


def _footprint(payload_bytes: int, records: int) -> int:
    """Memory ``records`` buffered records of ``payload_bytes`` in all hold."""
    return payload_bytes + records * RECORD_OVERHEAD_BYTES


def _names(partitions: Iterable[TopicPartition]) -> list[str]:
    return [f"{tp.topic}-{tp.partition}" for tp in sorted(partitions)]


def _single_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only real error inside ``group`` (cancellations aside), if there is exactly one."""
    cancelled = anyio.get_cancelled_exc_class()
    errors = [e for e in leaf_exceptions(group) if not isinstance(e, cancelled)]
    return errors[0] if len(errors) == 1 else None


async def _close_quietly(close: Callable[[], Awaitable[None]]) -> None:
    try:
        with anyio.move_on_after(10):
            await close()
    except Exception as exc:  # closing must not hide the real outcome of run()
        _log.warning("client_close_failed", error=repr(exc))


class BatchingConsumer(ABC):
    """Base class of a batching Kafka consumer in a capacity-aware group.

    Subclass it and implement :meth:`flush`; optionally override :meth:`on_revoke`,
    :meth:`on_assign`, :meth:`on_lost` and :meth:`deserialize`. Run it with ``await
    consumer.run()`` (or ``await tg.start(consumer.run)``, which returns once the first
    assignment is applied) or with ``capgroup run package.module:ClassName``.

    Settings come from ``settings`` or, when it is None, from ``CAPGROUP_*`` variables;
    keyword ``overrides`` win over both and are validated, so a bad value raises
    :class:`~capgroup.SettingsError` naming the setting.

    Delivery is at least once; see the module documentation for exactly when a record is
    flushed more than once.
    """

    def __init__(self, settings: CapgroupSettings | None = None, **overrides: Any) -> None:
        """Validate settings and derive the memory budget; nothing connects until :meth:`run`."""
        if settings is None:
            settings = load_settings(**overrides)
        elif overrides:
            settings = load_settings(**{**settings.model_dump(), **overrides})
        missing = [
            f"CAPGROUP_{name.upper()} ({name}): required to run a consumer"
            for name, value in (("group_id", settings.group_id), ("topics", settings.topics))
            if not value
        ]
        if missing:
            raise SettingsError(missing)
        self._settings = settings
        budget = memory_budget_from_settings(settings)
        self._budget_bytes = budget.budget_bytes
        self._partition_cost = settings.partition_cost_bytes
        self._max_partitions = effective_max_partitions(
            settings.max_partitions, budget.budget_bytes, self._partition_cost
        )
        # The ledger counts memory, not payload: every buffered record also costs its object.
        self._ledger = MemoryLedger(budget.budget_bytes, settings.batch_footprint_bytes)
        # An explicit budget with no container limit says nothing about the process's memory:
        # comparing RSS (interpreter included) with the buffer budget would always alarm.
        has_limit = not (
            budget.source is MemoryLimitSource.EXPLICIT
            and settings.container_memory_limit_bytes is None
            and container_memory_limit() is None
        )
        self._watchdog = (
            RssWatchdog.from_settings(settings, budget.limit_bytes) if has_limit else None
        )
        self._limits = BatchLimits.from_settings(settings)
        self._retry = RetryPolicy.from_settings(settings)
        self._failure_policy = FailurePolicy(settings.flush_failure_policy)
        self._throughput = FlushThroughput.from_settings(settings)
        self._tracker = CommitTracker()
        self._rates = IngressRates()
        self._counters = Counters()
        self._partitions: dict[TopicPartition, PartitionState] = {}
        self._stopped_partitions: set[TopicPartition] = set()
        self._shed_to: int | None = None
        self._level = WatchdogLevel.NORMAL
        self._rss = 0
        self._peak_rss = 0
        self._held_all = False
        self._stopping = False
        self._started = False
        self._ran = False
        self._forced: int | None = None
        self._fatal: BaseException | None = None
        # Created in run(): aiokafka and anyio objects need the running event loop.
        self._engine: MembershipEngine | None = None
        self._live: _Live | None = None

    # ------------------------------------------------------------------ user hooks ------
    @abstractmethod
    async def flush(self, batch: Batch) -> None:
        """Persist ``batch`` (records of one partition, in offset order).

        Return only once the records are durable: the runtime commits past them afterwards.
        Raise to fail; failed flushes are retried with backoff, then handled by
        ``flush_failure_policy``. Flushes of one partition never overlap; flushes of different
        partitions run concurrently (up to ``flush_concurrency``). A flush may be cancelled
        (revoke or shutdown deadline, lost partition); the batch then counts as discarded.
        """

    async def on_revoke(self, batch: Batch, deadline: float) -> RevokeAction:
        """Decide what happens to a revoked partition's buffered ``batch``.

        ``deadline`` is an ``anyio.current_time()`` value: the flush must be done by then or it
        is cancelled and counts as DISCARD. The default flushes when the measured flush
        throughput says the flush fits before the deadline (with ``revoke_flush_safety_factor``)
        and discards otherwise.
        """
        return decide(
            batch,
            deadline,
            anyio.current_time(),
            self._throughput,
            safety_factor=self._settings.revoke_flush_safety_factor,
        )

    async def on_assign(self, partitions: frozenset[TopicPartition]) -> None:  # noqa: B027
        """Called with newly gained partitions before their records start flowing."""

    async def on_lost(self, partitions: frozenset[TopicPartition]) -> None:  # noqa: B027
        """Called after ``partitions`` were lost with the generation; their buffers are already
        discarded and nothing was committed for them."""

    def deserialize(self, record: Record) -> Record:
        """Transform a fetched record before it is buffered (default: unchanged).

        The returned record's size counts against the memory budget. An exception stops the
        consumer: a record that cannot be read must be handled here, not skipped silently.
        """
        return record

    # ------------------------------------------------------------------ observation -----
    @property
    def settings(self) -> CapgroupSettings:
        """The validated settings."""
        return self._settings

    @property
    def engine(self) -> MembershipEngine | None:
        """The membership engine while :meth:`run` is active (None before)."""
        return self._engine

    @property
    def membership(self) -> MembershipSnapshot | None:
        """The engine's snapshot (state, generation, leader, advertisement), None before run."""
        return None if self._engine is None else self._engine.snapshot()

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """Partitions this member owns now."""
        return frozenset() if self._engine is None else self._engine.assignment

    @property
    def generation(self) -> Generation:
        """The current generation (``NO_GENERATION`` when not in one)."""
        return NO_GENERATION if self._engine is None else self._engine.generation

    @property
    def healthy(self) -> bool:
        """False once a partition was stopped by a flush failure or the member failed fatally.

        Sticky: a stopped partition needs an operator (and a restart) even after it moved on.
        """
        return not self._stopped_partitions and self._fatal is None

    @property
    def budget_bytes(self) -> int:
        """The memory budget of partition buffers, bytes."""
        return self._budget_bytes

    @property
    def max_partitions(self) -> int:
        """``max_partitions`` as advertised now: the configured cap, lowered to what the budget
        holds at ``partition_cost_bytes`` per partition (a full batch with its per-record
        overhead, plus the fetch buffer), and lowered further under RSS pressure."""
        if self._shed_to is None:
            return self._max_partitions
        return min(self._max_partitions, self._shed_to)

    @property
    def stats(self) -> ConsumerStats:
        """A snapshot of the counters and gauges."""
        by_partition = {tp: self._ledger.held(tp) for tp in self._partitions}
        return ConsumerStats(
            counters=dataclasses.replace(self._counters),
            owned_partitions=len(self.assignment),
            advertised_max_partitions=self.max_partitions,
            budget_bytes=self._budget_bytes,
            buffered_bytes=self._ledger.total_bytes,
            buffered_bytes_by_partition=by_partition,
            utilisation=self._ledger.utilisation,
            rss_bytes=self._rss,
            peak_rss_bytes=self._peak_rss,
            memory_pressure="off" if self._watchdog is None else self._level.value,
            fetch_paused=self._held_all,
            stopped_partitions=frozenset(self._stopped_partitions),
            flush_bytes_per_second=self._throughput.bytes_per_second,
            ingress_rates=self._rates.rates(),
        )

    # ------------------------------------------------------------------ lifecycle -------
    def stop(self) -> None:
        """Shut down gracefully: stop fetching, flush every buffer within
        ``shutdown_timeout_ms``, commit, and leave the group (unless a static member keeps its
        place, see ``leave_group_on_shutdown``). :meth:`run` returns when done."""
        self._stopping = True
        if self._live is not None:
            self._live.stop_requested.set()
        if self._engine is not None and not self._started:
            # Still joining: nothing is buffered, so stop the engine right away.
            self._engine.stop()

    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Join the group and consume until :meth:`stop` or SIGTERM/SIGINT.

        Signals ``task_status`` once the first assignment is applied. With ``handle_signals``
        (and on the main thread), the first SIGTERM/SIGINT stops gracefully and a second one
        forces exit, raising :class:`ShutdownForcedError`. Fatal group errors (e.g.
        :class:`~capgroup.errors.FencedInstanceError`) are raised. A consumer runs once.
        """
        if self._ran:
            raise RuntimeError("a BatchingConsumer runs once; create a new instance")
        self._ran = True
        settings = self._settings
        bind_member(group_id=settings.group_id)
        # One fetch response never carries more than the partitions we may own can hold.
        fetch_bytes = max(
            settings.max_partition_fetch_bytes,
            min(self._max_partitions * settings.max_partition_fetch_bytes, MAX_FETCH_BYTES),
        )
        fetcher = PartitionFetcher(settings, fetch_max_bytes=fetch_bytes)
        engine = self._engine = MembershipEngine(
            settings, _Listener(self), self._capacity, self._rates.rates
        )
        dlq = None
        if settings.dead_letter_topic and self._failure_policy is FailurePolicy.DEAD_LETTER:
            dlq = DeadLetterProducer(settings, settings.dead_letter_topic)
        _log.info(
            "consumer_starting",
            topics=settings.topics,
            budget_bytes=self._budget_bytes,
            partition_cost_bytes=self._partition_cost,
            max_partitions=self._max_partitions,
            rss_watchdog=self._watchdog is not None,
        )
        try:
            await fetcher.start()
            if dlq is not None:
                await dlq.start()
            async with anyio.create_task_group() as tg:
                live = self._live = _Live(
                    engine, fetcher, dlq, tg, anyio.CapacityLimiter(settings.flush_concurrency)
                )
                if self._stopping:
                    live.stop_requested.set()
                if handle_signals and threading.current_thread() is threading.main_thread():
                    tg.start_soon(self._signal_loop)
                if settings.http_port:
                    # Before joining: probes must answer while a first join is held.
                    await tg.start(serve_operations, self, settings.http_host, settings.http_port)
                await tg.start(self._run_engine)
                self._started = True
                tg.start_soon(self._fetch_loop)
                tg.start_soon(self._commit_loop)
                tg.start_soon(self._rate_loop)
                tg.start_soon(self._rss_loop)
                task_status.started()
                await live.stop_requested.wait()
                await self._shutdown()
                engine.stop()
                # A JoinGroup in flight can hold the engine for the whole rebalance timeout;
                # the shutdown deadline wins (the engine still sends LeaveGroup, shielded).
                await anyio.sleep(ENGINE_STOP_GRACE_SECONDS)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            error = _single_error(group)
            if error is None:
                raise
            self._fatal = error
            raise error from None
        except Exception as exc:
            self._fatal = exc
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await _close_quietly(fetcher.stop)
                if dlq is not None:
                    await _close_quietly(dlq.stop)
        if self._forced is not None:
            raise ShutdownForcedError(self._forced)

    @property
    def _rt(self) -> _Live:
        if self._live is None:
            raise RuntimeError("the consumer is not running")
        return self._live

    async def _run_engine(self, *, task_status: TaskStatus[None]) -> None:
        relay = _StartRelay(task_status)
        try:
            await self._rt.engine.run(task_status=cast(TaskStatus[None], relay))
        finally:
            if not relay.done:
                task_status.started()
            # The engine has left (or failed): nothing else may keep running.
            self._rt.tg.cancel_scope.cancel()

    async def _signal_loop(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not self._stopping:
                    _log.info("shutdown_requested", signal=signal.Signals(signum).name)
                    self.stop()
                    continue
                _log.warning("shutdown_forced", signal=signal.Signals(signum).name)
                self._forced = signum
                self._rt.tg.cancel_scope.cancel()
                return

    async def _shutdown(self) -> None:
        """Flush every buffer and commit within ``shutdown_timeout_ms``."""
        began = anyio.current_time()
        timeout = self._settings.shutdown_timeout_ms / 1000
        deadline = began + timeout
        flush_deadline = deadline - min(
            timeout * SHUTDOWN_COMMIT_SHARE, SHUTDOWN_COMMIT_RESERVE_MAX
        )
        self._update_fetch_hold()
        states = list(self._partitions.values())
        _log.info(
            "shutdown_started",
            partitions=_names(s.tp for s in states),
            buffered_bytes=self._ledger.total_bytes,
            timeout_s=timeout,
        )
        async with anyio.create_task_group() as tg:
            for state in states:
                tg.start_soon(self._drain, state, flush_deadline, FlushReason.SHUTDOWN)
        with anyio.move_on_at(deadline) as scope:
            await self._commit_ready()
        _log.info(
            "shutdown_finished",
            duration_s=round(anyio.current_time() - began, 3),
            commit_deadline_exceeded=scope.cancelled_caught,
            uncommitted=_names(c.tp for c in self._tracker.candidates()),
        )

    # ------------------------------------------------------------------ capacity --------
    def _capacity(self) -> CapacityAdvertisement:
        settings = self._settings
        return CapacityAdvertisement(
            max_partitions=self.max_partitions,
            memory_budget_bytes=self._budget_bytes,
            partition_bytes={},
            default_partition_bytes=self._partition_cost,
            weight=settings.weight,
            rack=settings.rack,
            draining=settings.draining,
        )

    # ------------------------------------------------------------------ assignment ------
    async def _on_assigned(self, change: AssignmentChange) -> None:
        gained = change.partitions
        committed = await self._rt.engine.committed(gained)
        # Held before they are gained, so no record arrives before their buffers exist.
        self._rt.fetcher.hold(gained)
        await self._rt.fetcher.gain(committed)
        positions = await self._rt.fetcher.positions(gained)
        for tp in sorted(gained):
            position = positions[tp]
            state = PartitionState(
                tp=tp,
                epoch=self._tracker.assign(tp, position),
                buffer=PartitionBuffer(tp, self._limits, next_offset=position),
            )
            self._partitions[tp] = state
            self._rt.tg.start_soon(self._partition_worker, state)
        self._counters.rebalances += 1
        self._counters.partitions_assigned += len(gained)
        _log.info(
            "partitions_assigned",
            generation=change.generation.generation_id,
            partitions=_names(gained),
            positions={f"{tp.topic}-{tp.partition}": o for tp, o in sorted(positions.items())},
            owned=len(change.assigned),
        )
        try:
            await self.on_assign(gained)
        except Exception as exc:
            _log.error("on_assign_failed", error=repr(exc), partitions=_names(gained))
        self._rt.fetcher.unhold(gained)

    async def _on_revoked(self, change: AssignmentChange) -> None:
        began = anyio.current_time()
        deadline = deadline_from_settings(began, self._settings)
        revoked = change.partitions
        self._rt.fetcher.release(revoked)
        states = [self._partitions[tp] for tp in sorted(revoked) if tp in self._partitions]
        async with anyio.create_task_group() as tg:
            for state in states:
                tg.start_soon(self._drain, state, deadline, FlushReason.REVOKE)
        # The final commit may use the whole rebalance timeout; the margin was kept for it.
        commit_by = began + self._settings.rebalance_timeout_ms / 1000
        with anyio.move_on_at(commit_by):
            await self._commit_ready()
        uncommitted = self._forget(states)
        self._counters.rebalances += 1
        self._counters.partitions_revoked += len(revoked)
        _log.info(
            "partitions_revoked",
            generation=change.generation.generation_id,
            partitions=_names(revoked),
            uncommitted=_names(uncommitted),
            duration_s=round(anyio.current_time() - began, 3),
        )

    async def _on_lost(self, change: AssignmentChange) -> None:
        lost = change.partitions
        self._rt.fetcher.release(lost)
        states = [self._partitions[tp] for tp in sorted(lost) if tp in self._partitions]
        for state in states:
            # Finished work of a lost ownership cannot be committed: stop it at once.
            state.close_worker()
            state.worker_scope.cancel()
            if state.drain_scope is not None:
                state.drain_scope.cancel()
        for state in states:
            await state.worker_done.wait()
            if state.drain_done is not None:
                await state.drain_done.wait()
        discarded = sum(len(s.buffer) for s in states)
        self._forget(states)
        self._counters.rebalances += 1
        self._counters.partitions_lost += len(lost)
        _log.warning(
            "partitions_lost",
            reason=change.reason,
            partitions=_names(lost),
            records_discarded=discarded,
        )
        try:
            await self.on_lost(lost)
        except Exception as exc:
            _log.error("on_lost_failed", error=repr(exc), partitions=_names(lost))

    def _forget(self, states: list[PartitionState]) -> list[TopicPartition]:
        """Drop revoked or lost partitions; returns those with uncommitted progress."""
        uncommitted = []
        for state in states:
            tp = state.tp
            committable = self._tracker.committable(tp)
            committed = self._tracker.committed(tp)
            if committable is not None and committed is not None and committable > committed:
                uncommitted.append(tp)
            self._counters.records_discarded += len(state.buffer)
            state.buffer.discard()
            self._tracker.release(tp)
            self._ledger.drop(tp)
            if self._partitions.get(tp) is state:
                del self._partitions[tp]
        self._update_fetch_hold()
        return uncommitted

    # ------------------------------------------------------------------ fetching --------
    async def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                chunks = await self._rt.fetcher.fetch(timeout_ms=FETCH_WAIT_MS)
            except KafkaError as exc:
                failures += 1
                _log.warning("fetch_failed", error=repr(exc), consecutive_failures=failures)
                await anyio.sleep(min(0.1 * 2**failures, 5.0))
                continue
            failures = 0
            if chunks:
                self._absorb(chunks)

    def _absorb(self, chunks: Mapping[TopicPartition, list[Any]]) -> None:
        """Buffer fetched records (synchronously: no revoke can interleave)."""
        engine = self._rt.engine
        if not engine.generation.valid:
            # The generation is lost and the engine has yet to hand us the loss: these
            # partitions may already be someone else's, so their records are not ours to
            # process. Dropping them is safe: a regained partition restarts from its commit.
            return
        now = anyio.current_time()
        touched = []
        # The per-record call is skipped when the subclass keeps the identity deserializer.
        deserialize = (
            None if type(self).deserialize is BatchingConsumer.deserialize else self.deserialize
        )
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
            self._ledger.add(tp, _footprint(added, accepted))
            self._counters.records_in += accepted
            self._counters.bytes_in += added
            touched.append(state)
            state.poke()
        self._update_holds(touched)

    def _update_holds(self, states: Iterable[PartitionState]) -> None:
        """Pause partitions holding a whole batch, resume those that no longer do."""
        hold, unhold = [], []
        for state in states:
            tp = state.tp
            if self._partitions.get(tp) is not state:
                continue
            full = state.stopped or state.buffer.is_full or self._ledger.should_pause_partition(tp)
            if full and not state.held:
                hold.append(tp)
            elif state.held and not full:
                unhold.append(tp)
            state.held = full
        if hold:
            self._rt.fetcher.hold(hold)
            self._counters.partition_pauses += len(hold)
            _log.info("partitions_paused", partitions=_names(hold), reason="buffer_full")
        if unhold:
            self._rt.fetcher.unhold(unhold)
            _log.info("partitions_resumed", partitions=_names(unhold))
        self._update_fetch_hold()

    def _update_fetch_hold(self) -> None:
        """Pause all fetching at the budget, at the hard RSS limit and on shutdown."""
        if self._live is None:
            return
        hold = (
            self._stopping or self._level is WatchdogLevel.HARD or self._ledger.should_pause_all()
        )
        if hold == self._held_all:
            return
        self._held_all = hold
        self._rt.fetcher.hold_all(hold)
        if hold:
            self._counters.budget_pauses += 1
        reason = (
            "shutdown"
            if self._stopping
            else "rss_hard_limit"
            if self._level is WatchdogLevel.HARD
            else "budget"
        )
        _log.info(
            "fetch_paused" if hold else "fetch_resumed",
            reason=reason if hold else None,
            buffered_bytes=self._ledger.total_bytes,
            budget_bytes=self._budget_bytes,
        )

    # ------------------------------------------------------------------ flushing --------
    async def _partition_worker(self, state: PartitionState) -> None:
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
                    async with self._rt.flush_limiter:
                        await self._cut_and_flush(state, reason)
        finally:
            state.worker_done.set()

    async def _cut_and_flush(self, state: PartitionState, reason: FlushReason) -> None:
        # Cut only once a flush slot is ours, so the batch holds what arrived meanwhile. The
        # batch lives in this frame alone: once settled (and released from the ledger) it must
        # be garbage, not held by a waiting worker loop outside the budget.
        if state.stopped or not state.buffer:
            return
        batch = state.buffer.take(anyio.current_time())
        self._tracker.batch_cut(state.tp, state.epoch, batch)
        state.flushing = True
        try:
            await self._flush_and_settle(state, batch, reason)
        finally:
            state.flushing = False

    async def _flush_and_settle(self, state: PartitionState, batch: Batch, reason: str) -> None:
        outcome = BatchOutcome.DISCARDED
        try:
            outcome = await self._deliver(state, batch, reason)
        finally:
            # Also on cancellation (overrun deadline, loss): the batch then counts as discarded.
            self._settle(state, batch, outcome)

    async def _deliver(self, state: PartitionState, batch: Batch, reason: str) -> BatchOutcome:
        """Flush with retries; after the last one, dead-letter or stop the partition."""
        began = anyio.current_time()

        def retrying(attempt: int, error: Exception, delay: float) -> None:
            self._counters.flush_retries += 1
            _log.warning(
                "flush_retry",
                partition=f"{batch.tp.topic}-{batch.tp.partition}",
                attempt=attempt,
                error=repr(error),
                delay_s=round(delay, 3),
            )

        try:
            await _run_with_retries(partial(self.flush, batch), self._retry, on_retry=retrying)
        except RetriesExhaustedError as exc:
            return await self._flush_failed(state, batch, exc)
        duration = anyio.current_time() - began
        self._throughput.observe(batch.size_bytes, duration)
        self._counters.batches_flushed += 1
        self._counters.records_flushed += len(batch)
        self._counters.bytes_flushed += batch.size_bytes
        _log.info(
            "batch_flushed",
            partition=f"{batch.tp.topic}-{batch.tp.partition}",
            first_offset=batch.first_offset,
            last_offset=batch.last_offset,
            records=len(batch),
            bytes=batch.size_bytes,
            reason=reason,
            age_s=round(batch.age, 3),
            duration_s=round(duration, 3),
            generation=self.generation.generation_id,
        )
        return BatchOutcome.FLUSHED

    async def _flush_failed(
        self, state: PartitionState, batch: Batch, exc: RetriesExhaustedError
    ) -> BatchOutcome:
        self._counters.flush_failures += 1
        where = {
            "partition": f"{batch.tp.topic}-{batch.tp.partition}",
            "first_offset": batch.first_offset,
            "last_offset": batch.last_offset,
        }
        _log.error("flush_failed", attempts=exc.attempts, error=repr(exc.last_error), **where)
        if self._rt.dlq is not None:
            send = partial(
                self._rt.dlq.send,
                batch,
                error=exc.last_error,
                attempts=exc.attempts,
                member_id=self.generation.member_id,
            )
            try:
                await _run_with_retries(send, self._retry)
            except RetriesExhaustedError as dlq_exc:
                _log.error("dead_letter_failed", error=repr(dlq_exc.last_error), **where)
            else:
                self._counters.records_dead_lettered += len(batch)
                _log.warning(
                    "batch_dead_lettered", topic=self._rt.dlq.topic, records=len(batch), **where
                )
                return BatchOutcome.DEAD_LETTERED
        # Neither flushed nor dead-lettered: never commit past it.
        self._stop_partition(state)
        return BatchOutcome.DISCARDED

    def _stop_partition(self, state: PartitionState) -> None:
        state.stopped = True
        self._stopped_partitions.add(state.tp)
        dropped = len(state.buffer)
        if self._partitions.get(state.tp) is state:
            self._ledger.release(state.tp, _footprint(state.buffer.discard(), dropped))
        self._counters.records_discarded += dropped
        self._update_holds([state])
        _log.error(
            "partition_stopped",
            partition=f"{state.tp.topic}-{state.tp.partition}",
            committed=self._tracker.committed(state.tp),
            hint="the member is unhealthy; the partition resumes on its next owner",
        )

    def _settle(self, state: PartitionState, batch: Batch, outcome: BatchOutcome) -> None:
        current = self._partitions.get(state.tp) is state
        self._tracker.batch_settled(state.tp, state.epoch, batch, outcome)
        if outcome is BatchOutcome.DISCARDED:
            self._counters.batches_discarded += 1
            self._counters.records_discarded += len(batch)
        if current:
            self._ledger.release(state.tp, _footprint(batch.size_bytes, len(batch)))
            self._update_holds([state])
        if outcome is not BatchOutcome.DISCARDED and self._live is not None:
            self._live.commit_wanted.set()

    async def _drain(self, state: PartitionState, deadline: float, reason: FlushReason) -> None:
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
                _log.warning(
                    "revoke_flush_overrun", partition=f"{state.tp.topic}-{state.tp.partition}"
                )
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
        if state.stopped or not state.buffer:
            return
        batch = state.buffer.take_all(anyio.current_time())
        self._tracker.batch_cut(state.tp, state.epoch, batch)
        if reason is FlushReason.REVOKE:
            action = await self._revoke_action(batch, deadline)
            if action is RevokeAction.DISCARD:
                self._settle(state, batch, BatchOutcome.DISCARDED)
                return
        # Not under the flush limiter: the hand-off deadline outranks the concurrency bound
        # (at most one extra flush per partition being revoked or shut down).
        await self._flush_and_settle(state, batch, reason)

    async def _revoke_action(self, batch: Batch, deadline: float) -> RevokeAction:
        action = RevokeAction.DISCARD
        try:
            action = RevokeAction(await self.on_revoke(batch, deadline))
        except Exception as exc:
            _log.error("on_revoke_failed", error=repr(exc))
        if action is RevokeAction.FLUSH:
            self._counters.revoke_flush += 1
        else:
            self._counters.revoke_discard += 1
        _log.info(
            "revoke_decision",
            partition=f"{batch.tp.topic}-{batch.tp.partition}",
            action=action.value,
            records=len(batch),
            bytes=batch.size_bytes,
            seconds_left=round(deadline - anyio.current_time(), 3),
            flush_bytes_per_second=round(self._throughput.bytes_per_second),
        )
        return action

    # ------------------------------------------------------------------ commits ---------
    async def _commit_loop(self) -> None:
        while True:
            await self._rt.commit_wanted.wait()
            self._rt.commit_wanted = anyio.Event()
            if not await self._commit_ready():
                await anyio.sleep(COMMIT_RETRY_SECONDS)
                self._rt.commit_wanted.set()

    async def _commit_ready(self) -> bool:
        """Commit every committable offset; False when it should be tried again later.

        Serialised, so a later commit of a partition never lands before an earlier one.
        """
        async with self._rt.commit_lock:
            candidates = self._tracker.candidates()
            if not candidates:
                return True
            offsets = {c.tp: c.offset for c in candidates}
            generation = self._rt.engine.generation.generation_id
            try:
                await self._rt.engine.commit(offsets)
            except CommitFencedError as exc:
                # Lost, never retried: the loss callback drops these partitions.
                self._counters.commits_fenced += 1
                _log.warning("commit_fenced", reason=exc.reason, partitions=_names(offsets))
                return True
            except CommitFailedError as exc:
                self._counters.commit_failures += 1
                _log.warning("commit_failed", error=str(exc), partitions=_names(offsets))
                return False
            for c in candidates:
                self._tracker.mark_committed(c.tp, c.epoch, c.offset)
            self._counters.commits += 1
            _log.info(
                "offsets_committed",
                generation=generation,
                offsets={f"{tp.topic}-{tp.partition}": o for tp, o in sorted(offsets.items())},
            )
            return True

    # ------------------------------------------------------------------ sampling --------
    async def _rate_loop(self) -> None:
        interval = self._settings.ingress_rate_interval_ms / 1000
        while True:
            owned = self.assignment
            try:
                ends = await self._rt.fetcher.end_offsets(owned)
            except (KafkaError, OSError) as exc:
                _log.debug("ingress_sample_failed", error=repr(exc))
            else:
                self._rates.observe(anyio.current_time(), ends)
            await anyio.sleep(interval)

    async def _rss_loop(self) -> None:
        process = psutil.Process()
        interval = self._settings.rss_sample_interval_ms / 1000
        while True:
            self._rss = rss = int(process.memory_info().rss)
            self._peak_rss = max(self._peak_rss, rss)
            if self._watchdog is not None:
                level = self._watchdog.observe(rss)
                if level is not self._level:
                    self._pressure_changed(level, rss)
            await anyio.sleep(interval)

    def _pressure_changed(self, level: WatchdogLevel, rss: int) -> None:
        if self._watchdog is None:
            return
        previous, self._level = self._level, level
        if level is WatchdogLevel.NORMAL:
            self._shed_to = None
            self._rt.engine.request_rejoin("rss back below the soft limit")
        elif previous is WatchdogLevel.NORMAL:
            self._shed_to = shed_capacity(
                len(self.assignment),
                rss,
                self._watchdog.soft_limit_bytes,
                self._partition_cost,
                self._max_partitions,
            )
            self._rt.engine.request_rejoin("rss above the soft limit: shedding partitions")
        if level is WatchdogLevel.HARD or (
            level is WatchdogLevel.SOFT and previous is WatchdogLevel.NORMAL
        ):
            self._counters.memory_pressure_events += 1
        force = FlushReason.MEMORY_PRESSURE if level is WatchdogLevel.HARD else None
        for state in self._partitions.values():
            state.force = force
            state.poke()
        self._update_fetch_hold()
        _log.warning(
            "memory_pressure",
            level=level.value,
            previous=previous.value,
            rss_bytes=rss,
            soft_limit_bytes=self._watchdog.soft_limit_bytes,
            hard_limit_bytes=self._watchdog.hard_limit_bytes,
            advertised_max_partitions=self.max_partitions,
        )
