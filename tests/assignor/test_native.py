"""The compiled core (``capgroup._native``) against the reference: identical plans.

:func:`capgroup.assignor.native.plan` must agree with
:func:`capgroup.assignor.balance.reference_assign` on every field of the plan (``Plan.assignment``
compared as a mapping), on generated groups (rates, ownership at and around the generation,
pending moves, relay, unassigned partitions, scrambled and duplicated input) and on the
benchmark's large groups; and the leader's bulk encoding must write the bytes the Python
encoder writes. The extension is optional, so these tests skip without it, except under
``CI=true``, where a missing extension is a failure.
"""

from __future__ import annotations

import dataclasses
import math
import os
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgroup.assignor import adapter, columnar, native
from capgroup.assignor.adapter import with_claimed_rates
from capgroup.assignor.balance import reference_assign
from capgroup.assignor.model import MemberSpec, OwnedPartition, PartitionSpec, Plan
from capgroup.assignor.workloads import after_rebalance, synthetic_group, without_member
from capgroup.protocol.capacity import (
    OwnedColumns,
    decode_advertisement_columns,
)
from capgroup.protocol.consumer import (
    decode_member_metadata,
    encode_member_assignment,
    encode_member_assignment_columns,
)
from tests.assignor.invariants import leader_metadata, native_assign
from tests.assignor.strategies import Case, cases
from tests.assignor.test_differential import scrambled

EXAMPLES = 300
IN_CI = os.environ.get("CI", "").lower() == "true"

if not native.available() and not IN_CI:
    pytest.skip("capgroup._native is not built (pip install needs cargo)", allow_module_level=True)


@pytest.fixture(autouse=True)
def core_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core is what these tests test, whatever ``CAPGROUP_ASSIGNOR_NATIVE`` says."""
    monkeypatch.setenv(native.ENV, "1")


def test_the_extension_is_built() -> None:
    """Under CI the extension must be there: the rest of this module would skip silently."""
    assert native.available(), "capgroup._native did not import"


def assert_same(case: Case) -> Plan:
    """The native and the reference plans of ``case``, equal field by field."""
    nat = native_assign(case.members, case.partitions, case.generation)
    ref = reference_assign(case.members, case.partitions, case.generation)
    for name in ("pending", "unassigned", "moved", "notes", "relay"):
        assert getattr(nat, name) == getattr(ref, name), name
    assert list(nat.assignment) == list(ref.assignment)
    assert dict(nat.assignment) == dict(ref.assignment)
    assert nat == ref
    return ref


@settings(max_examples=EXAMPLES, deadline=None)
@given(cases(relay=True))
def test_native_equals_reference(case: Case) -> None:
    assert_same(case)


@settings(max_examples=EXAMPLES, deadline=None)
@given(cases())
def test_native_equals_reference_without_relay(case: Case) -> None:
    assert_same(case)


@settings(max_examples=EXAMPLES, deadline=None)
@given(cases(uniform_cost=True, equal=True, all_topics=True, draining=False))
def test_native_equals_reference_on_even_groups(case: Case) -> None:
    assert_same(case)


@settings(max_examples=EXAMPLES, deadline=None)
@given(cases(max_members=4), st.integers(0, 2**32))
def test_native_equals_reference_on_scrambled_input(case: Case, seed: int) -> None:
    assert_same(scrambled(case, seed))


@settings(max_examples=100, deadline=None)
@given(cases(relay=True), st.integers(3, 7))
def test_native_equals_reference_across_rebalances(case: Case, generation: int) -> None:
    """Each plan fed back as ownership (claims at, below and above the generation)."""
    members = list(case.members)
    for gen in (generation, generation + 1):
        plan = assert_same(Case(tuple(members), case.partitions, gen))
        members = after_rebalance(members, plan, gen - 1)[1:] or members


@settings(max_examples=150, deadline=None)
@given(cases(relay=True), st.integers(0, 2**32))
def test_native_with_claim_columns_and_claimed_rates(case: Case, seed: int) -> None:
    """The leader's call: claims as columns, unknown rates taken from the claims."""
    partitions = [dataclasses.replace(p, rate=0.0) for p in scrambled(case, seed).partitions]
    owned = [OwnedColumns.of(m.capacity.owned) if m.capacity.owned else None for m in case.members]
    bare = [
        dataclasses.replace(m, capacity=dataclasses.replace(m.capacity, owned=()))
        for m in case.members
    ]
    ref = reference_assign(
        case.members, with_claimed_rates(partitions, case.members), case.generation
    )
    nat = native.plan(bare, partitions, case.generation, owned, claimed_rates=True)
    assert nat is not None
    assert nat == ref
    numpy_path = columnar._pipeline(bare, partitions, case.generation, owned, True)
    assert numpy_path == ref


