"""Plain value types shared by every layer (no I/O, no Kafka client imports).

The capacity advertisement lives here rather than with the assignor because three layers
speak it: the protocol codec encodes it, the assignor plans with it and the membership engine
builds it from the runtime's capacity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["CapacityAdvertisement", "OwnedPartition", "TopicPartition"]


class TopicPartition(NamedTuple):
    """A topic-partition. Compares and hashes equal to aiokafka's ``TopicPartition``."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class OwnedPartition:
    """A partition a member claims to own, the generation under which it owned it last,
    and the partition's ingress rate (records/s from broker high watermarks; 0 if unknown)."""

    topic: str
    partition: int
    generation: int
    rate: float = 0.0

    @property
    def tp(self) -> TopicPartition:
        """The claimed topic-partition."""
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class CapacityAdvertisement:
    """What a member tells the leader about its limits and its current ownership.

    Travels, versioned, in the ``user_data`` of JoinGroup protocol metadata
    (see :mod:`capgroup.protocol.capacity`).
    """

    max_partitions: int
    memory_budget_bytes: int
    #: Worst-case bytes one partition of a topic costs this member (a full batch in memory plus
    #: its fetch buffer).
    partition_bytes: Mapping[str, int]
    #: Cost of a partition of a topic missing from ``partition_bytes``.
    default_partition_bytes: int = 0
    weight: float = 1.0
    rack: str | None = None
    draining: bool = False
    owned: tuple[OwnedPartition, ...] = ()
    #: Bytes one relay-only partition costs this member (its fetch buffer only: the records are
    #: republished, never batched); 0 means the member does not relay. See ``docs/assignor.md``.
    relay_partition_bytes: int = 0

    def cost_of(self, topic: str) -> int:
        """Bytes one partition of ``topic`` costs this member."""
        return self.partition_bytes.get(topic, self.default_partition_bytes)
