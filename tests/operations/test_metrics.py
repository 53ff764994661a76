"""The Prometheus exporter against a real BatchingConsumer on the test broker: values are read
from the consumer at scrape time and move as records are consumed, flushed and committed."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.parser import text_string_to_metric_families

from capgroup import Counters, TopicPartition, metrics_registry
from capgroup.operations.metrics import EXPORTED_COUNTER_FIELDS, render_metrics
from capgroup.runtime.stats import ConsumerStats, RangeJobsProgress
from capgroup.settings import load_settings
from tests.operations.stubs import idle_stats
from tests.runtime.harness import Recorder, consumer_settings, produce, running, wait_until

pytestmark = [pytest.mark.timeout(120)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str, group: str, member: str) -> Samples:
    """``{(sample name, other labels): value}`` of the capgroup_ samples in a scrape; checks
    that each carries the consumer's ``group`` and ``member`` labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("capgroup_"):
                continue
            labels = dict(sample.labels)
            assert labels.pop("group") == group, sample
            assert labels.pop("member") == member, sample
            found[(sample.name, frozenset(labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (KeyError naming what was there if missing)."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        near = sorted(str(k) for k in samples if k[0] == name)
        raise KeyError(f"{key} not scraped; samples of {name}: {near}")
    return samples[key]


def record_bytes(offsets: range) -> int:
    """Size of the harness's records (key = decimal offset, value 20 bytes, no headers)."""
    return sum(len(str(i)) + 20 for i in offsets)


def documented_metrics() -> set[str]:
    """Metric names in README.md's Operations section."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Operations", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(capgroup_[a-z_]+)", section))


def test_every_runtime_counter_has_a_metric() -> None:
    assert {f.name for f in fields(Counters)} == EXPORTED_COUNTER_FIELDS


@pytest.mark.anyio
async def test_scrape_reads_the_consumer_and_moves_with_it(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=2)
    group, instance = unique_id("g"), unique_id("pod")
    tps = [TopicPartition(topic, p) for p in range(2)]
    consumer = Recorder(
        "a",
        **consumer_settings(
            kafka.bootstrap_servers,
            group,
            topic,
            group_instance_id=instance,
            batch_max_records=10,
            batch_max_age_ms=600_000,
        ),
    )
    registry = metrics_registry(consumer)

    def scrape() -> Samples:
        return parse_samples(generate_latest(registry).decode(), group, instance)

    def families() -> set[str]:
        text = generate_latest(registry).decode()
        return set(re.findall(r"^# TYPE (capgroup_[a-z_]+) ", text, re.MULTILINE))

    before = scrape()  # before run(): no membership yet, every counter at zero
    assert value(before, "capgroup_generation") == -1
    assert value(before, "capgroup_records_in_total") == 0
    assert all(value(before, "capgroup_member_state", state=s) == 0 for s in ("stable", "joining"))
    assert value(before, "capgroup_budget_bytes") == 256 * 1024 * 1024

    async with running(consumer):
        joined = scrape()
        assert value(joined, "capgroup_member_state", state="stable") == 1
        assert value(joined, "capgroup_generation") == consumer.generation.generation_id >= 0
        assert value(joined, "capgroup_owned_partitions") == 2
        assert value(joined, "capgroup_partitions_assigned_total") == 2
        assert value(joined, "capgroup_rebalances_total") >= 1
        assert value(joined, "capgroup_healthy") == 1
        assert value(joined, "capgroup_advertised_max_partitions") == consumer.max_partitions
        assert value(joined, "capgroup_advertised_budget_bytes") == 256 * 1024 * 1024
        assert value(joined, "capgroup_leader") == 1  # alone in its group
        info = value(
            joined,
            "capgroup_member_info",
            member_id=consumer.membership.member_id,  # type: ignore[union-attr]
            instance_id=instance,
            client_id="capgroup",
        )
        assert info == 1
        # The README documents exactly what is exported (counters under their _total name).
        assert documented_metrics() == families()

        # 25 records on partition 0 and 7 on partition 1: two full batches flush on 0,
        # 5 + 7 records stay buffered (the age limit is far away).
        await produce(kafka.bootstrap_servers, topic, 0, 25)
        await produce(kafka.bootstrap_servers, topic, 1, 7)
        await wait_until(lambda: consumer.stats.counters.records_in == 32, 20, "32 records in")
        await wait_until(lambda: len(consumer.batches) == 2, 20, "two flushed batches")
        await wait_until(lambda: consumer.stats.counters.commits >= 1, 10, "a commit")
        after = scrape()
        assert value(after, "capgroup_records_in_total") == 32
        assert value(after, "capgroup_bytes_in_total") == record_bytes(range(25)) + record_bytes(
            range(7)
        )
        assert value(after, "capgroup_batches_flushed_total") == 2
        assert value(after, "capgroup_records_flushed_total") == 20
        assert value(after, "capgroup_bytes_flushed_total") == record_bytes(range(20))
        assert value(after, "capgroup_commits_total", result="ok") >= 1
        assert value(after, "capgroup_commits_total", result="fenced") == 0
        assert value(after, "capgroup_commits_total", result="failed") == 0
        # Buffered bytes are the runtime's memory accounting (payload, plus whatever per-record
        # overhead the ledger charges): compare with its own snapshot, quiescent now (the age
        # limit is far away and nothing more is produced), and with the payload as a floor.
        stats = consumer.stats
        payload = {tps[0]: record_bytes(range(20, 25)), tps[1]: record_bytes(range(7))}
        for tp, floor in payload.items():
            scraped = value(
                after, "capgroup_partition_buffered_bytes", topic=topic, partition=str(tp.partition)
            )
            assert scraped == stats.buffered_bytes_by_partition[tp] >= floor
        assert value(after, "capgroup_buffered_bytes") == stats.buffered_bytes
        assert stats.buffered_bytes == sum(stats.buffered_bytes_by_partition.values())
        assert value(after, "capgroup_budget_utilisation_ratio") == pytest.approx(
            stats.buffered_bytes / (256 * 1024 * 1024)
        )
        # Every counter the runtime keeps is scraped with the runtime's own value.
        counters = consumer.stats.counters
        assert value(after, "capgroup_flush_retries_total") == counters.flush_retries == 0
        assert value(after, "capgroup_batches_discarded_total") == counters.batches_discarded
    stopped = scrape()
    assert value(stopped, "capgroup_member_state", state="stopped") == 1
    # The shutdown flushed what was buffered: the counters kept moving.
    assert value(stopped, "capgroup_records_flushed_total") == 32
    assert value(stopped, "capgroup_buffered_bytes") == 0


@pytest.mark.anyio
async def test_flush_failures_show_as_retries_stopped_partitions_and_unhealthy(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=1)
    group = unique_id("g")
    consumer = Recorder(
        "a",
        **consumer_settings(
            kafka.bootstrap_servers,
            group,
            topic,
            group_instance_id="metrics-a",
            batch_max_records=5,
            batch_max_age_ms=600_000,
            flush_retry_max_attempts=3,
            flush_failure_policy="stop_partition",
        ),
    )
    consumer.fail = lambda _batch: True
    registry = metrics_registry(consumer, process=False)
    async with running(consumer):
        await produce(kafka.bootstrap_servers, topic, 0, 5)
        await wait_until(lambda: not consumer.healthy, 20, "the partition to stop")
        body, content_type = render_metrics(registry)
        samples = parse_samples(body.decode(), group, "metrics-a")
        assert content_type.startswith("text/plain; version=")
        assert value(samples, "capgroup_flush_retries_total") == 2
        assert value(samples, "capgroup_flush_failures_total") == 1
        assert value(samples, "capgroup_healthy") == 0
        assert value(samples, "capgroup_stopped_partitions") == 1
        assert value(samples, "capgroup_partition_stopped", topic=topic, partition="0") == 1
        assert value(samples, "capgroup_batches_flushed_total") == 0
        # A scraper asking for OpenMetrics gets it.
        body, content_type = render_metrics(registry, "application/openmetrics-text")
        assert content_type == OPENMETRICS
        assert body.rstrip().endswith(b"# EOF")


class _RangeJobsStub:
    """An ObservableConsumer whose stats carry range-jobs figures (no broker needed)."""

    def __init__(self, stats: ConsumerStats) -> None:
        self.stats = stats
        self.settings = load_settings(bootstrap_servers="b:9092", group_id="g", topics=["t"])
        self.membership = None
        self.healthy = True


def test_range_jobs_figures_are_scraped_per_member_and_per_scheduled_partition() -> None:
    p0, p3 = TopicPartition("t", 0), TopicPartition("t", 3)
    counters = Counters(range_jobs_done=7, range_jobs_failed=2, range_job_records=700)
    stats = idle_stats(
        counters=counters,
        owned_partitions=2,
        range_jobs_running=3,
        range_jobs={
            p0: RangeJobsProgress(frontier=100, outstanding=4, finished_ahead_offsets=250),
            p3: RangeJobsProgress(frontier=0, outstanding=0, finished_ahead_offsets=0),
        },
    )
    text = render_metrics(metrics_registry(_RangeJobsStub(stats), process=False))[0].decode()
    samples = parse_samples(text, "g", "")
    assert value(samples, "capgroup_range_jobs_total", outcome="done") == 7
    assert value(samples, "capgroup_range_jobs_total", outcome="failed") == 2
    assert value(samples, "capgroup_range_job_records_total") == 700
    assert value(samples, "capgroup_range_jobs_running") == 3
    p0_labels = {"topic": "t", "partition": "0"}
    assert value(samples, "capgroup_range_jobs_frontier_offset", **p0_labels) == 100
    assert value(samples, "capgroup_range_jobs_outstanding", **p0_labels) == 4
    assert value(samples, "capgroup_range_jobs_finished_ahead_offsets", **p0_labels) == 250
    assert value(samples, "capgroup_range_jobs_outstanding", topic="t", partition="3") == 0
    for name in (
        "capgroup_range_jobs",
        "capgroup_range_job_records",
        "capgroup_range_jobs_running",
        "capgroup_range_jobs_frontier_offset",
        "capgroup_range_jobs_outstanding",
        "capgroup_range_jobs_finished_ahead_offsets",
    ):
        assert any(m.startswith(name) for m in documented_metrics()), name
