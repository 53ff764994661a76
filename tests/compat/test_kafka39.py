"""Smoke run on Apache Kafka 3.9: most production clusters (Amazon MSK included) run 3.x, while
the rest of the suite runs on the default 4.1.

The module starts its own one-node :class:`LocalKafkaCluster` at ``KAFKA_3_VERSION`` (jars from
Maven Central, as for 4.1), whatever ``KAFKA_BOOTSTRAP_SERVERS`` says. 3.9's group coordinator
is the classic one written in Scala; 4.x rewrote it (KIP-848's coordinator also serves classic
groups), so the group protocol capgroup speaks is checked against both. Members run as
``capgroup run`` OS processes: a group joins, consumes and commits, survives a member's
SIGKILL, and a static member restarts without a rebalance.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from capgroup import TopicPartition
from capgroup.devkafka.cluster import LocalKafkaCluster, NodeSpec, render_node_config
from capgroup.devkafka.jars import KafkaLocalError
from tests.brokers import KafkaEndpoint, unique_name
from tests.kafka_fixtures import unavailable
from tests.runtime.harness import (
    ConsumerProcess,
    committed_offsets,
    consumer_settings,
    log_events,
    produce,
    wait_committed,
    wait_until,
)
from tests.runtime.sink_consumer import read_batches

#: The Kafka 3.x release the smoke run uses (``CAPGROUP_KAFKA3_VERSION`` overrides it).
KAFKA_3_VERSION = os.environ.get("CAPGROUP_KAFKA3_VERSION", "3.9.1")

pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def kafka3() -> Iterator[KafkaEndpoint]:
    """A one-node Kafka 3.9 cluster for this module (skipped, or failed under CI, without Java
    or Maven)."""
    cluster = LocalKafkaCluster(1, version=KAFKA_3_VERSION)
    try:
        cluster.start()
    except KafkaLocalError as exc:
        cluster.close()
        unavailable(f"local Kafka {KAFKA_3_VERSION} could not start: {exc}")
    try:
        # The node that answers is the 3.x one: its controller logs the metadata version it
        # bootstrapped the cluster at (a WARN line, so it is in the quiet server log).
        release = ".".join(KAFKA_3_VERSION.split(".")[:2])
        log = cluster.node(1).server_log.read_text(errors="replace")
        assert f"metadata.version {release}-" in log, cluster.log_tail(1)
        yield KafkaEndpoint(cluster.bootstrap_servers, source=f"local-{KAFKA_3_VERSION}")
    finally:
        cluster.close()


def events(member: ConsumerProcess, name: str) -> list[dict[str, Any]]:
    """The member's log events called ``name``, in order."""
    return [e for e in log_events(member.stderr()) if e.get("event") == name]


def assignment(member: ConsumerProcess) -> tuple[int, set[str]]:
    """The member's last applied generation and assignment (-1 and nothing before the first)."""
    applied = events(member, "assignment_applied")
    if not applied:
        return -1, set()
    return applied[-1]["generation"], set(applied[-1]["assigned"])


def flushed(*members: ConsumerProcess) -> dict[int, set[int]]:
    """Offsets the members' sinks flushed, by partition."""
    found: dict[int, set[int]] = {}
    for member in members:
        for batch in read_batches(member.sink):
            offsets = cast(list[int], batch["offsets"])
            found.setdefault(cast(int, batch["partition"]), set()).update(offsets)
    return found


def member(tmp_path: Path, name: str, settings: dict[str, Any]) -> ConsumerProcess:
    """A ``capgroup run`` member writing its batches to ``tmp_path/name.jsonl``."""
    return ConsumerProcess(tmp_path / f"{name}.jsonl", settings)


async def stop_gracefully(process: ConsumerProcess) -> None:
    """SIGTERM: flush, commit, exit 0."""
    process.signal(signal.SIGTERM)
    code = await process.wait_exit(20)
    assert code == 0, process.stderr_tail()


