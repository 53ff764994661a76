"""Kafka's consumer protocol envelope around our advertisement, and the assignment info.

JoinGroup carries ``ConsumerProtocolMemberMetadata`` (int16 version, array of topic strings,
bytes user_data); newer Java clients append fields after ``user_data`` (owned partitions, rack),
which readers of version 0 ignore, as we do. We parse it with our own bounded reader rather than
aiokafka's ``Struct.decode`` so that garbage from any member surfaces as one
:class:`MetadataDecodeError` with a reason.

SyncGroup carries ``ConsumerProtocolMemberAssignment``; its ``user_data`` holds
:class:`AssignmentInfo`::

    info := magic "CA" | major u8 | minor u8 | field*      (fields as in the advertisement)
    tag 1 generation (zigzag varint)   tag 2 unassigned (varint)   tag 3 pending (varint)

Version 1.1 adds the group figures, one varint field each, written only when the leader
computed them (a 1.0 leader sends none, and they decode as None)::

    tag 4 members             tag 5 capacity_partitions    tag 6 demand_partitions
    tag 8 capacity_bytes      tag 9 demand_bytes           tag 10 headroom_members
    tag 11 replicas_wanted

Version 1.2 adds the relay-only assignments (issue 13), written only when the leader planned
some (so without relay an encoding is byte for byte a 1.1 one)::

    tag 12 relay_only (this member's relay-only partitions)   tag 13 relayed (group-wide count)
    relay_only := T | T x (name | N | N x gap)     (partitions ascending; gaps as in ``owned``)

Tag 7 is never used (the compatibility tests use it as the unknown field of a future minor).
Unknown tags are skipped and absent ones take their default (0, or None for the figures), so
the encoding can grow by minor versions and a 1.0 reader skips the figures; a different major
version is rejected.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING

from capgroup.protocol._wire import INT32_MAX, INT63_MAX, MetadataDecodeError, Reader, Writer
from capgroup.types import TopicPartition

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "INFO_MAGIC",
    "INFO_MAJOR_VERSION",
    "INFO_MINOR_VERSION",
    "MAX_MEMBER_METADATA_BYTES",
    "AssignmentInfo",
    "MemberSubscription",
    "SubscriptionCache",
    "decode_assignment_info",
    "decode_member_metadata",
    "encode_assignment_info",
    "encode_member_assignment",
    "encode_member_assignment_columns",
    "encode_member_metadata",
]

#: Largest member metadata the leader parses; real metadata is a few KiB plus our user_data.
MAX_MEMBER_METADATA_BYTES = 1024 * 1024
INFO_MAGIC = b"CA"
INFO_MAJOR_VERSION = 1
INFO_MINOR_VERSION = 2
_TAG_GENERATION = 1
_TAG_UNASSIGNED = 2
_TAG_PENDING = 3
_TAG_RELAY_ONLY = 12
_TAG_RELAYED = 13
#: Longest topic name in ``relay_only``, in UTF-8 bytes.
_MAX_NAME_BYTES = 255
#: Group figures (1.1): field name -> tag. Tag 7 stays unused.
_FIGURE_TAGS = {
    "members": 4,
    "capacity_partitions": 5,
    "demand_partitions": 6,
    "capacity_bytes": 8,
    "demand_bytes": 9,
    "headroom_members": 10,
    "replicas_wanted": 11,
}
_FIGURE_OF_TAG = {tag: name for name, tag in _FIGURE_TAGS.items()}
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


@dataclass(frozen=True, slots=True)
class MemberSubscription:
    """The decoded consumer protocol metadata of one member."""

    version: int
    topics: tuple[str, ...]
    user_data: bytes


@dataclass(frozen=True, slots=True)
class AssignmentInfo:
    """What the leader tells each member besides its partitions.

    ``unassigned`` is the group-wide number of partitions no member could take (capacity
    shortfall); ``pending`` the group-wide number of partitions withheld for one round while
    they move between live members, i.e. another rebalance is due.

    The group figures (1.1) are None when the leader did not send them (a 1.0 leader); their
    exact definitions are in :func:`capgroup.assignor.figures.group_figures`:

    * ``members``: members in the generation (draining and rejected ones included);
    * ``capacity_partitions`` / ``demand_partitions``: partitions the live members can hold /
      partitions of the subscribed topics;
    * ``capacity_bytes`` / ``demand_bytes``: the live members' budgets / the bytes holding
      every partition costs;
    * ``headroom_members``: how many of the largest members the group can lose and still
      place every partition;
    * ``replicas_wanted``: how many members the group needs to place every partition with
      ``CAPGROUP_AUTOSCALE_HEADROOM_MEMBERS`` to spare (what an autoscaler follows).

    Relay (1.2, issue 13): ``relay_only`` lists this member's relay-only partitions (they
    are also in its assignment's partition list: the member owns them, but only republishes
    their records); ``relayed`` is the group-wide number of relay-only partitions (None when
    the leader did not send it). ``unassigned`` counts neither assigned nor relayed ones.
    """

    generation: int
    unassigned: int = 0
    pending: int = 0
    members: int | None = None
    capacity_partitions: int | None = None
    demand_partitions: int | None = None
    capacity_bytes: int | None = None
    demand_bytes: int | None = None
    headroom_members: int | None = None
    replicas_wanted: int | None = None
    _: KW_ONLY
    relay_only: tuple[TopicPartition, ...] = ()
    relayed: int | None = None


@functools.lru_cache(maxsize=4096)  # a leader writes the same topic names for every member
def _string(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return _I16.pack(len(encoded)) + encoded


def _bytes(value: bytes) -> bytes:
    return _I32.pack(len(value)) + value


def encode_member_metadata(topics: Iterable[str], user_data: bytes) -> bytes:
    """Encode version-0 consumer protocol metadata (topics sorted for determinism).

    Byte for byte what Kafka's ``ConsumerProtocolSubscription`` v0 (and aiokafka's
    ``ConsumerProtocolMemberMetadata``) writes; a test compares the two.
    """
    names = sorted(set(topics))
    return b"".join(
        (_I16.pack(0), _I32.pack(len(names)), *map(_string, names), _bytes(bytes(user_data)))
    )


class SubscriptionCache:
    """The last subscription seen for each topic count, kept across the members one leader
    decodes: the members of one deployment subscribe alike, so their topic lists are the
    same bytes, and a match is one comparison instead of a parse per topic."""

    __slots__ = ("_blocks",)

    def __init__(self) -> None:
        self._blocks: dict[int, tuple[bytes, tuple[str, ...]]] = {}


def decode_member_metadata(
    data: bytes, cache: SubscriptionCache | None = None
) -> MemberSubscription:
    """Decode consumer protocol metadata of any version.

    With a ``cache``, topic lists byte-identical to one decoded before are not parsed again
    (the result is the same). Raises only :class:`MetadataDecodeError`.
    """
    data = bytes(data)
    if len(data) > MAX_MEMBER_METADATA_BYTES:
        raise MetadataDecodeError(
            f"member metadata is {len(data)} bytes, above {MAX_MEMBER_METADATA_BYTES}",
            code="too_large",
        )
    r = Reader(data)
    (version,) = _I16.unpack(r.raw(2, "consumer protocol version"))
    if version < 0:
        raise MetadataDecodeError(f"consumer protocol version {version} is negative")
    (n_topics,) = _I32.unpack(r.raw(4, "subscription count"))
    topics: list[str] = []
    subscribed: tuple[str, ...] = ()
    known = cache._blocks.get(n_topics) if cache is not None else None
    if known is not None and data.startswith(known[0], r.tell()):
        # The same bytes parse to the same topics and end at the same place.
        r.raw(len(known[0]), "subscription")
        subscribed = known[1]
    elif n_topics > 0:
        if n_topics * 2 > r.remaining():
            raise MetadataDecodeError(
                f"subscription claims {n_topics} topics in {r.remaining()} bytes", code="truncated"
            )
        start = r.tell()
        for _ in range(n_topics):
            (length,) = _I16.unpack(r.raw(2, "topic length"))
            if length <= 0:
                raise MetadataDecodeError("subscription has an empty or null topic name")
            try:
                topics.append(r.raw(length, "topic").decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise MetadataDecodeError("subscribed topic is not valid UTF-8") from exc
        subscribed = tuple(topics)
        if cache is not None:
            cache._blocks[n_topics] = (data[start : r.tell()], subscribed)
    elif n_topics < -1:
        raise MetadataDecodeError(f"subscription count {n_topics} is invalid")
    user_data = b""
    if r.remaining():
        (length,) = _I32.unpack(r.raw(4, "user_data length"))
        if length > 0:
            user_data = r.raw(length, "user_data")
        elif length < -1:
            raise MetadataDecodeError(f"user_data length {length} is invalid")
    # Anything after user_data belongs to newer consumer protocol versions and is ignored.
    return MemberSubscription(version, subscribed, user_data)


def encode_member_assignment(
    partitions: Iterable[TopicPartition], info: AssignmentInfo | None = None
) -> bytes:
    """Encode a version-0 ``ConsumerProtocolMemberAssignment`` (sorted, grouped by topic),
    byte for byte as Kafka and aiokafka write it."""
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(partitions):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    user_data = encode_assignment_info(info) if info is not None else b""
    topics = [
        _string(topic) + _I32.pack(len(ids)) + b"".join(map(_I32.pack, ids))
        for topic, ids in by_topic.items()
    ]
    return b"".join((_I16.pack(0), _I32.pack(len(topics)), *topics, _bytes(user_data)))


def encode_member_assignment_columns(
    topics: Sequence[str],
    counts: Sequence[int],
    partitions: npt.NDArray[np.int64],
    user_data: bytes,
) -> bytes:
    """:func:`encode_member_assignment`, byte for byte, for partitions already sorted and
    grouped: ``topics`` ascending and distinct, the first ``counts[0]`` of ``partitions``
    those of ``topics[0]`` (ascending, distinct), and so on; ``user_data`` is the encoded
    :class:`AssignmentInfo` (or empty). The numbers are converted to big-endian int32 once."""
    if len(partitions) and (partitions.min() < -(2**31) or partitions.max() > INT32_MAX):
        b"".join(map(_I32.pack, partitions.tolist()))  # raises struct.error, as the other does
    numbers = partitions.astype(">i4").tobytes()
    blocks: list[bytes] = []
    end = 0
    for topic, n in zip(topics, counts, strict=True):
        blocks += (_string(topic), _I32.pack(n), numbers[4 * end : 4 * (end + n)])
        end += n
    return b"".join((_I16.pack(0), _I32.pack(len(topics)), *blocks, _bytes(user_data)))


def encode_assignment_info(info: AssignmentInfo) -> bytes:
    """Encode :class:`AssignmentInfo` for the assignment's ``user_data``."""
    # Nothing of 1.2 in it: byte for byte a 1.1 encoding.
    minor = INFO_MINOR_VERSION if info.relay_only or info.relayed is not None else 1
    parts = [
        INFO_MAGIC,
        bytes((INFO_MAJOR_VERSION, minor)),
        _varint_field(_TAG_GENERATION, (info.generation << 1) ^ (info.generation >> 63)),
        _varint_field(_TAG_UNASSIGNED, info.unassigned),
        _varint_field(_TAG_PENDING, info.pending),
    ]
    for name, tag in _FIGURE_TAGS.items():
        figure = getattr(info, name)
        if figure is not None:
            parts.append(_varint_field(tag, figure))
    if info.relay_only:
        out = Writer()
        out.field(_TAG_RELAY_ONLY, _encode_partitions(info.relay_only))
        parts.append(bytes(out.buf))
    if info.relayed is not None:
        parts.append(_varint_field(_TAG_RELAYED, info.relayed))
    return b"".join(parts)


