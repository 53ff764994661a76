"""Record builders and hypothesis strategies shared by the runtime tests."""

from __future__ import annotations

from hypothesis import strategies as st

from capgroup.runtime.batch import Record, make_record
from capgroup.types import TopicPartition

TP = TopicPartition("events", 3)


def rec(
    offset: int,
    *,
    key: bytes | None = b"k",
    value: bytes | None = b"value",
    headers: tuple[tuple[str, bytes], ...] = (),
    tp: TopicPartition = TP,
) -> Record:
    """A record of ``tp`` at ``offset``."""
    return make_record(
        tp.topic, tp.partition, offset, 1_700_000_000_000 + offset, key, value, headers
    )


def naive_size(record: Record) -> int:
    """Size written out independently of :func:`record_size`, to check it against."""
    parts = [record.key or b"", record.value or b""]
    for name, value in record.headers:
        parts.extend([name.encode("utf-8"), value or b""])
    return len(b"".join(parts))


optional_bytes = st.none() | st.binary(max_size=64)
header_lists = st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=16)), max_size=3).map(
    tuple
)


@st.composite
def records_of(draw: st.DrawFn, tp: TopicPartition = TP) -> Record:
    """One record of ``tp`` at an arbitrary offset."""
    return make_record(
        tp.topic,
        tp.partition,
        draw(st.integers(0, 10_000)),
        draw(st.integers(0, 2**41)),
        draw(optional_bytes),
        draw(optional_bytes),
        draw(header_lists),
    )
