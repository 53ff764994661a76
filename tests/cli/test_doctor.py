"""``capgroup doctor`` against the broker, with planted traps: each is reported under its
check id with the right figures, a clean topic reports nothing but what a one-broker cluster
implies (replication factor 1, info), ``--json`` is stable and the exit code follows
``--fail-on``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from capgroup import TopicPartition
from tests.cli.test_describe import commit_for_group
from tests.processes import capgroup_env
from tests.runtime.harness import ROOT, Recorder, consumer_settings, produce, running, wait_until

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
GIB = 1024**3
#: Segments that roll well within retention: no segment-retention finding.
CLEAN = {"segment.ms": str(HOUR_MS)}


async def doctor(bootstrap: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``capgroup doctor ARGS`` in a child process (in-process consumers keep
    heartbeating meanwhile)."""
    return await anyio.run_process(
        [sys.executable, "-m", "capgroup.cli.main", "doctor", *args],
        env=capgroup_env({"bootstrap_servers": bootstrap}),
        cwd=ROOT,
        check=False,
    )


async def produce_old(bootstrap: str, topic: str, count: int, age_ms: int) -> None:
    """``count`` records on partition 0 with timestamps ``age_ms`` in the past."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        stamp = int(time.time() * 1000) - age_ms
        for i in range(count):
            await producer.send_and_wait(topic, b"x" * 20, partition=0, timestamp_ms=stamp + i)
    finally:
        await producer.stop()


def by(doc: dict[str, Any], check: str, subject: str) -> list[dict[str, Any]]:
    return [f for f in doc["findings"] if f["check"] == check and f["subject"] == subject]


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_planted_traps_are_reported_under_their_check_ids(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    brokers = len(await kafka.broker_ids())
    rf = 1 if brokers == 1 else min(3, brokers)
    clean = await topic_factory(
        partitions=2,
        replication_factor=rf,
        configs={**CLEAN, "min.insync.replicas": str(max(1, rf - 1))},
    )
    unclean = await topic_factory(configs={**CLEAN, "unclean.leader.election.enable": "true"})
    rf1 = await topic_factory(configs=CLEAN)
    min_isr = await topic_factory(configs={**CLEAN, "min.insync.replicas": "2"})
    slow = await topic_factory(
        configs={
            "segment.bytes": str(GIB),
            "segment.ms": str(7 * DAY_MS),
            "retention.ms": str(DAY_MS),
        }
    )
    archive = await topic_factory(configs={**CLEAN, "retention.ms": str(30 * DAY_MS)})
    short = await topic_factory(
        configs={"retention.ms": str(HOUR_MS), "segment.ms": str(HOUR_MS // 6)}
    )
    big = await topic_factory(partitions=8, configs=CLEAN)
    smalls = [await topic_factory(partitions=2, configs=CLEAN) for _ in range(6)]
    for topic in (clean, slow, archive):
        await produce(bootstrap, topic, 0, 5)
    await produce_old(bootstrap, short, 10, 50 * 60_000)  # 50 min old, 60 min retention

    idle, lagging, ranged = unique_id("idle"), unique_id("lagging"), unique_id("range")
    await commit_for_group(bootstrap, idle, {TopicPartition(archive, 0): 5})
    await commit_for_group(bootstrap, lagging, {TopicPartition(short, 0): 2})
    consumers = [
        AIOKafkaConsumer(
            big,
            *smalls,
            bootstrap_servers=bootstrap,
            group_id=ranged,
            client_id=f"range-{i}",
            partition_assignment_strategy=(RangePartitionAssignor,),
            enable_auto_commit=False,
        )
        for i in range(3)
    ]
    topics = [clean, unclean, rf1, min_isr, slow, archive, short, big, *smalls]
    args = [a for t in topics for a in ("--topic", t)]
    args += ["--group", idle, "--group", lagging, "--group", ranged]
    args += ["--json", "--sample-seconds", "1", "--fail-on", "warn"]
    for c in consumers:
        await c.start()
    try:
        await wait_until(
            lambda: sum(len(c.assignment()) for c in consumers) == 8 + 12, 60, "an assignment"
        )
        first = await doctor(bootstrap, *args)
        second = await doctor(bootstrap, *args)
    finally:
        for c in consumers:
            await c.stop()
    assert first.returncode == 1, first.stderr.decode()  # warnings with --fail-on warn
    doc = json.loads(first.stdout)
    again = json.loads(second.stdout)

    # --json is stable: same shape, same findings in the same order, keys sorted.
    assert set(doc) == {"version", "checked", "summary", "findings"}
    ids = [(f["check"], f["severity"], f["subject"]) for f in doc["findings"]]
    assert ids == [(f["check"], f["severity"], f["subject"]) for f in again["findings"]]
    assert first.stdout.decode() == json.dumps(doc, indent=2, sort_keys=True) + "\n"
    assert doc["checked"]["topics"] == sorted(topics)

    (f,) = by(doc, "unclean-leader-election", f"topic:{unclean}")
    assert f["severity"] == "error"

    rf1_findings = by(doc, "min-insync-replicas", f"topic:{rf1}")
    assert [f["severity"] for f in rf1_findings] == ["info" if brokers == 1 else "error"]
    assert rf1_findings[0]["evidence"]["replication_factor"] == 1

    severities = sorted(f["severity"] for f in by(doc, "min-insync-replicas", f"topic:{min_isr}"))
    assert "error" in severities
    (f,) = [
        f for f in by(doc, "min-insync-replicas", f"topic:{min_isr}") if f["severity"] == "error"
    ]
    assert f["evidence"]["min.insync.replicas"] == 2

    (f,) = by(doc, "segment-retention", f"topic:{slow}")
    ev = f["evidence"]
    assert f["severity"] == "warn"
    assert ev["retention_ms"] == DAY_MS
    assert ev["segment_bytes"] == GIB
    rate = ev["produce_bytes_per_second"]
    expected_roll = 7 * DAY_MS if rate == 0 else min(7 * DAY_MS, GIB / rate * 1000)
    assert ev["segment_roll_ms"] == pytest.approx(expected_roll, rel=1e-3)
    assert ev["effective_max_retention_ms"] == pytest.approx(DAY_MS + expected_roll, rel=1e-3)

    (f,) = by(doc, "range-assignor-imbalance", f"group:{ranged}")
    assert sorted(f["evidence"]["partitions_per_member"].values()) == [2, 9, 9]
    assert f["evidence"]["even_share"] == 7

    (f,) = by(doc, "offsets-retention", f"group:{idle}")
    assert f["severity"] == "warn"
    assert f["evidence"]["topics_retained_longer"] == [archive]
    assert 0 <= f["evidence"]["idle_seconds_at_most"] < 600

    (f,) = by(doc, "lag-vs-retention", f"group:{lagging}")
    ev = f["evidence"]
    assert f["severity"] == "warn"
    assert (ev["topic"], ev["partition"], ev["lag_records"]) == (short, 0, 8)
    assert ev["retention_ms"] == HOUR_MS
    assert 300 < ev["retention_margin_seconds"] <= 600

    # The clean topic: only what the cluster's size implies.
    clean_findings = [f for f in doc["findings"] if f["subject"] == f"topic:{clean}"]
    assert all(f["severity"] == "info" for f in clean_findings), clean_findings
    assert all(f["check"] == "min-insync-replicas" for f in clean_findings)
    if brokers > 1:
        assert not clean_findings

    # capgroup's own producers (dead-letter, relay) pass.
    assert not [
        f
        for f in doc["findings"]
        if f["check"] == "producer-durability" and f["severity"] != "info"
    ]
    assert not by(doc, "producer-durability", "producer:dead-letter")


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_a_capgroup_group_short_of_capacity_is_reported(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=6, configs=CLEAN)
    group = unique_id("short")
    common = {
        "max_partitions": 2,
        "memory_budget_bytes": 4 * 1024 * 1024,
        "batch_max_records": 4,
        "batch_max_age_ms": 600_000,
        "batch_max_bytes": 256 * 1024,
        "max_partition_fetch_bytes": 256 * 1024,
    }
    a = Recorder("a", **consumer_settings(bootstrap, group, topic, client_id="a", **common))
    b = Recorder("b", **consumer_settings(bootstrap, group, topic, client_id="b", **common))
    async with running(a, b):
        await wait_until(lambda: len(a.assignment) + len(b.assignment) == 4, 30, "4 owned")
        result = await doctor(
            bootstrap, "--group", group, "--topic", topic, "--json", "--sample-seconds", "0"
        )
    assert result.returncode == 1, result.stderr.decode()  # an error with --fail-on error
    doc = json.loads(result.stdout)
    (f,) = by(doc, "capacity-headroom", f"group:{group}")
    assert f["severity"] == "error"
    ev = f["evidence"]
    assert (ev["members"], ev["unassigned_partitions"], ev["demand_partitions"]) == (2, 2, 6)
    assert ev["capacity_partitions"] == 4


def test_doctor_bad_arguments_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "capgroup.cli.main", "doctor", "--fail-on", "info"],
        env=capgroup_env({"bootstrap_servers": "127.0.0.1:1"}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
