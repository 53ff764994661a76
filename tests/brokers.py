"""Getting a Kafka broker for tests, independent of pytest (the fixtures live in ``tests/``).

Order of preference, as :func:`acquire_kafka` applies it:

1. ``KAFKA_BOOTSTRAP_SERVERS`` from the environment: a cluster someone else runs;
2. testcontainers' ``KafkaContainer`` in KRaft mode, if a Docker daemon answers a ping;
3. :class:`~capgroup.devkafka.LocalKafkaCluster` from the Maven jars.

Whatever cannot be had raises :class:`KafkaUnavailable` with the reason, so the caller decides
whether that skips or fails a test.
"""

from __future__ import annotations

import importlib
import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from capgroup.devkafka import admin as kafka_admin
from capgroup.devkafka.cluster import LocalKafkaCluster
from capgroup.devkafka.jars import KafkaLocalError

#: Environment variable naming an existing cluster to test against.
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
#: Image testcontainers runs when a Docker daemon is available (KRaft needs cp-kafka 7+).
KAFKA_IMAGE = "confluentinc/cp-kafka:7.7.1"

_TOPIC_CHARS = re.compile(r"[^a-zA-Z0-9._-]+")


class KafkaUnavailable(RuntimeError):  # noqa: N818 - reads as a state, like FileNotFoundError
    """No Kafka broker could be had; the message says why."""


@dataclass
class KafkaEndpoint:
    """A reachable Kafka cluster for tests: its bootstrap address and helpers.

    ``cluster`` is the :class:`LocalKafkaCluster` when the project runs the brokers itself
    (so a test can stop, kill and restart nodes), otherwise ``None``.
    """

    bootstrap_servers: str
    source: str
    cluster: LocalKafkaCluster | None = None
    _closer: Callable[[], None] | None = field(default=None, repr=False)

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication_factor: int = 1,
        configs: Mapping[str, str] | None = None,
    ) -> str:
        """Create topic ``name``, wait for its leaders, and return the name."""
        await kafka_admin.create_topic(
            self.bootstrap_servers, name, partitions, replication_factor, configs
        )
        return name

    async def delete_topics(self, names: list[str]) -> None:
        """Delete topics ``names``."""
        await kafka_admin.delete_topics(self.bootstrap_servers, names)

    async def broker_ids(self) -> set[int]:
        """Node ids of the brokers the cluster reports as alive."""
        return await kafka_admin.broker_ids(self.bootstrap_servers)

    async def find_coordinator(self, group_id: str, within: float = 30.0) -> int:
        """Node id of ``group_id``'s group coordinator (FindCoordinator)."""
        return await kafka_admin.find_group_coordinator(self.bootstrap_servers, group_id, within)

    def close(self) -> None:
        """Stop whatever this endpoint started (nothing for an external cluster)."""
        closer, self._closer = self._closer, None
        if closer is not None:
            closer()


def unique_name(prefix: str, hint: str = "") -> str:
    """A Kafka-legal name (topic or group) unique to this call, readable from ``hint``."""
    readable = _TOPIC_CHARS.sub("-", hint).strip("-")[:80]
    parts = [prefix, readable, uuid.uuid4().hex[:10]]
    return "-".join(p for p in parts if p)


def docker_daemon_available(timeout: float = 3.0) -> bool:
    """Whether a Docker daemon answers a ping (a ``docker`` client on PATH is not enough)."""
    try:
        docker: Any = importlib.import_module("docker")
        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def external_endpoint() -> KafkaEndpoint | None:
    """The cluster named by ``KAFKA_BOOTSTRAP_SERVERS``, or ``None`` when unset."""
    servers = os.environ.get(BOOTSTRAP_ENV, "").strip()
    return KafkaEndpoint(servers, source="env") if servers else None


def testcontainers_endpoint() -> KafkaEndpoint:
    """Start a KRaft ``KafkaContainer`` tuned like the local nodes."""
    try:
        module: Any = importlib.import_module("testcontainers.community.kafka")
    except ImportError:
        module = importlib.import_module("testcontainers.kafka")
    container = (
        module.KafkaContainer(KAFKA_IMAGE)
        .with_kraft()
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    try:
        container.start()
    except Exception as exc:
        raise KafkaUnavailable(f"testcontainers could not start Kafka: {exc!r}") from exc
    return KafkaEndpoint(
        str(container.get_bootstrap_server()), source="testcontainers", _closer=container.stop
    )


def local_endpoint(nodes: int = 1) -> KafkaEndpoint:
    """Start a :class:`LocalKafkaCluster` of ``nodes`` nodes from the Maven jars."""
    cluster = LocalKafkaCluster(nodes)
    try:
        cluster.start()
    except KafkaLocalError as exc:
        cluster.close()
        raise KafkaUnavailable(f"local Kafka ({nodes} node(s)) could not start: {exc}") from exc
    return KafkaEndpoint(
        cluster.bootstrap_servers, source="local", cluster=cluster, _closer=cluster.close
    )


def acquire_kafka() -> KafkaEndpoint:
    """A single Kafka cluster: the environment's, else a container, else the local jars."""
    external = external_endpoint()
    if external is not None:
        return external
    if docker_daemon_available():
        return testcontainers_endpoint()
    return local_endpoint(1)


async def cluster_size(endpoint: KafkaEndpoint) -> int:
    """How many brokers ``endpoint``'s cluster reports alive."""
    try:
        return len(await endpoint.broker_ids())
    except Exception as exc:
        raise KafkaUnavailable(f"{endpoint.bootstrap_servers} did not answer: {exc!r}") from exc


def acquire_kafka_cluster3(size_of: Callable[[KafkaEndpoint], int]) -> KafkaEndpoint:
    """A cluster of three brokers: the environment's if it has three, else three local nodes.

    ``size_of`` counts an external cluster's brokers (callers run :func:`cluster_size` in
    whatever event loop arrangement they have).
    """
    external = external_endpoint()
    if external is not None:
        size = size_of(external)
        if size != 3:
            raise KafkaUnavailable(
                f"{BOOTSTRAP_ENV}={external.bootstrap_servers} has {size} broker(s); "
                "three-node tests need exactly 3"
            )
        return external
    return local_endpoint(3)
