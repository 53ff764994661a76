"""Relay-only assignments (issue 13) through the membership engine, on the scripted
coordinator: the leader plans them, the member owns them and names them in ``relay_only``."""

from __future__ import annotations

import dataclasses

import pytest

from capgroup.membership.engine import MembershipEngine, _exceeds, _within
from capgroup.membership.model import AssignmentChange
from capgroup.types import CapacityAdvertisement, TopicPartition
from tests.membership.test_engine_scripted import Recorder, running, settings, settled
from tests.scripted import ScriptedCoordinator

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

T0, T1, T2, T3 = (TopicPartition("t", p) for p in range(4))

#: Batches two partitions (2 bytes each) and relays one more (1 byte): budget 5.
RELAYING = CapacityAdvertisement(
    max_partitions=10,
    memory_budget_bytes=5,
    partition_bytes={},
    default_partition_bytes=2,
    relay_partition_bytes=1,
)


class RelayRecorder(Recorder):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.changes: list[AssignmentChange] = []

    async def on_partitions_assigned(self, change: AssignmentChange) -> None:
        self.changes.append(change)
        await super().on_partitions_assigned(change)


def relaying_member(
    coord: ScriptedCoordinator, rec: Recorder, adv: CapacityAdvertisement
) -> MembershipEngine:
    rec.transport = coord.transport()
    engine = MembershipEngine(settings(), rec, lambda: adv, transport=rec.transport)
    rec.engine = engine
    return engine


async def test_member_with_relay_capacity_gets_an_unassigned_partition_as_relay_only() -> None:
    coord = ScriptedCoordinator({"t": 4})
    rec = RelayRecorder("a")
    engine = relaying_member(coord, rec, RELAYING)
    async with running(engine):
        await settled(coord, engine, 1)
        assert engine.advertised is not None
        assert engine.advertised.relay_partition_bytes == 1
        # Batch capacity places T0 and T1; T2 (the hottest left, ties by number) is relayed,
        # T3 stays unassigned.
        assert engine.assignment == {T0, T1, T2}
        assert engine.relay_only == {T2}
        assert coord.assignment_of(engine.generation.member_id) == {T0, T1, T2}
        figures = engine.group_figures
        assert figures is not None
        assert (figures.unassigned, figures.relayed, figures.relay_only) == (1, 1, (T2,))
        assert engine.snapshot().relay_only == {T2}
        assert rec.changes[-1].relay_only == {T2}
        assert rec.changes[-1].assigned == {T0, T1, T2}

        # The next round keeps it: the member claims T2, it still has no batch home, and
        # relay-only costs are not mistaken for an over-budget assignment.
        engine.request_rejoin("test")
        await settled(coord, engine, 2)
        assert engine.assignment == {T0, T1, T2}
        assert engine.relay_only == {T2}
        assert not rec.of("revoked")
        assert len(rec.of("assigned")) == 1


async def test_without_relay_capacity_nothing_is_relayed() -> None:
    coord = ScriptedCoordinator({"t": 4})
    rec = RelayRecorder("a")
    engine = relaying_member(coord, rec, dataclasses.replace(RELAYING, relay_partition_bytes=0))
    async with running(engine):
        await settled(coord, engine, 1)
        assert engine.assignment == {T0, T1}
        assert engine.relay_only == frozenset()
        figures = engine.group_figures
        assert figures is not None
        assert (figures.unassigned, figures.relayed, figures.relay_only) == (2, None, ())
        assert rec.changes[-1].relay_only == frozenset()


def test_relay_only_partitions_cost_their_relay_bytes() -> None:
    assigned = frozenset({T0, T1, T2})
    # At batch cost the three would be 6 bytes, over the budget of 5; relayed T2 costs 1.
    assert _exceeds(assigned, RELAYING)
    assert not _exceeds(assigned, RELAYING, frozenset({T2}))
    assert _within(assigned, frozenset(), RELAYING, frozenset({T2})) == assigned
    assert _within(assigned, frozenset(), RELAYING) == {T0, T1}
    # A relay-only partition with a member that does not relay costs its batch price.
    silent = CapacityAdvertisement(10, 5, {}, default_partition_bytes=2)
    assert _exceeds(assigned, silent, frozenset({T2}))
