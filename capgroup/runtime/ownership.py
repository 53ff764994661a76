"""Ownership hand-offs: what the runtime does when the engine assigns, revokes or loses
partitions (the engine's assignment listener, behind the consumer).

- **Assigned**: the partitions are held in the fetcher, gained at their committed offsets, and
  get a fresh :class:`~capgroup.runtime.partition.PartitionState` (a new commit-tracker epoch,
  an empty buffer) and a worker; ``on_assign`` runs before their records flow.
- **Revoked**: fetching stops, every buffer is drained (``on_revoke`` decides, by the revoke
  deadline), what was flushed is committed within the rebalance timeout, then the partitions are
  forgotten.
- **Lost**: nothing may be committed any more, so workers and drains are cancelled at once and
  the buffers dropped; ``on_lost`` runs afterwards.
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

__all__ = ["CommittedOffsets", "Ownership", "PartitionsHook"]

_log = get_logger("consumer")

#: The group's committed offsets of some partitions (``MembershipEngine.committed``).
CommittedOffsets = Callable[
    [Iterable[TopicPartition]], Awaitable[Mapping[TopicPartition, int | None]]
]
#: A user hook called with a set of partitions (``on_assign``, ``on_lost``).
PartitionsHook = Callable[[frozenset[TopicPartition]], Awaitable[None]]


class Ownership:
    """The engine's assignment listener for one consumer run.

    ``partitions`` is the consumer's live map of owned partitions (changed here); partition
    workers run in ``task_group``, the consumer's.
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
        on_assign: PartitionsHook,
        on_lost: PartitionsHook,
    ) -> None:
        self._settings = settings
        self._committed = committed
        self._fetcher = fetcher
        self._limits = limits
        self._tracker = tracker
        self._ledger = ledger
        self._counters = counters
        self._partitions = partitions
        self._backpressure = backpressure
        self._delivery = delivery
        self._committer = committer
        self._task_group = task_group
        self._on_assign = on_assign
        self._on_lost = on_lost

    async def on_partitions_assigned(self, change: AssignmentChange) -> None:
        """Start owning ``change.partitions``."""
        gained = change.partitions
        committed = await self._committed(gained)
        # Held before they are gained, so no record arrives before their buffers exist.
        self._fetcher.hold(gained)
        await self._fetcher.gain(committed)
        positions = await self._fetcher.positions(gained)
        for tp in sorted(gained):
            position = positions[tp]
            state = PartitionState(
                tp=tp,
                epoch=self._tracker.assign(tp, position),
                buffer=PartitionBuffer(tp, self._limits, next_offset=position),
            )
            self._partitions[tp] = state
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
        try:
            await self._on_assign(gained)
        except Exception as exc:
            _log.error("on_assign_failed", error=repr(exc), partitions=partition_names(gained))
        self._fetcher.unhold(gained)

    async def on_partitions_revoked(self, change: AssignmentChange) -> None:
        """Hand ``change.partitions`` over: drain, commit, forget."""
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
        """Drop ``change.partitions`` at once, committing nothing."""
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
        try:
            await self._on_lost(lost)
        except Exception as exc:
            _log.error("on_lost_failed", error=repr(exc), partitions=partition_names(lost))

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
        self._backpressure.update_fetch_hold()
        return uncommitted
