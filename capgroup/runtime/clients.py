"""The runtime's seam to the Kafka clients: what it fetches with, dead-letters with, and the
coordinator transport its membership engine talks through.

:class:`~capgroup.runtime.consumer.BatchingConsumer` builds no Kafka client itself; ``run``
asks a :class:`KafkaClients` factory for them. Production uses :class:`AiokafkaClients`
(:class:`~capgroup.runtime.fetcher.PartitionFetcher`,
:class:`~capgroup.runtime.deadletter.DeadLetterProducer` and
:class:`~capgroup.membership.transport.AiokafkaTransport`); ``tests/scripted`` has in-memory
ones, so the fetch, flush and dead-letter paths can be driven without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from capgroup.membership.transport import AiokafkaTransport, CoordinatorTransport
from capgroup.runtime.batch import Batch
from capgroup.runtime.deadletter import DeadLetterProducer
from capgroup.runtime.fetcher import PartitionFetcher
from capgroup.runtime.relay import RelayProducer, RelaySink
from capgroup.settings import CapgroupSettings
from capgroup.types import TopicPartition

__all__ = ["AiokafkaClients", "DeadLetterSink", "Fetcher", "KafkaClients"]


class Fetcher(Protocol):
    """Fetches records of the partitions a member owns, steered by gain/release and holds.

    A held partition (:meth:`hold`, or everything under :meth:`hold_all`) keeps its position
    and is fetched again once no longer held; a released one is forgotten until gained again.
    """

    async def start(self) -> None:
        """Connect; nothing is fetched until partitions are gained."""

    async def stop(self) -> None:
        """Close."""

    async def gain(self, positions: Mapping[TopicPartition, int | None]) -> None:
        """Start fetching ``positions`` (committed offset, or ``None`` for the reset policy)."""

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching ``partitions``; records already fetched for them are dropped."""

    def hold(self, partitions: Iterable[TopicPartition]) -> None:
        """Pause owned partitions for backpressure."""

    def unhold(self, partitions: Iterable[TopicPartition]) -> None:
        """Resume partitions paused by :meth:`hold`."""

    def hold_all(self, held: bool) -> None:
        """Pause (or stop pausing) every partition."""

    async def fetch(
        self, timeout_ms: int, max_records: int | None = None
    ) -> Mapping[TopicPartition, list[Any]]:
        """Records of flowing owned partitions (at most ``max_records`` in all, when given),
        after at most ``timeout_ms`` of waiting."""

    async def positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offset to be read of each of ``partitions`` (after :meth:`gain`)."""

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """High watermarks of ``partitions``."""

    async def beginning_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Log start offsets of ``partitions`` (the first offset not deleted by retention)."""

    async def record_timestamps(
        self, offsets: Mapping[TopicPartition, int], timeout_ms: int = 2_000
    ) -> dict[TopicPartition, int]:
        """Timestamp (ms) of the first record at or after each offset, for any partition
        (owned or not), without moving the fetch positions; absent where there is none."""

    async def topic_retention_ms(self, topics: Iterable[str]) -> dict[str, int | None]:
        """``retention.ms`` of each of ``topics`` (-1: infinite; None: not known)."""


class DeadLetterSink(Protocol):
    """Where batches go whose flush failed for good (``flush_failure_policy=dead_letter``)."""

    @property
    def topic(self) -> str:
        """The dead-letter topic (for logs)."""

    async def start(self) -> None:
        """Connect."""

    async def stop(self) -> None:
        """Flush pending sends and close."""

    async def send(
        self, batch: Batch, *, error: BaseException, attempts: int, member_id: str
    ) -> None:
        """Store every record of ``batch`` durably, or raise (the caller retries)."""


class KafkaClients(Protocol):
    """Builds the clients of one :meth:`BatchingConsumer.run` (inside its event loop)."""

    def coordinator_transport(self) -> CoordinatorTransport:
        """The membership engine's transport to the group coordinator."""

    def fetcher(self, fetch_max_bytes: int) -> Fetcher:
        """The fetcher; one fetch response carries at most ``fetch_max_bytes``."""

    def dead_letter(self, topic: str) -> DeadLetterSink:
        """The dead-letter sink producing to ``topic``."""


class AiokafkaClients:
    """:class:`KafkaClients` over aiokafka, configured from ``settings``."""

    def __init__(self, settings: CapgroupSettings) -> None:
        self._settings = settings

    def coordinator_transport(self) -> CoordinatorTransport:
        """An :class:`~capgroup.membership.transport.AiokafkaTransport`."""
        return AiokafkaTransport(self._settings)

    def fetcher(self, fetch_max_bytes: int) -> Fetcher:
        """A :class:`~capgroup.runtime.fetcher.PartitionFetcher`."""
        return PartitionFetcher(self._settings, fetch_max_bytes=fetch_max_bytes)

    def dead_letter(self, topic: str) -> DeadLetterSink:
        """A :class:`~capgroup.runtime.deadletter.DeadLetterProducer`."""
        return DeadLetterProducer(self._settings, topic)

    def relay(self) -> RelaySink:
        """A :class:`~capgroup.runtime.relay.RelayProducer` (``relay_enabled`` only; a
        :class:`KafkaClients` without ``relay`` gets one too)."""
        return RelayProducer(self._settings)
