"""Ownership hand-offs without a broker: assign starts partitions at their committed offsets,
revoke drains and commits before letting go, loss drops everything and commits nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest
from structlog.testing import capture_logs

from capgroup.membership.model import AssignmentChange, Generation
from capgroup.runtime.batch import BatchLimits
from capgroup.runtime.committer import Committer
from capgroup.runtime.ownership import Ownership
from capgroup.settings import load_settings
from capgroup.types import TopicPartition
from tests.runtime.parts import LIMITS, OTHER, TP, Hooks, Parts, delivery, make_parts

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

GENERATION = Generation(5, "member-1")


@dataclass
class Group:
    """The engine's side, scripted: committed offsets, commits, and the user's set hooks."""

    committed_offsets: dict[TopicPartition, int | None] = field(default_factory=dict)
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    assigned: list[frozenset[TopicPartition]] = field(default_factory=list)
    revoked: list[frozenset[TopicPartition]] = field(default_factory=list)
    lost: list[frozenset[TopicPartition]] = field(default_factory=list)

    async def committed(
        self, partitions: Iterable[TopicPartition]
    ) -> Mapping[TopicPartition, int | None]:
        return {tp: self.committed_offsets.get(tp) for tp in partitions}

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        self.assigned.append(partitions)

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        self.revoked.append(partitions)

    async def on_lost(self, partitions: frozenset[TopicPartition]) -> None:
        self.lost.append(partitions)


def change(
    *partitions: TopicPartition, assigned: Iterable[TopicPartition] = ()
) -> AssignmentChange:
    return AssignmentChange(GENERATION, frozenset(assigned), frozenset(partitions), "test")


@asynccontextmanager
async def owning(
    parts: Parts, group: Group, hooks: Hooks, limits: BatchLimits = LIMITS
) -> AsyncIterator[Ownership]:
    committer = Committer(parts.tracker, parts.counters, group.commit, lambda: 5)
    flusher = delivery(parts, hooks)
    async with anyio.create_task_group() as tg:
        yield Ownership(
            settings=load_settings(group_id="g", topics=["events"]),
            committed=group.committed,
            fetcher=parts.fetcher,
            limits=limits,
            tracker=parts.tracker,
            ledger=parts.ledger,
            counters=parts.counters,
            partitions=parts.partitions,
            backpressure=parts.backpressure,
            delivery=flusher,
            committer=committer,
            task_group=tg,
            on_assigned=group.on_assigned,
            on_revoked=group.on_revoked,
            on_lost=group.on_lost,
        )
        tg.cancel_scope.cancel()


async def test_assigned_partitions_start_at_their_committed_offsets() -> None:
    parts, group, hooks = make_parts(), Group(committed_offsets={TP: 3}), Hooks()
    parts.fetcher.append_many(TP, 5)
    parts.fetcher.append_many(OTHER, 2)
    async with owning(parts, group, hooks) as ownership:
        with capture_logs() as logs:
            await ownership.on_partitions_assigned(change(TP, OTHER, assigned=[TP, OTHER]))
        assert set(parts.partitions) == {TP, OTHER}
        assert parts.partitions[TP].buffer.last_offset == 2
        assert parts.partitions[OTHER].buffer.last_offset == -1, "no commit: from the start"
        assert group.assigned == [frozenset({TP, OTHER})]
        assert parts.fetcher.flowing == {TP, OTHER}, "held until on_partitions_assigned returned"
        assert (parts.counters.rebalances, parts.counters.partitions_assigned) == (1, 2)
        assigned = next(e for e in logs if e["event"] == "partitions_assigned")
        assert assigned["positions"] == {"events-0": 3, "events-1": 0}
        await anyio.wait_all_tasks_blocked()
        assert not parts.partitions[TP].worker_done.is_set(), "its worker runs"


async def test_revoked_partitions_are_drained_committed_and_forgotten() -> None:
    parts, group, hooks = make_parts(), Group(), Hooks()
    async with owning(parts, group, hooks) as ownership:
        await ownership.on_partitions_assigned(change(TP, OTHER, assigned=[TP, OTHER]))
        parts.buffer(parts.partitions[TP], 4)
        with capture_logs() as logs:
            await ownership.on_partitions_revoked(change(TP, assigned=[OTHER]))
        assert [len(b) for b in hooks.flushed] == [4]
        assert group.commits == [{TP: 4}]
        assert set(parts.partitions) == {OTHER}
        assert parts.fetcher.owned == {OTHER}
        assert parts.ledger.held(TP) == 0
        assert parts.tracker.epoch(TP) is None
        revoked = next(e for e in logs if e["event"] == "partitions_revoked")
        assert (revoked["partitions"], revoked["uncommitted"]) == (["events-0"], [])
        assert parts.counters.partitions_revoked == 1


async def test_lost_partitions_are_dropped_without_a_commit() -> None:
    parts, group, hooks = make_parts(), Group(), Hooks()
    async with owning(parts, group, hooks) as ownership:
        await ownership.on_partitions_assigned(change(TP, assigned=[TP]))
        parts.buffer(parts.partitions[TP], 4)
        with capture_logs() as logs:
            await ownership.on_partitions_lost(change(TP))
        assert hooks.flushed == []
        assert group.commits == []
        assert group.lost == [frozenset({TP})]
        assert parts.partitions == {}
        assert parts.ledger.total_bytes == 0
        assert parts.counters.records_discarded == 4
        lost = next(e for e in logs if e["event"] == "partitions_lost")
        assert lost["records_discarded"] == 4
