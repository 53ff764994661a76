"""Acceptance of issue 10's poison records against a real broker: a topic with one record
``deserialize`` cannot read among good ones, two members, under each
``deserialize_failure_policy``. No member fails; the other partitions are committed to their
end; ``dead_letter`` puts the raw record with its origin in the dead-letter topic and commits
past it; ``stop_partition`` commits nothing past it and names it in stats, metrics and
readiness; ``skip`` counts it once. Also: a missing dead-letter topic stops start-up with a
settings error naming ``CAPGROUP_DEAD_LETTER_TOPIC``."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import generate_latest

from capgroup import Record, SettingsError, TopicPartition, load_settings
from capgroup.operations.http import readiness
from capgroup.operations.metrics import metrics_registry
from capgroup.runtime.deadletter import DeadLetterProducer, DeadLetterTopicError
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

POISON = b"\xff not a record"
RECORDS = 10  # per partition
POISON_OFFSET = 4  # of partition 0


class Decoder(Recorder):
    """A recording consumer whose ``deserialize`` fails on ``POISON``."""

    def deserialize(self, record: Record) -> Record:
        if record.value == POISON:
            raise UnicodeDecodeError("utf-8", record.value, 0, 1, "invalid start byte")
        return record


async def poisoned_topic(bootstrap: str, topic_factory: Any) -> str:
    """Three partitions of ``RECORDS`` records; partition 0 has ``POISON`` at its offset 4."""
    topic: str = await topic_factory(partitions=3)
    for partition in range(3):
        if partition == 0:
            await produce(bootstrap, topic, 0, POISON_OFFSET)
            await produce_poison(bootstrap, topic)
            await produce(bootstrap, topic, 0, RECORDS - POISON_OFFSET - 1, start=5)
        else:
            await produce(bootstrap, topic, partition, RECORDS)
    return topic


async def produce_poison(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, value=POISON, key=b"poison-key", partition=0, headers=[("trace", b"t-p")]
        )
    finally:
        await producer.stop()


def members(bootstrap: str, group: str, topic: str, **overrides: Any) -> list[Decoder]:
    return [
        Decoder(
            name,
            **consumer_settings(
                bootstrap, group, topic, batch_max_records=5, batch_max_age_ms=200, **overrides
            ),
        )
        for name in ("a", "b")
    ]


def good_offsets(consumers: list[Decoder], tp: TopicPartition) -> set[int]:
    return {o for c in consumers for o in c.offsets(tp)}


@pytest.mark.parametrize("policy", ["dead_letter", "stop_partition", "skip"])
async def test_one_undecodable_record_under_each_policy(
    kafka: Any, topic_factory: Any, unique_id: Any, policy: str
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await poisoned_topic(bootstrap, topic_factory)
    bad, *good = [TopicPartition(topic, p) for p in range(3)]
    group = unique_id("g")
    extra: dict[str, Any] = {"deserialize_failure_policy": policy}
    if policy == "dead_letter":
        extra["dead_letter_topic"] = dlq = await topic_factory(partitions=1)
    consumers = members(bootstrap, group, topic, **extra)
    expected_bad = POISON_OFFSET if policy == "stop_partition" else RECORDS
    async with running(*consumers) as start:
        await wait_committed(
            bootstrap, group, {bad: expected_bad, **dict.fromkeys(good, RECORDS)}, 30
        )
        if policy == "stop_partition":
            await wait_until(
                lambda: any(bad in c.stats.stopped for c in consumers),
                20,
                "a member to stop the bad partition",
            )
            owner = next(c for c in consumers if bad in c.stats.stopped)
            assert not owner.healthy
            stats = owner.stats
            assert stats.stopped_partitions == frozenset({bad})
            assert stats.stopped[bad].offset == POISON_OFFSET
            assert stats.stopped[bad].reason == "undecodable_record"
            text = generate_latest(metrics_registry(owner, process=False)).decode()
            labels = f'partition="0",topic="{topic}"'
            assert f'capgroup_partition_stopped{{group="{group}"' in text
            assert any(
                line.startswith("capgroup_partition_stopped_offset")
                and labels in line
                and line.endswith(f" {float(POISON_OFFSET)}")
                for line in text.splitlines()
            ), text
            ready = readiness(owner)
            assert not ready.ok
            assert any(f"{topic}-0" in r for r in ready.reasons), ready.reasons
            assert ready.detail["stopped"][f"{topic}-0"]["offset"] == POISON_OFFSET
            # The other member is unaffected; records keep flowing on the good partitions.
            await produce(bootstrap, topic, good[0].partition, 5, start=RECORDS)
            await wait_committed(bootstrap, group, {good[0]: RECORDS + 5}, 20)
            assert (await committed_offsets(bootstrap, group, [bad]))[bad] == POISON_OFFSET
            # A third member joining crashes on nothing either.
            third = members(bootstrap, group, topic, **extra)[0]
            third.name = "c"
            await start(third)
            consumers.append(third)
        for consumer in consumers:
            assert consumer._fatal is None
    # Everything good flushed, the poison never; nothing committed past an unflushed record.
    readable = set(range(RECORDS)) - {POISON_OFFSET}
    if policy == "stop_partition":
        readable = set(range(POISON_OFFSET))
    assert good_offsets(consumers, bad) == readable
    for tp in good:
        assert good_offsets(consumers, tp) >= set(range(RECORDS))
    final = await committed_offsets(bootstrap, group, [bad])
    assert final[bad] == expected_bad
    counters = [c.stats.counters for c in consumers]
    assert sum(c.records_undecodable for c in counters) >= 1
    if policy == "skip":
        assert sum(c.records_skipped for c in counters) == 1
    if policy == "dead_letter":
        assert sum(c.records_dead_lettered for c in counters) == 1
        (dead,) = await read_topic(bootstrap, dlq, 1)
        assert (dead.key, dead.value) == (b"poison-key", POISON)
        headers = dict(dead.headers)
        p = DEAD_LETTER_HEADER_PREFIX
        assert headers["trace"] == b"t-p"
        assert headers[p + "stage"] == b"deserialize"
        assert headers[p + "origin.topic"] == topic.encode()
        assert headers[p + "origin.partition"] == b"0"
        assert headers[p + "origin.offset"] == str(POISON_OFFSET).encode()
        assert headers[p + "error.type"] == b"builtins.UnicodeDecodeError"
        assert b"invalid start byte" in headers[p + "error.message"]


async def test_a_missing_dead_letter_topic_stops_start_up(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=1)
    missing = unique_id("no-such-dlq")
    settings = load_settings(
        **consumer_settings(
            bootstrap,
            unique_id("g"),
            topic,
            deserialize_failure_policy="dead_letter",
            dead_letter_topic=missing,
        )
    )
    producer = DeadLetterProducer(settings, missing)
    with pytest.raises(DeadLetterTopicError) as caught:
        await producer.start()
    assert isinstance(caught.value, SettingsError)  # capgroup run exits 2
    assert "CAPGROUP_DEAD_LETTER_TOPIC" in str(caught.value)
    assert missing in str(caught.value)
    consumer = Decoder("a", **settings.model_dump())
    with pytest.raises(DeadLetterTopicError):
        await consumer.run(handle_signals=False)
