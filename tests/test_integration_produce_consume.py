"""End to end through the harness: produce with aiokafka, consume back, compare."""

from __future__ import annotations

from collections import defaultdict

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from tests.brokers import KafkaEndpoint

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]

RECORDS = 300
PARTITIONS = 3


async def consume_exactly(
    bootstrap: str, topic: str, partitions: int, count: int, within: float = 60.0
) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Read ``count`` records from the start of every partition: (partition, offset, key, value)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        seen: list[tuple[int, int, bytes | None, bytes | None]] = []
        with anyio.fail_after(within):
            while len(seen) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    seen.extend((r.partition, r.offset, r.key, r.value) for r in records)
        return seen
    finally:
        await consumer.stop()


async def test_produced_records_come_back_in_order_per_partition(
    kafka: KafkaEndpoint, topic_factory
) -> None:
    topic = await topic_factory(partitions=PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    sent: dict[int, list[bytes]] = defaultdict(list)
    try:
        for i in range(RECORDS):
            partition = i % PARTITIONS
            value = f"value-{i}".encode()
            meta = await producer.send_and_wait(
                topic, value=value, key=f"key-{i}".encode(), partition=partition
            )
            assert meta.partition == partition
            sent[partition].append(value)
    finally:
        await producer.stop()

    got = await consume_exactly(kafka.bootstrap_servers, topic, PARTITIONS, RECORDS)

    assert len(got) == RECORDS
    by_partition: dict[int, list[tuple[int, bytes | None, bytes | None]]] = defaultdict(list)
    for partition, offset, key, value in got:
        by_partition[partition].append((offset, key, value))
    assert sorted(by_partition) == list(range(PARTITIONS))
    for partition, rows in by_partition.items():
        assert [offset for offset, _, _ in rows] == list(range(len(rows)))
        assert [value for _, _, value in rows] == sent[partition]
        for _, key, value in rows:
            assert key is not None
            assert value is not None
            assert key.removeprefix(b"key-") == value.removeprefix(b"value-")