@pytest.mark.parametrize("rates", [False, True])
def test_native_equals_reference_on_large_groups(rates: bool) -> None:
    members, partitions = synthetic_group(20_000, 300, seed=3, rates=rates)
    plan = assert_same(Case(tuple(members), tuple(partitions), 1))
    survivors = without_member(after_rebalance(members, plan, 1), 150)
    assert_same(Case(tuple(survivors), tuple(partitions), 2))


def test_native_equals_reference_at_the_benchmark_size() -> None:
    members, partitions = synthetic_group(100_000, 1_000, seed=1, rates=True)
    plan = assert_same(Case(tuple(members), tuple(partitions), 1))
    survivors = without_member(after_rebalance(members, plan, 1), 500)
    assert_same(Case(tuple(survivors), tuple(partitions), 2))


def test_a_short_group_with_sparse_numbers_and_unknown_topics() -> None:
    """Unassigned partitions, topics nobody subscribes to, numbers that are not 0..n-1,
    claims of partitions that do not exist."""
    adv = synthetic_group(1, 1)[0][0].capacity
    specs = [
        MemberSpec(
            f"m{k}",
            frozenset({"x", "y", "ghost"}),
            dataclasses.replace(
                adv,
                max_partitions=3,
                owned=(
                    OwnedPartition("y", 7, 1, 5.0),
                    OwnedPartition("x", 99, 1),
                    OwnedPartition("nope", 0, 1),
                ),
            ),
        )
        for k in range(3)
    ]
    partitions = [
        PartitionSpec(t, p, 1.5 * p) for t in ("y", "x", "z") for p in (7, 3, 100, 2**31 - 1)
    ]
    plan = assert_same(Case(tuple(specs), tuple(partitions), 1))
    assert plan.unassigned


def test_inputs_it_does_not_take_go_to_the_numpy_path() -> None:
    """Integers beyond what the core computes with (byte counts above 2**127 here)."""
    members, partitions = synthetic_group(10, 2, seed=1)
    huge = [
        dataclasses.replace(
            m,
            capacity=dataclasses.replace(
                m.capacity, memory_budget_bytes=1 << 140, default_partition_bytes=1 << 130
            ),
        )
        for m in members
    ]
    assert native.plan(huge, partitions, 1) is None
    assert columnar.assign(huge, partitions, 1) == reference_assign(huge, partitions, 1)


def test_duplicate_member_ids_raise_as_the_reference_does() -> None:
    members, partitions = synthetic_group(10, 2, seed=1)
    twice = [members[0], members[0]]
    with pytest.raises(ValueError, match="duplicate member id 'member-00000'"):
        native.plan(twice, partitions, 1)


def test_the_switch_turns_the_core_off(monkeypatch: pytest.MonkeyPatch) -> None:
    members, partitions = synthetic_group(100, 3, seed=1)
    monkeypatch.setenv(native.ENV, "0")
    assert not native.enabled()
    assert native.plan(members, partitions, 1) is None
    assert columnar.assign(members, partitions, 1) == reference_assign(members, partitions, 1)


