"""Inputs and outputs of the pure assignor. Plain, immutable data; no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from capgroup.types import CapacityAdvertisement, OwnedPartition, TopicPartition

__all__ = [
    "CapacityAdvertisement",
    "MemberSpec",
    "OwnedPartition",
    "PartitionSpec",
    "PendingMove",
    "Plan",
]


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """One group member as the assignor sees it: identity, subscription and advertisement."""

    member_id: str
    topics: frozenset[str]
    capacity: CapacityAdvertisement
    instance_id: str | None = None


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
