"""Relay fields on the wire (issue 13): ``relay_partition_bytes`` in the advertisement (1.1)
and ``relay_only`` / ``relayed`` in the assignment info (1.2). Without relay, both encodings
stay byte for byte what the previous minor wrote."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgroup.protocol._wire import MetadataDecodeError, Reader
from capgroup.protocol.capacity import (
    AdvertisementEncodeError,
    decode_advertisement,
    encode_advertisement,
)
from capgroup.protocol.consumer import (
    AssignmentInfo,
    decode_assignment_info,
    encode_assignment_info,
    encode_member_assignment,
)
from capgroup.types import CapacityAdvertisement, OwnedPartition, TopicPartition

BASE = CapacityAdvertisement(
    max_partitions=4,
    memory_budget_bytes=2_000_000_000,
    partition_bytes={"events": 500_000_000},
    owned=(OwnedPartition("events", 3, 6, 120.0),),
)


@given(st.integers(0, 2**63 - 1))
def test_relay_partition_bytes_round_trips(relay: int) -> None:
    adv = dataclasses.replace(BASE, relay_partition_bytes=relay)
    data = encode_advertisement(adv)
    assert decode_advertisement(data) == adv
    # 1.1 only when relay is advertised; otherwise exactly the 1.0 bytes.
    assert data[:4] == (b"CG\x01\x01" if relay else b"CG\x01\x00")


def test_relay_tag_is_appended_and_skipped_by_a_1_0_decoder() -> None:
    plain = encode_advertisement(BASE)
    relaying = encode_advertisement(dataclasses.replace(BASE, relay_partition_bytes=300))
    # Tag 10, length 2, varint 300: after every 1.0 field.
    assert relaying == b"CG\x01\x01" + plain[4:] + b"\x0a\x02\xac\x02"
    # A 1.0 decoder knows tags 1..8 only and skips the rest.
    r, tags = Reader(relaying, 4), []
    while r.remaining():
        tag = r.uvarint("tag")
        r.window(r.uvarint("length"), "field")
        tags.append(tag)
    assert tags[-1] == 10
    assert all(t <= 8 for t in tags[:-1])


def test_negative_relay_bytes_are_refused() -> None:
    with pytest.raises(AdvertisementEncodeError, match="relay_partition_bytes"):
        encode_advertisement(dataclasses.replace(BASE, relay_partition_bytes=-1))


def test_relay_tag_twice_is_rejected() -> None:
    data = encode_advertisement(dataclasses.replace(BASE, relay_partition_bytes=1))
    with pytest.raises(MetadataDecodeError, match="twice"):
        decode_advertisement(data + b"\x0a\x01\x01")


partitions = st.lists(
    st.builds(TopicPartition, st.sampled_from(["a", "events", "ü"]), st.integers(0, 2**31 - 1)),
    max_size=20,
    unique=True,
).map(lambda tps: tuple(sorted(tps)))


@settings(max_examples=200)
@given(partitions, st.none() | st.integers(0, 2**40))
def test_assignment_info_relay_round_trips(
    relay_only: tuple[TopicPartition, ...], n: int | None
) -> None:
    info = AssignmentInfo(7, 2, 1, members=3, relay_only=relay_only, relayed=n)
    data = encode_assignment_info(info)
    assert decode_assignment_info(data) == info
    assert data[3] == (2 if relay_only or n is not None else 1)


def test_assignment_info_without_relay_is_the_1_1_encoding() -> None:
    golden = bytes.fromhex("4341010101010e020102030101040103050104060106")
    golden += bytes.fromhex("0802ac020901000a01000b0105")
    info = AssignmentInfo(7, 2, 1, 3, 4, 6, 300, 0, 0, 5)
    assert encode_assignment_info(info) == golden


def test_relay_only_golden_v1_2() -> None:
    info = AssignmentInfo(7, relay_only=(TopicPartition("t", 2), TopicPartition("t", 3)), relayed=2)
    data = encode_assignment_info(info)
    assert data.hex() == "4341010201010e020100030100" + "0c06" + "0101" + "74" + "020200" + "0d0102"
    assert decode_assignment_info(data) == info


def test_a_1_1_reader_skips_relay_fields() -> None:
    data = encode_assignment_info(
        AssignmentInfo(9, 1, 0, relay_only=(TopicPartition("t", 0),), relayed=1)
    )
    r, known = Reader(data, 4), []
    while r.remaining():
        tag = r.uvarint("field tag")
        r.window(r.uvarint("field length"), f"field {tag}")
        known.append(tag)
    assert known == [1, 2, 3, 12, 13]


@pytest.mark.parametrize(
    "payload",
    [
        b"\x01\x01t\x05\x00",  # five partitions claimed, one byte left
        b"\x02\x01t\x01\x00\x01t\x01\x00",  # topic repeated
        b"\x01\x00\x00",  # empty topic name
    ],
)
def test_malformed_relay_only_is_rejected(payload: bytes) -> None:
    data = b"CA\x01\x02\x01\x01\x0e" + bytes((12, len(payload))) + payload
    with pytest.raises(MetadataDecodeError):
        decode_assignment_info(data)


def test_member_assignment_lists_relay_partitions_too() -> None:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    relay = (TopicPartition("t", 2),)
    raw = encode_member_assignment(
        (TopicPartition("t", 0), *relay), AssignmentInfo(3, relay_only=relay, relayed=1)
    )
    decoded = ConsumerProtocolMemberAssignment.decode(raw)
    assert decoded.partitions() == [("t", 0), ("t", 2)]
    assert decode_assignment_info(decoded.user_data).relay_only == relay