@pytest.mark.parametrize(("n_partitions", "n_members"), [(3_000, 7), (20_000, 300)])
def test_bulk_encoding_matches_the_python_encoder(n_partitions: int, n_members: int) -> None:
    members, partitions = synthetic_group(n_partitions, n_members, seed=5, n_topics=13)
    plan = native_assign(members, partitions, 1)
    columns = adapter._columns(plan)
    assert columns is not None
    user_data = b"CA\x01\x01payload"
    bulk = columns.encode_all(user_data)
    assert bulk is not None
    assert list(bulk) == list(plan.assignment)
    for member_id, data in bulk.items():
        assert data == encode_member_assignment_columns(*columns.by_topic(member_id), user_data)
    numpy_plan = columnar.assign_numpy(members, partitions, 1)
    numpy_columns = adapter._columns(numpy_plan)
    assert numpy_columns is not None
    assert numpy_columns.encode_all(user_data) == bulk


@settings(max_examples=100, deadline=None)
@given(cases(relay=True))
def test_decoded_metadata_equals_the_python_decoders(case: Case) -> None:
    """``decode_members`` returns what the Python decoders return, or None; and a small group
    planned from it (claims moved back onto the advertisements) is the leader's plan."""
    raw = leader_metadata(case.members)
    datas = [data for _, _, data in raw]
    found = native.decode_members([*datas, b"garbage", datas[0][:-1] if datas else b""])
    assert found is not None
    assert found[-2] is None
    for data, got in zip(datas, found, strict=False):
        assert got is not None
        sub, adv, claims = got
        python_sub = decode_member_metadata(data)
        python_adv, python_cols = decode_advertisement_columns(python_sub.user_data)
        assert (sub.version, sub.topics) == (python_sub.version, python_sub.topics)
        assert adv == python_adv
        cols = native.as_columns([claims])
        assert cols is not None
        owned = cols[0].owned() if cols[0] is not None else ()
        assert owned == python_cols.owned()
    partitions = list(case.partitions)
    subs = [(mid, iid, got[0]) for (mid, iid, _), got in zip(raw, found, strict=False) if got]
    given_ = [(got[1], got[2]) for got in found[: len(raw)] if got]
    led = adapter.plan_subscriptions(
        subs, partitions, case.generation, cooperative=True, advertisements=given_
    )
    assert led.plan == adapter.plan_group(raw, partitions, case.generation).plan


@settings(max_examples=100, deadline=None)
@given(cases(relay=True), st.booleans(), st.integers(0, 3))
def test_a_group_decoded_as_profiles_is_planned_as_member_by_member(
    case: Case, cooperative: bool, headroom: int
) -> None:
    """``plan_group`` of a group the core decodes as profiles (per distinct subscription and
    advertisement, ``_plan_profiles``) is the whole ``GroupPlan`` the member-by-member path
    makes: plan, bytes, figures and members (built when read, equal to that path's tuple)."""
    raw = leader_metadata(case.members)
    partitions = list(case.partitions)
    with mock.patch.object(adapter, "SMALL_GROUP_PARTITIONS", 0):
        by_profile = adapter.plan_group(
            raw, partitions, case.generation, cooperative=cooperative, headroom_members=headroom
        )
        with mock.patch.object(native, "decode_group", return_value=None):
            by_member = adapter.plan_group(
                raw, partitions, case.generation, cooperative=cooperative, headroom_members=headroom
            )
    assert isinstance(by_profile.members, adapter._ProfileMembers)
    assert by_profile == by_member
    assert len(by_profile.members) == len(by_member.members)
    assert list(by_profile.members) == list(by_member.members)
    assert by_member.members == by_profile.members  # either side of ==
    if by_member.members:
        assert by_profile.members[-1] == by_member.members[-1]
        assert by_profile.members[:2] == by_member.members[:2]


