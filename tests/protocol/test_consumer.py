"""The consumer protocol envelope and the assignment info."""

from __future__ import annotations

import re

import numpy as np
import pytest
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from capgroup.protocol import (
    AssignmentInfo,
    MetadataDecodeError,
    SubscriptionCache,
    decode_assignment_info,
    decode_member_metadata,
    encode_assignment_info,
    encode_member_assignment,
    encode_member_metadata,
)
from capgroup.protocol.consumer import encode_member_assignment_columns
from capgroup.types import TopicPartition


def test_member_metadata_round_trips_through_aiokafka() -> None:
    raw = encode_member_metadata(["b", "a", "a"], b"CG\x01\x00payload")
    theirs = ConsumerProtocolMemberMetadata.decode(raw)
    assert theirs.subscription == ["a", "b"]
    assert theirs.user_data == b"CG\x01\x00payload"
    ours = decode_member_metadata(theirs.encode())
    assert ours.topics == ("a", "b")
    assert ours.user_data == b"CG\x01\x00payload"


def test_newer_consumer_protocol_trailing_fields_are_ignored() -> None:
    # Java's v1+ subscription appends owned partitions (and more) after user_data.
    raw = ConsumerProtocolMemberMetadata(3, ["t"], b"x").encode() + b"\x00\x00\x00\x01\x00\x01t"
    sub = decode_member_metadata(raw)
    assert (sub.version, sub.topics, sub.user_data) == (3, ("t",), b"x")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_member_metadata_decoder_only_raises_decode_error(data: bytes) -> None:
    try:
        decode_member_metadata(data)
    except MetadataDecodeError as exc:
        reason = exc.reason
        assert reason


def test_huge_subscription_count_is_rejected() -> None:
    with pytest.raises(MetadataDecodeError, match="claims"):
        decode_member_metadata(b"\x00\x00\x7f\xff\xff\xff\x00\x01")


def test_assignment_is_readable_by_aiokafka() -> None:
    tps = [TopicPartition("b", 1), TopicPartition("a", 2), TopicPartition("a", 0)]
    raw = encode_member_assignment(tps, AssignmentInfo(generation=9, unassigned=3, pending=1))
    decoded = ConsumerProtocolMemberAssignment.decode(raw)
    assert decoded.partitions() == [("a", 0), ("a", 2), ("b", 1)]
    assert decode_assignment_info(decoded.user_data) == AssignmentInfo(9, 3, 1)


def test_assignment_info_tolerates_newer_minor_and_unknown_fields() -> None:
    current = encode_assignment_info(AssignmentInfo(generation=4, unassigned=2))
    newer = b"CA\x01\x05" + b"\x07\x02zz" + current[4:] + b"\x40\x00"
    assert decode_assignment_info(newer) == AssignmentInfo(4, 2, 0)
    # Fields added later are absent in older encodings and default.
    assert decode_assignment_info(b"CA\x01\x00\x01\x01\x0e") == AssignmentInfo(7, 0, 0)


@pytest.mark.parametrize("data", [b"", b"CA", b"XX\x01\x00", b"CA\x02\x00", b"CA\x01\x00\x01\x09"])
def test_assignment_info_rejects_foreign_or_future_bytes(data: bytes) -> None:
    with pytest.raises(MetadataDecodeError):
        decode_assignment_info(data)


_topic = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(topics=st.lists(_topic, max_size=8), user_data=st.binary(max_size=64))
def test_metadata_encoding_is_byte_identical_to_aiokafka(
    topics: list[str], user_data: bytes
) -> None:
    # Our encoder is pure (no client import); it must write exactly Kafka's v0 layout.
    theirs = ConsumerProtocolMemberMetadata(0, sorted(set(topics)), user_data).encode()
    assert encode_member_metadata(topics, user_data) == bytes(theirs)


@settings(max_examples=300, deadline=None)
@given(
    partitions=st.sets(st.tuples(_topic, st.integers(0, 2**31 - 1)), max_size=20),
    generation=st.integers(-1, 2**31 - 1),
    with_info=st.booleans(),
)
def test_assignment_encoding_is_byte_identical_to_aiokafka(
    partitions: set[tuple[str, int]], generation: int, with_info: bool
) -> None:
    tps = [TopicPartition(t, p) for t, p in partitions]
    info = AssignmentInfo(generation, 3, 1) if with_info else None
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(tps):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    theirs = ConsumerProtocolMemberAssignment(
        0,
        [ConsumerProtocolMemberAssignment.Assignment(t, ps) for t, ps in by_topic.items()],
        encode_assignment_info(info) if info is not None else b"",
    ).encode()
    assert encode_member_assignment(tps, info) == bytes(theirs)


