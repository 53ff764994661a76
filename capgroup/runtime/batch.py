"""Records, batches and the per-partition buffer that cuts them. Pure: the clock is a parameter.

Clock values (``now``, ``started_at``, ``cut_at``) are seconds on one monotonic clock chosen
by the caller (the runtime uses the event loop's clock); only differences between them matter.

:class:`Record` and :class:`Batch` are generic in the type of the record's value: ``bytes``
by default (what Kafka delivers); a service whose ``deserialize`` decodes values declares
``BatchingConsumer[MyValue]`` and gets ``Batch[MyValue]`` in ``flush``. Sizes always count
the raw payload as fetched (:func:`record_sizes` runs before ``deserialize``).
"""

from __future__ import annotations

import dataclasses
import operator
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Protocol

from aiokafka.structs import ConsumerRecord
from typing_extensions import TypeVar

from capgroup.types import TopicPartition

if TYPE_CHECKING:
    from capgroup.settings import CapgroupSettings

__all__ = [
    "Batch",
    "BatchLimits",
    "FlushReason",
    "PartitionBuffer",
    "Record",
    "Undecodable",
    "make_record",
    "record_size",
    "record_sizes",
    "with_value",
]

#: Type of a record's value: ``bytes`` as fetched, or what ``deserialize`` decoded it into.
V = TypeVar("V", default=bytes)
V_co = TypeVar("V_co", covariant=True, default=bytes)
W = TypeVar("W")


class Record(Protocol[V_co]):
    """One consumed Kafka record, as handed to user code inside a :class:`Batch`.

    At run time these are aiokafka's ``ConsumerRecord`` objects, passed through unchanged:
    building a second object per record cost more than the rest of capgroup's fetch path
    (``benchmarks/README.md``). Build one yourself with :func:`make_record`. ``Record`` is
    ``Record[bytes]``; ``deserialize`` may return a ``Record[T]`` with a decoded value
    (:func:`with_value`).
    """

    @property
    def topic(self) -> str:
        """Topic name."""

    @property
    def partition(self) -> int:
        """Partition number."""

    @property
    def offset(self) -> int:
        """Offset in its partition."""

    @property
    def timestamp(self) -> int:
        """Record timestamp, milliseconds since the epoch."""

    @property
    def key(self) -> bytes | None:
        """Key bytes, if any."""

    @property
    def value(self) -> V_co | None:
        """Value: bytes as fetched, or the value ``deserialize`` decoded; None if absent."""

    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]:
        """Headers as (name, value) pairs."""


def make_record(
    topic: str,
    partition: int,
    offset: int,
    timestamp: int,
    key: bytes | None = None,
    value: bytes | None = None,
    headers: Sequence[tuple[str, bytes | None]] = (),
) -> Record:
    """A :class:`Record` (an aiokafka ``ConsumerRecord``, create-time timestamp)."""
    record: Record = ConsumerRecord(
        topic,
        partition,
        offset,
        timestamp,
        0,
        key,
        value,
        None,
        -1 if key is None else len(key),
        -1 if value is None else len(value),
        tuple(headers),
    )
    return record


def with_value(record: Record[Any], value: W) -> Record[W]:
    """A copy of ``record`` (topic, partition, offset, key, headers, timestamp) with ``value``:
    what a ``deserialize`` that decodes values returns. ``record`` itself is unchanged."""
    copy: Record[W] = dataclasses.replace(record, value=value)  # type: ignore[type-var]
    return copy


def record_size(record: Record[Any]) -> int:
    """Exact payload size: key + value + every header's UTF-8 name and value."""
    key, value = record.key, record.value
    size = (0 if key is None else len(key)) + (0 if value is None else len(value))
    for name, header in record.headers:
        size += len(name.encode("utf-8")) + (0 if header is None else len(header))
    return size


def record_sizes(records: Sequence[Record[Any]]) -> list[int]:
    """:func:`record_size` of each record; the consumer's per-record hot path."""
    # One pass; the header walk only for records that carry headers (most carry none).
    return [
        (0 if (k := r.key) is None else len(k)) + (0 if (v := r.value) is None else len(v))
        if not r.headers
        else record_size(r)
        for r in records
    ]


def _increasing(records: Sequence[Record[Any]]) -> bool:
    """Whether ``records``' offsets are strictly increasing."""
    offsets = [r.offset for r in records]
    return all(map(operator.lt, offsets, offsets[1:]))


