"""The bloom index example against a real broker: every produced key is possibly present in the
filter of the range that holds it, and absent keys hit at about the configured rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from capgroup import TopicPartition
from examples.bloom_index.bloom import BloomFilter
from examples.bloom_index.bloom_index import BloomIndexer, candidate_ranges, load_filters
from tests.runtime.harness import consumer_settings, running, wait_committed

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

FP_RATE = 0.01
PER_PARTITION = 3000


async def produce_keys(
    bootstrap: str, topic: str, partitions: int
) -> dict[TopicPartition, list[bytes]]:
    """``PER_PARTITION`` records with distinct keys per partition; keys by offset."""
    keys: dict[TopicPartition, list[bytes]] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        for p in range(partitions):
            tp = TopicPartition(topic, p)
            keys[tp] = [f"user-{p}-{i}".encode() for i in range(PER_PARTITION)]
            futures = [
                await producer.send(topic, value=b"v", key=key, partition=p) for key in keys[tp]
            ]
            assert [(await f).offset for f in futures] == list(range(PER_PARTITION))
    finally:
        await producer.stop()
    return keys


async def test_present_keys_always_found_absent_keys_at_the_configured_rate(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=2)
    group = unique_id("g")
    root = tmp_path / "bloom"
    keys = await produce_keys(bootstrap, topic, 2)
    settings = consumer_settings(
        bootstrap, group, topic, batch_max_records=700, batch_max_age_ms=300
    )
    async with running(BloomIndexer(directory=root, fp_rate=FP_RATE, **settings)):
        await wait_committed(bootstrap, group, dict.fromkeys(keys, PER_PARTITION), 30)

    lookups = positives = 0
    for tp, produced in keys.items():
        filters = load_filters(root, tp)
        # The ranges tile the partition: each offset is indexed exactly once.
        covered = [o for first, last, _ in filters for o in range(first, last + 1)]
        assert covered == list(range(PER_PARTITION))
        assert len(filters) >= PER_PARTITION // 700
        for first, last, bloom in filters:
            assert bloom.count == last - first + 1
            for offset in range(first, last + 1):
                assert produced[offset] in bloom, f"{tp} offset {offset} missing from its filter"
            for j in range(20_000):
                lookups += 1
                positives += f"absent-{j}".encode() in bloom
        holder = next((lo, hi) for lo, hi, _ in filters if lo <= 1234 <= hi)
        assert holder in candidate_ranges(root, tp, produced[1234])
    rate = positives / lookups
    # ~200k lookups: the standard error at 1 % is about 0.0002, so these bounds catch a filter
    # sized for the wrong rate without flaking.
    assert FP_RATE / 2 <= rate <= FP_RATE * 1.5, f"false-positive rate {rate:.4f}"


def test_filter_round_trips_and_sizes_for_the_rate() -> None:
    bloom = BloomFilter.for_capacity(1000, 0.01)
    assert 9000 < bloom.size < 10_000  # -n ln p / ln2^2 = 9585 bits
    assert bloom.hashes == 7
    for i in range(1000):
        bloom.add(str(i).encode())
    again = BloomFilter.from_bytes(bloom.to_bytes())
    assert (again.size, again.hashes, again.count, again.bits) == (
        bloom.size,
        bloom.hashes,
        bloom.count,
        bloom.bits,
    )
    assert all(str(i).encode() in again for i in range(1000))
