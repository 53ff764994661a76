"""Lag and retention risk against a real broker: the exported lag matches the broker's high
watermark minus the group's committed offset for owned and unassigned partitions, and a
stalled (unassigned) partition of a short-retention topic shows its retention margin falling,
then the loss counter rising once the broker deletes a segment."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import OffsetAndMetadata
from aiokafka.structs import TopicPartition as KafkaTopicPartition
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from capgroup import TopicPartition
from capgroup.operations.metrics import metrics_registry
from tests.runtime.harness import Recorder, committed_offsets, consumer_settings, produce, running
from tests.runtime.harness import wait_until as wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


async def commit_offsets(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` from outside it (the group is empty)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        consumer.assign([KafkaTopicPartition(tp.topic, tp.partition) for tp in offsets])
        await consumer.commit(
            {
                KafkaTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(o, "")
                for tp, o in offsets.items()
            }
        )
    finally:
        await consumer.stop()


async def broker_offsets(
    bootstrap: str, partitions: list[TopicPartition]
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """High watermarks and log start offsets as the broker reports them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        wanted = [KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions]
        ends = await consumer.end_offsets(wanted)
        starts = await consumer.beginning_offsets(wanted)
    finally:
        await consumer.stop()

    def ours(found: dict[Any, int]) -> dict[TopicPartition, int]:
        return {TopicPartition(tp.topic, tp.partition): int(o) for tp, o in found.items()}

    return ours(ends), ours(starts)


async def retention_check_interval_ms(bootstrap: str) -> int:
    """The broker's ``log.retention.check.interval.ms`` (the local broker sets 1000)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (broker, *_) = sorted(b.nodeId for b in admin._client.cluster.brokers())
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(broker))]
        )
    finally:
        await admin.close()
    for entry in response.resources[0][4]:
        if entry[0] == "log.retention.check.interval.ms":
            return int(entry[1])
    return 300_000


def scraped(consumer: Recorder, name: str) -> dict[tuple[int, str], float]:
    """``{(partition, owner): value}`` of one per-partition lag family in a scrape."""
    text = generate_latest(metrics_registry(consumer, process=False)).decode()
    found: dict[tuple[int, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[(int(sample.labels["partition"]), sample.labels["owner"])] = sample.value
    return found


async def test_lag_matches_the_broker_for_owned_and_unassigned_partitions(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=4)
    group = unique_id("g")
    tps = [TopicPartition(topic, p) for p in range(4)]
    for tp in tps:
        await produce(bootstrap, topic, tp.partition, 12)
    await commit_offsets(bootstrap, group, dict.fromkeys(tps, 3))
    # Capacity 2 for 4 partitions: two stay unassigned; alone in the group it leads.
    consumer = Recorder(
        "a",
        **consumer_settings(
            bootstrap,
            group,
            topic,
            max_partitions=2,
            batch_max_records=4,
            batch_max_age_ms=600_000,
            lag_sample_interval_ms=200,
        ),
    )
    async with running(consumer):
        owned = set(consumer.assignment)
        assert len(owned) == 2
        # Owned partitions flush 3..6 and 7..10 and commit 11; offset 11 stays buffered.
        await wait_for(
            lambda: all(
                (f := consumer.stats.lag.get(tp)) is not None and f.committed == 11 for tp in owned
            ),
            30,
            "owned partitions committed at 11",
        )
        await wait_for(
            lambda: {tp for tp, f in consumer.stats.lag.items() if not f.owned} == set(tps) - owned,
            10,
            "the leader's figures for the unassigned partitions",
        )
        ends, _ = await broker_offsets(bootstrap, tps)
        committed = await committed_offsets(bootstrap, group, tps)
        expected = {tp: ends[tp] - (committed[tp] or 0) for tp in tps}
        assert expected == {tp: 1 if tp in owned else 9 for tp in tps}
        figures = consumer.stats.lag
        assert {tp: f.lag_records for tp, f in figures.items()} == expected
        assert all(f.owned == (tp in owned) for tp, f in figures.items())
        # Exported with owner="member" for owned partitions, owner="none" for unassigned.
        lag = scraped(consumer, "capgroup_partition_lag_records")
        assert lag == {
            (tp.partition, "member" if tp in owned else "none"): float(expected[tp]) for tp in tps
        }
        seconds = scraped(consumer, "capgroup_partition_lag_seconds")
        assert set(seconds) == set(lag)
        assert all(v >= 0 for v in seconds.values())
        # Default retention (7 days): the margin is just under it.
        margins = scraped(consumer, "capgroup_partition_retention_margin_seconds")
        assert set(margins) == set(lag)
        week = 7 * 24 * 3600
        assert all(week - 120 < v <= week for v in margins.values())


async def test_stalled_partition_margin_falls_and_deleted_records_are_counted(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    interval = await retention_check_interval_ms(bootstrap)
    if interval > 5000:
        pytest.skip(f"the broker checks retention every {interval} ms (the local broker: 1000)")
    # Retention 4 s; segments roll after 500 ms, so old records sit in closed segments.
    topic = await topic_factory(partitions=2, configs={"retention.ms": "4000", "segment.ms": "500"})
    group = unique_id("g")
    tps = [TopicPartition(topic, p) for p in range(2)]
    await commit_offsets(bootstrap, group, dict.fromkeys(tps, 0))
    consumer = Recorder(
        "a",
        **consumer_settings(bootstrap, group, topic, max_partitions=1, lag_sample_interval_ms=200),
    )
    async with running(consumer):
        (stalled,) = set(tps) - consumer.assignment
        await produce(bootstrap, topic, stalled.partition, 5)
        figures = consumer.stats

        def margin() -> float | None:
            figure = consumer.stats.lag.get(stalled)
            if figure is None or figure.lag_records != 5:
                return None
            return figure.retention_margin_seconds

        await wait_for(lambda: margin() is not None, 10, "a margin for the stalled partition")
        first = margin()
        assert first is not None
        assert 0 < first <= 4
        await wait_for(
            lambda: (m := margin()) is not None and m < first - 0.3, 10, "the margin falling"
        )
        # Keep producing so that segments roll; the broker's retention check (every second on
        # the local broker) deletes the ones past retention: records nobody consumed.
        async with anyio.create_task_group() as tg:

            async def trickle() -> None:
                while True:
                    await produce(bootstrap, topic, stalled.partition, 1, start=100)
                    await anyio.sleep(0.3)

            tg.start_soon(trickle)
            await wait_for(
                lambda: consumer.stats.counters.records_deleted_unconsumed > 0,
                40,
                "records deleted unconsumed",
            )
            tg.cancel_scope.cancel()
        _, starts = await broker_offsets(bootstrap, [stalled])
        lost = consumer.stats.counters.records_deleted_unconsumed
        assert 0 < lost <= starts[stalled]  # committed is 0: the gap up to the log start
        text = generate_latest(metrics_registry(consumer, process=False)).decode()
        assert "capgroup_records_deleted_unconsumed_total{" in text
        assert figures.counters.records_deleted_unconsumed == 0  # before the deletion
