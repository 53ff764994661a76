"""Relay-only assignments (issue 13): properties of ``Plan.relay``.

Each ``check_*`` body takes the assignor as an argument so ``test_mutants.py`` can run it
against deliberately broken relay steps.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings

from capgroup.assignor.model import CapacityAdvertisement, MemberSpec, PartitionSpec, Plan
from capgroup.types import OwnedPartition, TopicPartition
from tests.assignor.invariants import (
    Assign,
    both_paths,
    check_all,
    check_budgets,
    top_claimants,
)
from tests.assignor.strategies import Case, cases
from tests.assignor.test_properties import with_owned

props = settings(max_examples=300, deadline=None)


def without_relay(members: tuple[MemberSpec, ...]) -> list[MemberSpec]:
    return [
        dataclasses.replace(m, capacity=dataclasses.replace(m.capacity, relay_partition_bytes=0))
        for m in members
    ]


def relay_room(m: MemberSpec, plan: Plan) -> bool:
    """Whether ``m`` could take one more relay-only partition after ``plan`` (either phase's
    batch holdings are bounded by phase 2's)."""
    adv = m.capacity
    r = adv.relay_partition_bytes
    if r <= 0 or adv.draining:
        return False
    batch = [*plan.assignment[m.member_id]]
    batch += [mv.tp for mv in plan.pending if mv.to_member == m.member_id]
    relayed = plan.relay.get(m.member_id, ())
    used = sum(max(0, adv.cost_of(tp.topic)) for tp in batch) + r * (len(relayed) + 1)
    return len(batch) + len(relayed) < adv.max_partitions and used <= adv.memory_budget_bytes


# ------------------------------------------------------------------ budgets and exactly-once


def check_property_relay_invariants(fn: Assign, case: Case) -> None:
    plan = fn(case.members, case.partitions, case.generation)
    check_all(case.members, case.partitions, plan, case.generation)
    # Second round as the protocol runs it: members claim what they own, relay-only included.
    members = with_owned(case.members, plan, case.generation)
    again = fn(members, case.partitions, case.generation + 1)
    check_all(members, case.partitions, again, case.generation + 1)


@both_paths
@props
@given(cases(relay=True))
def test_relay_budgets_exclusive_cooperative(assign: Assign, case: Case) -> None:
    check_property_relay_invariants(assign, case)


def check_property_relay_budgets(fn: Assign, case: Case) -> None:
    check_budgets(case.members, fn(case.members, case.partitions, case.generation))


# ------------------------------------------------------------------ relay uses only leftovers


def check_property_relay_leftovers(fn: Assign, case: Case) -> None:
    """Relay never changes batch placement, takes only what it leaves, and is empty when
    nobody relays or nothing is left."""
    plan = fn(case.members, case.partitions, case.generation)
    silent = fn(without_relay(case.members), case.partitions, case.generation)
    assert not silent.relay
    assert plan.assignment == silent.assignment
    assert plan.pending == silent.pending
    relayed = {tp for tps in plan.relay.values() for tp in tps}
    assert relayed | set(plan.unassigned) == set(silent.unassigned)
    if not silent.unassigned:
        assert not plan.relay
    assert all(plan.relay.values()), "members without relay-only partitions are left out"


@both_paths
@props
@given(cases(relay=True))
def test_relay_only_takes_what_batch_leaves(assign: Assign, case: Case) -> None:
    check_property_relay_leftovers(assign, case)


@both_paths
@props
@given(cases())
def test_relay_is_empty_when_nobody_relays(assign: Assign, case: Case) -> None:
    assert not assign(case.members, case.partitions, case.generation).relay


# ------------------------------------------------------------------ relay is maximal


def check_property_relay_maximal(fn: Assign, case: Case) -> None:
    """A partition left unassigned has no relaying home: it is claimed (it may only go to its
    valid owner, which then has no room) or no subscribed relaying member has room."""
    plan = fn(case.members, case.partitions, case.generation)
    tops = top_claimants(case.members, case.generation)
    for tp in plan.unassigned:
        who = tops.get(tp)
        if who is None:
            room = [m for m in case.members if tp.topic in m.topics and relay_room(m, plan)]
            assert not room, (tp, [m.member_id for m in room])
        elif len(who) == 1:
            (owner,) = who
            m = next(m for m in case.members if m.member_id == owner)
            assert tp.topic not in m.topics or not relay_room(m, plan), (tp, owner)


@both_paths
@props
@given(cases(relay=True))
def test_relay_places_every_leftover_it_can(assign: Assign, case: Case) -> None:
    check_property_relay_maximal(assign, case)


# ------------------------------------------------------------------ sticky


def check_property_relay_sticky(fn: Assign, case: Case) -> None:
    """A relay-only partition stays with its member while it has no batch home (the member
    claims it as owned in the next round), unless that member has no relay room left."""
    plan = fn(case.members, case.partitions, case.generation)
    members = with_owned(case.members, plan, case.generation)
    again = fn(members, case.partitions, case.generation + 1)
    batch = {tp for tps in again.assignment.values() for tp in tps}
    batch |= {mv.tp for mv in again.pending}
    by_id = {m.member_id: m for m in members}
    for mid, tps in plan.relay.items():
        for tp in tps:
            if tp in batch:
                continue
            assert tp in again.relay.get(mid, ()) or not relay_room(by_id[mid], again), (tp, mid)


@both_paths
@props
@given(cases(relay=True))
def test_relay_only_is_sticky(assign: Assign, case: Case) -> None:
    check_property_relay_sticky(assign, case)


# ------------------------------------------------------------------ examples


def _member(mid: str, relay: int, owned: tuple[OwnedPartition, ...] = ()) -> MemberSpec:
    return MemberSpec(
        mid,
        frozenset({"t"}),
        CapacityAdvertisement(
            max_partitions=10,
            memory_budget_bytes=5,
            partition_bytes={},
            default_partition_bytes=2,
            relay_partition_bytes=relay,
            owned=owned,
        ),
    )


PARTS = [PartitionSpec("t", p) for p in range(6)]


@both_paths
def test_relay_spreads_over_relaying_members_and_costs_their_budget(assign: Assign) -> None:
    plan = assign([_member("a", 1), _member("b", 1), _member("c", 0)], PARTS, 1)
    # Batch: two each for a and b, two for c; nothing is left to relay.
    assert not plan.relay
    plan = assign([_member("a", 1), _member("b", 1)], PARTS, 1)
    assert {m: len(t) for m, t in plan.assignment.items()} == {"a": 2, "b": 2}
    assert plan.relay == {"a": (TopicPartition("t", 4),), "b": (TopicPartition("t", 5),)}
    assert plan.unassigned == ()
    assert any("relay-only" in n for n in plan.notes)
    assert plan.moved == 6


@both_paths
def test_relay_only_goes_only_to_its_owner(assign: Assign) -> None:
    t4 = TopicPartition("t", 4)
    owned = tuple(OwnedPartition("t", p, 1) for p in (0, 1, 4))
    plan = assign([_member("a", 1, owned), _member("b", 1)], PARTS[:5], 2)
    assert plan.relay == {"a": (t4,)}
    assert plan.moved == 2  # t2, t3 to b; a keeps t0, t1 and relays t4 as before
    # An owner without relay room loses it, but nobody else relays it in the same round
    # (that would hand it straight between live members): it is free next round.
    adv = dataclasses.replace(_member("a", 2, owned).capacity)
    plan = assign([MemberSpec("a", frozenset({"t"}), adv), _member("b", 1)], PARTS[:5], 2)
    assert t4 in plan.unassigned
    assert not plan.relay
