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

- the membership engine (``engine.run``), which calls the revoke/assign/lost callbacks
  (:mod:`capgroup.runtime.ownership`, and through them the service's partition hooks) from its
  own manage loop, one at a time, so a long revoke never blocks the fetch loop;
- the fetch loop (:mod:`capgroup.runtime.ingest`), which moves fetched records into partition
  buffers and applies backpressure (:mod:`capgroup.runtime.backpressure`);
- one worker per owned partition, which cuts batches when a limit is reached (the age limit is
  its timer) and flushes them one at a time under a limiter shared by all partitions; flush
  retries, dead-lettering and the revoke/shutdown drain (:mod:`capgroup.runtime.delivery`);
- the committer, which commits what the tracker says is committable after each settled batch
  (:mod:`capgroup.runtime.committer`);
- the ingress-rate sampler, the RSS watchdog (:mod:`capgroup.runtime.sampling`), the lag and
  retention sampler (:mod:`capgroup.runtime.lag`) and the signal handler.

This module assembles them: it owns the shared state (buffers, ledger, tracker, counters),
builds the collaborators, starts the tasks in order, and keeps the user-facing hooks. The Kafka
clients come from a :class:`~capgroup.runtime.clients.KafkaClients` factory.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, cast

import anyio
from anyio.abc import TaskGroup, TaskStatus

from capgroup.errors import CapgroupError, leaf_exceptions
from capgroup.log import bind_member, configure_logging_for_service, get_logger
from capgroup.membership.engine import MembershipEngine
from capgroup.membership.model import (
    NO_GENERATION,
    AssignmentChange,
    Generation,
    MembershipSnapshot,
)
from capgroup.runtime.backpressure import Backpressure
from capgroup.runtime.batch import Batch, BatchLimits, FlushReason, Record, V
from capgroup.runtime.clients import AiokafkaClients, Fetcher, KafkaClients
from capgroup.runtime.committer import Committer
from capgroup.runtime.delivery import FLUSH_FAILED, Delivery
from capgroup.runtime.ingest import Ingest, UndecodablePolicy
from capgroup.runtime.lag import LagSampler
from capgroup.runtime.memory import (
    MemoryLedger,
    MemoryLimitSource,
    RssWatchdog,
    container_memory_limit,
    effective_max_partitions,
    memory_budget_from_settings,
)
from capgroup.runtime.offsets import CommitTracker
from capgroup.runtime.ownership import Ownership
from capgroup.runtime.partition import PartitionState, partition_names
from capgroup.runtime.policy import FlushThroughput, RevokeAction, decide
from capgroup.runtime.rangejobs.runtime import RangeJobsRuntime, reserved_bytes
from capgroup.runtime.relay import Relay, Relayed, RelayProducer, RelaySink, relay_limits
from capgroup.runtime.retry import FailurePolicy, RetryPolicy
from capgroup.runtime.sampling import MemoryPressure, sample_ingress_rates
from capgroup.runtime.stats import ConsumerStats, Counters, IngressRates, StoppedPartition
from capgroup.settings import CapgroupSettings, SettingsError, load_settings
from capgroup.types import CapacityAdvertisement, TopicPartition

__all__ = ["RSS_SLACK_BYTES", "BatchingConsumer", "ShutdownForcedError", "rss_overhead_bytes"]

_log = get_logger("consumer")

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
#: Hooks renamed in favour of the rebalance-listener names: old name -> new name.
RENAMED_HOOKS = {
    "on_revoke": "revoke_action",
    "on_assign": "on_partitions_assigned",
    "on_lost": "on_partitions_lost",
}


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
    fetcher: Fetcher
    tg: TaskGroup
    committer: Committer
    delivery: Delivery
    ownership: Ownership
    stop_requested: anyio.Event = field(default_factory=anyio.Event)


class _Listener:
    """The engine's assignment listener, kept off the public class so subclasses' names cannot
    collide with it."""

    def __init__(self, consumer: BatchingConsumer[Any]) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, change: AssignmentChange) -> None:
        jobs = self._consumer._range_jobs
        if jobs is not None:
            # Range jobs commit their finished work first, under the generation that owns it.
            await jobs.revoked(change.partitions)
        await self._consumer._rt.ownership.on_partitions_revoked(change)
        self._consumer._assignment_changed()

    async def on_partitions_assigned(self, change: AssignmentChange) -> None:
        await self._consumer._rt.ownership.on_partitions_assigned(change)
        self._consumer._assignment_changed()

    async def on_partitions_lost(self, change: AssignmentChange) -> None:
        jobs = self._consumer._range_jobs
        if jobs is not None:
            jobs.lost(change.partitions)
        await self._consumer._rt.ownership.on_partitions_lost(change)
        self._consumer._assignment_changed()


