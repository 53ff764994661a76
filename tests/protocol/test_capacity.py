"""The capacity advertisement codec: round trip, compatibility, limits and hostile input."""

from __future__ import annotations

import dataclasses
import math
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capgroup.assignor.model import CapacityAdvertisement, OwnedPartition
from capgroup.protocol import capacity
from capgroup.protocol.capacity import (
    MAX_ENCODED_BYTES,
    AdvertisementEncodeError,
    AdvertisementTooLargeError,
    MetadataDecodeError,
    canonical_advertisement,
    decode_advertisement,
    decode_advertisement_columns,
    decode_advertisements_columns,
    encode_advertisement,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

topic_names = st.text(min_size=1, max_size=20)
rates = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=3e38, allow_nan=False, allow_infinity=False),
)


@st.composite
def advertisements(draw: st.DrawFn) -> CapacityAdvertisement:
    topics = draw(st.lists(topic_names, min_size=0, max_size=5, unique=True))
    costs = {t: draw(st.integers(0, 2**63 - 1)) for t in topics if draw(st.booleans())}
    owned: list[OwnedPartition] = []
    if topics:
        keys = draw(
            st.lists(
                st.tuples(st.sampled_from(topics), st.integers(0, 2**31 - 1)),
                max_size=40,
                unique=True,
            )
        )
        gens = draw(st.lists(st.integers(-1, 2**31 - 1), min_size=1, max_size=3))
        owned = [OwnedPartition(t, p, draw(st.sampled_from(gens)), draw(rates)) for t, p in keys]
    return CapacityAdvertisement(
        max_partitions=draw(st.integers(0, 2**31 - 1)),
        memory_budget_bytes=draw(st.integers(0, 2**63 - 1)),
        partition_bytes=costs,
        default_partition_bytes=draw(st.integers(0, 2**63 - 1)),
        weight=draw(
            st.one_of(
                st.just(1.0),
                st.floats(min_value=0.0, exclude_min=True, allow_infinity=False),
            )
        ),
        rack=draw(st.none() | st.text(max_size=12)),
        draining=draw(st.booleans()),
        owned=tuple(owned),
    )


def _decode_as_columns(data: bytes) -> CapacityAdvertisement:
    """The leader's bulk decoder, its claims turned back into objects."""
    adv, owned = decode_advertisement_columns(data)
    assert adv.owned == ()
    return dataclasses.replace(adv, owned=owned.owned())


def _decode_only_raises_decode_error(data: bytes) -> None:
    try:
        adv = decode_advertisement(data)
    except MetadataDecodeError as exc:
        error = exc
    else:
        assert _decode_as_columns(data) == adv  # the leader's bulk decoder agrees
        # Whatever decodes must be semantically valid, i.e. acceptable to the encoder again.
        again = decode_advertisement(encode_advertisement(adv))
        assert again == canonical_advertisement(adv)
        return
    assert error.reason
    # The bulk decoder rejects the same bytes with the same error.
    with pytest.raises(MetadataDecodeError) as bulk:
        _decode_as_columns(data)
    assert (bulk.value.reason, bulk.value.code) == (error.reason, error.code)


@settings(max_examples=200, deadline=None)
@given(advertisements())
def test_round_trip(adv: CapacityAdvertisement) -> None:
    encoded = encode_advertisement(adv)
    assert decode_advertisement(encoded) == canonical_advertisement(adv)
    assert _decode_as_columns(encoded) == canonical_advertisement(adv)
    assert len(encoded) <= MAX_ENCODED_BYTES


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _decode_only_raises_decode_error(data)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_bytes_behind_a_valid_header(body: bytes) -> None:
    _decode_only_raises_decode_error(b"CG\x01\x00" + body)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_advertisement(draw(advertisements())))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=6))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        else:
            del data[pos:]
    return bytes(data)


@FUZZ
@given(mutated_encodings())
def test_fuzz_mutated_valid_encodings(data: bytes) -> None:
    _decode_only_raises_decode_error(data)


@FUZZ
@given(st.lists(st.one_of(mutated_encodings(), st.builds(encode_advertisement, advertisements()))))
def test_a_leader_decodes_many_members_as_each_alone(datas: list[bytes]) -> None:
    """The batch decoder gives every member what decoding its bytes alone gives: the same
    advertisement and claims, or the same error; one member's garbage touches no other."""
    for data, found in zip(datas, decode_advertisements_columns(datas), strict=True):
        if isinstance(found, MetadataDecodeError):
            with pytest.raises(MetadataDecodeError) as alone:
                decode_advertisement(data)
            assert (found.reason, found.code) == (alone.value.reason, alone.value.code)
        else:
            adv, owned = found
            assert dataclasses.replace(adv, owned=owned.owned()) == decode_advertisement(data)


def _field(tag: int, payload: bytes) -> bytes:
    assert tag < 128
    assert len(payload) < 128
    return bytes((tag, len(payload))) + payload


