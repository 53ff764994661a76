"""The group figures the leader computes with each plan (``figures.group_figures``): what
every member exports as ``capgroup_group_*`` and what an autoscaler follows."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from capgroup.assignor import balance
from capgroup.assignor import figures as figures_module
from capgroup.assignor.adapter import plan_group
from capgroup.assignor.balance import assign, headroom
from capgroup.assignor.figures import EXACT_HEADROOM_MAX_PARTITIONS, group_figures
from capgroup.assignor.model import CapacityAdvertisement, MemberSpec, PartitionSpec, Plan
from capgroup.protocol import (
    AssignmentInfo,
    decode_assignment_info,
    encode_advertisement,
    encode_member_metadata,
)
from tests.assignor.strategies import Case, cases

MB = 1 << 20


def member(
    name: str,
    cap: int,
    *,
    topics: tuple[str, ...] = ("events",),
    budget: int = 1 << 30,
    cost: int = MB,
    draining: bool = False,
) -> MemberSpec:
    return MemberSpec(
        name,
        frozenset(topics),
        CapacityAdvertisement(
            max_partitions=cap,
            memory_budget_bytes=budget,
            partition_bytes={},
            default_partition_bytes=cost,
            draining=draining,
        ),
    )


def events(n: int, topic: str = "events") -> list[PartitionSpec]:
    return [PartitionSpec(topic, p) for p in range(n)]


def figures(
    members: list[MemberSpec], partitions: list[PartitionSpec], h: int = 1
) -> AssignmentInfo:
    return group_figures(assign(members, partitions, 1), members, partitions, 1, headroom=h)


def test_capacity_four_on_six_partitions() -> None:
    info = figures([member("a", 2), member("b", 2)], events(6))
    assert info == AssignmentInfo(
        1,
        unassigned=2,
        pending=0,
        members=2,
        capacity_partitions=4,
        demand_partitions=6,
        capacity_bytes=2 << 30,
        demand_bytes=6 * MB,
        headroom_members=0,
        # ceil(6 / 2) members of 2 slots, plus one spare.
        replicas_wanted=4,
    )


@pytest.mark.parametrize("n_members", range(1, 8))
@pytest.mark.parametrize("h", [0, 1, 2])
def test_identical_members_want_a_target_that_does_not_move(n_members: int, h: int) -> None:
    # ceil(P / s) + H whatever the current count: adding the members the autoscaler asked
    # for does not move the target, so it does not flap.
    partitions = events(10)
    info = figures([member(f"m{k}", 3) for k in range(n_members)], partitions, h)
    assert info.replicas_wanted == math.ceil(10 / 3) + h
    assert info.headroom_members == max(0, n_members - math.ceil(10 / 3))


def test_surplus_members_can_go_down_to_the_headroom() -> None:
    # 5 x 4 slots for 6 partitions: 3 may fail (2 x 4 = 8 >= 6), so 2 can go with 1 spare.
    info = figures([member(f"m{k}", 4) for k in range(5)], events(6))
    assert (info.headroom_members, info.replicas_wanted) == (3, 3)
    assert figures([member(f"m{k}", 4) for k in range(5)], events(6), h=0).replicas_wanted == 2


def test_a_capped_member_sizes_the_deficit_by_the_typical_member() -> None:
    # Capacity 3 + 1 on 6 partitions: the typical (upper median) member holds 3. Without the
    # largest (H=1), 1 slot is left for 6 partitions: two members of 3 more.
    two = figures([member("a", 3), member("b", 1)], events(6))
    assert (two.unassigned, two.headroom_members, two.replicas_wanted) == (2, 0, 4)
    # A third member of 3 places everything; one more is still wanted for the spare.
    three = figures([member("a", 3), member("b", 1), member("c", 3)], events(6))
    assert (three.unassigned, three.headroom_members, three.replicas_wanted) == (0, 0, 4)
    # Without headroom the third member is the one wanted, and wanted is what there is.
    assert figures([member("a", 3), member("b", 1)], events(6), h=0).replicas_wanted == 3
    assert figures([member("a", 3), member("b", 1), member("c", 3)], events(6), 0) == (
        AssignmentInfo(1, 0, 0, 3, 7, 6, 3 << 30, 6 * MB, 0, 3)
    )


def test_draining_members_are_counted_but_hold_nothing() -> None:
    info = figures([member("a", 3), member("b", 3), member("c", 3, draining=True)], events(6))
    assert info.members == 3
    assert info.capacity_partitions == 6
    assert info.capacity_bytes == 2 << 30
    # Two live members of 3 hold exactly 6: one more for the spare. The draining one is
    # not counted as a member the group keeps.
    assert (info.headroom_members, info.replicas_wanted) == (0, 3)


def test_budget_limits_slots_and_bytes_demand() -> None:
    # 10 MB budget at 4 MB per partition: 2 slots each although the cap is 64.
    info = figures([member(f"m{k}", 64, budget=10 * MB, cost=4 * MB) for k in range(2)], events(5))
    assert info.capacity_partitions == 4
    assert info.demand_bytes == 5 * 4 * MB
    assert info.capacity_bytes == 20 * MB
    assert (info.unassigned, info.replicas_wanted) == (1, 4)


def test_nobody_with_room_still_asks_for_more() -> None:
    info = figures([member("a", 0), member("b", 0)], events(3))
    assert info.capacity_partitions == 0
    assert info.unassigned == 3
    assert info.replicas_wanted == 3  # the size of a new member is unknown: one more, + H


def test_no_partitions_need_only_the_headroom() -> None:
    info = figures([member("a", 3), member("b", 3)], [])
    assert (info.demand_partitions, info.headroom_members, info.replicas_wanted) == (0, 2, 1)


def test_plan_group_sends_the_figures_to_every_member() -> None:
    raw = [
        (m.member_id, None, encode_member_metadata(m.topics, encode_advertisement(m.capacity)))
        for m in (member("a", 2), member("b", 2))
    ]
    raw.append(("garbage", None, b"\x00\x01"))
    result = plan_group(raw, events(6), 7, headroom_members=0)
    assert result.info is not None
    assert result.info.members == 3  # the rejected member is in the generation too
    assert result.info.replicas_wanted == 3
    for member_id, encoded in result.assignments.items():
        user_data = _assignment_user_data(encoded)
        assert decode_assignment_info(user_data) == result.info, member_id


def _assignment_user_data(encoded: bytes) -> bytes:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    return bytes(ConsumerProtocolMemberAssignment.decode(encoded).user_data)


# ------------------------------------------------------------------ properties -------


def _live(case: Case) -> list[MemberSpec]:
    return [m for m in case.members if not m.capacity.draining]


@settings(max_examples=200, deadline=None)
@given(case=cases(), h=st.integers(0, 3))
def test_figures_hold_their_definitions(case: Case, h: int) -> None:
    members, partitions = list(case.members), list(case.partitions)
    plan = assign(members, partitions, case.generation)
    info = group_figures(plan, members, partitions, case.generation, headroom=h)
    live = _live(case)
    assert info.members == len(members)
    assert info.demand_partitions == len({p.tp for p in partitions})
    assert info.unassigned == len(plan.unassigned)
    assert info.headroom_members is not None
    assert info.replicas_wanted is not None
    assert 0 <= info.headroom_members <= len(live)
    assert info.replicas_wanted >= h
    if plan.unassigned:
        # Short: more members than the live ones, whatever the headroom setting.
        assert info.headroom_members == 0
        assert info.replicas_wanted > len(live)
    elif info.headroom_members >= h:
        # Capacity suffices with the spare: never more than there is.
        assert info.replicas_wanted == len(live) + h - info.headroom_members <= len(live)
    else:
        assert info.replicas_wanted >= len(live) + h - info.headroom_members


@settings(max_examples=200, deadline=None)
@given(case=cases(owned=False))
def test_headroom_matches_the_assignors(case: Case) -> None:
    members, partitions = list(case.members), list(case.partitions)
    assume(partitions and all(m.capacity.memory_budget_bytes >= 0 for m in members))
    live = _live(case)
    info = group_figures(assign(members, partitions, 1), members, partitions, 1)
    assert info.headroom_members == headroom(live, partitions)


@settings(max_examples=200, deadline=None)
@given(case=cases(owned=False, uniform_cost=True, all_topics=True))
def test_counting_is_exact_for_uniform_groups(case: Case) -> None:
    members, partitions = list(case.members), list(case.partitions)
    assume(partitions and all(m.capacity.memory_budget_bytes >= 0 for m in members))
    calls: list[object] = []
    real = balance._all_placeable

    def counted(*args: Any) -> bool:
        calls.append(args)
        return real(*args)

    balance._all_placeable = counted  # type: ignore[assignment]
    try:
        info = group_figures(assign(members, partitions, 1), members, partitions, 1)
    finally:
        balance._all_placeable = real
    assert calls == []  # no placement run: the count is exact here
    assert info.headroom_members == headroom(_live(case), partitions)


def test_large_mixed_groups_get_the_counting_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    n = EXACT_HEADROOM_MAX_PARTITIONS + 1
    partitions = events(n // 2, "a") + events(n - n // 2, "b")
    members = [
        member(f"m{k}", n, topics=("a", "b") if k else ("a",), budget=1 << 62) for k in range(3)
    ]
    monkeypatch.setattr(balance, "_all_placeable", pytest.fail)
    plan = Plan(assignment={"m0": (), "m1": tuple(p.tp for p in partitions), "m2": ()})
    info = group_figures(plan, members, partitions, 1)
    assert info.headroom_members == 2  # any single member holds everything, by count


@pytest.mark.parametrize("n_members", [1_000])
def test_figures_cost_little_next_to_the_plan(n_members: int) -> None:
    # 100k partitions / 1,000 members: ~0.03 s next to ~0.1 s for assign; measured at
    # 1M / 1,000: ~0.1 s next to ~1 s, and at 1M / 2,000: ~0.3 s next to ~1.2-2.3 s.
    from capgroup.assignor.workloads import synthetic_group

    members, partitions = synthetic_group(100_000, n_members, seed=1)
    t0 = time.perf_counter()
    plan = assign(members, partitions, 1)
    planned = time.perf_counter() - t0
    t0 = time.perf_counter()
    figures_module.group_figures(plan, members, partitions, 1)
    figured = time.perf_counter() - t0
    assert figured < max(planned, 0.05)


@settings(max_examples=200, deadline=None)
@given(cases(relay=True), st.integers(0, 3), st.integers(1, 4))
def test_the_figures_do_not_depend_on_how_members_share_profiles(
    case: Case, spare: int, copies: int
) -> None:
    """The figures are worked out once per profile (members sharing their subscription and
    advertisement objects, as the leader decodes one deployment) and spread by counts: the
    same figures as with every member a profile of its own."""
    shared = [
        MemberSpec(f"{m.member_id}~{k}", m.topics, m.capacity, m.instance_id)
        for m in case.members
        for k in range(copies)
    ]
    alone = [
        MemberSpec(
            m.member_id, frozenset(set(m.topics)), dataclasses.replace(m.capacity), m.instance_id
        )
        for m in shared
    ]
    assert len(figures_module.profiles_of(shared)[0]) <= len(case.members)
    assert len(figures_module.profiles_of(alone)[0]) == len(alone)
    partitions = list(case.partitions)
    plan = assign(shared, partitions, case.generation)
    by_profile = group_figures(plan, shared, partitions, case.generation, headroom=spare)
    by_member = group_figures(plan, alone, partitions, case.generation, headroom=spare)
    assert by_profile == by_member