def _fetch_max_records(settings: CapgroupSettings, engine: MembershipEngine) -> int:
    """Records the next fetch may hand over (see the ``Ingest`` wiring in ``run``)."""
    if engine.relay_only:
        return min(settings.fetch_max_records, settings.batch_max_records)
    return settings.fetch_max_records


def rss_overhead_bytes(partitions: int, max_partition_fetch_bytes: int) -> int:
    """How far a member's RSS may grow beyond its buffer budget under a sustained burst.

    The ledger counts buffered and in-flight records against the budget. On top of it come the
    fetch responses aiokafka holds, up to one per owned partition, each once as raw bytes and
    once as decoded records (part of the advertised per-partition cost, not of the ledger), and
    :data:`RSS_SLACK_BYTES`. RSS grows from the idle member's baseline (interpreter, clients,
    group session) by at most ``budget + rss_overhead_bytes(...)``; the burst test checks it.
    """
    return 2 * partitions * max_partition_fetch_bytes + RSS_SLACK_BYTES


def _single_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only real error inside ``group`` (cancellations aside), if there is exactly one."""
    cancelled = anyio.get_cancelled_exc_class()
    errors = [e for e in leaf_exceptions(group) if not isinstance(e, cancelled)]
    return errors[0] if len(errors) == 1 else None


async def _others_own(engine: MembershipEngine) -> frozenset[TopicPartition] | None:
    """The batch partitions the group's other live members own now (the relay's targets are
    among them); None when the group view cannot be read."""
    view = await engine.group_batch_partitions()
    if view is None:
        return None
    me = engine.generation.member_id
    return frozenset().union(*(parts for member, parts in view.items() if member != me))


async def _close_quietly(close: Callable[[], Awaitable[None]]) -> None:
    try:
        with anyio.move_on_after(10):
            await close()
    except Exception as exc:  # closing must not hide the real outcome of run()
        _log.warning("client_close_failed", error=repr(exc))


class BatchingConsumer(ABC, Generic[V]):
    """Base class of a batching Kafka consumer in a capacity-aware group.

    Subclass it and implement :meth:`flush`; optionally override the lifecycle hooks, all
    async: :meth:`on_start` and :meth:`on_stop` (once per run), :meth:`on_partitions_assigned`,
    :meth:`on_partitions_revoked` and :meth:`on_partitions_lost` (Kafka's rebalance listener),
    :meth:`revoke_action` (flush or discard a revoked buffer), and :meth:`deserialize`. In one
    partition's life::

        on_start                                  (once, before the first join)
          on_partitions_assigned -> flush* -> revoke_action -> flush -> commit
                                 -> on_partitions_revoked     (revoked, or still owned at stop)
                                 -> on_partitions_lost        (lost: no flush, no commit)
        on_stop                                   (once, after the last commit)

    Hooks never run concurrently with each other (``flush`` does run beside them). Run it with
    ``await consumer.run()`` (or ``await tg.start(consumer.run)``, which returns once the first
    assignment is applied) or with ``capgroup run package.module:ClassName``.

    Settings come from ``settings`` or, when it is None, from ``CAPGROUP_*`` variables;
    keyword ``overrides`` win over both and are validated, so a bad value raises
    :class:`~capgroup.SettingsError` naming the setting.

    Delivery is at least once; see the module documentation for exactly when a record is
    flushed more than once.

    The old hook names ``on_revoke``, ``on_assign`` and ``on_lost`` still work in a subclass,
    with a :class:`DeprecationWarning` when the class is defined.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for old, new in RENAMED_HOOKS.items():
            if old in cls.__dict__:
                warnings.warn(
                    f"{cls.__qualname__}.{old} is deprecated: rename it to {new} "
                    "(BatchingConsumer calls the old name only when the new one is not "
                    "overridden)",
                    DeprecationWarning,
                    stacklevel=2,
                )

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
        # The range jobs this member may hold at once are set aside from what partitions get.
        self._jobs_reserved = reserved_bytes(settings)
        self._max_partitions = effective_max_partitions(
            settings.max_partitions,
            max(budget.budget_bytes - self._jobs_reserved, 0),
            self._partition_cost,
            settings.fetch_reserve_bytes if settings.relay_enabled else 0,
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
        watchdog = RssWatchdog.from_settings(settings, budget.limit_bytes) if has_limit else None
        self._limits = BatchLimits.from_settings(settings)
        self._retry = RetryPolicy.from_settings(settings)
        self._failure_policy = FailurePolicy(settings.flush_failure_policy)
        self._throughput = FlushThroughput.from_settings(settings)
        self._tracker = CommitTracker()
        self._rates = IngressRates()
        #: Lag and retention sampler; created in run() (it needs the fetcher).
        self._lag: LagSampler | None = None
        self._counters = Counters()
        self._partitions: dict[TopicPartition, PartitionState] = {}
        self._stopped_partitions: set[TopicPartition] = set()
        #: Why each stopped partition stopped (absent: a flush failure).
        self._stop_reasons: dict[TopicPartition, str] = {}
        self._backpressure = Backpressure(self._ledger, self._counters, self._partitions)
        self._pressure = MemoryPressure(
            watchdog,
            max_partitions=self._max_partitions,
            partition_cost=self._partition_cost,
            counters=self._counters,
            partitions=self._partitions,
            backpressure=self._backpressure,
            owned=lambda: len(self.assignment),
            rejoin=self._request_rejoin,
        )
        self._stopping = False
        self._started = False
        self._ran = False
        self._forced: int | None = None
        self._fatal: BaseException | None = None
        # Created in run(): aiokafka and anyio objects need the running event loop.
        self._engine: MembershipEngine | None = None
        self._live: _Live | None = None
        #: The relay (``relay_enabled``); created in run().
        self._relay: Relay | None = None
        #: Range jobs (``range_jobs_enabled``); created in run().
        self._range_jobs: RangeJobsRuntime | None = None

    # ------------------------------------------------------------------ user hooks ------
    @abstractmethod
    async def flush(self, batch: Batch[V]) -> None:
        """Persist ``batch`` (records of one partition, in offset order).

        Return only once the records are durable: the runtime commits past them afterwards.
        Raise to fail; failed flushes are retried with backoff, then handled by
        ``flush_failure_policy``. Flushes of one partition never overlap; flushes of different
        partitions run concurrently (up to ``flush_concurrency``). A flush may be cancelled
        (revoke or shutdown deadline, lost partition); the batch then counts as discarded.
        """

    async def revoke_action(self, batch: Batch[V], deadline: float) -> RevokeAction:
        """Decide what happens to a revoked partition's buffered ``batch``: ``FLUSH`` it (then
        it is committed before the partition is given up) or ``DISCARD`` it (the next owner
        reads it again). Called only when the buffer holds records.

        ``deadline`` is a value of ``anyio.current_time()``, the event loop's monotonic clock
        (not ``time.time()``): the flush must be done by then or it is cancelled and counts as
        DISCARD. It is the revoke's start plus ``rebalance_timeout_ms`` minus
        ``revoke_safety_margin_ms``. The default flushes when the measured flush throughput
        says the flush fits before the deadline (with ``revoke_flush_safety_factor``) and
        discards otherwise. Raising counts as DISCARD.
        """
        legacy = type(self).on_revoke
        if legacy is not BatchingConsumer.on_revoke:
            return await legacy(self, batch, deadline)
        return self._default_revoke_action(batch, deadline)

    def _default_revoke_action(self, batch: Batch[Any], deadline: float) -> RevokeAction:
        return decide(
            batch,
            deadline,
            anyio.current_time(),
            self._throughput,
            safety_factor=self._settings.revoke_flush_safety_factor,
        )

    async def on_start(self) -> None:
        """Called once, in :meth:`run` before the member first joins the group: open what the
        whole process needs (a database pool, a client). If it raises, :meth:`run` raises it
        and :meth:`on_stop` is not called."""

    async def on_stop(self) -> None:
        """Called once when :meth:`run` ends, after the last commit and after
        :meth:`on_partitions_revoked` (or, on a fatal error, :meth:`on_partitions_lost`) for
        every partition still owned: close what :meth:`on_start` opened. Runs on every exit
        once :meth:`on_start` returned (graceful stop, SIGTERM, fatal group error, forced
        shutdown), bounded by ``shutdown_timeout_ms``; an exception is logged
        (``on_stop_failed``), not raised."""

    async def on_partitions_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        """Called with newly gained ``partitions`` before any of their records flows (they are
        held until it returns), e.g. to open a file or connection per partition.

        If it raises, those partitions are **stopped**: nothing of them is flushed or
        committed, ``healthy`` is False and readiness fails naming them, for as long as this
        member owns them (until a rebalance moves them, or a restart). They still get
        :meth:`on_partitions_revoked` or :meth:`on_partitions_lost` later, so close whatever
        this call did open.
        """
        legacy = type(self).on_assign
        if legacy is not BatchingConsumer.on_assign:
            await legacy(self, partitions)

    async def on_partitions_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        """Called for every partition given up, whether or not its buffer held records: after
        its final flush (as :meth:`revoke_action` decided) and the commit of what was flushed,
        once the runtime has dropped it (no ``flush`` of it runs or follows). Also at shutdown
        (SIGTERM, :meth:`stop`) for the partitions still owned, after the final commit. Each
        partition :meth:`on_partitions_assigned` was called for gets exactly one
        :meth:`on_partitions_revoked` or :meth:`on_partitions_lost`. An exception is logged
        (``on_partitions_revoked_failed``)."""

    async def on_partitions_lost(self, partitions: frozenset[TopicPartition]) -> None:
        """Called after ``partitions`` were lost with the generation (session timeout, fenced,
        or a fatal error of the member): their buffers are already discarded, any flush of them
        was cancelled, and nothing was committed for them; another member may own them now.
        An exception is logged (``on_partitions_lost_failed``)."""
        legacy = type(self).on_lost
        if legacy is not BatchingConsumer.on_lost:
            await legacy(self, partitions)

    async def on_records_relayed(self, relayed: Sequence[Relayed]) -> None:
        """Called (``relay_enabled`` only) once the producer acknowledged ``relayed`` records,
        before their offsets are committed; for observability. An exception fails the batch,
        which is retried (its records are then relayed again: duplicates, never a loss)."""

    # Deprecated names, kept so that subclasses written for them keep working.
    async def on_revoke(self, batch: Batch[V], deadline: float) -> RevokeAction:
        """Deprecated: override :meth:`revoke_action`."""
        return self._default_revoke_action(batch, deadline)

    async def on_assign(self, partitions: frozenset[TopicPartition]) -> None:
        """Deprecated: override :meth:`on_partitions_assigned`."""

    async def on_lost(self, partitions: frozenset[TopicPartition]) -> None:
        """Deprecated: override :meth:`on_partitions_lost`."""

    def deserialize(self, record: Record) -> Record[V] | None:
        """Turn a fetched record into what ``flush`` gets (default: unchanged, raw bytes).

        To hand ``flush`` decoded values, declare the value type and return the record with
        its decoded value: ``class Sink(BatchingConsumer[Event])`` with ``deserialize``
        returning ``with_value(record, Event.parse(record.value))``; ``flush`` then gets
        ``Batch[Event]`` (a service with a value type other than bytes must override this).
        Return None to skip the record on purpose (a filter): it is counted in
        ``records_skipped`` and its offset is committed once the records before it are.

        If it raises, the record is contained: ``deserialize_failure_policy`` stops the
        partition at it (default), produces the raw record to the dead-letter topic, or skips
        it, with one ``record_undecodable`` log event; the member never crashes on it.

        The memory budget counts each record's raw payload as fetched (key + value +
        headers, plus a fixed per-record overhead), not the decoded value: keep decoded
        values no larger than the raw payload, or lower ``memory_budget_fraction``.
        """
        return cast("Record[V]", record)

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
        """False while this member owns a stopped partition, and after a fatal error.

        Not sticky for stopped partitions: once a stopped partition moved to another member
        (a rebalance revoked it, or it was lost), this member is healthy again; the
        ``partitions_stopped`` counter (``capgroup_partitions_stopped_total``) keeps the
        history. A fatal error is sticky.
        """
        return not self._stopped_view() and self._fatal is None

    @property
    def budget_bytes(self) -> int:
        """The memory budget of partition buffers, bytes."""
        return self._budget_bytes

    @property
    def max_partitions(self) -> int:
        """``max_partitions`` as advertised now: the configured cap, lowered to what the budget
        holds at ``partition_cost_bytes`` per partition (a full batch with its per-record
        overhead, plus the fetch buffer), and lowered further under RSS pressure."""
        return self._pressure.max_partitions

    @property
    def stats(self) -> ConsumerStats:
        """A snapshot of the counters and gauges."""
        by_partition = {tp: self._ledger.held(tp) for tp in self._partitions}
        stopped = self._stopped_view()
        return ConsumerStats(
            counters=dataclasses.replace(self._counters),
            owned_partitions=len(self.assignment),
            advertised_max_partitions=self.max_partitions,
            budget_bytes=self._budget_bytes,
            buffered_bytes=self._ledger.total_bytes,
            buffered_bytes_by_partition=by_partition,
            utilisation=self._ledger.utilisation,
            rss_bytes=self._pressure.rss,
            peak_rss_bytes=self._pressure.peak_rss,
            memory_pressure=self._pressure.pressure,
            fetch_paused=self._backpressure.held_all,
            stopped_partitions=frozenset(stopped),
            flush_bytes_per_second=self._throughput.bytes_per_second,
            ingress_rates=self._rates.rates(),
            stopped=stopped,
            lag={} if self._lag is None else dict(self._lag.figures),
            relay_hops={} if self._relay is None else dict(self._relay.hops),
            relay_lag_records=0 if self._relay is None else self._relay.relay_lag_records(),
            range_jobs_running=0 if self._range_jobs is None else self._range_jobs.running,
            range_jobs={} if self._range_jobs is None else self._range_jobs.progress(),
            committed_offsets={
                tp: offset
                for tp in self._partitions
                if (offset := self._tracker.committed(tp)) is not None
            },
        )

    def _stopped_view(self) -> dict[TopicPartition, StoppedPartition]:
        """Owned partitions that are stopped now, with why and where they stopped."""
        view = {}
        for tp, state in self._partitions.items():
            if state.stopped:
                reason = self._stop_reasons.get(tp, FLUSH_FAILED)
                view[tp] = StoppedPartition(tp, reason, self._tracker.committable(tp))
        return view

    # ------------------------------------------------------------------ lifecycle -------
    def stop(self) -> None:
        """Shut down gracefully: stop fetching, flush every buffer within
        ``shutdown_timeout_ms``, commit, and leave the group (unless a static member keeps its
        place, see ``leave_group_on_shutdown``). :meth:`run` returns when done."""
        self._stopping = self._backpressure.shutting_down = True
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
        clients: KafkaClients | None = None,
    ) -> None:
        """Join the group and consume until :meth:`stop` or SIGTERM/SIGINT.

        Calls :meth:`on_start` first and :meth:`on_stop` last (see their docstrings).
        Signals ``task_status`` once the first assignment is applied. With ``handle_signals``
        (and on the main thread), the first SIGTERM/SIGINT stops gracefully and a second one
        forces exit, raising :class:`ShutdownForcedError`. Fatal group errors (e.g.
        :class:`~capgroup.errors.FencedInstanceError`) are raised. A consumer runs once.
        ``clients`` builds the Kafka clients (default: :class:`AiokafkaClients`). The
        operations HTTP server is not started here: see
        :func:`capgroup.operations.serve.run_with_operations`.
        """
        if self._ran:
            raise RuntimeError("a BatchingConsumer runs once; create a new instance")
        self._ran = True
        settings = self._settings
        configure_logging_for_service(settings.log_level, settings.log_format)
        bind_member(group_id=settings.group_id)
        # One fetch response never carries more than the partitions we may own can hold.
        fetch_bytes = max(
            settings.max_partition_fetch_bytes,
            min(self._max_partitions * settings.max_partition_fetch_bytes, MAX_FETCH_BYTES),
        )
        clients = AiokafkaClients(settings) if clients is None else clients
        fetcher = clients.fetcher(fetch_bytes)
        engine = self._engine = MembershipEngine(
            settings,
            _Listener(self),
            self._capacity,
            self._rates.rates,
            transport=clients.coordinator_transport(),
        )
        dlq = None
        flush_dlq = self._failure_policy is FailurePolicy.DEAD_LETTER
        undecodable = UndecodablePolicy(settings.deserialize_failure_policy)
        undecodable_dlq = undecodable is UndecodablePolicy.DEAD_LETTER
        if settings.dead_letter_topic and (flush_dlq or undecodable_dlq):
            # Its start checks that the topic exists (DeadLetterTopicError, a SettingsError).
            dlq = clients.dead_letter(settings.dead_letter_topic)
        relay_sink: RelaySink | None = None
        if settings.relay_enabled:
            make_sink = getattr(clients, "relay", None)
            relay_sink = RelayProducer(settings) if make_sink is None else make_sink()
        range_jobs = None
        if settings.range_jobs_enabled:
            range_jobs = self._range_jobs = RangeJobsRuntime(
                settings,
                flush=self.flush,
                deserialize=None
                if type(self).deserialize is BatchingConsumer.deserialize
                else self.deserialize,
                retry=self._retry,
                ledger=self._ledger,
                backpressure=self._backpressure,
                counters=self._counters,
                undecodable=undecodable,
                dead_letter=dlq if flush_dlq else None,
                undecodable_dead_letter=dlq if undecodable_dlq else None,
            )
        _log.info(
            "consumer_starting",
            topics=settings.topics,
            budget_bytes=self._budget_bytes,
            partition_cost_bytes=self._partition_cost,
            max_partitions=self._max_partitions,
            rss_watchdog=self._pressure.watchdog is not None,
        )
        started_hook = False
        try:
            await fetcher.start()
            if dlq is not None:
                await dlq.start()
            if relay_sink is not None:
                await relay_sink.start()
            if range_jobs is not None:
                await range_jobs.start()  # creates the jobs and completions topics if needed
            await self.on_start()
            started_hook = True
            async with anyio.create_task_group() as tg:
                committer = Committer(
                    self._tracker,
                    self._counters,
                    engine.commit,
                    lambda: engine.generation.generation_id,
                )
                relay = None
                if relay_sink is not None:
                    relay = self._relay = Relay(
                        settings=settings,
                        sink=relay_sink,
                        owned=lambda: engine.assignment,
                        relay_only=lambda: engine.relay_only,
                        end_offsets=fetcher.end_offsets,
                        group_committed=engine.committed,
                        others_own=partial(_others_own, engine),
                        lag_figures=lambda: {} if self._lag is None else self._lag.figures,
                        counters=self._counters,
                        on_relayed=None
                        if type(self).on_records_relayed is BatchingConsumer.on_records_relayed
                        else self.on_records_relayed,
                    )
                delivery = Delivery(
                    flush=self.flush,
                    on_revoke=self.revoke_action,
                    retry=self._retry,
                    throughput=self._throughput,
                    tracker=self._tracker,
                    ledger=self._ledger,
                    counters=self._counters,
                    partitions=self._partitions,
                    stopped=self._stopped_partitions,
                    backpressure=self._backpressure,
                    limiter=anyio.CapacityLimiter(settings.flush_concurrency),
                    request_commit=committer.request,
                    generation=lambda: engine.generation,
                    dead_letter=dlq if flush_dlq else None,
                    undecodable_dead_letter=dlq if undecodable_dlq else None,
                    stop_reasons=self._stop_reasons,
                    relay=relay,
                )
                ownership = Ownership(
                    settings=settings,
                    committed=engine.committed,
                    fetcher=fetcher,
                    limits=self._limits,
                    tracker=self._tracker,
                    ledger=self._ledger,
                    counters=self._counters,
                    partitions=self._partitions,
                    backpressure=self._backpressure,
                    delivery=delivery,
                    committer=committer,
                    task_group=tg,
                    on_assigned=self.on_partitions_assigned,
                    on_revoked=self.on_partitions_revoked,
                    on_lost=self.on_partitions_lost,
                    stopped=self._stopped_partitions,
                    stop_reasons=self._stop_reasons,
                    limits_for=None if relay is None else self._limits_for,
                    divert=None if range_jobs is None else range_jobs.divert,
                )
                ingest = Ingest(
                    fetcher=fetcher,
                    generation_valid=lambda: engine.generation.valid,
                    partitions=self._partitions,
                    ledger=self._ledger,
                    counters=self._counters,
                    backpressure=self._backpressure,
                    # The per-record call is skipped when the subclass keeps the identity.
                    deserialize=None
                    if type(self).deserialize is BatchingConsumer.deserialize
                    else self.deserialize,
                    stopping=lambda: self._stopping,
                    undecodable=undecodable,
                    tracker=self._tracker,
                    request_commit=committer.request,
                    # A partition's cost reserves one fetch on top of a full batch: payload
                    # plus the overhead of at most fetch_max_records records, so small records
                    # cannot overrun it (the rest stay in the client's fetch buffer). A
                    # relay-only partition costs that reserve alone: while one is owned, a
                    # fetch also hands over at most a batch's worth.
                    max_records=partial(_fetch_max_records, settings, engine),
                )
                live = self._live = _Live(engine, fetcher, tg, committer, delivery, ownership)
                if range_jobs is not None:
                    range_jobs.attach(
                        commit=engine.commit,
                        committed=engine.committed_with_metadata,
                        member=lambda: (
                            engine.generation.member_id,
                            engine.generation.generation_id,
                        ),
                        owned=lambda: engine.assignment,
                        lag_figures=lambda: {} if self._lag is None else self._lag.figures,
                        end_offsets=fetcher.end_offsets,
                        hand_off=ownership.hand_off,
                        take_back=ownership.take_back,
                    )
                self._backpressure.attach(fetcher)
                if self._stopping:
                    live.stop_requested.set()
                if handle_signals and threading.current_thread() is threading.main_thread():
                    tg.start_soon(self._signal_loop)
                await tg.start(self._run_engine)
                self._started = True
                tg.start_soon(ingest.run)
                tg.start_soon(committer.run)
                tg.start_soon(
                    sample_ingress_rates,
                    fetcher,
                    lambda: self.assignment,
                    self._rates,
                    settings.ingress_rate_interval_ms / 1000,
                )
                self._lag = LagSampler(
                    fetcher,
                    owned=lambda: self.assignment,
                    owned_committed=self._tracker.committed,
                    unassigned=lambda: engine.unassigned_partitions,
                    group_committed=engine.committed,
                    retention=fetcher.topic_retention_ms,
                    counters=self._counters,
                    reset=settings.auto_offset_reset,
                )
                tg.start_soon(self._lag.run, settings.lag_sample_interval_ms / 1000)
                if relay is not None:
                    tg.start_soon(relay.run, settings.lag_sample_interval_ms / 1000)
                if range_jobs is not None:
                    tg.start_soon(range_jobs.run)
                tg.start_soon(self._pressure.run, settings.rss_sample_interval_ms / 1000)
                task_status.started()
                await live.stop_requested.wait()
                await self._shutdown()
                # After the final commit: the service lets go of what it still owns.
                await ownership.close()
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
                if started_hook:
                    await self._finish_hooks()
                await _close_quietly(fetcher.stop)
                if dlq is not None:
                    await _close_quietly(dlq.stop)
                if relay_sink is not None:
                    await _close_quietly(relay_sink.stop)
                if range_jobs is not None:
                    await _close_quietly(range_jobs.stop)
        if self._forced is not None:
            raise ShutdownForcedError(self._forced)

    async def _finish_hooks(self) -> None:
        """Last hooks of a run, on every exit once ``on_start`` returned: partitions the
        service still holds (a fatal or forced exit skipped the shutdown) are lost, then
        ``on_stop``."""
        with anyio.move_on_after(self._settings.shutdown_timeout_ms / 1000):
            if self._live is not None:
                await self._live.ownership.abandon()
            try:
                await self.on_stop()
            except Exception as exc:
                _log.error("on_stop_failed", error=repr(exc))

    def _assignment_changed(self) -> None:
        if self._relay is not None:
            self._relay.assignment_changed()

    def _limits_for(self, tp: TopicPartition) -> BatchLimits:
        """Batch limits of a new ownership of ``tp``: a relay-only partition relays at once,
        and stops fetching while it holds anything (it costs one fetch buffer, not a batch)."""
        engine = self._engine
        relay_only = frozenset() if engine is None else engine.relay_only
        if tp not in relay_only:
            self._ledger.set_partition_limit(tp, None)
            return self._limits
        limits = relay_limits(self._limits, self._settings)
        # Stop fetching it as soon as it holds anything: its fetch buffer is all it may use.
        self._ledger.set_partition_limit(tp, 1)
        return limits

    def _request_rejoin(self, reason: str) -> None:
        if self._engine is not None:
            self._engine.request_rejoin(reason)

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
        self._backpressure.update_fetch_hold()
        states = list(self._partitions.values())
        _log.info(
            "shutdown_started",
            partitions=partition_names(s.tp for s in states),
            buffered_bytes=self._ledger.total_bytes,
            timeout_s=timeout,
        )
        async with anyio.create_task_group() as tg:
            for state in states:
                tg.start_soon(self._rt.delivery.drain, state, flush_deadline, FlushReason.SHUTDOWN)
            if self._range_jobs is not None:
                # Scheduled partitions commit their finished jobs (the rest is redone).
                tg.start_soon(self._range_jobs.shutdown)
        with anyio.move_on_at(deadline) as scope:
            await self._rt.committer.commit_ready()
        _log.info(
            "shutdown_finished",
            duration_s=round(anyio.current_time() - began, 3),
            commit_deadline_exceeded=scope.cancelled_caught,
            uncommitted=partition_names(c.tp for c in self._tracker.candidates()),
        )

    # ------------------------------------------------------------------ capacity --------
    def _capacity(self) -> CapacityAdvertisement:
        settings = self._settings
        return CapacityAdvertisement(
            max_partitions=self.max_partitions,
            memory_budget_bytes=max(self._budget_bytes - self._jobs_reserved, 0),
            partition_bytes={},
            default_partition_bytes=self._partition_cost,
            weight=settings.weight,
            rack=settings.rack,
            draining=settings.draining,
            relay_partition_bytes=settings.fetch_reserve_bytes if settings.relay_enabled else 0,
        )
