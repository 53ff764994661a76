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

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import anyio
from aiokafka import errors as kafka_errors

from capgroup.connection import ClientRole, client_options
from capgroup.errors import CapgroupError
from capgroup.log import get_logger, quiet_foreign_logs
from capgroup.settings import ENV_PREFIX, CapgroupSettings

__all__ = [
    "BOOTSTRAP_ERRORS",
    "CONNECTION_ERRORS",
    "AiokafkaTransport",
    "CoordinatorTransport",
    "KafkaUnreachableError",
    "bootstrap_with_retries",
]

_log = get_logger("bootstrap")

#: What a client's first connection raises while the bootstrap servers cannot be reached.
BOOTSTRAP_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.RequestTimedOutError,
    OSError,
    TimeoutError,
)
#: Wait before the second bootstrap attempt; doubled per attempt up to the maximum.
BOOTSTRAP_BACKOFF_INITIAL_S = 0.5
BOOTSTRAP_BACKOFF_MAX_S = 5.0


class KafkaUnreachableError(CapgroupError):
    """No bootstrap server answered within ``bootstrap_timeout_ms`` at start-up
    (``capgroup run`` exits 4)."""

    def __init__(self, servers: Iterable[str], timeout_ms: int, attempts: int, error: str):
        self.servers = tuple(servers)
        self.timeout_ms = timeout_ms
        self.attempts = attempts
        self.error = error
        super().__init__(
            f"cannot reach Kafka at {','.join(self.servers)} ({ENV_PREFIX}BOOTSTRAP_SERVERS) "
            f"after {attempts} attempt{'s' if attempts != 1 else ''} in "
            f"{timeout_ms / 1000:g} s ({ENV_PREFIX}BOOTSTRAP_TIMEOUT_MS): {error}"
        )


async def bootstrap_with_retries(
    connect: Callable[[], Awaitable[Any]],
    settings: CapgroupSettings,
    *,
    client: str,
) -> None:
    """Await ``connect()`` (a client's start or bootstrap) until it succeeds, retrying
    :data:`BOOTSTRAP_ERRORS` with exponential backoff for up to ``bootstrap_timeout_ms``.

    Each failed attempt logs one ``kafka_unreachable`` warning naming the servers (the
    client library's own lines for it are dropped); then :class:`KafkaUnreachableError` is
    raised. Other errors (e.g. authentication) propagate at once.
    """
    servers = list(settings.bootstrap_servers)
    timeout_s = settings.bootstrap_timeout_ms / 1000
    began = anyio.current_time()
    deadline = began + timeout_s
    backoff = BOOTSTRAP_BACKOFF_INITIAL_S
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - anyio.current_time()
        error: BaseException
        try:
            with quiet_foreign_logs() as held, anyio.fail_after(max(remaining, 0.1)):
                await connect()
        except BOOTSTRAP_ERRORS as exc:
            error = exc
        else:
            if attempt > 1:
                _log.info(
                    "kafka_reachable", servers=",".join(servers), client=client, attempts=attempt
                )
            return
        # aiokafka's per-server lines say why ("Connect call failed"); its exception does not.
        described = "; ".join(dict.fromkeys(held)) or (
            f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        )
        if isinstance(error, TimeoutError) and not held:
            described = "no answer before the bootstrap timeout"
        remaining = deadline - anyio.current_time()
        wait = min(backoff, remaining)
        _log.warning(
            "kafka_unreachable",
            servers=",".join(servers),
            client=client,
            attempt=attempt,
            error=described,
            retry_in_s=round(wait, 2) if wait > 0 else None,
            gives_up_in_s=round(max(remaining, 0.0), 2),
        )
        if wait <= 0:
            raise KafkaUnreachableError(servers, settings.bootstrap_timeout_ms, attempt, described)
        await anyio.sleep(wait)
        backoff = min(backoff * 2, BOOTSTRAP_BACKOFF_MAX_S)


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
        self._settings = settings
        self._options = client_options(settings, ClientRole.COORDINATOR)
        self._topics: set[str] = set()
        self._client: Any = None

    async def start(self, topics: Iterable[str]) -> None:
        """Bootstrap the client and follow the metadata of ``topics``."""
        from aiokafka.client import AIOKafkaClient

        self._topics = set(topics)
        self._client = AIOKafkaClient(**self._options)
        await bootstrap_with_retries(self._client.bootstrap, self._settings, client="coordinator")
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