def test_newer_minor_with_unknown_fields_decodes() -> None:
    adv = CapacityAdvertisement(
        max_partitions=4,
        memory_budget_bytes=2_000_000_000,
        partition_bytes={"events": 500_000_000},
        owned=(OwnedPartition("events", 3, 6, 120.0),),
    )
    current = encode_advertisement(adv)
    assert current[:4] == b"CG\x01\x00"
    # A 1.9 encoder that adds tags 9 and 100 (a two-byte varint tag) before and after.
    newer = (
        b"CG\x01\x09" + _field(9, b"\x01\x02\x03") + current[4:] + bytes((0xE4, 0x00, 2)) + b"zz"
    )
    assert decode_advertisement(newer) == canonical_advertisement(adv)


# Version 1.0 encodings, written by the first release; decoding them must keep working.
GOLDEN_V1_FULL = (
    "43470100010104020580a8d6b907030480c2d72f04083ff8000000000000050565752d316106"
    "0101071602066576656e747380cab5ee01037061798080808004082c03060c2202066576656e"
    "7473030100010001000042f000004348000000000000037061790101010240a00000"
)
GOLDEN_V1_MINIMAL = "43470100010103020580c8afa025"


def test_golden_v1_decodes() -> None:
    full = decode_advertisement(bytes.fromhex(GOLDEN_V1_FULL))
    assert full == CapacityAdvertisement(
        max_partitions=4,
        memory_budget_bytes=2_000_000_000,
        partition_bytes={"events": 500_000_000, "pay": 2**30},
        default_partition_bytes=100_000_000,
        weight=1.5,
        rack="eu-1a",
        draining=True,
        owned=(
            OwnedPartition("events", 0, 6, 120.0),
            OwnedPartition("events", 1, 6, 200.0),
            OwnedPartition("events", 2, 3, 0.0),
            OwnedPartition("pay", 1, 17, 5.0),
        ),
    )
    minimal = decode_advertisement(bytes.fromhex(GOLDEN_V1_MINIMAL))
    assert minimal == CapacityAdvertisement(
        max_partitions=3, memory_budget_bytes=10_000_000_000, partition_bytes={}
    )
    # The encoder still writes exactly these bytes: a format change must be deliberate.
    assert encode_advertisement(full).hex() == GOLDEN_V1_FULL
    assert encode_advertisement(minimal).hex() == GOLDEN_V1_MINIMAL


@pytest.mark.parametrize("major", [2, 3, 255])
def test_future_major_is_rejected(major: int) -> None:
    data = bytearray(bytes.fromhex(GOLDEN_V1_MINIMAL))
    data[2] = major
    with pytest.raises(MetadataDecodeError, match="major version") as info:
        decode_advertisement(bytes(data))
    assert info.value.code == "future_major"


def _realistic(n_topics: int, per_topic: int, seed: int = 7) -> CapacityAdvertisement:
    rng = random.Random(seed)
    topics = [f"payments.ledger-events-v{t:02d}" for t in range(n_topics)]
    owned = tuple(
        OwnedPartition(
            t,
            p,
            rng.choice((41, 41, 41, 40, 38)),
            rng.lognormvariate(math.log(800), 1.2),
        )
        for t in topics
        for p in range(per_topic)
    )
    return CapacityAdvertisement(
        max_partitions=4000,
        memory_budget_bytes=64 * 2**30,
        partition_bytes=dict.fromkeys(topics, 32 * 2**20),
        weight=2.0,
        rack="eu-west-1a",
        owned=owned,
    )


def test_two_thousand_owned_partitions_fit_in_16_kib() -> None:
    adv = _realistic(10, 200)
    encoded = encode_advertisement(adv)
    print(f"2000 owned partitions over 10 topics: {len(encoded)} bytes")
    assert len(encoded) <= 16 * 1024
    assert decode_advertisement(encoded) == canonical_advertisement(adv)


def test_encode_refuses_oversized_advertisement() -> None:
    with pytest.raises(AdvertisementTooLargeError, match="limit"):
        encode_advertisement(_realistic(10, 2000))


def test_decode_refuses_oversized_input() -> None:
    with pytest.raises(MetadataDecodeError) as info:
        decode_advertisement(b"CG\x01\x00" + bytes(MAX_ENCODED_BYTES))
    assert info.value.code == "too_large"


def test_absurd_counts_are_rejected_before_allocating() -> None:
    header = b"CG\x01\x00" + _field(1, b"\x04") + _field(2, b"\x01")
    huge = b"\xff\xff\xff\xff\x0f"  # 2**32 - 1
    # 2**32 generations / topics / partition_bytes entries claimed in a few bytes.
    for payload in (huge + b"\x00", b"\x01\x00" + huge, b"\x01\x00\x01\x01a" + huge + b"\x00"):
        with pytest.raises(MetadataDecodeError, match=r"claims|above the maximum"):
            decode_advertisement(header + _field(8, payload))
    with pytest.raises(MetadataDecodeError, match=r"claims|above the maximum"):
        decode_advertisement(header + _field(7, huge))
    # A field length far beyond the buffer.
    with pytest.raises(MetadataDecodeError, match="truncated"):
        decode_advertisement(header + b"\x09" + huge)


