"""Plain value types shared by every layer (no I/O, no Kafka client imports)."""

from __future__ import annotations

from typing import NamedTuple


class TopicPartition(NamedTuple):
    """A topic-partition. Compares and hashes equal to aiokafka's ``TopicPartition``."""

    topic: str
    partition: int
