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

import bisect
import contextlib
import functools
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

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

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

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
_T = TypeVar("_T")

_FLAG_DRAINING = 1
_TOPIC_HAS_RATES = 1
_HEADER_BYTES = 4

__all__ = [
    "MAX_ENCODED_BYTES",
    "AdvertisementEncodeError",
    "AdvertisementTooLargeError",
    "MetadataDecodeError",
    "OwnedColumns",
    "canonical_advertisement",
    "decode_advertisement",
    "decode_advertisement_columns",
    "decode_advertisements_columns",
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


@dataclass(frozen=True, slots=True, eq=False)
class OwnedColumns:
    """A member's ownership claims as arrays, as a leader reads them without an
    :class:`OwnedPartition` per claim: ``topics`` in encoding order with ``counts[k]``
    claims each, and per claim (topic by topic, partitions ascending) its partition number,
    generation and rate."""

    topics: tuple[str, ...]
    counts: npt.NDArray[np.int64]
    partitions: npt.NDArray[np.int64]
    generations: npt.NDArray[np.int64]
    rates: npt.NDArray[np.float64]

    @classmethod
    def of(cls, owned: Iterable[OwnedPartition]) -> OwnedColumns:
        """The columns of ``owned`` (claims of one topic must be adjacent)."""
        import numpy as np

        claims = list(owned)
        runs = [(t, len(list(g))) for t, g in itertools.groupby(op.topic for op in claims)]
        return cls(
            topics=tuple(t for t, _ in runs),
            counts=np.array([n for _, n in runs], dtype=np.int64),
            partitions=np.array([op.partition for op in claims], dtype=np.int64),
            generations=np.array([op.generation for op in claims], dtype=np.int64),
            rates=np.array([op.rate for op in claims], dtype=np.float64),
        )

    def owned(self) -> tuple[OwnedPartition, ...]:
        """The claims as :class:`OwnedPartition` objects, as :func:`decode_advertisement`
        returns them."""
        topics = itertools.chain.from_iterable(
            itertools.repeat(t, n) for t, n in zip(self.topics, self.counts.tolist(), strict=True)
        )
        return tuple(
            map(
                OwnedPartition,
                topics,
                self.partitions.tolist(),
                self.generations.tolist(),
                self.rates.tolist(),
            )
        )


def decode_advertisement(data: bytes) -> CapacityAdvertisement:
    """Decode ``user_data`` written by any 1.x encoder.

    Raises only :class:`MetadataDecodeError`: for foreign or corrupt bytes, a different major
    version, input above :data:`MAX_ENCODED_BYTES`, or semantically invalid values.
    """
    return _guarded(functools.partial(_decode, bytes(data), defer_owned=False))[0]


def decode_advertisement_columns(data: bytes) -> tuple[CapacityAdvertisement, OwnedColumns]:
    """:func:`decode_advertisement` for a leader: the owned partitions come back as
    :class:`OwnedColumns` (decoded in bulk), and the advertisement's ``owned`` is empty.

    Accepts and rejects exactly what :func:`decode_advertisement` does, with the same errors.
    """
    (found,) = decode_advertisements_columns([data])
    if isinstance(found, MetadataDecodeError):
        raise found
    return found


def decode_advertisements_columns(
    datas: Sequence[bytes],
) -> list[tuple[CapacityAdvertisement, OwnedColumns] | MetadataDecodeError]:
    """:func:`decode_advertisement_columns` for every member a leader hears from at once:
    the owned partitions of all of them are decoded together, so a leader of thousands of
    members pays numpy's per-call cost once, not once per member. Each result is the
    member's, or the error :func:`decode_advertisement` raises for its bytes."""
    decoded: list[tuple[CapacityAdvertisement, Reader | None] | MetadataDecodeError] = []
    for data in datas:
        try:
            decoded.append(_guarded(functools.partial(_decode, bytes(data), defer_owned=True)))
        except MetadataDecodeError as exc:
            decoded.append(exc)
    windows = [d[1] for d in decoded if not isinstance(d, MetadataDecodeError) and d[1] is not None]
    try:
        columns = _scan_owned([window.copy() for window in windows])
    except Exception:  # untrusted bytes must not crash the leader: decode one by one
        columns = [None] * len(windows)
    scanned = iter(columns)
    found: list[tuple[CapacityAdvertisement, OwnedColumns] | MetadataDecodeError] = []
    none: OwnedColumns | None = None  # one empty claim set for every member that owns nothing
    for d in decoded:
        if isinstance(d, MetadataDecodeError):
            found.append(d)
            continue
        adv, window = d
        if window is None:
            found.append((adv, none or (none := OwnedColumns.of(()))))
            continue
        cols = next(scanned)
        if cols is None:
            # What the bulk scan left alone, the one-by-one decoder decodes or rejects.
            try:
                cols = _guarded(functools.partial(_owned_one_by_one, window))
            except MetadataDecodeError as exc:
                found.append(exc)
                continue
        found.append((adv, cols))
    return found


def _owned_one_by_one(window: Reader) -> OwnedColumns:
    return OwnedColumns.of(_decode_owned(window))


def _guarded(decode: Callable[[], _T]) -> _T:
    try:
        return decode()
    except MetadataDecodeError:
        raise
    except Exception as exc:
        # Untrusted input must never crash the leader: any slip in the checks above is still
        # reported as a decode failure of that one member.
        raise MetadataDecodeError(
            f"undecodable advertisement ({type(exc).__name__}: {exc})"
        ) from exc


def _decode(data: bytes, *, defer_owned: bool) -> tuple[CapacityAdvertisement, Reader | None]:
    """The advertisement in ``data``; with ``defer_owned`` its owned partitions are left
    out, and the window holding them is returned for a bulk decoder."""
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
    # Absent fields keep the advertisement's defaults; it is built once, at the end.
    default_cost, weight, draining, relay_cost = 0, 1.0, False, 0
    rack: str | None = None
    owned_objects: tuple[OwnedPartition, ...] = ()
    if TAG_DEFAULT_PARTITION_BYTES in values:
        default_cost = values[TAG_DEFAULT_PARTITION_BYTES].uvarint("default_partition_bytes")
    if TAG_WEIGHT in values:
        weight = values[TAG_WEIGHT].f64("weight")
        if not (math.isfinite(weight) and weight > 0):
            raise MetadataDecodeError(
                f"weight must be finite and > 0, got {weight!r}", code="invalid_value"
            )
    if TAG_RACK in values:
        rack_reader = values[TAG_RACK]
        raw = rack_reader.raw(rack_reader.remaining(), "rack")
        if len(raw) > MAX_NAME_BYTES:
            raise MetadataDecodeError("rack is longer than 255 bytes", code="invalid_value")
        try:
            rack = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MetadataDecodeError("rack is not valid UTF-8") from exc
    if TAG_FLAGS in values:
        flags = values[TAG_FLAGS].uvarint("flags")
        draining = bool(flags & _FLAG_DRAINING)
    partition_bytes: dict[str, int] = {}
    if TAG_PARTITION_BYTES in values:
        partition_bytes = _decode_partition_bytes(values[TAG_PARTITION_BYTES])
    owned = values.get(TAG_OWNED) if defer_owned else None
    if TAG_OWNED in values and not defer_owned:
        owned_objects = _decode_owned(values[TAG_OWNED])
    if TAG_RELAY_PARTITION_BYTES in values:
        try:
            relay_cost = values[TAG_RELAY_PARTITION_BYTES].uvarint("relay_partition_bytes")
        except MetadataDecodeError:
            if owned is not None:
                _decode_owned(owned.copy())  # a bad owned field is reported first, as ever
            raise
    adv = CapacityAdvertisement(
        max_partitions=max_partitions,
        memory_budget_bytes=budget,
        partition_bytes=partition_bytes,
        default_partition_bytes=default_cost,
        weight=weight,
        rack=rack,
        draining=draining,
        owned=owned_objects,
        relay_partition_bytes=relay_cost,
    )
    return adv, owned


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


def _scan_owned(windows: list[Reader]) -> list[OwnedColumns | None]:
    """The ``owned`` fields in ``windows`` decoded together; None for a field this scan
    leaves to :func:`_decode_owned` (anything malformed or unusual: a later entry of more
    than 5 bytes, a value out of range, a bad rate), which then decodes or rejects it
    exactly as :func:`decode_advertisement` would.

    Topic headers are read one by one; entries are only located: every byte below 0x80
    ends a varint, so one scan over all fields lists where each varint ends, and a topic's
    ``N x entry`` is the next ``N`` (or ``2N``) of them. All entries and rates of all
    members are then decoded with a fixed number of array operations.
    """
    import numpy as np

    if not windows:
        return []
    headers: list[tuple[list[int], int] | None] = []
    fields: list[bytes] = []
    for r in windows:
        try:
            n_gen = r.count("owned generation count", 1, MAX_ENCODED_BYTES)
            gens = [r.svarint("owned generation", MIN_GENERATION, INT32_MAX) for _ in range(n_gen)]
            n_topics = r.count("owned topic count", 4, MAX_ENCODED_BYTES)
        except MetadataDecodeError:
            gens, n_topics = [], -1
        ascending = all(a < b for a, b in itertools.pairwise(gens))
        headers.append((gens, n_topics) if n_topics >= 0 and ascending else None)
        fields.append(r.peek(r.remaining()) if headers[-1] else b"")
    blob = b"".join(fields)
    data = np.frombuffer(blob, np.uint8)
    ends_at = np.flatnonzero(data < 0x80)
    ends = ends_at.tolist()
    # Per topic (of every member, in order): first varint (index into ``ends``), claims,
    # varints per claim, whether rates follow, the member.
    t_first: list[int] = []
    t_count: list[int] = []
    t_per: list[int] = []
    t_rated: list[bool] = []
    t_member: list[int] = []
    rates: list[bytes] = []
    names: list[list[str] | None] = []
    base = 0
    for m, header in enumerate(headers):
        field_end = base + len(fields[m])
        found = None
        if header is not None:
            # Malformed headers are left for the one-by-one decoder to name.
            with contextlib.suppress(IndexError, ValueError):
                found = _scan_topics(blob, ends, base, field_end, *header)
        base = field_end
        names.append(found[0] if found is not None else None)
        if found is None or header is None:
            continue
        _, firsts, counts, rated, chunks = found
        t_first += firsts
        t_count += counts
        t_per += [2 if len(header[0]) > 1 else 1] * len(counts)
        t_rated += rated
        t_member += [m] * len(counts)
        rates += chunks
    # Every varint of every field decoded at once; the entries are picked out of them.
    starts = np.concatenate(([0], ends_at + 1))[: len(ends_at)]
    lengths = ends_at - starts + 1
    used = data[: int(lengths.sum())]  # bytes after the last varint's end are no entry's
    shift = np.minimum(7 * (np.arange(len(used)) - np.repeat(starts, lengths)), 56)
    varints = np.zeros(0, dtype=np.int64)
    if len(starts):
        varints = np.add.reduceat((used & 0x7F).astype(np.int64) << shift, starts)
    count = np.array(t_count, dtype=np.int64)
    per = np.array(t_per, dtype=np.int64)
    topic = np.repeat(np.arange(len(count)), count)  # per claim: its topic
    offset = np.cumsum(count) - count
    gap_at = (
        np.array(t_first, dtype=np.int64)[topic]
        + (np.arange(len(topic)) - offset[topic]) * per[topic]
    )
    two = per[topic] == 2
    index_at = np.minimum(gap_at + 1, max(len(varints) - 1, 0))
    gaps = varints[gap_at]
    index = np.where(two, varints[index_at], 0)
    # Partition k of a topic is its first gap plus (gap + 1) for each later claim up to k.
    steps = np.cumsum(gaps + 1)
    head = offset[count > 0]
    partitions = steps - np.repeat(steps[head] - gaps[head], count[count > 0])
    rate = np.zeros(len(topic))
    if rates:
        # A signalling NaN warns as it widens; it is refused below like any NaN.
        with np.errstate(invalid="ignore"):
            rate[np.repeat(np.array(t_rated, dtype=bool), count)] = np.frombuffer(
                b"".join(rates), ">f4"
            )
    member = np.array(t_member, dtype=np.int64)[topic]
    gen_counts = np.array([len(h[0]) if h else 0 for h in headers], dtype=np.int64)
    gen_table = np.array([g for h in headers if h for g in h[0]] or [0], dtype=np.int64)
    gen_start = np.cumsum(gen_counts) - gen_counts
    bad = (
        (lengths[gap_at] > 5)
        | (two & (lengths[index_at] > 5))
        | (partitions > INT32_MAX)
        | (index >= gen_counts[member])
        | ~(np.isfinite(rate) & (rate >= 0))
    )
    generation = gen_table[np.minimum(gen_start[member] + index, len(gen_table) - 1)]
    failed = np.bincount(member[bad], minlength=len(headers)) > 0
    claims = np.cumsum(np.bincount(member, minlength=len(headers)))
    topics_of = np.cumsum(np.bincount(np.array(t_member, dtype=np.int64), minlength=len(headers)))
    out: list[OwnedColumns | None] = []
    for m, topics in enumerate(names):
        if topics is None or failed[m]:
            out.append(None)
            continue
        lo, hi = (int(claims[m - 1]) if m else 0), int(claims[m])
        t_lo = int(topics_of[m - 1]) if m else 0
        out.append(
            OwnedColumns(
                topics=tuple(topics),
                counts=count[t_lo : t_lo + len(topics)],
                partitions=partitions[lo:hi],
                generations=generation[lo:hi],
                rates=rate[lo:hi],
            )
        )
    return out


def _scan_topics(
    blob: bytes, ends: list[int], pos: int, field_end: int, generations: list[int], n_topics: int
) -> tuple[list[str], list[int], list[int], list[bool], list[bytes]] | None:
    """One member's topic headers in ``blob[pos:field_end]``: names, the index in ``ends``
    of each topic's first varint, claim counts, whether rates follow, and the rates' bytes;
    None if anything is off (the member is then decoded one by one)."""
    per = 2 if len(generations) > 1 else 1
    topics: list[str] = []
    seen: set[str] = set()
    firsts: list[int] = []
    counts: list[int] = []
    rated: list[bool] = []
    chunks: list[bytes] = []
    for _ in range(n_topics):
        # Header: name (1..127 bytes here), count, flags.
        size = blob[pos]
        topic = blob[pos + 1 : pos + 1 + size].decode("utf-8")
        n, pos = _uvarint_at(blob, pos + 1 + size)
        has_rates = bool(blob[pos] & _TOPIC_HAS_RATES) and n > 0
        pos += 1
        if not 0 < size < 0x80 or topic in seen or (n and not generations):
            return None
        seen.add(topic)
        first = bisect.bisect_left(ends, pos)
        if n:
            last = first + n * per - 1
            # The flags byte before the claims must end a varint too, or the scan is off.
            if ends[first - 1] != pos - 1 or last >= len(ends) or ends[last] >= field_end:
                return None
            pos = ends[last] + 1
        if has_rates:
            chunks.append(blob[pos : pos + 4 * n])
            pos += 4 * n
        topics.append(topic)
        firsts.append(first)
        counts.append(n)
        rated.append(has_rates)
    if pos != field_end:
        return None
    return topics, firsts, counts, rated, chunks


def _uvarint_at(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos]`` (at most 3 bytes, plenty for a count, else ValueError)
    and the position after it."""
    value = 0
    for k in range(3):
        byte = data[pos + k]
        value |= (byte & 0x7F) << (7 * k)
        if byte < 0x80:
            return value, pos + k + 1
    raise ValueError("varint longer than an advertisement's counts")


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