_count = st.integers(0, 2**63 - 1)
_figure = st.none() | _count


@settings(max_examples=300, deadline=None)
@given(
    generation=st.integers(-1, 2**31 - 1),
    counts=st.tuples(_count, _count),
    figures=st.tuples(*[_figure] * 7),
)
def test_assignment_info_round_trips_with_the_group_figures(
    generation: int, counts: tuple[int, int], figures: tuple[int | None, ...]
) -> None:
    info = AssignmentInfo(generation, *counts, *figures)
    assert decode_assignment_info(encode_assignment_info(info)) == info


def test_group_figures_golden_v1_1() -> None:
    info = AssignmentInfo(
        7,
        unassigned=2,
        pending=1,
        members=3,
        capacity_partitions=4,
        demand_partitions=6,
        capacity_bytes=300,
        demand_bytes=0,
        headroom_members=0,
        replicas_wanted=5,
    )
    golden = bytes.fromhex("4341010101010e020102030101040103050104060106")
    golden += bytes.fromhex("0802ac020901000a01000b0105")
    assert encode_assignment_info(info) == golden
    assert decode_assignment_info(golden) == info


def test_a_1_0_leaders_info_has_no_figures() -> None:
    # What a 1.0 leader sends: generation, unassigned and pending only.
    info = decode_assignment_info(bytes.fromhex("4341010001010e020102030101"))
    assert info == AssignmentInfo(7, 2, 1)
    assert info.members is None
    assert info.replicas_wanted is None


def test_a_1_0_reader_skips_the_figures() -> None:
    # The 1.0 decoder's loop, verbatim but for the tags it knows: the figures are skipped.
    from capgroup.protocol._wire import Reader

    data = encode_assignment_info(AssignmentInfo(9, 2, 0, members=3, replicas_wanted=4))
    r, known = Reader(data, 4), dict[object, int]()
    while r.remaining():
        tag = r.uvarint("field tag")
        field = r.window(r.uvarint("field length"), f"field {tag}")
        if tag == 1:
            known["generation"] = field.svarint("generation", -1, 2**31 - 1)
        elif tag in (2, 3):
            known[tag] = field.uvarint("count")
    assert known == {"generation": 9, 2: 2, 3: 0}


@settings(max_examples=300, deadline=None)
@given(
    partitions=st.sets(st.tuples(_topic, st.integers(0, 2**31 - 1)), max_size=20),
    info=st.none() | st.builds(AssignmentInfo, st.integers(-1, 2**31 - 1)),
)
def test_assignment_from_columns_is_byte_identical(
    partitions: set[tuple[str, int]], info: AssignmentInfo | None
) -> None:
    """The leader's bulk encoder writes what the per-partition one writes."""
    ordered = sorted(partitions)
    topics = sorted({t for t, _ in ordered})
    counts = [sum(1 for t, _ in ordered if t == topic) for topic in topics]
    numbers = np.array([p for _, p in ordered], dtype=np.int64)
    user_data = encode_assignment_info(info) if info is not None else b""
    tps = [TopicPartition(t, p) for t, p in partitions]
    expected = encode_member_assignment(tps, info)
    assert encode_member_assignment_columns(topics, counts, numbers, user_data) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=60), st.lists(_topic, max_size=4)), max_size=6))
def test_the_subscription_cache_changes_no_result(inputs: list[bytes | list[str]]) -> None:
    """Decoding members one after another with a shared cache gives what decoding each
    alone gives, garbage and repeated subscriptions included."""
    cache = SubscriptionCache()
    for item in inputs:
        data = item if isinstance(item, bytes) else encode_member_metadata(item, b"x")
        try:
            alone = decode_member_metadata(data)
        except MetadataDecodeError as exc:
            with pytest.raises(MetadataDecodeError, match=re.escape(exc.reason)):
                decode_member_metadata(data, cache)
        else:
            assert decode_member_metadata(data, cache) == alone
