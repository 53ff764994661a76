"""``PartitionTable``: the leader's partitions as columns, planned exactly as the same
partitions given as a list of specs, on every path (reference, numpy, compiled core)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgroup.assignor import adapter, columnar, native
from capgroup.assignor.balance import reference_assign
from capgroup.assignor.model import PartitionSpec, PartitionTable
from capgroup.assignor.workloads import synthetic_group
from tests.assignor.invariants import leader_metadata
from tests.assignor.strategies import Case, cases

IN_CI = os.environ.get("CI", "").lower() == "true"

specs = st.lists(
    st.builds(
        PartitionSpec,
        st.sampled_from(["a", "b", "events", "z"]),
        st.integers(0, 40),
        st.sampled_from([0.0, 1.0, 2.5, 100.0]),
    ),
    max_size=60,
)


def unique(partitions: list[PartitionSpec]) -> list[PartitionSpec]:
    """The first spec of every (topic, partition)."""
    seen: dict[tuple[str, int], PartitionSpec] = {}
    for p in partitions:
        seen.setdefault((p.topic, p.partition), p)
    return list(seen.values())


@settings(max_examples=300, deadline=None)
@given(specs)
def test_a_table_is_its_specs_sorted(partitions: list[PartitionSpec]) -> None:
    partitions = unique(partitions)
    table = PartitionTable.of_specs(partitions)
    expected = sorted(partitions, key=lambda p: (p.topic, p.partition))
    assert list(table) == expected
    assert len(table) == len(expected)
    assert [table[k] for k in range(len(table))] == expected
    assert [table[-k - 1] for k in range(len(table))] == expected[::-1]
    assert table[1:-1:2] == expected[1:-1:2]
    assert table.per_topic() == {
        t: sum(1 for p in expected if p.topic == t) for t in {p.topic for p in expected}
    }
    dense = all(
        sorted(p.partition for p in expected if p.topic == t) == list(range(n))
        for t, n in table.per_topic().items()
    )
    assert (table.numbers is None) == dense
    assert (table.rates is None) == all(p.rate == 0.0 for p in expected)
    with pytest.raises(IndexError):
        table[len(table)]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=5), st.sets(st.integers(-3, 30))))
def test_of_numbers_is_what_metadata_lists(numbers: dict[str, set[int]]) -> None:
    table = PartitionTable.of_numbers({t: list(ns) + list(ns) for t, ns in numbers.items()})
    expected = [PartitionSpec(t, n) for t in sorted(numbers) for n in sorted(numbers[t])]
    assert list(table) == expected
    # A topic without partitions has nothing to place: left out, as from a list of specs.
    assert table.topics == tuple(t for t in sorted(numbers) if numbers[t])


def test_of_numbers_keeps_numbers_that_only_end_like_a_dense_run() -> None:
    """{-1, 1} ends at count - 1 but is not 0..1: the numbers column stays."""
    table = PartitionTable.of_numbers({"a": [1, -1]})
    assert table.numbers is not None
    assert list(table) == [PartitionSpec("a", -1), PartitionSpec("a", 1)]


def test_of_counts_numbers_each_topic_from_zero() -> None:
    table = PartitionTable.of_counts({"b": 2, "a": 1, "empty": 0})
    assert list(table) == [PartitionSpec("a", 0), PartitionSpec("b", 0), PartitionSpec("b", 1)]
    assert table.numbers is None
    assert table.topics == ("a", "b")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((["b", "a"], [1, 1]), "strictly ascending"),
        ((["a", "a"], [1, 1]), "strictly ascending"),
        ((["a"], [1, 2]), "1 topics but 2 counts"),
        ((["a"], [-1]), "negative"),
        ((["a"], [2], [1, 0]), "not strictly ascending"),
        ((["a"], [2], [0, 0]), "not strictly ascending"),
        ((["a"], [2], [0]), "1 numbers for 2 partitions"),
        ((["a"], [2], None, [1.0]), "1 rates for 2 partitions"),
    ],
)
def test_inconsistent_columns_are_refused(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PartitionTable(*args)  # type: ignore[arg-type]


def test_a_repeated_partition_is_refused() -> None:
    with pytest.raises(ValueError, match="events-3 appears twice"):
        PartitionTable.of_specs([PartitionSpec("events", 3), PartitionSpec("events", 3, 1.0)])


@pytest.mark.parametrize("core", ["1", "0"], ids=["compiled", "numpy"])
@settings(max_examples=150, deadline=None)
@given(case=cases(relay=True))
def test_a_table_plans_as_its_specs(case: Case, core: str) -> None:
    """The same plan and the same leader bytes from a table as from its specs, on the
    compiled core and on the numpy path (the reference reads the table as specs)."""
    if core == "1" and not native.available() and not IN_CI:
        pytest.skip("capgroup._native is not built")
    os.environ[native.ENV] = core
    try:
        partitions = unique(list(case.partitions))
        table = PartitionTable.of_specs(partitions)
        plan = columnar.assign(case.members, table, case.generation)
        assert plan == reference_assign(case.members, partitions, case.generation)
        if core == "1":
            assert plan == native.plan(case.members, table, case.generation, force=True)
        raw = leader_metadata(case.members)
        led = adapter.plan_group(raw, table, case.generation)
        assert led == adapter.plan_group(raw, partitions, case.generation)
    finally:
        os.environ.pop(native.ENV, None)


@pytest.mark.parametrize("core", ["1", "0"], ids=["compiled", "numpy"])
def test_a_large_table_plans_as_its_specs(core: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the small-group size the leader takes the fast paths; same plan and bytes."""
    if core == "1" and not native.available() and not IN_CI:
        pytest.skip("capgroup._native is not built")
    monkeypatch.setenv(native.ENV, core)
    members, partitions = synthetic_group(20_000, 70, seed=3, rates=True)
    # Sparse numbers on one topic: the table keeps its numbers column.
    partitions = [p for p in partitions if not (p.topic == "topic-004" and p.partition % 3 == 0)]
    table = PartitionTable.of_specs(partitions)
    assert table.numbers is not None
    assert table.rates is not None
    raw = leader_metadata(members)
    assert adapter.plan_group(raw, table, 1) == adapter.plan_group(raw, partitions, 1)
