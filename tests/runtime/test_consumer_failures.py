"""Flush failures against a real broker: retries, then the dead-letter topic (commit past the
batch) or a stopped partition (nothing committed past it, member unhealthy)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from capgroup import Batch, TopicPartition
from capgroup.runtime.retry import DEAD_LETTER_HEADER_PREFIX
from tests.runtime.harness import (
    Recorder,
    committed_offsets,
    consumer_settings,
    produce,
    read_topic,
    running,
    wait_committed,
    wait_until,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def poisoned(tp: TopicPartition, offset: int) -> Any:
    """A failure predicate: every flush of the batch holding ``offset`` of ``tp`` fails."""

    def fails(batch: Batch) -> bool:
        return batch.tp == tp and batch.first_offset <= offset <= batch.last_offset

    return fails


async def test_failed_batch_goes_to_the_dead_letter_topic_and_is_committed_past(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=1)
    dlq = await topic_factory(partitions=1)
    group = unique_id("g")
    tp = TopicPartition(topic, 0)
    consumer = Recorder(
        "a",
        **consumer_settings(
            bootstrap,
            group,
            topic,
            batch_max_records=10,
            batch_max_age_ms=600_000,
            flush_failure_policy="dead_letter",
            dead_letter_topic=dlq,
        ),
    )
    consumer.fail = poisoned(tp, 15)
    await produce(bootstrap, topic, 0, 30, headers=[("trace", b"t-1")])
    async with running(consumer):
        await wait_committed(bootstrap, group, {tp: 30}, 30)
        assert consumer.healthy
    assert consumer.offsets(tp) == [*range(10), *range(20, 30)]
    assert consumer.flush_calls.count((tp, 10, 19)) == 3  # flush_retry_max_attempts
    counters = consumer.stats.counters
    assert (counters.flush_failures, counters.flush_retries) == (1, 2)
    assert counters.records_dead_lettered == 10
    dead = await read_topic(bootstrap, dlq, 10)
    assert [r.value for r in dead] == [f"{i:010d}".encode().ljust(20, b".") for i in range(10, 20)]
    for offset, record in zip(range(10, 20), dead, strict=True):
        headers = dict(record.headers)
        p = DEAD_LETTER_HEADER_PREFIX
        assert headers["trace"] == b"t-1", "the record's own headers are kept"
        assert headers[p + "origin.topic"] == topic.encode()
        assert headers[p + "origin.partition"] == b"0"
        assert headers[p + "origin.offset"] == str(offset).encode()
        assert headers[p + "error.type"] == b"builtins.RuntimeError"
        assert headers[p + "attempts"] == b"3"
        assert b"planted failure" in headers[p + "error.message"]


async def test_stop_partition_commits_nothing_past_the_failed_batch(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=2)
    group = unique_id("g")
    bad, good = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = Recorder(
        "a",
        **consumer_settings(
            bootstrap,
            group,
            topic,
            batch_max_records=10,
            batch_max_age_ms=300,
            flush_failure_policy="stop_partition",
        ),
    )
    consumer.fail = poisoned(bad, 15)
    for tp in (bad, good):
        await produce(bootstrap, topic, tp.partition, 30)
    async with running(consumer):
        await wait_until(lambda: not consumer.healthy, 30, "the member to turn unhealthy")
        await wait_committed(bootstrap, group, {bad: 10, good: 30}, 20)
        # More records keep flowing on the healthy partition, never on the stopped one.
        await produce(bootstrap, topic, good.partition, 5, start=30)
        await produce(bootstrap, topic, bad.partition, 5, start=30)
        await wait_committed(bootstrap, group, {bad: 10, good: 35}, 20)
        await anyio.sleep(1.0)  # give a wrong commit of the stopped partition time to show
        assert (await committed_offsets(bootstrap, group, [bad]))[bad] == 10
        assert consumer.stats.stopped_partitions == frozenset({bad})
    assert consumer.offsets(bad) == list(range(10))
    assert consumer.offsets(good) == list(range(35))
    assert consumer.flush_calls.count((bad, 10, 19)) == 3
    assert (await committed_offsets(bootstrap, group, [bad]))[bad] == 10, "shutdown committed it"
