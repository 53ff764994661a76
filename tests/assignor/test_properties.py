"""Property tests for the assignor: one test per required property (issue #3, 1-8).

Each ``check_*`` body takes the assignor as an argument so ``test_mutants.py`` can run the
very same property against deliberately broken assignors and see it fail.
"""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from capgroup.assignor.model import MemberSpec, PartitionSpec, Plan
from capgroup.types import TopicPartition
from tests.assignor.invariants import (
    Assign,
    both_paths,
    check_budgets,
    check_cooperative,
    check_draining,
    check_exclusive,
    owned_from,
    phase2,
    top_claimants,
)
from tests.assignor.strategies import Case, cases

EXAMPLES = 300
props = settings(max_examples=EXAMPLES, deadline=None)


def with_owned(members: tuple[MemberSpec, ...], plan: Plan, generation: int) -> list[MemberSpec]:
    """Members as they rejoin after ``plan`` fully landed under ``generation``."""
    owned = owned_from(plan, generation)
    return [
        dataclasses.replace(
            m, capacity=dataclasses.replace(m.capacity, owned=owned.get(m.member_id, ()))
        )
        for m in members
    ]


def slots(m: MemberSpec) -> int:
    """How many partitions a member with one cost for every topic can hold."""
    adv = m.capacity
    if adv.draining or adv.max_partitions <= 0 or adv.memory_budget_bytes < 0:
        return 0
    cost = max(0, adv.default_partition_bytes)
    by_bytes = adv.memory_budget_bytes // cost if cost else adv.max_partitions
    return min(adv.max_partitions, by_bytes)


def max_placeable(case: Case) -> int:
    """Maximum b-matching of partitions to member slots (Kuhn), computed independently."""
    free = {m.member_id: slots(m) for m in case.members}
    holder: dict[int, list[int]] = {}  # member index -> partition indexes held
    match: dict[int, int] = {}

    def eligible(j: int) -> list[int]:
        return [k for k, m in enumerate(case.members) if case.partitions[j].topic in m.topics]

    def try_place(j: int, seen: set[int]) -> bool:
        for k in eligible(j):
            if k in seen or slots(case.members[k]) == 0:
                continue
            seen.add(k)
            if len(holder.get(k, [])) < free[case.members[k].member_id]:
                holder.setdefault(k, []).append(j)
                match[j] = k
                return True
            for other in list(holder[k]):
                if try_place(other, seen):
                    holder[k].remove(other)
                    holder[k].append(j)
                    match[j] = k
                    return True
        return False

    return sum(try_place(j, set()) for j in range(len(case.partitions)))


# ----------------------------------------------------------------------------- 1 budgets


def check_property_budgets(fn: Assign, case: Case) -> None:
    plan = fn(case.members, case.partitions, case.generation)
    check_budgets(case.members, plan)
    # Second round as the protocol runs it: pending moves landed, then reassigned.
    members = with_owned(case.members, plan, case.generation)
    check_budgets(members, fn(members, case.partitions, case.generation + 1))


@both_paths
@props
@given(cases())
def test_1_hard_budgets(assign: Assign, case: Case) -> None:
    check_property_budgets(assign, case)


# ----------------------------------------------------------------------------- 2 exclusive


def check_property_exclusive(fn: Assign, case: Case) -> None:
    check_exclusive(
        case.members, case.partitions, fn(case.members, case.partitions, case.generation)
    )


@both_paths
@props
@given(cases())
def test_2_exclusive(assign: Assign, case: Case) -> None:
    check_property_exclusive(assign, case)


# ----------------------------------------------------------------------------- 3 complete


def check_property_complete(fn: Assign, case: Case) -> None:
    plan = fn(case.members, case.partitions, case.generation)
    placed = len(case.partitions) - len(plan.unassigned)
    assert placed == max_placeable(case), (placed, max_placeable(case))
    if plan.unassigned:
        assert any("unassigned" in note for note in plan.notes)
    # Priority: owners that can keep all they own keep it; among partitions nobody owns,
    # a topic's hotter partitions are placed before its colder ones.
    tops = top_claimants(case.members, case.generation)
    by_id = {m.member_id: m for m in case.members}
    mine: dict[str, list[str]] = {}
    for tp, who in tops.items():
        if len(who) == 1:
            mine.setdefault(next(iter(who)), []).append(tp.topic)
    lost = set(plan.unassigned)
    for mid, topics in mine.items():
        m = by_id[mid]
        if all(t in m.topics for t in topics) and len(topics) <= slots(m):
            assert not any(tp in lost for tp, who in tops.items() if who == {mid})
    rate = {p.tp: p.rate for p in case.partitions}
    for tp in lost:
        for p in case.partitions:
            if p.topic == tp.topic and p.tp not in lost and p.tp not in tops:
                assert rate[p.tp] >= rate[tp], (p.tp, tp)


@both_paths
@props
@given(cases(uniform_cost=True))
def test_3_complete_when_possible(assign: Assign, case: Case) -> None:
    check_property_complete(assign, case)


# ----------------------------------------------------------------------------- 4 sticky


def check_property_sticky(fn: Assign, case: Case, victim: int) -> None:
    gen = case.generation
    first = fn(case.members, case.partitions, gen)
    members = with_owned(case.members, first, gen)
    again = fn(members, case.partitions, gen + 1)
    assert again.moved == 0
    assert not again.pending
    assert {m: set(t) for m, t in phase2(again).items()} == {
        m: set(t) for m, t in phase2(first).items()
    }
    # One member dies: only what it held moves.
    dead = members[victim % len(members)].member_id
    survivors = [m for m in members if m.member_id != dead]
    after = fn(survivors, case.partitions, gen + 2)
    before = {tp: m for m, tps in phase2(again).items() for tp in tps}
    now = {tp: m for m, tps in phase2(after).items() for tp in tps}
    for tp, m in before.items():
        if m != dead:
            assert now.get(tp) == m, (tp, m, now.get(tp))