class FlushReason(StrEnum):
    """Why a batch was cut. ``due()`` only reports the first three; the rest are runtime causes."""

    RECORDS = "records"
    BYTES = "bytes"
    AGE = "age"
    REVOKE = "revoke"
    SHUTDOWN = "shutdown"
    MEMORY_PRESSURE = "memory_pressure"
    #: The next buffered record could not be deserialized (it is handled on its own).
    UNDECODABLE = "undecodable"


@dataclass(frozen=True, slots=True)
class Batch(Generic[V]):
    """An immutable run of records of one partition, in offset order, handed to ``flush``.

    ``size_bytes`` is the exact sum of the records' payload sizes as fetched (key + value +
    headers, before ``deserialize``); build batches with :meth:`of` unless that sum is already
    known. ``age`` is how long the oldest record had been buffered when the batch was cut.
    ``Batch`` is ``Batch[bytes]``; a service that decodes values gets ``Batch[T]``.
    """

    tp: TopicPartition
    records: tuple[Record[V], ...]
    size_bytes: int
    #: Clock value at which the first record of this batch was buffered.
    started_at: float
    #: Clock value at which the batch was cut from its buffer.
    cut_at: float

    def __post_init__(self) -> None:
        if not self.records:
            raise ValueError("a batch holds at least one record")

    @classmethod
    def of(
        cls,
        tp: TopicPartition,
        records: Iterable[Record[V]],
        *,
        started_at: float,
        cut_at: float | None = None,
        size_bytes: int | None = None,
    ) -> Batch[V]:
        """Build a batch; ``cut_at`` defaults to ``started_at``. ``size_bytes`` defaults to the
        records' exact size, which needs raw (bytes) values: pass it for decoded records."""
        held = tuple(records)
        return cls(
            tp=tp,
            records=held,
            size_bytes=sum(record_sizes(held)) if size_bytes is None else size_bytes,
            started_at=started_at,
            cut_at=started_at if cut_at is None else cut_at,
        )

    @property
    def first_offset(self) -> int:
        """Offset of the first record."""
        return self.records[0].offset

    @property
    def last_offset(self) -> int:
        """Offset of the last record; the commit after this batch is ``last_offset + 1``."""
        return self.records[-1].offset

    @property
    def next_offset(self) -> int:
        """The offset to commit once this batch is durable."""
        return self.records[-1].offset + 1

    @property
    def record_count(self) -> int:
        """Number of records."""
        return len(self.records)

    @property
    def age(self) -> float:
        """Seconds between the first record being buffered and the batch being cut."""
        return self.cut_at - self.started_at

    def age_at(self, now: float) -> float:
        """Seconds between the first record being buffered and ``now``."""
        return now - self.started_at

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record[V]]:
        return iter(self.records)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """When a partition buffer is due: any one limit reached cuts a batch."""

    max_records: int
    max_bytes: int
    #: Seconds.
    max_age: float

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_bytes < 1 or self.max_age <= 0:
            raise ValueError(f"batch limits must be positive, got {self}")

    @classmethod
    def from_settings(cls, settings: CapgroupSettings) -> BatchLimits:
        """Limits from ``batch_max_records``, ``batch_max_bytes`` and ``batch_max_age_ms``."""
        return cls(
            max_records=settings.batch_max_records,
            max_bytes=settings.batch_max_bytes,
            max_age=settings.batch_max_age_ms / 1000.0,
        )


@dataclass(slots=True)
class Undecodable:
    """A raw record ``deserialize`` failed on, buffered in its place until handled."""

    record: Record
    error: BaseException
    #: Whether the partition stops at this record (``deserialize_failure_policy=stop_partition``).
    halts: bool
    #: Buffered records in front of it.
    index: int


