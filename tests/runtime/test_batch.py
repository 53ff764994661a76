"""Records, batches and the partition buffer: exact sizes, due triggers, cuts, offset guard."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capgroup.runtime.batch import (
    Batch,
    BatchLimits,
    FlushReason,
    PartitionBuffer,
    Record,
    record_size,
)
from capgroup.settings import CapgroupSettings
from capgroup.types import TopicPartition
from tests.runtime._records import TP, naive_size, rec, records_of

WIDE = BatchLimits(max_records=1_000_000, max_bytes=1 << 40, max_age=3600.0)


def test_record_size_counts_key_value_and_utf8_header_names() -> None:
    record = rec(0, key=b"abc", value=b"12345", headers=(("é", b"xy"), ("n", b"")))
    # "é" is two bytes in UTF-8: 3 + 5 + (2 + 2) + (1 + 0)
    assert record_size(record) == 13


def test_record_size_treats_missing_key_and_value_as_empty() -> None:
    assert record_size(rec(0, key=None, value=None)) == 0
    assert record_size(rec(0, key=None, value=b"ab")) == 2


@given(records_of())
def test_record_size_matches_independent_count(record: Record) -> None:
    assert record_size(record) == naive_size(record)


def test_batch_exposes_offsets_size_count_and_age() -> None:
    records = [rec(5, value=b"aa"), rec(9, value=b"bbb")]
    batch = Batch.of(TP, records, started_at=100.0, cut_at=102.5)
    assert (batch.first_offset, batch.last_offset, batch.next_offset) == (5, 9, 10)
    assert batch.record_count == len(batch) == 2
    assert batch.size_bytes == naive_size(records[0]) + naive_size(records[1])
    assert batch.age == 2.5
    assert batch.age_at(110.0) == 10.0
    assert list(batch) == records


def test_batch_refuses_to_be_empty() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        Batch.of(TP, [], started_at=0.0)


def test_limits_from_settings_convert_age_to_seconds() -> None:
    settings = CapgroupSettings(batch_max_records=7, batch_max_bytes=99, batch_max_age_ms=1500)
    assert BatchLimits.from_settings(settings) == BatchLimits(7, 99, 1.5)


@pytest.mark.parametrize("bad", [(0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0)])
def test_limits_must_be_positive(bad: tuple[int, int, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        BatchLimits(*bad)


def test_due_on_record_count() -> None:
    buffer = PartitionBuffer(TP, BatchLimits(max_records=3, max_bytes=1 << 20, max_age=60.0))
    for offset in range(2):
        buffer.append(rec(offset), now=0.0)
    assert buffer.due(0.0) is None
    assert not buffer.is_full
    buffer.append(rec(2), now=0.0)
    assert buffer.due(0.0) is FlushReason.RECORDS
    assert buffer.is_full


def test_due_on_bytes() -> None:
    buffer = PartitionBuffer(TP, BatchLimits(max_records=100, max_bytes=10, max_age=60.0))
    buffer.append(rec(0, key=None, value=b"x" * 6), now=0.0)
    assert buffer.due(0.0) is None
    buffer.append(rec(1, key=None, value=b"x" * 4), now=0.0)
    assert buffer.size_bytes == 10
    assert buffer.due(0.0) is FlushReason.BYTES
    assert buffer.is_full


def test_due_on_age_of_oldest_record() -> None:
    buffer = PartitionBuffer(TP, BatchLimits(max_records=100, max_bytes=1 << 20, max_age=2.0))
    assert buffer.due(1e9) is None
    assert buffer.due_at() is None
    buffer.append(rec(0), now=10.0)
    buffer.append(rec(1), now=11.5)
    assert buffer.due_at() == 12.0
    assert buffer.due(11.999) is None
    assert buffer.due(12.0) is FlushReason.AGE
    assert not buffer.is_full


def test_take_respects_record_cap_and_keeps_the_rest() -> None:
    buffer = PartitionBuffer(TP, BatchLimits(max_records=2, max_bytes=1 << 20, max_age=60.0))
    for offset, now in ((0, 1.0), (1, 2.0), (2, 3.0)):
        buffer.append(rec(offset), now=now)
    first = buffer.take(now=4.0)
    assert [r.offset for r in first] == [0, 1]
    assert (first.started_at, first.cut_at, first.age) == (1.0, 4.0, 3.0)
    assert buffer.record_count == 1
    assert buffer.started_at == 3.0
    assert buffer.size_bytes == record_size(rec(2))
    assert [r.offset for r in buffer.take(now=5.0)] == [2]
    assert not buffer


def test_take_respects_byte_cap_but_always_takes_one_record() -> None:
    buffer = PartitionBuffer(TP, BatchLimits(max_records=100, max_bytes=5, max_age=60.0))
    buffer.append(rec(0, key=None, value=b"x" * 9), now=0.0)
    buffer.append(rec(1, key=None, value=b"x" * 2), now=0.0)
    buffer.append(rec(2, key=None, value=b"x" * 3), now=0.0)
    buffer.append(rec(3, key=None, value=b"x" * 1), now=0.0)
    oversized = buffer.take(now=0.0)
    assert [r.offset for r in oversized] == [0]
    assert oversized.size_bytes == 9
    fitting = buffer.take(now=0.0)
    assert [r.offset for r in fitting] == [1, 2]
    assert fitting.size_bytes == 5
    assert buffer.size_bytes == 1


def test_take_all_ignores_the_caps() -> None:
    buffer = PartitionBuffer(TP, BatchLimits(max_records=1, max_bytes=1, max_age=60.0))
    buffer.extend([rec(0), rec(1), rec(2)], now=0.0)
    batch = buffer.take_all(now=1.0)
    assert batch.record_count == 3
    assert buffer.size_bytes == 0


def test_take_from_empty_buffer_raises() -> None:
    buffer = PartitionBuffer(TP, WIDE)
    with pytest.raises(LookupError):
        buffer.take(now=0.0)
    with pytest.raises(LookupError):
        buffer.take_all(now=0.0)


def test_duplicate_and_older_offsets_are_ignored() -> None:
    buffer = PartitionBuffer(TP, WIDE)
    assert buffer.extend([rec(3), rec(4), rec(4), rec(2), rec(7)], now=0.0) == 3
    buffer.take_all(now=0.0)
    # A re-fetch after a seek hands back records already cut into a batch.
    assert buffer.extend([rec(5), rec(7), rec(8)], now=0.0) == 1
    assert [r.offset for r in buffer.take_all(now=0.0)] == [8]


def test_start_offset_and_reset_move_the_guard() -> None:
    buffer = PartitionBuffer(TP, WIDE, next_offset=10)
    assert not buffer.append(rec(9), now=0.0)
    assert buffer.append(rec(10), now=0.0)
    assert buffer.reset(next_offset=4) == record_size(rec(10))
    assert buffer.append(rec(4), now=0.0)
    assert buffer.last_offset == 4


def test_discard_keeps_the_guard() -> None:
    buffer = PartitionBuffer(TP, WIDE)
    buffer.extend([rec(0), rec(1)], now=0.0)
    assert buffer.discard() == 2 * record_size(rec(0))
    assert (buffer.record_count, buffer.size_bytes, buffer.started_at) == (0, 0, None)
    assert not buffer.append(rec(1), now=0.0)


def test_record_of_another_partition_is_refused() -> None:
    buffer = PartitionBuffer(TP, WIDE)
    with pytest.raises(ValueError, match="appended to the buffer"):
        buffer.append(rec(0, tp=TopicPartition("events", 4)), now=0.0)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), records_of()),
        st.tuples(st.just("take"), st.none()),
        st.tuples(st.just("take_all"), st.none()),
        st.tuples(st.just("discard"), st.none()),
    ),
    max_size=60,
)


@given(
    ops=operations,
    max_records=st.integers(1, 6),
    max_bytes=st.integers(1, 200),
)
def test_buffer_bytes_always_equal_exact_sum_and_batches_keep_order(
    ops: list[tuple[str, Record | None]], max_records: int, max_bytes: int
) -> None:
    limits = BatchLimits(max_records=max_records, max_bytes=max_bytes, max_age=60.0)
    buffer = PartitionBuffer(TP, limits)
    held: list[Record] = []
    highest = -1
    cut: list[int] = []
    for step, (op, record) in enumerate(ops):
        now = float(step)
        if op == "append":
            assert record is not None
            accepted = buffer.append(record, now)
            assert accepted == (record.offset > highest)
            if accepted:
                held.append(record)
                highest = record.offset
        elif held and op in ("take", "take_all"):
            batch = buffer.take(now) if op == "take" else buffer.take_all(now)
            assert batch.size_bytes == sum(naive_size(r) for r in batch)
            assert list(batch) == held[: batch.record_count]
            if op == "take":
                assert batch.record_count <= max_records
                assert batch.record_count == 1 or batch.size_bytes <= max_bytes
            del held[: batch.record_count]
            if op == "take" and held:
                # The cut is as long as the limits allow.
                next_size = naive_size(held[0])
                assert batch.record_count == max_records or batch.size_bytes + next_size > max_bytes
            cut.extend(r.offset for r in batch)
        elif op == "discard":
            buffer.discard()
            held.clear()
        assert buffer.size_bytes == sum(naive_size(r) for r in held)
        assert buffer.record_count == len(held)
        assert buffer.is_full == (len(held) >= max_records or buffer.size_bytes >= max_bytes)
    assert cut == sorted(set(cut))


@given(
    st.lists(st.lists(st.integers(0, 60), max_size=12), max_size=6),
    st.integers(-1, 30),
)
def test_extend_in_bulk_equals_appending_one_by_one(chunks: list[list[int]], start: int) -> None:
    bulk = PartitionBuffer(TP, WIDE, next_offset=start + 1)
    single = PartitionBuffer(TP, WIDE, next_offset=start + 1)
    for t, offsets in enumerate(chunks):
        records = [rec(o, value=b"v" * (o % 7)) for o in offsets]
        accepted = bulk.extend(records, now=float(t))
        assert accepted == sum(single.append(r, now=float(t)) for r in records)
    assert (bulk.size_bytes, bulk.record_count, bulk.last_offset, bulk.started_at) == (
        single.size_bytes,
        single.record_count,
        single.last_offset,
        single.started_at,
    )
    if single.record_count:
        left, right = bulk.take_all(now=99.0), single.take_all(now=99.0)
        assert [r.offset for r in left] == [r.offset for r in right]
        assert left.size_bytes == right.size_bytes


def test_extend_rejects_a_chunk_of_another_partition() -> None:
    buffer = PartitionBuffer(TP, WIDE)
    other = TopicPartition(TP.topic, TP.partition + 1)
    with pytest.raises(ValueError, match="appended to the buffer"):
        buffer.extend([rec(0), rec(1, tp=other)], now=0.0)
    # What came before the foreign record stays, as with append().
    assert buffer.record_count == 1


def test_extend_uses_the_sizes_it_is_given() -> None:
    buffer = PartitionBuffer(TP, WIDE)
    buffer.extend([rec(0), rec(1)], now=0.0, sizes=[100, 200])
    assert buffer.size_bytes == 300


@given(
    st.lists(st.lists(st.integers(0, 60), max_size=12), max_size=6),
    st.integers(-1, 30),
)
def test_an_ordered_chunk_is_taken_like_one_checked_record_by_record(
    chunks: list[list[int]], start: int
) -> None:
    """``ordered=True`` (the fetcher vouches for increasing offsets) skips the offset walk, not
    the guard against what is buffered already: a re-fetch after a seek is still dropped."""
    vouched = PartitionBuffer(TP, WIDE, next_offset=start + 1)
    checked = PartitionBuffer(TP, WIDE, next_offset=start + 1)
    for t, offsets in enumerate(chunks):
        increasing = sorted(set(offsets))
        records = [rec(o, value=b"v" * (o % 7)) for o in increasing]
        assert vouched.extend(records, now=float(t), ordered=True) == checked.extend(
            records, now=float(t)
        )
    assert (vouched.size_bytes, vouched.record_count, vouched.last_offset) == (
        checked.size_bytes,
        checked.record_count,
        checked.last_offset,
    )
