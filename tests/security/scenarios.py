"""What every secured listener must support, written once and run against each
(``test_sasl_ssl.py``: SASL_SSL with SCRAM-SHA-512; ``test_mtls.py``: mutual TLS over SSL).

Every client here (producer, reader, admin, the consumers) is built from
:func:`capgroup.connection.client_options`, so the settings under test are the ones a member
uses. The cluster is a :class:`~capgroup.devkafka.LocalKafkaCluster` with ``security=...``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition as KafkaTopicPartition

from capgroup import TopicPartition
from capgroup.connection import ClientRole, client_options
from capgroup.devkafka import admin as kafka_admin
from capgroup.devkafka.cluster import LocalKafkaCluster
from capgroup.devkafka.jars import KafkaLocalError
from capgroup.devkafka.secure import SecurityMode
from capgroup.settings import CapgroupSettings
from tests.brokers import unique_name
from tests.kafka_fixtures import unavailable
from tests.processes import ROOT, capgroup_env
from tests.runtime.harness import Recorder, consumer_settings, running, wait_until


def secured_cluster(mode: SecurityMode) -> Iterator[LocalKafkaCluster]:
    """A one-node local cluster secured with ``mode``, for one test module."""
    cluster = LocalKafkaCluster(security=mode)
    try:
        cluster.start()
    except KafkaLocalError as exc:
        cluster.close()
        unavailable(f"cannot start a {mode} local Kafka: {str(exc)[:500]}")
    try:
        yield cluster
    finally:
        cluster.close()


def member_settings(
    cluster: LocalKafkaCluster, group: str, topic: str, **extra: Any
) -> dict[str, Any]:
    """Consumer settings of user alice: fast group timings plus the cluster's security."""
    fields = cluster.security_store.client_fields(cluster.bootstrap_servers, "alice")
    return {**consumer_settings(cluster.bootstrap_servers, group, topic, **extra), **fields}