class PartitionBuffer:
    """Records of one partition waiting to be flushed.

    Appends are idempotent per offset: a record at or below the highest offset ever appended is
    ignored, because after a seek the fetcher may hand back records the buffer already holds or
    already cut into a batch. Byte accounting is exact (raw payload sizes as fetched).

    A record ``deserialize`` failed on is buffered in its place as :class:`Undecodable` (raw,
    counted like any record): batches are cut up to it, never across it, and once it is at the
    head :meth:`take_undecodable` cuts it alone, so it is handled in offset order.
    """

    __slots__ = (
        "_arrived",
        "_bytes",
        "_last_offset",
        "_records",
        "_sizes",
        "_undecodable",
        "limits",
        "tp",
    )

    def __init__(self, tp: TopicPartition, limits: BatchLimits, *, next_offset: int = 0) -> None:
        """``next_offset`` is the fetch position: records below it are ignored."""
        self.tp = tp
        self.limits = limits
        self._records: list[Record[Any]] = []
        self._sizes: list[int] = []
        self._arrived: list[float] = []
        self._bytes = 0
        self._last_offset = next_offset - 1
        self._undecodable: deque[Undecodable] = deque()

    @property
    def size_bytes(self) -> int:
        """Exact bytes buffered."""
        return self._bytes

    @property
    def record_count(self) -> int:
        """Records buffered."""
        return len(self._records)

    @property
    def last_offset(self) -> int:
        """Highest offset ever accepted (or ``next_offset - 1`` when none was)."""
        return self._last_offset

    @property
    def started_at(self) -> float | None:
        """Clock value at which the oldest buffered record arrived, if any."""
        return self._arrived[0] if self._arrived else None

    @property
    def is_full(self) -> bool:
        """True once the buffer holds a whole batch (stop fetching this partition until cut), or
        a record the partition stops at (nothing past it is wanted)."""
        return (
            len(self._records) >= self.limits.max_records
            or self._bytes >= self.limits.max_bytes
            or self.halted
        )

    @property
    def halted(self) -> bool:
        """Whether an undecodable record the partition stops at is buffered."""
        return any(u.halts for u in self._undecodable)

    def head_undecodable(self) -> Undecodable | None:
        """The undecodable record at the head of the buffer, if the head is one."""
        head = self._undecodable[0] if self._undecodable else None
        return head if head is not None and head.index == 0 else None

    def skip_to(self, offset: int) -> None:
        """Ignore records up to ``offset`` from now on (a record skipped before buffering)."""
        self._last_offset = max(self._last_offset, offset)

    def append_undecodable(
        self, record: Record, size: int, now: float, error: BaseException, *, halts: bool
    ) -> bool:
        """Buffer raw ``record`` that ``deserialize`` failed on; False if already seen."""
        if record.offset <= self._last_offset:
            return False
        self._undecodable.append(Undecodable(record, error, halts, len(self._records)))
        self._records.append(record)
        self._sizes.append(size)
        self._arrived.append(now)
        self._bytes += size
        self._last_offset = record.offset
        return True

    def __len__(self) -> int:
        return len(self._records)

    def __bool__(self) -> bool:
        return bool(self._records)

    def append(self, record: Record, now: float) -> bool:
        """Buffer ``record`` arrived at ``now``; False if its offset was already seen."""
        if record.offset <= self._last_offset:
            return False
        if record.topic != self.tp.topic or record.partition != self.tp.partition:
            raise ValueError(
                f"record of {record.topic}-{record.partition} appended to the buffer of {self.tp}"
            )
        size = record_size(record)
        self._records.append(record)
        self._sizes.append(size)
        self._arrived.append(now)
        self._bytes += size
        self._last_offset = record.offset
        return True

    def extend(
        self,
        records: Sequence[Record],
        now: float,
        sizes: Sequence[int] | None = None,
        *,
        ordered: bool = False,
    ) -> int:
        """Buffer a fetched chunk; returns how many records were accepted.

        ``sizes`` are the records' :func:`record_size` when the caller has them (the consumer
        measures raw records before ``deserialize``). A chunk in strictly increasing offset
        order past everything seen, as the fetcher delivers it, is taken in bulk; anything
        else goes through the same checks as :meth:`append`, record by record. ``ordered``
        says the caller vouches for the order (the fetcher's contract: one partition's records
        in increasing offsets), so only the chunk's ends are checked: the offset walk is most
        of this method's per-record cost.
        """
        if not records:
            return 0
        measured = record_sizes(records) if sizes is None else list(sizes)
        first, last = records[0], records[-1]
        topic, partition = self.tp.topic, self.tp.partition
        if (
            first.offset > self._last_offset
            and (ordered or _increasing(records))
            and first.topic == topic == last.topic
            and first.partition == partition == last.partition
        ):
            self._records.extend(records)
            self._sizes.extend(measured)
            self._arrived.extend([now] * len(records))
            self._bytes += sum(measured)
            self._last_offset = last.offset
            return len(records)
        accepted = 0
        for record, size in zip(records, measured, strict=True):
            if record.offset <= self._last_offset:
                continue
            if record.topic != topic or record.partition != partition:
                raise ValueError(
                    f"record of {record.topic}-{record.partition} appended to the buffer of "
                    f"{self.tp}"
                )
            self._records.append(record)
            self._sizes.append(size)
            self._arrived.append(now)
            self._bytes += size
            self._last_offset = record.offset
            accepted += 1
        return accepted

    def due(self, now: float) -> FlushReason | None:
        """Which limit makes the buffer due at ``now``, if any (records, then bytes, then age);
        an undecodable record at the head is due at once, and so is everything before a
        record the partition stops at (nothing more will arrive)."""
        if not self._records:
            return None
        if self._undecodable and (self._undecodable[0].index == 0 or self.halted):
            return FlushReason.UNDECODABLE
        if len(self._records) >= self.limits.max_records:
            return FlushReason.RECORDS
        if self._bytes >= self.limits.max_bytes:
            return FlushReason.BYTES
        if now - self._arrived[0] >= self.limits.max_age:
            return FlushReason.AGE
        return None

    def due_at(self) -> float | None:
        """Clock value at which the age limit makes the buffer due; None while empty."""
        return self._arrived[0] + self.limits.max_age if self._arrived else None

    def take(self, now: float) -> Batch[Any]:
        """Cut the oldest records as one batch within the limits, leaving the rest buffered.

        The batch holds at most ``max_records`` records and, unless a single record is larger,
        at most ``max_bytes`` bytes; it stops before an undecodable record. Raises
        ``LookupError`` when the buffer is empty or its head is undecodable.
        """
        count, size = self._cut_point()
        return self._cut(count, size, now)

    def take_all(self, now: float) -> Batch[Any]:
        """Cut everything buffered as one batch (revoke, shutdown), up to the first undecodable
        record. ``LookupError`` if empty or the head is undecodable."""
        if self._undecodable:
            count = self._undecodable[0].index
            return self._cut(count, sum(self._sizes[:count]), now)
        return self._cut(len(self._records), self._bytes, now)

    def take_undecodable(self, now: float) -> tuple[Batch, Undecodable]:
        """Cut the undecodable head record alone, as a batch of its raw record."""
        head = self.head_undecodable()
        if head is None:
            raise LookupError(f"the head of the buffer of {self.tp} is not undecodable")
        return self._cut(1, self._sizes[0], now), head

    def discard(self) -> int:
        """Drop everything buffered; returns the bytes dropped. The offset guard stays."""
        dropped = self._bytes
        self._records.clear()
        self._sizes.clear()
        self._arrived.clear()
        self._undecodable.clear()
        self._bytes = 0
        return dropped

    def reset(self, next_offset: int) -> int:
        """Discard and restart at fetch position ``next_offset`` (a seek); returns bytes dropped."""
        dropped = self.discard()
        self._last_offset = next_offset - 1
        return dropped

    def _cut_point(self) -> tuple[int, int]:
        limit = min(len(self._records), self.limits.max_records)
        if self._undecodable:
            limit = min(limit, self._undecodable[0].index)
        elif self._bytes <= self.limits.max_bytes and limit == len(self._records):
            return limit, self._bytes
        count, size = 0, 0
        for record_size in self._sizes[:limit]:
            if count and size + record_size > self.limits.max_bytes:
                break
            count += 1
            size += record_size
        return count, size

    def _cut(self, count: int, size: int, now: float) -> Batch[Any]:
        if not self._records:
            raise LookupError(f"the buffer of {self.tp} is empty")
        if count == 0:
            raise LookupError(f"the head of the buffer of {self.tp} is undecodable")
        batch: Batch[Any] = Batch(
            tp=self.tp,
            records=tuple(self._records[:count]),
            size_bytes=size,
            started_at=self._arrived[0],
            cut_at=now,
        )
        del self._records[:count]
        del self._sizes[:count]
        del self._arrived[:count]
        self._bytes -= size
        if self._undecodable:
            for entry in self._undecodable:
                entry.index -= count
            if self._undecodable[0].index < 0:
                self._undecodable.popleft()
        return batch
