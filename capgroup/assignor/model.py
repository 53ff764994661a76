"""Inputs and outputs of the pure assignor. Plain, immutable data; no I/O."""

from __future__ import annotations

import bisect
import itertools
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from capgroup.types import CapacityAdvertisement, OwnedPartition, TopicPartition

__all__ = [
    "CapacityAdvertisement",
    "MemberSpec",
    "OwnedPartition",
    "PartitionSpec",
    "PartitionTable",
    "PendingMove",
    "Plan",
    "profiles_of",
]


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """One group member as the assignor sees it: identity, subscription and advertisement."""

    member_id: str
    topics: frozenset[str]
    capacity: CapacityAdvertisement
    instance_id: str | None = None


def profiles_of(members: Sequence[MemberSpec]) -> tuple[list[MemberSpec], list[int]]:
    """``members``' distinct profiles (the first member with each subscription and
    advertisement object) and, per member, the index of its profile.

    Members of one deployment share those objects as the leader decodes them, so whatever
    depends on them alone is worked out once per profile."""
    keys = [(id(m.topics), id(m.capacity)) for m in members]
    first = dict(zip(keys, members, strict=True))
    index = {key: k for k, key in enumerate(first)}
    return list(first.values()), list(map(index.__getitem__, keys))


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    """One partition to place, with its ingress rate in records/s (0 when unknown)."""

    topic: str
    partition: int
    rate: float = 0.0

    @property
    def tp(self) -> TopicPartition:
        """The topic-partition."""
        return TopicPartition(self.topic, self.partition)