@both_paths
@props
@given(cases(uniform_cost=True, uniform_rate=True, all_topics=True), st.integers(0, 100))
def test_4_sticky(assign: Assign, case: Case, victim: int) -> None:
    check_property_sticky(assign, case, victim)


@both_paths
@props
@given(cases(uniform_cost=True, all_topics=True, owned=False), st.integers(0, 100))
def test_4_sticky_with_rates(assign: Assign, case: Case, victim: int) -> None:
    """Hot partitions too: owners are not churned when a member dies."""
    check_property_sticky(assign, case, victim)


# ----------------------------------------------------------------------------- 5 balanced


def room(m: MemberSpec, tps: list[TopicPartition], topic: str) -> bool:
    """Whether ``m``, holding ``tps``, could take one more partition of ``topic``."""
    adv = m.capacity
    used = sum(max(0, adv.cost_of(tp.topic)) for tp in tps)
    return (
        not adv.draining
        and topic in m.topics
        and len(tps) < adv.max_partitions
        and used + max(0, adv.cost_of(topic)) <= adv.memory_budget_bytes
    )


def check_property_balanced(fn: Assign, case: Case) -> None:
    """With uniform rates no single move may lower the busier side of a pair."""
    plan = fn(case.members, case.partitions, case.generation)
    final = phase2(plan)
    by_id = {m.member_id: m for m in case.members}
    for a, tps in final.items():
        wa = by_id[a].capacity.weight
        for tp in tps:
            for b, other in final.items():
                if b != a and room(by_id[b], list(other), tp.topic):
                    wb = by_id[b].capacity.weight
                    assert (len(other) + 1) * wa >= len(tps) * wb, (a, len(tps), b, len(other))


def check_property_counts(fn: Assign, case: Case) -> None:
    """Equal members: counts within one, unless the smaller side is full."""
    final = phase2(fn(case.members, case.partitions, case.generation))
    by_id = {m.member_id: m for m in case.members}
    for a, tps in final.items():
        for b, other in final.items():
            if len(tps) > len(other) + 1:
                assert not room(by_id[b], list(other), "a"), (a, len(tps), b, len(other))


def check_property_converges(fn: Assign, case: Case) -> None:
    """Rounds as the protocol runs them (phase 1 becomes ownership) settle, then stay."""
    members = list(case.members)
    gen = case.generation
    quiet = 0
    for _ in range(6):
        plan = fn(members, case.partitions, gen)
        quiet = quiet + 1 if plan.moved == 0 and not plan.pending else 0
        if quiet == 2:
            return
        members = [
            dataclasses.replace(
                m,
                capacity=dataclasses.replace(
                    m.capacity,
                    owned=tuple(
                        dataclasses.replace(o, generation=gen)
                        for o in with_owned((m,), _only_phase1(plan, m.member_id), gen)[
                            0
                        ].capacity.owned
                    ),
                ),
            )
            for m in members
        ]
        gen += 1
    raise AssertionError("rounds did not settle")


def _only_phase1(plan: Plan, member_id: str) -> Plan:
    return Plan(assignment={member_id: plan.assignment[member_id]})


@both_paths
@props
@given(cases(uniform_rate=True, owned=False))
def test_5_balanced_locally_optimal(assign: Assign, case: Case) -> None:
    check_property_balanced(assign, case)


@both_paths
@props
@given(cases(uniform_cost=True, uniform_rate=True, equal=True, all_topics=True))
def test_5_balanced_counts_within_one(assign: Assign, case: Case) -> None:
    check_property_counts(assign, case)


@both_paths
@props
@given(cases())
def test_5_rounds_converge_and_stay(assign: Assign, case: Case) -> None:
    check_property_converges(assign, case)


# ----------------------------------------------------------------------------- 6 cooperative


def check_property_cooperative(fn: Assign, case: Case) -> None:
    check_cooperative(
        case.members, fn(case.members, case.partitions, case.generation), case.generation
    )


@both_paths
@props
@given(cases())
def test_6_cooperative(assign: Assign, case: Case) -> None:
    check_property_cooperative(assign, case)


# ----------------------------------------------------------------------------- 7 deterministic


def check_property_deterministic(fn: Assign, case: Case, seed: int) -> None:
    rng = random.Random(seed)
    members = [
        dataclasses.replace(
            m,
            capacity=dataclasses.replace(
                m.capacity, owned=tuple(rng.sample(m.capacity.owned, len(m.capacity.owned)))
            ),
        )
        for m in case.members
    ]
    rng.shuffle(members)
    partitions = list(case.partitions)
    rng.shuffle(partitions)
    assert fn(members, partitions, case.generation) == fn(
        case.members, case.partitions, case.generation
    )


@both_paths
@props
@given(cases(), st.integers(0, 2**32))
def test_7_deterministic(assign: Assign, case: Case, seed: int) -> None:
    check_property_deterministic(assign, case, seed)


# ----------------------------------------------------------------------------- 8 draining


def check_property_draining(fn: Assign, case: Case) -> None:
    check_draining(case.members, fn(case.members, case.partitions, case.generation))


@both_paths
@props
@given(cases())
def test_8_draining_members_get_nothing(assign: Assign, case: Case) -> None:
    check_property_draining(assign, case)


def test_partition_spec_is_hashable() -> None:
    """Guards the helpers above, which key dictionaries by ``PartitionSpec.tp``."""
    assert PartitionSpec("a", 1).tp == PartitionSpec("a", 1, 3.0).tp
