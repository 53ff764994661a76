"""The membership engine's one seam to the cluster: send a request, find the coordinator.

:class:`MembershipEngine <capgroup.membership.engine.MembershipEngine>` never builds a Kafka
client itself; it talks to the group coordinator through a :class:`CoordinatorTransport`.
Production wires :class:`AiokafkaTransport` (aiokafka's ``AIOKafkaClient``, with the options of
:func:`capgroup.connection.client_options`); the tests in ``tests/scripted`` drive the engine
with a scripted coordinator behind the same interface, to replay exact interleavings (a
rebalance during a flush, a generation lost while a commit waits) without a broker and without
sleeps. The broker-backed tests stay the proof that the real transport behaves the same.

Errors: a transport raises :data:`CONNECTION_ERRORS` (or a subclass) when the node cannot be
reached or the request timed out; the engine then forgets the coordinator and retries.
Protocol-level errors travel in the responses' ``error_code`` fields, as on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from aiokafka import errors as kafka_errors

from capgroup.connection import ClientRole, client_options
from capgroup.settings import CapgroupSettings

__all__ = ["CONNECTION_ERRORS", "AiokafkaTransport", "CoordinatorTransport"]

#: What a transport raises when a node cannot be reached or does not answer in time.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.StaleMetadata,
    kafka_errors.CorrelationIdError,
    ConnectionError,
    TimeoutError,
)


class CoordinatorTransport(Protocol):
    """How the membership engine reaches the group coordinator and the cluster metadata."""

    async def start(self, topics: Iterable[str]) -> None:
        """Connect to the cluster and follow the metadata of ``topics``."""

    async def find_coordinator(self, group_id: str) -> int:
        """Node id of ``group_id``'s coordinator (FindCoordinator); raises a connection error
        or :class:`aiokafka.errors.KafkaError` when none can be found now."""

    async def send(self, node_id: int, request: Any, *, coordination: bool) -> Any:
        """Send ``request`` (a :mod:`capgroup.membership.wire` request) to ``node_id`` and
        return its response.

        ``coordination`` selects the connection for requests the broker may hold for a whole
        rebalance (JoinGroup, SyncGroup), so heartbeats and commits never queue behind them.
        """

    async def partitions(self, topics: Iterable[str]) -> Mapping[str, frozenset[int]]:
        """Partition ids of each of ``topics`` from freshly refreshed metadata (an empty set
        for a topic the cluster does not know)."""

    def coordinator_unknown(self) -> None:
        """The coordinator moved or cannot be reached: refresh metadata before the next
        lookup."""

    async def close(self) -> None:
        """Close every connection."""


class AiokafkaTransport:
    """:class:`CoordinatorTransport` over aiokafka's ``AIOKafkaClient``."""

    def __init__(self, settings: CapgroupSettings) -> None:
        """Remember the options; the client is created in :meth:`start` (it needs the running
        event loop)."""
        self._options = client_options(settings, ClientRole.COORDINATOR)
        self._topics: set[str] = set()
        self._client: Any = None

    async def start(self, topics: Iterable[str]) -> None:
        """Bootstrap the client and follow the metadata of ``topics``."""
        from aiokafka.client import AIOKafkaClient

        self._topics = set(topics)
        self._client = AIOKafkaClient(**self._options)
        await self._client.bootstrap()
        self._client.set_topics(sorted(self._topics))

    async def find_coordinator(self, group_id: str) -> int:
        """FindCoordinator for ``group_id``."""
        from aiokafka.client import CoordinationType

        return int(await self._client.coordinator_lookup(CoordinationType.GROUP, group_id))

    async def send(self, node_id: int, request: Any, *, coordination: bool) -> Any:
        """Send ``request`` on the coordination or the default connection group."""
        from aiokafka.client import ConnectionGroup

        group = ConnectionGroup.COORDINATION if coordination else ConnectionGroup.DEFAULT
        return await self._client.send(node_id, request, group=group)

    async def partitions(self, topics: Iterable[str]) -> dict[str, frozenset[int]]:
        """Refresh metadata (also for topics only other members subscribe to) and read it."""
        wanted = sorted(set(topics))
        if not self._topics.issuperset(wanted):
            self._topics.update(wanted)
            self._client.set_topics(sorted(self._topics))
        await self._client.force_metadata_update()
        cluster = self._client.cluster
        return {t: frozenset(cluster.partitions_for_topic(t) or ()) for t in wanted}

    def coordinator_unknown(self) -> None:
        """Ask for a metadata refresh (the refresh itself runs in the client's background)."""
        if self._client is not None:
            self._client.force_metadata_update()

    async def close(self) -> None:
        """Close the client."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
