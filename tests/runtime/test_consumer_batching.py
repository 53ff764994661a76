"""BatchingConsumer against a real broker: batch triggers, flush order and concurrency, and
commits that never pass an unflushed record."""

from __future__ import annotations

from typing import Any

import pytest

from capgroup import TopicPartition
from capgroup.settings import RECORD_OVERHEAD_BYTES
from tests.runtime.harness import (
    Recorder,
    committed_offsets,
    consumer_settings,
    produce,
    running,
    wait_committed,
    wait_until,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


async def test_count_trigger_flushes_in_order_and_commits_only_flushed(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=1)
    group = unique_id("g")
    tp = TopicPartition(topic, 0)
    await produce(kafka.bootstrap_servers, topic, 0, 35)
    consumer = Recorder(
        "a",
        **consumer_settings(
            kafka.bootstrap_servers,
            group,
            topic,
            batch_max_records=10,
            batch_max_age_ms=600_000,
        ),
    )
    async with running(consumer):
        await wait_until(lambda: len(consumer.batches) >= 3, 20, "three full batches")
        await wait_until(lambda: consumer.stats.counters.commits >= 1, 10, "a commit")
        await wait_until(
            lambda: consumer.stats.buffered_bytes > 0 and not consumer._tracker.candidates(),
            10,
            "the commit of the third batch",
        )
        assert [(b.first_offset, b.last_offset) for b in consumer.batches] == [
            (0, 9),
            (10, 19),
            (20, 29),
        ]
        assert all(b.tp == tp and len(b) == 10 for b in consumer.batches)
        committed = await committed_offsets(kafka.bootstrap_servers, group, [tp])
        # The last five records are buffered (age limit far away): nothing past 29 commits.
        assert committed[tp] == 30
        # The ledger counts memory: payload plus the per-record overhead.
        assert (
            consumer.stats.buffered_bytes_by_partition[tp]
            == sum(len(str(i).encode()) + 20 for i in range(30, 35)) + 5 * RECORD_OVERHEAD_BYTES
        )


async def test_bytes_trigger_counts_key_value_and_headers_exactly(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=1)
    headers = [("h", b"xy")]
    # key "1000".."1039" (4 bytes) + value 100 + header 1 + 2 = 107 bytes per record.
    await produce(
        kafka.bootstrap_servers, topic, 0, 40, value_size=100, headers=headers, start=1000
    )
    consumer = Recorder(
        "a",
        **consumer_settings(
            kafka.bootstrap_servers,
            unique_id("g"),
            topic,
            batch_max_records=1000,
            batch_max_bytes=4 * 107,
            batch_max_age_ms=600_000,
        ),
    )
    async with running(consumer):
        await wait_until(lambda: len(consumer.batches) >= 10, 20, "ten byte-limited batches")
    sizes = [b.size_bytes for b in consumer.batches]
    assert sizes == [4 * 107] * 10
    for batch in consumer.batches:
        assert batch.size_bytes == sum(
            len(r.key or b"") + len(r.value or b"") + 3 for r in batch.records
        )
        assert [h for r in batch.records for h in r.headers] == [("h", b"xy")] * len(batch)


async def test_age_trigger_flushes_a_partial_batch(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=1)
    consumer = Recorder(
        "a",
        **consumer_settings(
            kafka.bootstrap_servers,
            unique_id("g"),
            topic,
            batch_max_records=1000,
            batch_max_age_ms=400,
        ),
    )
    async with running(consumer):
        await produce(kafka.bootstrap_servers, topic, 0, 5)
        await wait_until(lambda: bool(consumer.batches), 20, "an age-triggered batch")
        batch = consumer.batches[0]
        assert [r.offset for r in batch.records] == [0, 1, 2, 3, 4]
        assert batch.age >= 0.4


async def test_partitions_flush_in_order_one_at_a_time_with_bounded_concurrency(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    partitions = 4
    topic = await topic_factory(partitions=partitions)
    group = unique_id("g")
    for p in range(partitions):
        await produce(kafka.bootstrap_servers, topic, p, 300)
    consumer = Recorder(
        "a",
        **consumer_settings(
            kafka.bootstrap_servers,
            group,
            topic,
            batch_max_records=25,
            batch_max_age_ms=200,
            flush_concurrency=2,
        ),
    )
    consumer.flush_delay = 0.02
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    async with running(consumer):
        await wait_until(
            lambda: sum(len(b) for b in consumer.batches) == 300 * partitions,
            60,
            "every record flushed",
        )

        await wait_committed(kafka.bootstrap_servers, group, dict.fromkeys(tps, 300), 20)
    for tp in tps:
        assert consumer.offsets(tp) == list(range(300)), f"{tp} flushed out of order or twice"
    assert consumer.max_in_flight_per_partition == 1
    assert consumer.max_in_flight == 2
