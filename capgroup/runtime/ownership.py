"""Ownership hand-offs: what the runtime does when the engine assigns, revokes or loses
partitions (the engine's assignment listener, behind the consumer), and the service's partition
lifecycle hooks around them.

- **Assigned**: the partitions are held in the fetcher, gained at their committed offsets, and
  get a fresh :class:`~capgroup.runtime.partition.PartitionState` (a new commit-tracker epoch,
  an empty buffer) and a worker; ``on_partitions_assigned`` runs before their records flow. If
  it raises, the partitions are **stopped** (held, nothing flushed or committed, listed by
  readiness and the stopped-partition metrics) for as long as the member owns them.
- **Revoked**: fetching stops, every buffer is drained (``revoke_action`` decides, by the
  revoke deadline), what was flushed is committed within the rebalance timeout, the partitions
  are forgotten, then ``on_partitions_revoked`` runs for every one of them, buffered or not.
- **Lost**: nothing may be committed any more, so workers and drains are cancelled at once and
  the buffers dropped; ``on_partitions_lost`` runs afterwards.
- **Shutdown** (:meth:`Ownership.close`): after the final commit, ``on_partitions_revoked``
  runs for the partitions still owned; on a fatal exit (:meth:`Ownership.abandon`),
  ``on_partitions_lost``.

Every partition ``on_partitions_assigned`` was called for (whether it returned or raised) gets
exactly one ``on_partitions_revoked`` or ``on_partitions_lost`` call. Hooks never overlap: the
engine calls the listener from its manage loop, and shutdown takes the same lock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

import anyio
from anyio.abc import TaskGroup

from capgroup.log import get_logger
from capgroup.membership.model import AssignmentChange
from capgroup.runtime.backpressure import Backpressure
from capgroup.runtime.batch import BatchLimits, FlushReason, PartitionBuffer
from capgroup.runtime.clients import Fetcher
from capgroup.runtime.committer import Committer
from capgroup.runtime.delivery import Delivery
from capgroup.runtime.memory import MemoryLedger
from capgroup.runtime.offsets import CommitTracker
from capgroup.runtime.partition import PartitionState, partition_names
from capgroup.runtime.policy import deadline_from_settings
from capgroup.runtime.stats import Counters
from capgroup.settings import CapgroupSettings
from capgroup.types import TopicPartition

__all__ = ["ASSIGN_FAILED", "CommittedOffsets", "Divert", "Ownership", "PartitionsHook"]

_log = get_logger("consumer")

#: The group's committed offsets of some partitions (``MembershipEngine.committed``).
CommittedOffsets = Callable[
    [Iterable[TopicPartition]], Awaitable[Mapping[TopicPartition, int | None]]
]
#: A user hook called with a set of partitions (``on_partitions_assigned`` and friends).
PartitionsHook = Callable[[frozenset[TopicPartition]], Awaitable[None]]
#: Of newly gained partitions, those range jobs take over at once (the ordinary path does not
#: start for them).
Divert = Callable[[frozenset[TopicPartition]], Awaitable[frozenset[TopicPartition]]]
#: Stop reason of partitions whose ``on_partitions_assigned`` raised.
ASSIGN_FAILED = "on_partitions_assigned_failed"


class Ownership:
    """The engine's assignment listener for one consumer run.

    ``partitions`` is the consumer's live map of owned partitions (changed here); partition
    workers run in ``task_group``, the consumer's. ``stopped`` and ``stop_reasons`` are the
    consumer's stopped partitions and why they stopped (a partition is removed from both when
    it is revoked or lost).
    """

    def __init__(
        self,
        *,
        settings: CapgroupSettings,
        committed: CommittedOffsets,
        fetcher: Fetcher,
        limits: BatchLimits,
        tracker: CommitTracker,
        ledger: MemoryLedger,
        counters: Counters,
        partitions: dict[TopicPartition, PartitionState],
        backpressure: Backpressure,
        delivery: Delivery,
        committer: Committer,
        task_group: TaskGroup,
        on_assigned: PartitionsHook,
        on_revoked: PartitionsHook,
        on_lost: PartitionsHook,
        stopped: set[TopicPartition] | None = None,
        stop_reasons: dict[TopicPartition, str] | None = None,
        limits_for: Callable[[TopicPartition], BatchLimits] | None = None,
        divert: Divert | None = None,
    ) -> None:
        self._settings = settings
        self._committed = committed
        self._fetcher = fetcher
        self._limits = limits
        self._limits_for: Callable[[TopicPartition], BatchLimits] = (
            (lambda _tp: limits) if limits_for is None else limits_for
        )
        self._tracker = tracker
        self._ledger = ledger
        self._counters = counters
        self._partitions = partitions
        self._backpressure = backpressure
        self._delivery = delivery
        self._committer = committer
        self._task_group = task_group
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._on_lost = on_lost
        self._stopped = set() if stopped is None else stopped
        self._stop_reasons = {} if stop_reasons is None else stop_reasons
        self._divert = divert
        #: Partitions ``on_partitions_assigned`` was called for and that have not been
        #: revoked or lost since (the service may hold resources for them).
        self.open: set[TopicPartition] = set()
        self._hooks = anyio.Lock()
        self._closed = False

    async def on_partitions_assigned(self, change: AssignmentChange) -> None:
        """Start owning ``change.partitions``."""
        async with self._hooks:
            await self._assigned(change)

    async def _assigned(self, change: AssignmentChange) -> None:
        gained = change.partitions
        # Partitions range jobs take over at once never start on the ordinary path.
        diverted = frozenset() if self._divert is None else await self._divert(gained)
        ordinary = gained - diverted
        committed = await self._committed(ordinary)
        # Held before they are gained, so no record arrives before their buffers exist.
        self._fetcher.hold(ordinary)
        await self._fetcher.gain(committed)
        positions = await self._fetcher.positions(ordinary)
        states = []
        for tp in sorted(ordinary):
            position = positions[tp]
            state = PartitionState(
                tp=tp,
                epoch=self._tracker.assign(tp, position),
                buffer=PartitionBuffer(tp, self._limits_for(tp), next_offset=position),
            )
            self._partitions[tp] = state
            states.append(state)
            self._task_group.start_soon(self._delivery.partition_worker, state)
        self._counters.rebalances += 1
        self._counters.partitions_assigned += len(gained)
        _log.info(
            "partitions_assigned",
            generation=change.generation.generation_id,
            partitions=partition_names(gained),
            positions={f"{tp.topic}-{tp.partition}": o for tp, o in sorted(positions.items())},
            owned=len(change.assigned),
        )
        if self._closed:
            # Gained while shutting down: they stay held and are never handed to the service.
            return
        self.open.update(gained)
        try:
            await self._on_assigned(gained)
        except Exception as exc:
            _log.error(
                "on_partitions_assigned_failed",
                error=repr(exc),
                partitions=partition_names(gained),
            )
            self._stop(states, positions)
            return
        self._fetcher.unhold(ordinary)

    def _stop(self, states: list[PartitionState], positions: Mapping[TopicPartition, int]) -> None:
        """Stop partitions whose ``on_partitions_assigned`` raised: they stay held (nothing
        flows, nothing is committed past their position) while this member owns them."""
        for state in states:
            state.stopped = True
            state.held = True  # still held in the fetcher since before the gain
            state.poke()  # its worker sees the flag and ends
            self._stopped.add(state.tp)
            self._stop_reasons[state.tp] = ASSIGN_FAILED
            self._counters.partitions_stopped += 1
            _log.error(
                "partition_stopped",
                partition=f"{state.tp.topic}-{state.tp.partition}",
                reason=ASSIGN_FAILED,
                offset=positions[state.tp],
                hint="the member is unhealthy while it owns the partition; fix the service and "
                "restart the member (the partition resumes at this offset)",
            )

    async def on_partitions_revoked(self, change: AssignmentChange) -> None:
        """Hand ``change.partitions`` over: drain, commit, forget, then tell the service."""
        async with self._hooks:
            await self._revoked(change)
            await self._notify(self._on_revoked, change.partitions, "on_partitions_revoked")

    async def _revoked(self, change: AssignmentChange) -> None:
        began = anyio.current_time()
        deadline = deadline_from_settings(began, self._settings)
        revoked = change.partitions
        self._fetcher.release(revoked)
        states = [self._partitions[tp] for tp in sorted(revoked) if tp in self._partitions]
        async with anyio.create_task_group() as tg:
            for state in states:
                tg.start_soon(self._delivery.drain, state, deadline, FlushReason.REVOKE)
        # The final commit may use the whole rebalance timeout; the margin was kept for it.
        commit_by = began + self._settings.rebalance_timeout_ms / 1000
        with anyio.move_on_at(commit_by):
            await self._committer.commit_ready()
        uncommitted = self.forget(states)
        self._counters.rebalances += 1
        self._counters.partitions_revoked += len(revoked)
        _log.info(
            "partitions_revoked",
            generation=change.generation.generation_id,
            partitions=partition_names(revoked),
            uncommitted=partition_names(uncommitted),
            duration_s=round(anyio.current_time() - began, 3),
        )

    async def on_partitions_lost(self, change: AssignmentChange) -> None:
        """Drop ``change.partitions`` at once, committing nothing, then tell the service."""
        async with self._hooks:
            await self._lost(change)
            await self._notify(self._on_lost, change.partitions, "on_partitions_lost")

    async def _lost(self, change: AssignmentChange) -> None:
        lost = change.partitions
        self._fetcher.release(lost)
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
        self.forget(states)
        self._counters.rebalances += 1
        self._counters.partitions_lost += len(lost)
        _log.warning(
            "partitions_lost",
            reason=change.reason,
            partitions=partition_names(lost),
            records_discarded=discarded,
        )

    async def hand_off(self, tp: TopicPartition) -> bool:
        """Stop the ordinary path of owned ``tp`` without giving it up (range jobs take it
        over): fetching stops, a flush in progress is let finish (by the revoke deadline) and
        committed, and the rest of the buffer is dropped (range jobs cut it again from the
        commit: flushing a backlog here is what they avoid). The service's hooks are not
        called: the member still owns ``tp``. False when ``tp`` has no ordinary path here (not
        owned, or handed off already) or is stopped (it stays stopped, held)."""
        async with self._hooks:
            state = self._partitions.get(tp)
            if state is None or state.stopped:
                return False
            self._fetcher.release([tp])
            began = anyio.current_time()
            state.close_worker()
            if not state.flushing:
                state.worker_scope.cancel()
            with anyio.move_on_at(deadline_from_settings(began, self._settings)):
                await state.worker_done.wait()
            if not state.worker_done.is_set():
                state.worker_scope.cancel()  # the flush overran: it counts as discarded
                await state.worker_done.wait()
            with anyio.move_on_at(began + self._settings.rebalance_timeout_ms / 1000):
                await self._committer.commit_ready()
            dropped, committed = len(state.buffer), self._tracker.committed(tp)
            # Uncommitted progress (the commit failed) is only redone by the range jobs.
            uncommitted = self.forget([state])
            _log.info(
                "partition_handed_off",
                partition=f"{tp.topic}-{tp.partition}",
                committed=committed,
                records_dropped=dropped,
                uncommitted=bool(uncommitted),
            )
            return True

    async def take_back(self, tp: TopicPartition) -> None:
        """Restart the ordinary path of ``tp`` (still owned) from its committed offset, after
        range jobs: the reverse of :meth:`hand_off`, without the service's hooks."""
        async with self._hooks:
            if tp in self._partitions or self._closed:
                return
            committed = await self._committed([tp])
            self._fetcher.hold([tp])
            await self._fetcher.gain(committed)
            position = (await self._fetcher.positions([tp]))[tp]
            state = PartitionState(
                tp=tp,
                epoch=self._tracker.assign(tp, position),
                buffer=PartitionBuffer(tp, self._limits_for(tp), next_offset=position),
            )
            self._partitions[tp] = state
            self._task_group.start_soon(self._delivery.partition_worker, state)
            self._fetcher.unhold([tp])
            _log.info(
                "partition_taken_back", partition=f"{tp.topic}-{tp.partition}", position=position
            )

    async def close(self) -> None:
        """At shutdown, after the final commit: ``on_partitions_revoked`` for the partitions
        still owned; partitions gained later are never handed to the service."""
        async with self._hooks:
            self._closed = True
            # Drained and committed by the shutdown: the runtime lets go of them first.
            self.forget(list(self._partitions.values()))
            await self._notify(self._on_revoked, frozenset(self.open), "on_partitions_revoked")

    async def abandon(self) -> None:
        """On a fatal exit (nothing more is committed): ``on_partitions_lost`` for the
        partitions the service still holds."""
        async with self._hooks:
            self._closed = True
            await self._notify(self._on_lost, frozenset(self.open), "on_partitions_lost")

    async def _notify(
        self, hook: PartitionsHook, partitions: frozenset[TopicPartition], name: str
    ) -> None:
        """Call ``hook`` with those of ``partitions`` the service holds (once each)."""
        handed = frozenset(partitions & self.open)
        if not handed:
            return
        self.open.difference_update(handed)
        try:
            await hook(handed)
        except Exception as exc:
            _log.error(f"{name}_failed", error=repr(exc), partitions=partition_names(handed))

    def forget(self, states: list[PartitionState]) -> list[TopicPartition]:
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
                # A stopped partition that moved away is no longer this member's concern.
                self._stopped.discard(tp)
                self._stop_reasons.pop(tp, None)
        self._backpressure.update_fetch_hold()
        return uncommitted
