"""The three-node cluster: RF 3, acks=all, and a node killed and restarted in the middle."""

from __future__ import annotations

import anyio
import pytest
from aiokafka import AIOKafkaProducer

from capgroup.devkafka.cluster import LocalKafkaCluster
from tests.brokers import KafkaEndpoint
from tests.test_integration_produce_consume import consume_exactly

pytestmark = [pytest.mark.kafka, pytest.mark.cluster3, pytest.mark.slow, pytest.mark.anyio]

PARTITIONS = 3
PER_PHASE = 60


async def produce(bootstrap: str, topic: str, phase: str, count: int) -> list[bytes]:
    """Send ``count`` records with acks=all and return their values in order."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=15_000, retry_backoff_ms=200
    )
    await producer.start()
    values = []
    try:
        with anyio.fail_after(90):
            for i in range(count):
                value = f"{phase}-{i}".encode()
                await producer.send_and_wait(topic, value=value, partition=i % PARTITIONS)
                values.append(value)
    finally:
        await producer.stop()
    return values


async def test_three_brokers_are_up(kafka_cluster3: KafkaEndpoint) -> None:
    assert await kafka_cluster3.broker_ids() == {1, 2, 3}


async def test_produce_consume_survives_killing_and_restarting_a_node(
    kafka_cluster3: KafkaEndpoint, local_cluster3: LocalKafkaCluster, topic_factory
) -> None:
    topic = await topic_factory(
        partitions=PARTITIONS,
        replication_factor=3,
        configs={"min.insync.replicas": "2"},
        on=kafka_cluster3,
    )
    bootstrap = kafka_cluster3.bootstrap_servers
    sent = await produce(bootstrap, topic, "before", PER_PHASE)

    victim = 2
    local_cluster3.kill_node(victim)
    assert not local_cluster3.is_running(victim)
    # Clients bootstrap from the surviving nodes only, as an application would after failover.
    survivors = ",".join(n.bootstrap for n in local_cluster3.nodes if n.node_id != victim)
    sent += await produce(survivors, topic, "degraded", PER_PHASE)
    got = await consume_exactly(survivors, topic, PARTITIONS, len(sent))
    assert sorted(v for *_, v in got) == sorted(sent)

    local_cluster3.start_node(victim)
    await local_cluster3.wait_ready(within=90)
    assert await kafka_cluster3.broker_ids() == {1, 2, 3}
    sent += await produce(bootstrap, topic, "after", PER_PHASE)

    got = await consume_exactly(bootstrap, topic, PARTITIONS, len(sent))
    assert len(got) == 3 * PER_PHASE
    for partition in range(PARTITIONS):
        values = [v for p, _, _, v in sorted(got) if p == partition]
        assert values == [v for i, v in enumerate(sent) if i % PER_PHASE % PARTITIONS == partition]


async def test_group_coordinators_are_found_and_spread(kafka_cluster3: KafkaEndpoint) -> None:
    # offsets.topic.num.partitions=3 over three nodes: enough groups land on every node.
    coordinators = {
        await kafka_cluster3.find_coordinator(f"coordinator-probe-{i}") for i in range(12)
    }
    assert coordinators <= {1, 2, 3}
    assert len(coordinators) >= 2