def _owned_payload(rate_bits: bytes) -> bytes:
    return b"\x01\x0c\x01\x01e\x01\x01\x05" + rate_bits


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (_field(2, b"\x01"), "max_partitions"),
        (_field(1, b"\x04"), "memory_budget_bytes"),
        (_field(1, b"\x04") + _field(1, b"\x05") + _field(2, b"\x01"), "twice"),
        (_field(1, b"\x80\x80\x80\x80\x08") + _field(2, b"\x01"), "max_partitions"),
        (
            _field(1, b"\x04") + _field(2, b"\x01") + _field(4, struct.pack(">d", math.nan)),
            "weight",
        ),
        (
            _field(1, b"\x04") + _field(2, b"\x01") + _field(4, struct.pack(">d", math.inf)),
            "weight",
        ),
        (_field(1, b"\x04") + _field(2, b"\x01") + _field(4, struct.pack(">d", -2.0)), "weight"),
        (_field(1, b"\x04") + _field(2, b"\x01") + _field(4, struct.pack(">d", 0.0)), "weight"),
        (
            _field(1, b"\x04") + _field(2, b"\x01") + _field(8, _owned_payload(b"\x7f\xc0\0\0")),
            "rate",
        ),
        (
            _field(1, b"\x04") + _field(2, b"\x01") + _field(8, _owned_payload(b"\xbf\x80\0\0")),
            "rate",
        ),
        (_field(1, b"\x04") + _field(2, b"\x01") + _field(8, b"\x01\x03\x00"), "generation"),
        (_field(1, b"\x04") + _field(2, b"\x01") + _field(7, b"\x01\x00\x05\x00"), "empty"),
        (_field(1, b"\x04") + _field(2, b"\x01") + _field(5, b"\xff\xfe"), "UTF-8"),
        (_field(1, b"\x04") + _field(2, b"\x01") + b"\x03\x0a\x01", "truncated"),
    ],
)
def test_semantically_invalid_input_is_rejected(fields: bytes, match: str) -> None:
    with pytest.raises(MetadataDecodeError, match=match):
        decode_advertisement(b"CG\x01\x00" + fields)


def test_foreign_user_data_is_rejected_as_such() -> None:
    for data in (b"", b"\x00\x01", b"\x00\x00\x00\x01\x00\x00\x00\x00", b"CG"):
        with pytest.raises(MetadataDecodeError) as info:
            decode_advertisement(data)
        assert info.value.code == "bad_magic"


@pytest.mark.parametrize(
    "adv",
    [
        CapacityAdvertisement(-1, 10, {}),
        CapacityAdvertisement(1, -10, {}),
        CapacityAdvertisement(1, 10, {"t": -1}),
        CapacityAdvertisement(1, 10, {}, default_partition_bytes=-5),
        CapacityAdvertisement(1, 10, {}, weight=math.nan),
        CapacityAdvertisement(1, 10, {}, weight=0.0),
        CapacityAdvertisement(1, 10, {"": 1}),
        CapacityAdvertisement(1, 10, {}, owned=(OwnedPartition("t", -1, 1),)),
        CapacityAdvertisement(1, 10, {}, owned=(OwnedPartition("t", 1, -2),)),
        CapacityAdvertisement(1, 10, {}, owned=(OwnedPartition("t", 1, 1, math.inf),)),
        CapacityAdvertisement(1, 10, {}, owned=(OwnedPartition("t", 1, 1, 1e39),)),
        CapacityAdvertisement(1, 10, {}, owned=(OwnedPartition("t", 1, 1, -0.5),)),
        CapacityAdvertisement(
            1, 10, {}, owned=(OwnedPartition("t", 1, 1), OwnedPartition("t", 1, 2))
        ),
    ],
)
def test_encode_rejects_invalid_values(adv: CapacityAdvertisement) -> None:
    with pytest.raises(AdvertisementEncodeError):
        encode_advertisement(adv)


@pytest.mark.parametrize(
    "adv",
    [
        _realistic(1, 500),  # one run, the first gap one byte
        dataclasses.replace(  # a run starting at 1,000 (a two-byte first gap), no rates
            _realistic(1, 1),
            owned=tuple(OwnedPartition("t", p, 9) for p in range(1000, 1500)),
        ),
        _realistic(40, 3),  # many topics, several generations (an index per entry)
        dataclasses.replace(
            _realistic(1, 1),
            owned=tuple(OwnedPartition(f"t{p % 7}", p * 300, 5, 1.5) for p in range(700)),
        ),
    ],
    ids=["run", "run-from-1000", "generations", "sparse"],
)
def test_the_leader_decodes_realistic_claims_in_bulk(
    adv: CapacityAdvertisement, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims members really send take the bulk path (the one-by-one decoder is not
    consulted) and come out as that decoder would return them."""
    encoded = encode_advertisement(adv)
    expected = decode_advertisement(encoded)
    monkeypatch.setattr(capacity, "_decode_owned", pytest.fail)
    assert _decode_as_columns(encoded) == expected
