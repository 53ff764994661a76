"""The fast path against the reference: identical plans on every generated group.

:func:`capgroup.assignor.columnar.assign_numpy` (columnar) and
:func:`capgroup.assignor.balance.reference_assign` (plain Python) must agree on every field
of the plan; ``Plan.assignment`` is compared as a mapping (the fast path's is lazy). The
compiled core has the same tests in ``test_native.py``; the leader-path tests here run
whichever path ``plan_group`` takes (the core when it is built).
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from capgroup.assignor import adapter
from capgroup.assignor.adapter import group_figures, plan_group, with_claimed_rates
from capgroup.assignor.balance import reference_assign
from capgroup.assignor.columnar import assign_numpy as assign
from capgroup.assignor.model import MemberSpec, PartitionSpec, Plan
from capgroup.assignor.workloads import after_rebalance, synthetic_group, without_member
from capgroup.protocol.capacity import (
    AdvertisementEncodeError,
    decode_advertisement,
    encode_advertisement,
)
from capgroup.protocol.consumer import (
    decode_member_metadata,
    encode_member_assignment,
    encode_member_metadata,
)
from tests.assignor.strategies import Case, cases

EXAMPLES = 300


def assert_same(case: Case) -> Plan:
    """Both paths' plans for ``case``, which must be equal field by field."""
    fast = assign(case.members, case.partitions, case.generation)
    ref = reference_assign(case.members, case.partitions, case.generation)
    for name in ("pending", "unassigned", "moved", "notes", "relay"):
        assert getattr(fast, name) == getattr(ref, name), name
    assert list(fast.assignment) == list(ref.assignment)
    assert dict(fast.assignment) == dict(ref.assignment)
    assert fast == ref
    return ref


def scrambled(case: Case, seed: int) -> Case:
    """``case`` with members and partitions shuffled, some partitions listed twice (with
    other rates) and some rates not usable (NaN, negative, infinite)."""
    rng = random.Random(seed)
    partitions = list(case.partitions)
    partitions += [
        dataclasses.replace(p, rate=rng.choice([0.0, 5.0, float("nan"), -1.0, float("inf")]))
        for p in rng.sample(partitions, min(3, len(partitions)))
    ]
    members = list(case.members)
    rng.shuffle(partitions)
    rng.shuffle(members)
    return Case(tuple(members), tuple(partitions), case.generation)


@settings(max_examples=EXAMPLES, deadline=None)
@given(cases(relay=True))
def test_fast_path_equals_reference(case: Case) -> None:
    assert_same(case)


@settings(max_examples=EXAMPLES, deadline=None)
@given(cases(max_members=4), st.integers(0, 2**32))
def test_fast_path_equals_reference_on_scrambled_input(case: Case, seed: int) -> None:
    assert_same(scrambled(case, seed))


@settings(max_examples=100, deadline=None)
@given(cases(relay=True), st.integers(3, 7))
def test_fast_path_equals_reference_across_rebalances(case: Case, generation: int) -> None:
    """Feed each plan back as ownership (claims at, below and above the generation)."""
    members = list(case.members)
    for gen in (generation, generation + 1):
        plan = assert_same(Case(tuple(members), case.partitions, gen))
        members = after_rebalance(members, plan, gen - 1)[1:] or members


def test_fast_path_equals_reference_on_large_groups() -> None:
    for rates in (False, True):
        members, partitions = synthetic_group(20_000, 300, seed=3, rates=rates)
        plan = assert_same(Case(tuple(members), tuple(partitions), 1))
        survivors = without_member(after_rebalance(members, plan, 1), 150)
        assert_same(Case(tuple(survivors), tuple(partitions), 2))


def test_topics_out_of_order_and_sparse_partition_numbers() -> None:
    specs = [
        MemberSpec(
            f"m{k}",
            frozenset({"x", "y"}),
            dataclasses.replace(synthetic_group(1, 1)[0][0].capacity, max_partitions=4),
        )
        for k in range(3)
    ]
    partitions = [PartitionSpec(t, p) for t in ("y", "x") for p in (7, 3, 100, 2**31 - 1)]
    assert_same(Case(tuple(specs), tuple(partitions), 1))


def leader_by_reference(
    raw: list[tuple[str, str | None, bytes]], partitions: list[PartitionSpec], generation: int
) -> tuple[Plan, dict[str, bytes]]:
    """What ``plan_group`` computed before the fast path: every claim an object, the rates
    filled in by ``with_claimed_rates``, the reference assignor, one encoding per member."""
    specs = []
    for member_id, instance_id, data in raw:
        sub = decode_member_metadata(data)
        adv = decode_advertisement(sub.user_data)
        specs.append(MemberSpec(member_id, frozenset(sub.topics), adv, instance_id))
    plan = reference_assign(specs, with_claimed_rates(partitions, specs), generation)
    info = group_figures(plan, specs, partitions, generation, members=len(raw))
    assignments = {}
    for member_id, _, _ in raw:
        relay = plan.relay.get(member_id, ())
        batch = (*plan.assignment[member_id], *relay)
        told = dataclasses.replace(info, relay_only=relay) if relay else info
        assignments[member_id] = encode_member_assignment(batch, told)
    return plan, assignments


@settings(max_examples=150, deadline=None)
@given(cases(relay=True), st.integers(0, 2**32))
def test_leader_path_equals_reference(case: Case, seed: int) -> None:
    """``plan_group`` (claims decoded as columns, rates claimed in bulk, assignments encoded
    from arrays) against the object path: same plan, same bytes for every member."""
    raw = []
    for m in case.members:
        try:
            user_data = encode_advertisement(m.capacity)
        except AdvertisementEncodeError:
            continue  # values the wire cannot carry (negative caps and budgets)
        raw.append((m.member_id, None, encode_member_metadata(m.topics, user_data)))
    # As the engine lists them: no rate known, so the claims' rates decide the loads.
    partitions = [dataclasses.replace(p, rate=0.0) for p in scrambled(case, seed).partitions]
    plan, assignments = leader_by_reference(raw, partitions, case.generation)
    # Generated groups are small: once forced onto the columns, once as the leader plans them.
    for small_below in (0, adapter.SMALL_GROUP_PARTITIONS):
        with mock.patch.object(adapter, "SMALL_GROUP_PARTITIONS", small_below):
            led = plan_group(raw, partitions, case.generation)
        assert led.plan == plan, small_below
        assert led.assignments == assignments, small_below


def test_a_small_group_is_planned_without_loading_numpy() -> None:
    """A member of a small group becomes its leader without paying numpy's import (about
    0.1 s on the first plan, which the group's join waits for) or its memory."""
    script = """
import sys
from capgroup.assignor.adapter import plan_group
from capgroup.assignor.model import PartitionSpec
from capgroup.protocol.capacity import encode_advertisement
from capgroup.protocol.consumer import encode_member_metadata
from capgroup.types import CapacityAdvertisement
adv = CapacityAdvertisement(max_partitions=12, memory_budget_bytes=1 << 30, partition_bytes={})
raw = [("m", None, encode_member_metadata(["t"], encode_advertisement(adv)))]
plan = plan_group(raw, [PartitionSpec("t", p) for p in range(12)], 1)
assert len(plan.plan.assignment["m"]) == 12, plan
print("numpy" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out