async def produce(settings: CapgroupSettings, topic: str, partitions: int, count: int) -> None:
    """Produce ``count`` records per partition, numbered per partition, over the secured
    listener."""
    producer = AIOKafkaProducer(**client_options(settings, ClientRole.DEAD_LETTER), acks="all")
    await producer.start()
    try:
        for partition in range(partitions):
            for i in range(count):
                await producer.send(topic, value=f"{i:06d}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def read_all(settings: CapgroupSettings, topic: str, expected: int) -> list[Any]:
    """Read ``expected`` records of ``topic`` from the beginning (no group)."""
    consumer = AIOKafkaConsumer(
        topic,
        **client_options(settings, ClientRole.FETCHER),
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        with anyio.fail_after(30):
            while len(records) < expected:
                batches = await consumer.getmany(timeout_ms=500)
                for part in batches.values():
                    records.extend(part)
    finally:
        await consumer.stop()
    return records


async def committed(
    settings: CapgroupSettings, group: str, topic: str, partitions: int
) -> dict[int, int | None]:
    """The group's committed offsets, read with the secured admin client."""
    async with kafka_admin.admin_client(settings.bootstrap_servers[0], settings) as admin:
        found = await admin.list_consumer_group_offsets(group)
    result: dict[int, int | None] = {}
    for p in range(partitions):
        meta = found.get(KafkaTopicPartition(topic, p))
        result[p] = None if meta is None or meta.offset < 0 else meta.offset
    return result


async def group_of_two_consumes_commits_and_rebalances(cluster: LocalKafkaCluster) -> None:
    alice = cluster.client_settings("alice")
    topic, group = unique_name("sec"), unique_name("g")
    partitions, per_partition = 4, 50
    await kafka_admin.create_topic(cluster.bootstrap_servers, topic, partitions, settings=alice)
    await produce(alice, topic, partitions, per_partition)
    settings = member_settings(cluster, group, topic, batch_max_records=10, batch_max_age_ms=200)
    a, b = Recorder("a", **settings), Recorder("b", **settings)
    async with running(a) as start:
        await wait_until(lambda: len(a.offsets(TopicPartition(topic, 0))) > 0, 30, "a consumes")
        await start(b)  # the join: a cooperative rebalance moves partitions to b
        await wait_until(lambda: any(b.assigned), 30, "b gets partitions")
        await produce(alice, topic, partitions, per_partition)  # offsets 50..99, after the join
        total = 2 * per_partition

        def everything_flushed() -> bool:
            return all(
                set(a.offsets(tp)) | set(b.offsets(tp)) >= set(range(total))
                for tp in (TopicPartition(topic, p) for p in range(partitions))
            )

        await wait_until(everything_flushed, 60, "every record flushed by a or b")
        expected = dict.fromkeys(range(partitions), total)
        deadline = anyio.current_time() + 30
        while (found := await committed(alice, group, topic, partitions)) != expected:
            assert anyio.current_time() < deadline, f"committed {found}, expected {expected}"
            await anyio.sleep(0.3)
    assert a.batches, "a flushed batches"
    assert b.batches, "b flushed batches"
    assert {tp.partition for change in b.assigned for tp in change} <= set(range(partitions))
    await kafka_admin.delete_topics(cluster.bootstrap_servers, [topic], settings=alice)


async def failed_batches_go_to_the_dead_letter_topic(cluster: LocalKafkaCluster) -> None:
    alice = cluster.client_settings("alice")
    topic, dlq, group = unique_name("sec"), unique_name("dlq"), unique_name("g")
    await kafka_admin.create_topic(cluster.bootstrap_servers, topic, 1, settings=alice)
    await kafka_admin.create_topic(cluster.bootstrap_servers, dlq, 1, settings=alice)
    await produce(alice, topic, 1, 20)
    settings = member_settings(
        cluster,
        group,
        topic,
        batch_max_records=10,
        flush_failure_policy="dead_letter",
        dead_letter_topic=dlq,
        flush_retry_max_attempts=1,
    )
    member = Recorder("dl", **settings)
    member.fail = lambda _batch: True
    async with running(member):
        dead = await read_all(alice, dlq, 20)
        deadline = anyio.current_time() + 30
        while (await committed(alice, group, topic, 1)) != {0: 20}:
            assert anyio.current_time() < deadline, "the dead-lettered batches were not committed"
            await anyio.sleep(0.3)
    assert sorted(r.value for r in dead) == [f"{i:06d}".encode() for i in range(20)]
    await kafka_admin.delete_topics(cluster.bootstrap_servers, [topic, dlq], settings=alice)


async def admin_helpers_work_with_the_secured_settings(cluster: LocalKafkaCluster) -> None:
    alice = cluster.client_settings("alice")
    bootstrap = cluster.bootstrap_servers
    assert await kafka_admin.broker_ids(bootstrap, alice) == {1}
    topic, group = unique_name("adm"), unique_name("g")
    await kafka_admin.create_topic(bootstrap, topic, 2, settings=alice)
    assert await kafka_admin.find_group_coordinator(bootstrap, group, settings=alice) == 1
    await kafka_admin.delete_topics(bootstrap, [topic], settings=alice)
    async with kafka_admin.admin_client(bootstrap, alice) as admin:
        assert topic not in await admin.list_topics()


def assert_one_line_without(text: str | None, secrets: list[str], *expected: str) -> str:
    """``text`` is one line containing each of ``expected`` and none of ``secrets``."""
    assert text is not None
    assert "\n" not in text
    for part in expected:
        assert part in text, text
    for secret in secrets:
        assert secret not in text
    return text


def run_member(env: dict[str, str], *, within: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``capgroup run tests.runtime.sink_consumer:SinkConsumer`` with ``env`` (``CAPGROUP_*``
    settings) and the repository on the path; returns the finished process."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "capgroup.cli.main",
            "run",
            "tests.runtime.sink_consumer:SinkConsumer",
        ],
        env=capgroup_env({}, **env, SINK_PATH=os.devnull),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=within,
        check=False,
    )


__all__ = [
    "admin_helpers_work_with_the_secured_settings",
    "assert_one_line_without",
    "failed_batches_go_to_the_dead_letter_topic",
    "group_of_two_consumes_commits_and_rebalances",
    "member_settings",
    "run_member",
    "secured_cluster",
]
