"""Table cases for the assignor, each passed through the shared invariant helpers."""

from __future__ import annotations

from collections import Counter

import pytest

from capgroup.assignor.balance import assign, headroom
from capgroup.assignor.model import (
    CapacityAdvertisement,
    MemberSpec,
    OwnedPartition,
    PartitionSpec,
    Plan,
)
from tests.assignor.invariants import check_all, owned_from, phase2

MB = 1 << 20
GEN = 5


def member(
    mid: str,
    *,
    topics: tuple[str, ...] = ("events",),
    max_partitions: int = 100,
    budget: int = 1 << 40,
    cost: int = 0,
    weight: float = 1.0,
    draining: bool = False,
    owned: tuple[OwnedPartition, ...] = (),
) -> MemberSpec:
    return MemberSpec(
        mid,
        frozenset(topics),
        CapacityAdvertisement(
            max_partitions=max_partitions,
            memory_budget_bytes=budget,
            partition_bytes={},
            default_partition_bytes=cost,
            weight=weight,
            draining=draining,
            owned=owned,
        ),
    )


def parts(topic: str, n: int, rate: float = 0.0) -> list[PartitionSpec]:
    return [PartitionSpec(topic, p, rate) for p in range(n)]


def claims(
    topic: str, numbers: range | list[int], gen: int = GEN - 1
) -> tuple[OwnedPartition, ...]:
    return tuple(OwnedPartition(topic, p, gen) for p in numbers)


def run(members: list[MemberSpec], partitions: list[PartitionSpec], gen: int = GEN) -> Plan:
    plan = assign(members, partitions, gen)
    check_all(members, partitions, plan, gen)
    return plan


def counts(plan: Plan) -> dict[str, int]:
    return {m: len(tps) for m, tps in phase2(plan).items()}


def rejoin(members: list[MemberSpec], plan: Plan, gen: int) -> list[MemberSpec]:
    owned = owned_from(plan, gen)
    return [member_with(m, owned[m.member_id]) for m in members]


def member_with(m: MemberSpec, owned: tuple[OwnedPartition, ...]) -> MemberSpec:
    adv = m.capacity
    return MemberSpec(
        m.member_id,
        m.topics,
        CapacityAdvertisement(
            adv.max_partitions,
            adv.memory_budget_bytes,
            adv.partition_bytes,
            adv.default_partition_bytes,
            adv.weight,
            adv.rack,
            adv.draining,
            owned,
        ),
    )


def test_story_five_of_twenty_five_die_and_survivors_stay_within_budget() -> None:
    """100 partitions, 25 members sized for 4 at 500 MB each; 5 die."""
    sized = {"max_partitions": 4, "budget": 4 * 500 * MB, "cost": 500 * MB}
    partitions = parts("events", 100)
    members = [member(f"m-{k:02d}", **sized) for k in range(25)]  # type: ignore[arg-type]
    first = run(members, partitions)
    assert not first.unassigned
    assert headroom(members, partitions) == 0
    survivors = rejoin(members, first, GEN)[5:]
    plan = run(survivors, partitions, GEN + 1)
    assert len(plan.unassigned) == 20
    assert any("unassigned" in note for note in plan.notes)
    assert set(counts(plan).values()) == {4}  # 2 GB each, where round-robin gives 5 (2.5 GB)
    assert plan.moved == 0  # survivors keep theirs; nobody has room for the orphans


def test_range_assignor_trap_spreads_across_all_topics() -> None:
    partitions = parts("big", 8) + [p for k in range(20) for p in parts(f"small-{k:02d}", 2)]
    members = [member(f"m{k}", topics=tuple({p.topic for p in partitions})) for k in range(8)]
    plan = run(members, partitions)
    assert set(counts(plan).values()) == {6}


def test_member_joining_moves_only_what_balance_needs() -> None:
    partitions = parts("events", 48)
    members = [member(f"m{k}") for k in range(4)]
    stable = rejoin(members, run(members, partitions), GEN)
    plan = run([*stable, member("m9")], partitions, GEN + 1)
    assert sorted(counts(plan).values()) == [9, 9, 10, 10, 10]
    assert plan.moved == len(plan.pending) == counts(plan)["m9"]
    assert all(move.to_member == "m9" for move in plan.pending)
    assert plan.assignment["m9"] == ()  # phase 1: withheld until the owners revoke


@pytest.mark.parametrize(
    ("n", "expected"),
    [(8, {"small": 2, "large": 6}), (6, {"small": 2, "large": 4}), (12, {"small": 2, "large": 6})],
)
def test_heterogeneous_budgets_two_versus_six(n: int, expected: dict[str, int]) -> None:
    members = [
        member("small", max_partitions=10, budget=2 * 100 * MB, cost=100 * MB),
        member("large", max_partitions=6, budget=1 << 40, cost=100 * MB),
    ]
    plan = run(members, parts("events", n))
    assert counts(plan) == expected
    assert len(plan.unassigned) == n - sum(expected.values())


def test_weights_split_load_in_proportion() -> None:
    members = [member("a", weight=1.0), member("b", weight=3.0)]
    assert counts(run(members, parts("events", 40))) == {"a": 10, "b": 30}


