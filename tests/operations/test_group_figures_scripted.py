"""Group figures end to end without a broker: the leader plans, every member decodes the
figures from its assignment, and every member's scrape exports the same group values."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from capgroup.membership.engine import MembershipEngine
from capgroup.membership.model import AssignmentChange, MembershipSnapshot
from capgroup.operations.metrics import metrics_registry
from capgroup.protocol import AssignmentInfo
from capgroup.runtime.stats import ConsumerStats
from capgroup.settings import CapgroupSettings, load_settings
from capgroup.types import CapacityAdvertisement, TopicPartition
from tests.operations.stubs import idle_stats
from tests.scripted import ScriptedCoordinator

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

GUARD = 10
GROUP_GAUGES = (
    "unassigned_partitions",
    "pending_partitions",
    "members",
    "capacity_partitions",
    "demand_partitions",
    "capacity_bytes",
    "demand_bytes",
    "headroom_members",
    "replicas_wanted",
)


class Member:
    """An engine plus what the exporter reads (an ``ObservableConsumer``)."""

    def __init__(self, coord: ScriptedCoordinator, cap: int, **overrides: Any) -> None:
        self.settings: CapgroupSettings = load_settings(
            bootstrap_servers="scripted:9092",
            group_id="g",
            topics=["t"],
            session_timeout_ms=3000,
            heartbeat_interval_ms=100,
            rebalance_timeout_ms=3000,
            revoke_safety_margin_ms=1000,
            **overrides,
        )
        adv = CapacityAdvertisement(
            max_partitions=cap,
            memory_budget_bytes=1 << 30,
            partition_bytes={},
            default_partition_bytes=1 << 20,
        )
        self.engine = MembershipEngine(
            self.settings, self, lambda: adv, transport=coord.transport()
        )
        self.registry = metrics_registry(self, process=False)

    # -- listener: nothing to do with the partitions here
    async def on_partitions_revoked(self, change: AssignmentChange) -> None:
        pass

    async def on_partitions_assigned(self, change: AssignmentChange) -> None:
        pass

    async def on_partitions_lost(self, change: AssignmentChange) -> None:
        pass

    # -- ObservableConsumer
    @property
    def stats(self) -> ConsumerStats:
        return idle_stats(
            owned_partitions=len(self.engine.assignment),
            advertised_max_partitions=0,
            budget_bytes=1 << 30,
        )

    @property
    def membership(self) -> MembershipSnapshot:
        return self.engine.snapshot()

    @property
    def healthy(self) -> bool:
        return True

    def scrape(self) -> dict[str, tuple[str, float]]:
        """``{capgroup_group_* name: (member label, value)}``."""
        found = {}
        text = generate_latest(self.registry).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name.startswith("capgroup_group_")
                    and sample.name.removeprefix("capgroup_group_") in GROUP_GAUGES
                ):
                    found[sample.name] = (sample.labels["member"], sample.value)
        return found


@asynccontextmanager
async def running(*members: Member) -> AsyncIterator[anyio.abc.TaskGroup]:
    async with anyio.create_task_group() as tg:
        for m in members:
            await start(tg, m)
        yield tg
        for m in members:
            m.engine.stop()


async def start(tg: anyio.abc.TaskGroup, member: Member) -> None:
    with anyio.fail_after(GUARD):
        await tg.start(member.engine.run)


async def agreed(
    coord: ScriptedCoordinator, members: list[Member], **expected: int
) -> AssignmentInfo:
    """Wait until every member is stable in the coordinator's generation with figures
    matching ``expected``; return them (the same on every member)."""

    def check() -> bool:
        figures = [m.engine.group_figures for m in members]
        return (
            coord.state == "stable"
            and all(m.engine.generation.generation_id == coord.generation for m in members)
            and all(f is not None and f.generation == coord.generation for f in figures)
            and all(getattr(f, k) == v for f in figures for k, v in expected.items())
        )

    with anyio.fail_after(GUARD):
        await coord.wait_until(check)
    info = members[0].engine.group_figures
    assert info is not None
    assert all(m.engine.group_figures == info for m in members)
    assert all(m.engine.snapshot().group_figures == info for m in members)
    return info


def leader_of(members: list[Member]) -> Member:
    [leader] = [m for m in members if m.engine.snapshot().is_leader]
    return leader


async def test_every_member_exports_the_same_group_figures() -> None:
    coord = ScriptedCoordinator({"t": 6})
    a = Member(coord, cap=3)
    b = Member(coord, cap=1, group_instance_id="pod-b")  # capped: 4 slots for 6 partitions
    async with running(a, b) as tg:
        two = await agreed(coord, [a, b], unassigned=2, pending=0)
        assert two == AssignmentInfo(
            coord.generation,
            unassigned=2,
            pending=0,
            members=2,
            capacity_partitions=4,
            demand_partitions=6,
            capacity_bytes=2 << 30,
            demand_bytes=6 << 20,
            headroom_members=0,
            # Members of the typical 3 slots: two more, so that losing the largest (3)
            # still leaves 6 slots (3 + 1 + 2 x 3 - 3 = 7 >= 6).
            replicas_wanted=4,
        )
        # Only the leader knows which partitions nobody owns.
        leader = leader_of([a, b])
        follower = b if leader is a else a
        owned = a.engine.assignment | b.engine.assignment
        unassigned = leader.engine.unassigned_partitions
        assert len(unassigned) == 2
        assert set(unassigned) == {TopicPartition("t", p) for p in range(6)} - owned
        assert follower.engine.unassigned_partitions == ()

        # Both scrapes answer, with the same group figures, each under its own label:
        # the instance id, else the member id.
        for m, label in ((a, a.engine.generation.member_id), (b, "pod-b")):
            scraped = m.scrape()
            assert set(scraped) == {f"capgroup_group_{name}" for name in GROUP_GAUGES}
            assert {lbl for lbl, _ in scraped.values()} == {label}
            assert scraped["capgroup_group_unassigned_partitions"][1] == 2
            assert scraped["capgroup_group_replicas_wanted"][1] == 4
            assert scraped["capgroup_group_members"][1] == 2
            assert scraped["capgroup_group_headroom_members"][1] == 0
        assert a.engine.generation.member_id not in ("", "pod-b")

        # A third member of the typical size joins: everything is placed. Wanted stays at
        # 4 (the target an autoscaler follows does not move once it is being met); what
        # falls is the deficit, unassigned partitions and wanted - members.
        c = Member(coord, cap=3)
        await start(tg, c)
        three = await agreed(coord, [a, b, c], unassigned=0, pending=0)
        assert (three.members, three.capacity_partitions, three.headroom_members) == (3, 7, 0)
        assert three.replicas_wanted == 4
        assert leader_of([a, b, c]).engine.unassigned_partitions == ()
        for m in (a, b, c):
            scraped = m.scrape()
            assert scraped["capgroup_group_unassigned_partitions"][1] == 0
            assert scraped["capgroup_group_replicas_wanted"][1] == 4
            assert scraped["capgroup_group_members"][1] == 3

        # A fourth: now one member can be lost, the headroom asked for is there.
        d = Member(coord, cap=3)
        await start(tg, d)
        four = await agreed(coord, [a, b, c, d], unassigned=0, pending=0)
        assert (four.members, four.headroom_members, four.replicas_wanted) == (4, 1, 4)
        for m in (c, d):
            m.engine.stop()


async def test_no_group_figures_outside_a_generation() -> None:
    coord = ScriptedCoordinator({"t": 2})
    a = Member(coord, cap=3)
    assert a.engine.group_figures is None
    assert a.engine.unassigned_partitions == ()
    # Before the member runs: the families exist, with no samples, and the label is empty.
    assert a.scrape() == {}
    async with running(a):
        info = await agreed(coord, [a], unassigned=0)
        assert (info.members, info.headroom_members, info.replicas_wanted) == (1, 0, 2)
        assert a.scrape()["capgroup_group_demand_partitions"] == (
            a.engine.generation.member_id,
            2.0,
        )
        coord.expire(a.engine.generation.member_id)
        with anyio.fail_after(GUARD):
            await coord.wait_until(
                lambda: (
                    not a.engine.generation.valid
                    and a.engine.group_figures is None
                    and a.engine.snapshot().group_figures is None
                    and a.scrape() == {}
                )
            )