def _varint_field(tag: int, value: int) -> bytes:
    """One tagged field holding the unsigned varint ``value`` (``Writer.field`` of it; every
    info tag and such a payload's length are below 0x80, a byte each). A leader writes one
    info per plan: a few bytes, without a :class:`Writer` per field.

    Raises:
        ValueError: if ``value`` is negative.
    """
    if 0 <= value < 0x80:
        return bytes((tag, 1, value))
    out = Writer()
    out.uvarint(value)
    return bytes((tag, len(out.buf))) + out.buf


def _encode_partitions(partitions: Iterable[TopicPartition]) -> bytearray:
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(set(partitions)):
        if not 0 <= tp.partition <= INT32_MAX:
            raise ValueError(f"partition number {tp.partition} is outside [0, 2**31-1]")
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    out = Writer()
    out.uvarint(len(by_topic))
    for topic, numbers in by_topic.items():
        name = topic.encode("utf-8")
        if not 0 < len(name) <= _MAX_NAME_BYTES:
            raise ValueError(f"topic name {topic!r} must be 1..{_MAX_NAME_BYTES} UTF-8 bytes")
        out.text(name)
        out.uvarint(len(numbers))
        prev = -1
        for n in numbers:
            out.uvarint(n - prev - 1)
            prev = n
    return out.buf