def test_a_group_with_undecodable_metadata_is_not_planned_as_profiles() -> None:
    """One member the core leaves to the Python decoders (garbage here) sends the whole
    group down the member-by-member path, which rejects that member alone."""
    members, partitions = synthetic_group(3_000, 4, seed=2)
    raw = [*leader_metadata(members), ("bad", None, b"garbage")]
    assert native.decode_group([data for _, _, data in raw]) is None
    led = adapter.plan_group(raw, partitions, 1)
    assert set(led.rejected) == {"bad"}
    assert led.assignments["bad"] == encode_member_assignment((), led.info)
    assert sum(len(led.plan.assignment.get(m.member_id, ())) for m in members) == 3_000


def test_the_core_keeps_its_working_memory_within_bounds() -> None:
    """A large plan's freed blocks are kept for the next plan (no new pages from the kernel),
    never beyond the bound, and given back on request; plans do not change."""
    members, partitions = synthetic_group(100_000, 300, seed=5)
    native.release_memory()
    first = native_assign(members, partitions, 1)
    kept = native.kept_bytes()
    assert kept > 8 * 100_000  # at least the largest per-partition column
    again = native_assign(members, partitions, 1)
    # The second plan drew its blocks from what the first left: the total does not grow.
    assert native.kept_bytes() == kept
    assert again == first
    assert kept <= 512 << 20
    assert native.release_memory() == kept
    assert native.kept_bytes() == 0
    assert native_assign(members, partitions, 1) == first


def test_the_plan_columns_are_read_only_buffers_that_outlive_the_plan() -> None:
    """The core hands its output columns over as int64 buffers (no copy): read-only, of the
    right length and contents, and alive as long as a view needs them."""
    members, partitions = synthetic_group(3_000, 7, seed=2)
    plan = native_assign(members, partitions, 1)
    columns = adapter._columns(plan)
    assert columns is not None
    raw = columns._raw
    assert raw is not None
    topic, number, order, bounds = (memoryview(c) for c in raw)  # type: ignore[arg-type]
    view = number
    assert (view.readonly, view.format, view.itemsize, view.ndim) == (True, "q", 8, 1)
    assert view.tolist() == [p.partition for p in partitions]
    assert len(order) == len(partitions)
    assert len(bounds) == len(members) + 1
    with pytest.raises(TypeError):
        view[0] = 1
    del plan, columns, raw, topic, order, bounds
    assert view.tolist() == [p.partition for p in partitions]


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=0.0, allow_infinity=False, allow_nan=False),
            st.floats(min_value=0.0, max_value=1e-300, allow_subnormal=True),
            st.floats(min_value=0.0, max_value=1e3),
            st.integers(0, 2**53).map(float),
            st.floats(allow_nan=False),  # negatives, infinities and huge values take the other path
        ),
        max_size=60,
    )
)
def test_the_cores_fsum_is_math_fsum(values: list[float]) -> None:
    """Load units rest on an exact, correctly rounded sum of the rates: the core's (a one-pass
    exact sum for non-negative values, CPython's partials otherwise) is ``math.fsum``, ties
    and subnormals included; where ``math.fsum`` overflows the core declines."""
    ext = native._ext
    assert ext is not None
    try:
        expected: float | None = math.fsum(values)
    except (OverflowError, ValueError):
        expected = None
    got = ext.fsum(values)
    if expected is None or math.isnan(expected) or math.isinf(expected):
        assert got is None or got == expected or (math.isnan(got) and math.isnan(expected))
    else:
        assert got == expected
        assert math.copysign(1, got) == math.copysign(1, expected)


def test_the_cores_fsum_rounds_ties_to_even() -> None:
    ext = native._ext
    assert ext is not None
    for values in ([1.0, 2.0**-53], [1.0 + 2**-52, 2.0**-53], [1.0, 2.0**-53, 2.0**-53]):
        assert ext.fsum(values) == math.fsum(values)
    assert ext.fsum([2.0**-1074] * 3) == 3 * 2.0**-1074
    assert ext.fsum([1e308, 1e308]) is None
