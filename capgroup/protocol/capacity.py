"""The versioned capacity advertisement carried in the ``user_data`` of JoinGroup metadata.

Wire format (all integers are unsigned LEB128 varints unless noted)::

    advertisement := magic "CG" | major u8 | minor u8 | field*
    field         := tag | length | payload[length]

Fields run to the end of the buffer. A decoder skips fields whose tag it does not know, so a
newer *minor* version may add fields freely; a field it knows but that is absent takes its
default, so older encodings decode. A different *major* version is rejected: a major bump is
how an incompatible change is announced. Version 1.0 defines these tags:

====  =========================  =================================================  ========
tag   field                      payload                                            default
====  =========================  =================================================  ========
1     max_partitions             varint, <= 2**31-1                                 required
2     memory_budget_bytes        varint, <= 2**63-1                                 required
3     default_partition_bytes    varint                                             0
4     weight                     float64 big-endian, finite and > 0                 1.0
5     rack                       UTF-8 bytes (the whole payload)                    none
6     flags                      varint bit set: bit 0 draining; other bits ignored 0
7     partition_bytes            count, then count x (name, varint bytes)           empty
8     owned                      see below                                          empty
====  =========================  =================================================  ========

Version 1.1 adds one tag (tag 9 is never used: the compatibility tests use it as the unknown
field of a future minor):

====  =========================  =================================================  ========
tag   field                      payload                                            default
====  =========================  =================================================  ========
10    relay_partition_bytes      varint, <= 2**63-1 (0: the member does not relay)  0
====  =========================  =================================================  ========

The encoder writes the lowest version that describes the advertisement: 1.0 when
``relay_partition_bytes`` is 0 (byte for byte what a 1.0 encoder writes), 1.1 otherwise. A 1.0
decoder skips tag 10, so an old leader simply never plans relay-only assignments.

``name`` is a varint length and UTF-8 bytes (1..255 bytes). The ``owned`` payload groups
partitions by topic and stores each distinct generation once::

    owned     := G | G x zigzag-varint generation (ascending) | T | T x topic
    topic     := name | N | flags u8 | N x entry | (N x float32 rate if flags bit 0)
    entry     := gap | (gen_index if G > 1)

Partitions of a topic are strictly ascending; ``gap`` is the first partition number, then the
difference to the previous one minus one, so runs of consecutive partitions cost one byte each.
Rates are quantized to IEEE-754 singles (about 7 significant digits, plenty for load weights);
a topic whose rates are all zero omits them. Within 1.x the ``owned`` layout is frozen, and
unknown bits in a topic's flags are ignored; new per-partition data goes into a new tag.

Limits: an encoding may be at most :data:`MAX_ENCODED_BYTES` (64 KiB, enough for roughly
10,000 owned partitions; 2,000 take about 13 KiB). :func:`encode_advertisement` raises
:class:`AdvertisementTooLargeError` beyond it and :func:`decode_advertisement` rejects longer input
before parsing. Every count is checked against the bytes that remain before anything is
allocated, so decoding is linear in the input and bounded by it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import replace

from capgroup.protocol._wire import (
    INT32_MAX,
    INT63_MAX,
    MetadataDecodeError,
    Reader,
    Writer,
    fits_float32,
    float32,
)
from capgroup.types import CapacityAdvertisement, OwnedPartition

MAGIC = b"CG"
MAJOR_VERSION = 1
MINOR_VERSION = 1
#: Hard cap on one encoded advertisement, enforced on encode and on decode.
MAX_ENCODED_BYTES = 64 * 1024
#: Longest topic or rack name, in UTF-8 bytes (Kafka topic names are at most 249 characters).
MAX_NAME_BYTES = 255
#: Lowest generation a claim may carry; Kafka uses -1 for "no generation".
MIN_GENERATION = -1

TAG_MAX_PARTITIONS = 1
TAG_MEMORY_BUDGET = 2
TAG_DEFAULT_PARTITION_BYTES = 3
TAG_WEIGHT = 4
TAG_RACK = 5
TAG_FLAGS = 6
TAG_PARTITION_BYTES = 7
TAG_OWNED = 8
TAG_RELAY_PARTITION_BYTES = 10

_FLAG_DRAINING = 1
_TOPIC_HAS_RATES = 1
_HEADER_BYTES = 4

__all__ = [
    "MAX_ENCODED_BYTES",
    "AdvertisementEncodeError",
    "AdvertisementTooLargeError",
    "MetadataDecodeError",
    "canonical_advertisement",
    "decode_advertisement",
    "encode_advertisement",
]


class AdvertisementEncodeError(ValueError):
    """The advertisement holds a value the wire format (or the assignor) cannot accept."""


class AdvertisementTooLargeError(AdvertisementEncodeError):
    """The encoded advertisement would exceed :data:`MAX_ENCODED_BYTES`."""

    def __init__(self, size: int, owned: int) -> None:
        super().__init__(
            f"capacity advertisement is {size} bytes with {owned} owned partitions, above the "
            f"{MAX_ENCODED_BYTES}-byte limit; a member should not own this many partitions"
        )
        self.size = size
        self.owned = owned


def encode_advertisement(adv: CapacityAdvertisement) -> bytes:
    """Encode ``adv`` as version 1.0 ``user_data`` (1.1 when ``relay_partition_bytes`` is set).

    Rates are rounded to float32. Raises :class:`AdvertisementEncodeError` for values the
    decoder would reject, and :class:`AdvertisementTooLargeError` above :data:`MAX_ENCODED_BYTES`.
    """
    _check_int("max_partitions", adv.max_partitions, 0, INT32_MAX)
    _check_int("memory_budget_bytes", adv.memory_budget_bytes, 0, INT63_MAX)
    _check_int("default_partition_bytes", adv.default_partition_bytes, 0, INT63_MAX)
    _check_int("relay_partition_bytes", adv.relay_partition_bytes, 0, INT63_MAX)
    if not (math.isfinite(adv.weight) and adv.weight > 0):
        raise AdvertisementEncodeError(f"weight must be finite and > 0, got {adv.weight!r}")

    out = Writer()
    # The lowest minor that carries what is set: without relay, exactly a 1.0 encoding.
    minor = MINOR_VERSION if adv.relay_partition_bytes else 0
    out.buf += MAGIC + bytes((MAJOR_VERSION, minor))
    field = Writer()
    field.uvarint(adv.max_partitions)
    out.field(TAG_MAX_PARTITIONS, field.buf)
    field = Writer()
    field.uvarint(adv.memory_budget_bytes)
    out.field(TAG_MEMORY_BUDGET, field.buf)
    # Defaults are omitted: the decoder restores them, and most members use them.
    if adv.default_partition_bytes:
        field = Writer()
        field.uvarint(adv.default_partition_bytes)
        out.field(TAG_DEFAULT_PARTITION_BYTES, field.buf)
    if adv.weight != 1.0:
        field = Writer()
        field.f64(float(adv.weight))
        out.field(TAG_WEIGHT, field.buf)
    if adv.rack is not None:
        out.field(TAG_RACK, _name("rack", adv.rack, allow_empty=True))
    if adv.draining:
        field = Writer()
        field.uvarint(_FLAG_DRAINING)
        out.field(TAG_FLAGS, field.buf)
    if adv.partition_bytes:
        field = Writer()
        field.uvarint(len(adv.partition_bytes))
        for topic in sorted(adv.partition_bytes):
            cost = adv.partition_bytes[topic]
            _check_int(f"partition_bytes[{topic!r}]", cost, 0, INT63_MAX)
            field.text(_name("partition_bytes topic", topic))
            field.uvarint(cost)
        out.field(TAG_PARTITION_BYTES, field.buf)
    if adv.owned:
        out.field(TAG_OWNED, _encode_owned(adv.owned))
    if adv.relay_partition_bytes:
        field = Writer()
        field.uvarint(adv.relay_partition_bytes)
        out.field(TAG_RELAY_PARTITION_BYTES, field.buf)
    if len(out.buf) > MAX_ENCODED_BYTES:
        raise AdvertisementTooLargeError(len(out.buf), len(adv.owned))
    return bytes(out.buf)


def _encode_owned(owned: Iterable[OwnedPartition]) -> bytearray:
    by_topic: dict[str, dict[int, OwnedPartition]] = {}
    for op in owned:
        _check_int("owned partition", op.partition, 0, INT32_MAX)
        _check_int("owned generation", op.generation, MIN_GENERATION, INT32_MAX)
        if not (fits_float32(op.rate) and op.rate >= 0):
            raise AdvertisementEncodeError(
                f"rate of {op.topic}-{op.partition} must be finite and >= 0, got {op.rate!r}"
            )
        parts = by_topic.setdefault(op.topic, {})
        if op.partition in parts:
            raise AdvertisementEncodeError(f"{op.topic}-{op.partition} is owned twice")
        parts[op.partition] = op
    generations = sorted({op.generation for parts in by_topic.values() for op in parts.values()})
    gen_index = {g: i for i, g in enumerate(generations)}
    out = Writer()
    out.uvarint(len(generations))
    for g in generations:
        out.svarint(g)
    out.uvarint(len(by_topic))
    for topic in sorted(by_topic):
        parts = by_topic[topic]
        ordered = [parts[p] for p in sorted(parts)]
        has_rates = any(op.rate for op in ordered)
        out.text(_name("owned topic", topic))
        out.uvarint(len(ordered))
        out.buf.append(_TOPIC_HAS_RATES if has_rates else 0)
        prev = -1
        for op in ordered:
            out.uvarint(op.partition - prev - 1)
            prev = op.partition
            if len(generations) > 1:
                out.uvarint(gen_index[op.generation])
        if has_rates:
            for op in ordered:
                out.f32(op.rate)
    return out.buf


def decode_advertisement(data: bytes) -> CapacityAdvertisement:
    """Decode ``user_data`` written by any 1.x encoder.

    Raises only :class:`MetadataDecodeError`: for foreign or corrupt bytes, a different major
    version, input above :data:`MAX_ENCODED_BYTES`, or semantically invalid values.
    """
    try:
        return _decode(bytes(data))
    except MetadataDecodeError:
        raise
    except Exception as exc:
        # Untrusted input must never crash the leader: any slip in the checks above is still
        # reported as a decode failure of that one member.
        raise MetadataDecodeError(
            f"undecodable advertisement ({type(exc).__name__}: {exc})"
        ) from exc


def _decode(data: bytes) -> CapacityAdvertisement:
    if len(data) > MAX_ENCODED_BYTES:
        raise MetadataDecodeError(
            f"advertisement is {len(data)} bytes, above the {MAX_ENCODED_BYTES}-byte limit",
            code="too_large",
        )
    if len(data) < _HEADER_BYTES or data[:2] != MAGIC:
        raise MetadataDecodeError(
            "not a capgroup capacity advertisement (missing 'CG' header); the member may run "
            "another assignor",
            code="bad_magic",
        )
    major = data[2]
    if major != MAJOR_VERSION:
        raise MetadataDecodeError(
            f"advertisement major version {major}.{data[3]} is not supported; this build reads "
            f"{MAJOR_VERSION}.x",
            code="future_major" if major > MAJOR_VERSION else "old_major",
        )
    reader = Reader(data, _HEADER_BYTES)
    values: dict[int, Reader] = {}
    while reader.remaining():
        tag = reader.uvarint("field tag")
        length = reader.uvarint(f"length of field {tag}")
        payload = reader.window(length, f"field {tag}")
        if TAG_MAX_PARTITIONS <= tag <= TAG_OWNED or tag == TAG_RELAY_PARTITION_BYTES:
            if tag in values:
                raise MetadataDecodeError(f"field {tag} appears twice")
            values[tag] = payload
        # Unknown tags come from a newer minor version and are skipped by design.

    def required(tag: int, what: str, max_value: int) -> int:
        if tag not in values:
            raise MetadataDecodeError(f"required field {what} (tag {tag}) is missing")
        return values[tag].uvarint(what, max_value)

    max_partitions = required(TAG_MAX_PARTITIONS, "max_partitions", INT32_MAX)
    budget = required(TAG_MEMORY_BUDGET, "memory_budget_bytes", INT63_MAX)
    adv = CapacityAdvertisement(
        max_partitions=max_partitions, memory_budget_bytes=budget, partition_bytes={}
    )
    if TAG_DEFAULT_PARTITION_BYTES in values:
        adv = replace(
            adv,
            default_partition_bytes=values[TAG_DEFAULT_PARTITION_BYTES].uvarint(
                "default_partition_bytes"
            ),
        )
    if TAG_WEIGHT in values:
        weight = values[TAG_WEIGHT].f64("weight")
        if not (math.isfinite(weight) and weight > 0):
            raise MetadataDecodeError(
                f"weight must be finite and > 0, got {weight!r}", code="invalid_value"
            )
        adv = replace(adv, weight=weight)
    if TAG_RACK in values:
        rack_reader = values[TAG_RACK]
        raw = rack_reader.raw(rack_reader.remaining(), "rack")
        if len(raw) > MAX_NAME_BYTES:
            raise MetadataDecodeError("rack is longer than 255 bytes", code="invalid_value")
        try:
            adv = replace(adv, rack=raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise MetadataDecodeError("rack is not valid UTF-8") from exc
    if TAG_FLAGS in values:
        flags = values[TAG_FLAGS].uvarint("flags")
        adv = replace(adv, draining=bool(flags & _FLAG_DRAINING))
    if TAG_PARTITION_BYTES in values:
        adv = replace(adv, partition_bytes=_decode_partition_bytes(values[TAG_PARTITION_BYTES]))
    if TAG_OWNED in values:
        adv = replace(adv, owned=_decode_owned(values[TAG_OWNED]))
    if TAG_RELAY_PARTITION_BYTES in values:
        adv = replace(
            adv,
            relay_partition_bytes=values[TAG_RELAY_PARTITION_BYTES].uvarint(
                "relay_partition_bytes"
            ),
        )
    return adv


def _decode_partition_bytes(r: Reader) -> dict[str, int]:
    # Each entry is at least a 1-byte name length, 1 name byte and a 1-byte varint.
    n = r.count("partition_bytes count", 3, MAX_ENCODED_BYTES)
    costs: dict[str, int] = {}
    for _ in range(n):
        topic = _read_name(r, "partition_bytes topic")
        if topic in costs:
            raise MetadataDecodeError(f"partition_bytes lists topic {topic!r} twice")
        costs[topic] = r.uvarint(f"partition_bytes[{topic!r}]")
    return costs


def _decode_owned(r: Reader) -> tuple[OwnedPartition, ...]:
    n_gen = r.count("owned generation count", 1, MAX_ENCODED_BYTES)
    generations = [r.svarint("owned generation", MIN_GENERATION, INT32_MAX) for _ in range(n_gen)]
    if any(a >= b for a, b in itertools.pairwise(generations)):
        raise MetadataDecodeError("owned generations are not strictly ascending")
    # A topic entry is at least name length, one name byte, count and flags.
    n_topics = r.count("owned topic count", 4, MAX_ENCODED_BYTES)
    owned: list[OwnedPartition] = []
    seen: set[str] = set()
    for _ in range(n_topics):
        topic = _read_name(r, "owned topic")
        if topic in seen:
            raise MetadataDecodeError(f"owned partitions list topic {topic!r} twice")
        seen.add(topic)
        per_entry = 2 if n_gen > 1 else 1
        n = r.count(f"owned partition count of {topic!r}", per_entry, MAX_ENCODED_BYTES)
        if n and not n_gen:
            raise MetadataDecodeError("owned partitions present but no generations listed")
        has_rates = r.u8(f"flags of {topic!r}") & _TOPIC_HAS_RATES
        entries: list[tuple[int, int]] = []
        prev = -1
        for _ in range(n):
            partition = prev + 1 + r.uvarint(f"partition gap in {topic!r}", INT32_MAX)
            if partition > INT32_MAX:
                raise MetadataDecodeError(
                    f"partition {partition} of {topic!r} exceeds 2**31-1", code="invalid_value"
                )
            gen = 0
            if n_gen > 1:
                gen = r.uvarint(f"generation index in {topic!r}", n_gen - 1)
            entries.append((partition, generations[gen]))
            prev = partition
        rates = [0.0] * n
        if has_rates:
            if r.remaining() < 4 * n:
                raise MetadataDecodeError(f"rates of {topic!r} truncated", code="truncated")
            for i in range(n):
                rate = r.f32(f"rate in {topic!r}")
                if not (math.isfinite(rate) and rate >= 0):
                    raise MetadataDecodeError(
                        f"rate of {topic}-{entries[i][0]} is {rate!r}; must be finite and >= 0",
                        code="invalid_value",
                    )
                rates[i] = rate
        owned.extend(
            OwnedPartition(topic, p, g, rate) for (p, g), rate in zip(entries, rates, strict=True)
        )
    if r.remaining():
        raise MetadataDecodeError(f"{r.remaining()} stray bytes after owned partitions")
    return tuple(owned)


def canonical_advertisement(adv: CapacityAdvertisement) -> CapacityAdvertisement:
    """What the leader sees after ``adv`` travels the wire: owned partitions sorted by
    (topic, partition), rates rounded to float32, ``partition_bytes`` as a plain dict."""
    owned = tuple(
        replace(op, rate=float32(op.rate))
        for op in sorted(adv.owned, key=lambda op: (op.topic, op.partition))
    )
    return replace(
        adv,
        partition_bytes=dict(adv.partition_bytes),
        weight=float(adv.weight),
        owned=owned,
    )


def _check_int(what: str, value: int, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise AdvertisementEncodeError(f"{what} must be an integer in [{lo}, {hi}], got {value!r}")


def _name(what: str, value: str, *, allow_empty: bool = False) -> bytes:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AdvertisementEncodeError(f"{what} {value!r} is not encodable as UTF-8") from exc
    if not (allow_empty or raw) or len(raw) > MAX_NAME_BYTES:
        raise AdvertisementEncodeError(
            f"{what} {value!r} must be {'0' if allow_empty else '1'}..{MAX_NAME_BYTES} UTF-8 bytes"
        )
    return raw


def _read_name(r: Reader, what: str) -> str:
    name = r.text(what, MAX_NAME_BYTES)
    if not name:
        raise MetadataDecodeError(f"{what} is empty", code="invalid_value")
    return name