def _decode_partitions(r: Reader) -> tuple[TopicPartition, ...]:
    # A topic entry is at least a name length, one name byte and a count.
    n_topics = r.count("relay_only topic count", 3, INT32_MAX)
    out: list[TopicPartition] = []
    seen: set[str] = set()
    for _ in range(n_topics):
        topic = r.text("relay_only topic", _MAX_NAME_BYTES)
        if not topic or topic in seen:
            raise MetadataDecodeError(f"relay_only topic {topic!r} is empty or repeated")
        seen.add(topic)
        prev = -1
        for _ in range(r.count(f"relay_only count of {topic!r}", 1, INT32_MAX)):
            prev = prev + 1 + r.uvarint(f"relay_only gap in {topic!r}", INT32_MAX)
            if prev > INT32_MAX:
                raise MetadataDecodeError(f"relay_only partition {prev} exceeds 2**31-1")
            out.append(TopicPartition(topic, prev))
    return tuple(out)


def decode_assignment_info(data: bytes) -> AssignmentInfo:
    """Decode :class:`AssignmentInfo`, tolerating unknown fields and newer minor versions.

    Raises only :class:`MetadataDecodeError` (foreign bytes, another major version).
    """
    data = bytes(data)
    if len(data) < 4 or data[:2] != INFO_MAGIC:
        raise MetadataDecodeError("not capgroup assignment info", code="bad_magic")
    if data[2] != INFO_MAJOR_VERSION:
        raise MetadataDecodeError(
            f"assignment info major version {data[2]} is not supported", code="future_major"
        )
    r = Reader(data, 4)
    generation, unassigned, pending = -1, 0, 0
    figures: dict[str, int] = {}
    relay_only: tuple[TopicPartition, ...] = ()
    relayed: int | None = None
    while r.remaining():
        tag = r.uvarint("field tag")
        field = r.window(r.uvarint("field length"), f"field {tag}")
        if tag == _TAG_GENERATION:
            generation = field.svarint("generation", -1, INT32_MAX)
        elif tag == _TAG_UNASSIGNED:
            unassigned = field.uvarint("unassigned", INT63_MAX)
        elif tag == _TAG_PENDING:
            pending = field.uvarint("pending", INT63_MAX)
        elif tag in _FIGURE_OF_TAG:
            name = _FIGURE_OF_TAG[tag]
            figures[name] = field.uvarint(name, INT63_MAX)
        elif tag == _TAG_RELAY_ONLY:
            relay_only = _decode_partitions(field)
        elif tag == _TAG_RELAYED:
            relayed = field.uvarint("relayed", INT63_MAX)
    return AssignmentInfo(
        generation, unassigned, pending, **figures, relay_only=relay_only, relayed=relayed
    )