def test_hot_partitions_spread_out() -> None:
    partitions = [
        *parts("events", 3, rate=1000.0),
        *[PartitionSpec("events", p) for p in range(3, 9)],
    ]
    plan = run([member(f"m{k}") for k in range(3)], partitions)
    hot = Counter(m for m, tps in phase2(plan).items() for tp in tps if tp.partition < 3)
    assert sorted(hot.values()) == [1, 1, 1]


def test_conflicting_same_generation_claims_are_revoked_from_both() -> None:
    members = [
        member("a", owned=claims("events", [0, 1])),
        member("b", owned=claims("events", [0, 2])),
    ]
    plan = run(members, parts("events", 4))
    assert all(tp.partition != 0 for tps in plan.assignment.values() for tp in tps)
    (move,) = [m for m in plan.pending if m.tp.partition == 0]
    assert move.from_member in {"a", "b"}
    assert any("same generation" in note for note in plan.notes)


def test_stale_generation_claim_is_ignored() -> None:
    members = [
        member("a", owned=claims("events", [0], gen=GEN - 3)),
        member("b", owned=claims("events", [0], gen=GEN - 1)),
    ]
    plan = run(members, parts("events", 1))
    assert plan.assignment["b"] == (("events", 0),)
    assert not plan.pending
    assert any("older generation" in note for note in plan.notes)


def test_bogus_future_generation_claim_is_ignored() -> None:
    members = [member("a", owned=claims("events", [0, 1], gen=GEN + 3)), member("b")]
    plan = run(members, parts("events", 2))
    assert not plan.pending  # treated as unowned: placed at once
    assert plan.moved == 2
    assert any("future generation" in note for note in plan.notes)


def test_draining_member_gives_everything_back_through_pending() -> None:
    members = [member("a", draining=True, owned=claims("events", range(4))), member("b")]
    plan = run(members, parts("events", 4))
    assert plan.assignment["a"] == ()
    assert plan.assignment["b"] == ()
    assert {(m.from_member, m.to_member) for m in plan.pending} == {("a", "b")}
    assert len(plan.pending) == 4


def test_partitions_of_departed_members_are_placed_at_once() -> None:
    members = [
        member("a", owned=claims("events", range(3))),
        member("b", owned=claims("events", range(3, 6))),
    ]
    # A third member that owned 6..8 has left: nobody claims them.
    plan = run(members, parts("events", 9))
    assert not plan.pending
    assert sorted(counts(plan).values()) == [4, 5]


def test_owner_that_lowered_its_budget_sheds_its_coldest() -> None:
    partitions = [PartitionSpec("events", p, rate=float(100 - p)) for p in range(6)]
    members = [member("a", max_partitions=4, owned=claims("events", range(6))), member("b")]
    plan = run(members, partitions)
    assert {tp.partition for tp in plan.assignment["a"]} <= {0, 1, 2, 3}
    assert {m.tp.partition for m in plan.pending} >= {4, 5}
    assert any("cannot keep" in note for note in plan.notes)


def test_owned_topic_no_longer_subscribed_moves_through_pending() -> None:
    members = [member("a", topics=("other",), owned=claims("events", [0])), member("b")]
    plan = run(members, parts("events", 1))
    assert [(m.from_member, m.to_member) for m in plan.pending] == [("a", "b")]


def test_zero_budgets_and_huge_costs_place_nothing() -> None:
    members = [
        member("a", max_partitions=0),
        member("b", budget=10, cost=1 << 60),
        member("c", budget=-1),
    ]
    plan = run(members, parts("events", 3))
    assert len(plan.unassigned) == 3


def test_empty_inputs() -> None:
    assert run([], parts("events", 2)).unassigned == (("events", 0), ("events", 1))
    assert run([member("a")], []).assignment == {"a": ()}
    assert headroom([], []) == 0


def test_duplicate_member_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate member id"):
        assign([member("a"), member("a")], parts("events", 1), GEN)


@pytest.mark.parametrize(
    ("caps", "n", "expected"),
    [
        ((4, 4, 4), 8, 1),
        ((4, 4, 4), 12, 0),
        ((4, 4, 4), 13, 0),
        ((8, 2, 2, 2), 6, 1),
        ((8, 2, 2, 2), 7, 0),
        ((2, 2, 2, 8), 2, 3),
    ],
)
def test_headroom_counts_worst_case_failures(caps: tuple[int, ...], n: int, expected: int) -> None:
    members = [member(f"m{k}", max_partitions=c) for k, c in enumerate(caps)]
    assert headroom(members, parts("events", n)) == expected


def test_claims_on_unknown_or_gappy_partitions() -> None:
    """Numbered 0, 2, 5 (not 0..n-1), plus claims on partitions that do not exist."""
    partitions = [PartitionSpec("events", p) for p in (0, 2, 5)] + parts("other", 2)
    owned_a = (*claims("events", [2, 3, -1, 7]), *claims("gone", [0]), *claims("other", [1]))
    members = [
        member("a", topics=("events", "other"), owned=owned_a),
        member("b", topics=("events", "other"), owned=claims("events", [5])),
    ]
    plan = run(members, partitions)
    assert ("events", 2) in plan.assignment["a"]
    assert ("other", 1) in plan.assignment["a"]
    assert ("events", 5) in plan.assignment["b"]
    assert not plan.pending
    assert plan.moved == 2  # events-0 and other-0 had no owner
