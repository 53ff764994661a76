"""Pytest fixtures for Kafka-backed tests; ``tests/conftest.py`` imports them.

The broker logic lives in :mod:`tests.brokers`; this module only maps "no broker"
to a skip, or to a failure when ``CI=true`` (CI must never pass by skipping Kafka tests).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, NoReturn

import anyio
import pytest

from capgroup.devkafka.cluster import LocalKafkaCluster
from tests.brokers import (
    KafkaEndpoint,
    KafkaUnavailable,
    acquire_kafka,
    acquire_kafka_cluster3,
    cluster_size,
    unique_name,
)

#: Fixtures that mean a test talks to Kafka; such tests get the ``kafka`` marker.
KAFKA_FIXTURES = frozenset({"kafka", "kafka_cluster3", "local_cluster3", "topic_factory"})

TopicFactory = Callable[..., Awaitable[str]]


def in_ci() -> bool:
    """Whether we run under CI (``CI=true``), where Kafka tests must not be skipped."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it under CI."""
    if in_ci():
        pytest.fail(f"CI=true and no usable Kafka: {reason}", pytrace=False)
    pytest.skip(f"no usable Kafka: {reason}")


def run_in_thread(func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run async ``func`` to completion on a fresh event loop in a fresh thread.

    Works whether or not the calling thread is inside an event loop (fixture teardown may be).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = anyio.run(func, *args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="kafka-fixture-helper")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def add_kafka_marker(items: list[pytest.Item]) -> None:
    """Mark every collected test that uses a Kafka fixture with ``kafka``."""
    for item in items:
        if KAFKA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests run on asyncio (aiokafka needs it)."""
    return "asyncio"


def serve(acquire: Callable[[], KafkaEndpoint]) -> Iterator[KafkaEndpoint]:
    """Yield the endpoint ``acquire`` returns and close it afterwards; no endpoint skips/fails."""
    try:
        endpoint = acquire()
    except KafkaUnavailable as exc:
        unavailable(str(exc))
    try:
        yield endpoint
    finally:
        endpoint.close()


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaEndpoint]:
    """A Kafka cluster for the whole session (env, else testcontainers, else local jars)."""
    yield from serve(acquire_kafka)


@pytest.fixture(scope="session")
def kafka_cluster3() -> Iterator[KafkaEndpoint]:
    """A three-broker cluster, started on first request (env cluster only if it has 3)."""

    def size_of(endpoint: KafkaEndpoint) -> int:
        return int(run_in_thread(cluster_size, endpoint))

    yield from serve(lambda: acquire_kafka_cluster3(size_of))


@pytest.fixture
def local_cluster3(kafka_cluster3: KafkaEndpoint) -> LocalKafkaCluster:
    """The three-node :class:`LocalKafkaCluster` itself, for tests that stop or kill nodes."""
    if kafka_cluster3.cluster is None:
        unavailable("this test stops nodes, which an external cluster does not allow")
    return kafka_cluster3.cluster


@pytest.fixture
def unique_id(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Make names (group ids, client ids) unique to this test: ``unique_id("group")``."""
    return lambda prefix: unique_name(prefix, request.node.name)


@pytest.fixture
def topic_factory(request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    """An async factory of topics unique to this test, deleted afterwards.

    ``await topic_factory(partitions=3, replication_factor=1, configs=None, on=None)`` returns
    the new topic's name; ``on`` is the endpoint to create it on (default: ``kafka``).
    """
    created: list[tuple[KafkaEndpoint, str]] = []

    async def make(
        partitions: int = 1,
        replication_factor: int = 1,
        configs: Mapping[str, str] | None = None,
        on: KafkaEndpoint | None = None,
    ) -> str:
        endpoint = on if on is not None else request.getfixturevalue("kafka")
        name = unique_name("t", request.node.name)
        await endpoint.create_topic(name, partitions, replication_factor, configs)
        created.append((endpoint, name))
        return name

    yield make
    for endpoint, name in created:
        try:
            run_in_thread(endpoint.delete_topics, [name])
        except Exception as exc:
            # A test that left a node down may make deletion fail; the topic name is unique,
            # so a leftover harms no other test.
            request.node.add_report_section("teardown", "topic cleanup", repr(exc))
