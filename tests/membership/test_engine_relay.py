"""Relay-only assignments (issue 13) through the membership engine, on the scripted
coordinator: the leader plans them, the member owns them and names them in ``relay_only``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from functools import partial

import anyio
import pytest
from aiokafka import errors as Errors  # noqa: N812 (aiokafka's own idiom)

from capgroup.membership.engine import MembershipEngine, _exceeds, _within
from capgroup.membership.model import AssignmentChange
from capgroup.runtime.consumer import _others_own
from capgroup.runtime.relay import Relay
from capgroup.runtime.stats import Counters
from capgroup.settings import load_settings
from capgroup.types import CapacityAdvertisement, TopicPartition
from tests.membership.test_engine_scripted import Recorder, running, settings, settled
from tests.scripted import ScriptedCoordinator
from tests.scripted.runtime_clients import ScriptedRelaySink

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


async def relay_targets_of(engine: MembershipEngine, tp: TopicPartition) -> list[TopicPartition]:
    """The relay's targets for ``tp`` after a refresh, with the engine's group view and no
    committed offset anywhere (lag unknown: the case that used to count as healthy)."""
    sink = ScriptedRelaySink({"t": 4})

    async def ends(tps: Iterable[TopicPartition]) -> Mapping[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def committed(tps: Iterable[TopicPartition]) -> Mapping[TopicPartition, int | None]:
        return dict.fromkeys(tps)

    relay = Relay(
        settings=load_settings(group_id="g", topics=["t"], relay_enabled=True),
        sink=sink,
        owned=lambda: engine.assignment,
        relay_only=lambda: engine.relay_only,
        end_offsets=ends,
        group_committed=committed,
        others_own=partial(_others_own, engine),
        lag_figures=dict,
        counters=Counters(),
    )
    await relay.refresh_targets()
    return relay.targets(tp)


async def test_relay_targets_are_partitions_another_live_member_batches() -> None:
    coord = ScriptedCoordinator({"t": 4})
    rec_a, rec_b = RelayRecorder("a"), RelayRecorder("b")
    a = relaying_member(coord, rec_a, RELAYING)
    async with running(a) as tg:
        await settled(coord, a, 1)
        assert a.relay_only == {T2}
        view = await a.group_batch_partitions()
        assert view == {a.generation.member_id: frozenset({T0, T1})}
        # T3 is owned by nobody and T0, T1 are a's own: no target at all.
        assert await relay_targets_of(a, T2) == []

        # b joins: the partitions it batches become the targets, never an unowned one.
        b = relaying_member(coord, rec_b, dataclasses.replace(RELAYING, max_partitions=1))
        with anyio.fail_after(10):
            await tg.start(b.run)
        await settled(coord, a, 2)
        await settled(coord, b, 2)
        owned_b = coord.assignment_of(b.generation.member_id)
        assert owned_b
        assert not b.relay_only
        unowned = {T0, T1, T2, T3} - a.assignment - owned_b
        view = await a.group_batch_partitions()
        assert view is not None
        assert view[b.generation.member_id] == owned_b
        for tp in a.relay_only:
            targets = await relay_targets_of(a, tp)
            assert targets == sorted(owned_b)
            assert not set(targets) & (unowned | a.assignment)

        # b leaves: after the rebalance the targets follow (nobody else batches anything).
        b.stop()
        with anyio.fail_after(10):
            await coord.wait_until(lambda: len(coord.members) == 1 and coord.state == "stable")
        await settled(coord, a, 3)
        for tp in a.relay_only:
            assert await relay_targets_of(a, tp) == []


async def test_without_a_group_view_nothing_is_a_target() -> None:
    coord = ScriptedCoordinator({"t": 4})
    a = relaying_member(coord, RelayRecorder("a"), RELAYING)
    async with running(a):
        await settled(coord, a, 1)
        coord.fail("describe", Errors.KafkaConnectionError)
        assert await a.group_batch_partitions() is None
        coord.fail("describe", Errors.CoordinatorNotAvailableError.errno)
        assert await relay_targets_of(a, T2) == []
        # A rebalancing group has no current assignment either.
        gate = coord.gate("sync")
        a.request_rejoin("test")
        with anyio.fail_after(10):
            await gate.arrived.wait()
        assert coord.state == "completing"
        assert await a.group_batch_partitions() is None
        gate.release()
        await settled(coord, a, 2)
        assert await a.group_batch_partitions() == {a.generation.member_id: frozenset({T0, T1})}


async def test_a_pending_move_nobody_releases_makes_a_stable_member_rejoin() -> None:
    # The old owner of a pending move died and its static twin took its place from the
    # broker's cache (no rebalance): nobody revokes and rejoins, so a stable member asks for
    # the next round once a session timeout has passed.
    coord = ScriptedCoordinator({"t": 4})
    a = relaying_member(coord, RelayRecorder("a"), RELAYING)
    async with running(a):
        await settled(coord, a, 1)
        figures = a.group_figures
        assert figures is not None
        a._group_figures = dataclasses.replace(figures, pending=1)  # what the leader said
        await settled(coord, a, 2)
        assert a.group_figures is not None
        assert a.group_figures.pending == 0
