"""A real Apache Kafka (KRaft) from Maven Central jars, for development, the demo and the tests.

Not needed in production: ``capgroup kafka start`` and ``capgroup demo`` use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capgroup._lazy import lazy_exports

if TYPE_CHECKING:
    from capgroup.devkafka.admin import (
        admin_client,
        broker_ids,
        create_topic,
        delete_topics,
        find_group_coordinator,
    )
    from capgroup.devkafka.cluster import LocalKafkaCluster, local_kafka
    from capgroup.devkafka.jars import KAFKA_VERSION, KafkaLocalError, ensure_jars

__all__ = [
    "KAFKA_VERSION",
    "KafkaLocalError",
    "LocalKafkaCluster",
    "admin_client",
    "broker_ids",
    "create_topic",
    "delete_topics",
    "ensure_jars",
    "find_group_coordinator",
    "local_kafka",
]

_EXPORTS = {
    "KAFKA_VERSION": "capgroup.devkafka.jars",
    "KafkaLocalError": "capgroup.devkafka.jars",
    "ensure_jars": "capgroup.devkafka.jars",
    "LocalKafkaCluster": "capgroup.devkafka.cluster",
    "local_kafka": "capgroup.devkafka.cluster",
    "admin_client": "capgroup.devkafka.admin",
    "broker_ids": "capgroup.devkafka.admin",
    "create_topic": "capgroup.devkafka.admin",
    "delete_topics": "capgroup.devkafka.admin",
    "find_group_coordinator": "capgroup.devkafka.admin",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