class PartitionTable(Sequence[PartitionSpec]):
    """The partitions of some topics held as columns: what a leader learns from topic
    metadata (a partition count per topic), without an object per partition.

    It is a sequence of :class:`PartitionSpec` (sorted by topic, then partition number,
    without duplicates), so every caller that takes partitions takes it; the assignor's
    fast paths read its columns directly, which at a million partitions saves the tens of
    milliseconds that reading a million objects costs.

    Columns: ``topics`` (strictly ascending names), ``counts`` (partitions per topic),
    ``numbers`` (every topic's partition numbers, strictly ascending within a topic, as
    int64; None when each topic is numbered ``0..count-1``, as Kafka numbers them) and
    ``rates`` (records/s per partition, as float64, in the same order; None when all are 0).
    Topics without partitions are left out. Build it with :meth:`of_counts`,
    :meth:`of_numbers` or :meth:`of_specs`.
    """

    __slots__ = ("_bounds", "counts", "numbers", "rates", "topics")

    topics: tuple[str, ...]
    counts: tuple[int, ...]
    numbers: array[int] | None
    rates: array[float] | None

    def __init__(
        self,
        topics: Sequence[str],
        counts: Sequence[int],
        numbers: Iterable[int] | None = None,
        rates: Iterable[float] | None = None,
    ) -> None:
        """Columns as described in the class docstring.

        Raises:
            ValueError: if the columns disagree in length, the topics are not strictly
                ascending, a count is negative or a topic's numbers are not strictly
                ascending.
        """
        topics = tuple(topics)
        counts = tuple(int(c) for c in counts)
        if len(topics) != len(counts):
            raise ValueError(f"{len(topics)} topics but {len(counts)} counts")
        if any(a >= b for a, b in itertools.pairwise(topics)):
            raise ValueError("topics must be strictly ascending")
        if any(c < 0 for c in counts):
            raise ValueError("a partition count is negative")
        # A topic without partitions has nothing to place: as absent as from a list of specs.
        kept = [k for k, c in enumerate(counts) if c > 0]
        self.topics = tuple(topics[k] for k in kept)
        self.counts = tuple(counts[k] for k in kept)
        self._bounds = [0, *itertools.accumulate(self.counts)]
        total = self._bounds[-1]
        self.numbers = None if numbers is None else array("q", numbers)
        self.rates = None if rates is None else array("d", rates)
        for name, column in (("numbers", self.numbers), ("rates", self.rates)):
            if column is not None and len(column) != total:
                raise ValueError(f"{len(column)} {name} for {total} partitions")
        if self.numbers is not None:
            for t, (lo, hi) in enumerate(itertools.pairwise(self._bounds)):
                run = self.numbers[lo:hi]
                if any(a >= b for a, b in itertools.pairwise(run)):
                    raise ValueError(
                        f"partition numbers of topic {self.topics[t]!r} are not strictly ascending"
                    )

    @classmethod
    def of_counts(cls, counts: Mapping[str, int]) -> PartitionTable:
        """Topic ``t`` with partitions ``0..counts[t]-1``, rates unknown."""
        topics = sorted(counts)
        return cls(topics, [counts[t] for t in topics])

    @classmethod
    def of_numbers(cls, numbers: Mapping[str, Iterable[int]]) -> PartitionTable:
        """Each topic with the given partition numbers (any order, repeats ignored), rates
        unknown: what topic metadata gives."""
        topics = sorted(numbers)
        runs = [sorted(set(numbers[t])) for t in topics]
        counts = [len(run) for run in runs]
        # Sorted and distinct: 0..count-1 exactly when it starts at 0 and ends at count-1.
        if all(not run or (run[0] == 0 and run[-1] == len(run) - 1) for run in runs):
            return cls(topics, counts)
        return cls(topics, counts, itertools.chain.from_iterable(runs))

    @classmethod
    def of_specs(cls, specs: Iterable[PartitionSpec]) -> PartitionTable:
        """The same partitions as ``specs``, sorted.

        Raises:
            ValueError: if a partition appears twice (a list of specs may repeat one, and the
                assignor merges the repeats; a table holds each once).
        """
        ordered = sorted(specs, key=lambda p: (p.topic, p.partition))
        for a, b in itertools.pairwise(ordered):
            if (a.topic, a.partition) == (b.topic, b.partition):
                raise ValueError(f"partition {a.topic}-{a.partition} appears twice")
        topics = sorted({p.topic for p in ordered})
        counts = [0] * len(topics)
        code = {t: k for k, t in enumerate(topics)}
        for p in ordered:
            counts[code[p.topic]] += 1
        numbers = [p.partition for p in ordered]
        dense = all(
            numbers[lo:hi] == list(range(hi - lo))
            for lo, hi in itertools.pairwise([0, *itertools.accumulate(counts)])
        )
        rates = [p.rate for p in ordered]
        return cls(
            topics,
            counts,
            None if dense else numbers,
            rates if any(r != 0.0 for r in rates) else None,
        )

    def per_topic(self) -> dict[str, int]:
        """Partitions per topic."""
        return dict(zip(self.topics, self.counts, strict=True))

    def __len__(self) -> int:
        return self._bounds[-1]

    def _spec(self, k: int) -> PartitionSpec:
        t = bisect.bisect_right(self._bounds, k) - 1
        number = self.numbers[k] if self.numbers is not None else k - self._bounds[t]
        return PartitionSpec(self.topics[t], number, self.rates[k] if self.rates else 0.0)

    @overload
    def __getitem__(self, index: int) -> PartitionSpec: ...

    @overload
    def __getitem__(self, index: slice) -> list[PartitionSpec]: ...

    def __getitem__(self, index: int | slice) -> PartitionSpec | list[PartitionSpec]:
        if isinstance(index, slice):
            return [self._spec(k) for k in range(*index.indices(len(self)))]
        n = len(self)
        k = index + n if index < 0 else index
        if not 0 <= k < n:
            raise IndexError("partition table index out of range")
        return self._spec(k)

    def __iter__(self) -> Iterator[PartitionSpec]:
        k = 0
        for topic, count in zip(self.topics, self.counts, strict=True):
            for j in range(count):
                number = self.numbers[k] if self.numbers is not None else j
                yield PartitionSpec(topic, number, self.rates[k] if self.rates else 0.0)
                k += 1

    def __repr__(self) -> str:
        return f"PartitionTable({len(self.topics)} topics, {len(self)} partitions)"


@dataclass(frozen=True, slots=True)
class PendingMove:
    """A partition withheld for one round while it moves between two live members (KIP-429)."""

    tp: TopicPartition
    from_member: str
    to_member: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The assignor's output for one generation.

    Every input partition appears exactly once across ``assignment``, ``relay``, ``pending``
    and ``unassigned``. ``assignment`` has an entry for every input member, possibly empty.
    """

    assignment: Mapping[str, tuple[TopicPartition, ...]]
    pending: tuple[PendingMove, ...] = ()
    unassigned: tuple[TopicPartition, ...] = ()
    #: Partitions whose owner changes (assigned or pending to a member other than the
    #: valid current owner). Partitions of departed members count too.
    moved: int = 0
    #: Human-readable reasons for anything notable (capacity shortfall, claim conflicts).
    notes: tuple[str, ...] = field(default=())
    #: Relay-only assignments (issue 13): per member (only members that got any), partitions
    #: batch capacity could not place, which the member fetches and republishes but never
    #: batches. Each costs 1 against ``max_partitions`` and ``relay_partition_bytes`` against
    #: the budget, out of what batch placement left. Empty unless some member relays.
    relay: Mapping[str, tuple[TopicPartition, ...]] = field(default_factory=dict)
