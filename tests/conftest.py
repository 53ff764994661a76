"""Shared fixtures. Kafka fixtures: see ``tests/kafka_fixtures.py``."""

from __future__ import annotations

import pytest

from tests.kafka_fixtures import (
    add_kafka_marker,
    anyio_backend,
    kafka,
    kafka_cluster3,
    local_cluster3,
    topic_factory,
    unique_id,
)

__all__ = [
    "anyio_backend",
    "kafka",
    "kafka_cluster3",
    "local_cluster3",
    "topic_factory",
    "unique_id",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests using a Kafka fixture carry the ``kafka`` marker (``-m 'not kafka'`` skips them)."""
    add_kafka_marker(items)