@pytest.mark.anyio
@pytest.mark.kafka
async def test_kafka3_group_consumes_commits_and_survives_a_member_kill(
    kafka3: KafkaEndpoint, tmp_path: Path
) -> None:
    bootstrap = kafka3.bootstrap_servers
    topic = await kafka3.create_topic(unique_name("t", "kafka3-kill"), partitions=4)
    group = unique_name("g", "kafka3-kill")
    tps = [TopicPartition(topic, p) for p in range(4)]
    for tp in tps:
        await produce(bootstrap, topic, tp.partition, 50)
    settings = consumer_settings(
        bootstrap, group, topic, batch_max_records=20, batch_max_age_ms=300
    )
    a, b = member(tmp_path, "a", settings), member(tmp_path, "b", settings)
    try:
        a.start()
        b.start()
        await wait_until(
            lambda: len(assignment(a)[1]) == 2 and len(assignment(b)[1]) == 2,
            45,
            "a 2/2 assignment between a and b",
        )
        await wait_committed(bootstrap, group, dict.fromkeys(tps, 50), 30)
        assert flushed(a, b) == {p: set(range(50)) for p in range(4)}

        victim_partitions = assignment(a)[1]
        a.signal(signal.SIGKILL)
        assert await a.wait_exit(10) == -signal.SIGKILL
        for tp in tps:
            await produce(bootstrap, topic, tp.partition, 30, start=50)
        # b gets a's partitions once the broker expires a's session (6 s).
        await wait_until(lambda: len(assignment(b)[1]) == 4, 40, "b to take over all 4")
        assert victim_partitions <= assignment(b)[1]
        await wait_committed(bootstrap, group, dict.fromkeys(tps, 80), 30)
        # At least once: every record flushed by someone, nothing skipped.
        assert flushed(a, b) == {p: set(range(80)) for p in range(4)}
        await stop_gracefully(b)
        assert "Traceback" not in b.stderr()
    finally:
        a.close()
        b.close()
    assert await committed_offsets(bootstrap, group, tps) == dict.fromkeys(tps, 80)


@pytest.mark.anyio
@pytest.mark.kafka
async def test_kafka3_static_member_restarts_without_a_rebalance(
    kafka3: KafkaEndpoint, tmp_path: Path
) -> None:
    bootstrap = kafka3.bootstrap_servers
    topic = await kafka3.create_topic(unique_name("t", "kafka3-static"), partitions=4)
    group = unique_name("g", "kafka3-static")
    tps = [TopicPartition(topic, p) for p in range(4)]
    base = consumer_settings(
        bootstrap, group, topic, session_timeout_ms=20_000, batch_max_age_ms=300
    )
    watcher = member(tmp_path, "watcher", {**base, "group_instance_id": "watcher-0"})
    first = member(tmp_path, "static-1", {**base, "group_instance_id": "static-0"})
    second = member(tmp_path, "static-2", {**base, "group_instance_id": "static-0"})
    try:
        watcher.start()
        first.start()
        await wait_until(
            lambda: len(assignment(watcher)[1]) == 2 and len(assignment(first)[1]) == 2,
            45,
            "a 2/2 assignment between watcher and static",
        )
        generation, static_before = assignment(first)
        assert assignment(watcher)[0] == generation
        watcher_before = assignment(watcher)[1]
        watcher_joins = len(events(watcher, "group_join_started"))

        # A static member's graceful stop does not leave the group (KIP-345).
        await stop_gracefully(first)
        assert "group_left" not in [e["event"] for e in log_events(first.stderr())]
        second.start()
        await wait_until(lambda: assignment(second)[0] != -1, 30, "the restarted member")
        for tp in tps:
            await produce(bootstrap, topic, tp.partition, 10)
        await wait_committed(bootstrap, group, dict.fromkeys(tps, 10), 30)

        # Same generation, same partitions, and the watcher never rejoined.
        assert assignment(second) == (generation, static_before)
        assert assignment(watcher) == (generation, watcher_before)
        assert len(events(watcher, "group_join_started")) == watcher_joins
        restarted = {int(p.rsplit("-", 1)[1]) for p in static_before}
        assert set(flushed(second)) == restarted
        await stop_gracefully(second)
        await stop_gracefully(watcher)
    finally:
        for process in (watcher, first, second):
            process.close()


def test_node_config_is_version_aware() -> None:
    """Share-group (KIP-932) settings exist only from 4.0; 3.9 would ignore them silently."""
    node = NodeSpec(1, 9092, 9093, Path("/tmp/n1"))
    old = render_node_config(node, [node], version=KAFKA_3_VERSION)
    new = render_node_config(node, [node], version="4.1.1")
    assert not [key for key in old if key.startswith("share.")]
    assert new["share.coordinator.state.topic.replication.factor"] == "1"
    # The static quorum form works on both, with no format flag.
    assert old["controller.quorum.voters"] == new["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert {k: v for k, v in new.items() if not k.startswith("share.")} == old
