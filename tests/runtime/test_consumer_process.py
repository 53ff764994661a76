"""``capgroup run`` as an OS process: SIGKILL loses nothing, SIGTERM flushes, commits and exits
0, a second signal forces exit without committing, and bad targets or settings exit 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from capgroup import TopicPartition
from tests.runtime.harness import (
    HOLD,
    ROOT,
    ConsumerProcess,
    Recorder,
    committed_offsets,
    consumer_settings,
    log_events,
    process,
    produce,
    running,
    wait_committed,
    wait_until,
)
from tests.runtime.sink_consumer import read_batches

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def flushed_offsets(sink: Path, partition: int) -> list[int]:
    """Offsets a sink consumer flushed for ``partition``, in flush order."""
    return [
        o
        for b in read_batches(sink)
        if b["partition"] == partition
        for o in b["offsets"]  # type: ignore[attr-defined]
    ]


def seen_count(path: Path) -> int:
    """How many records the sink consumer's deserializer has seen."""
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_sigkill_with_buffered_records_loses_nothing(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=1)
    group = unique_id("g")
    tp = TopicPartition(topic, 0)
    await produce(bootstrap, topic, 0, 120)
    sink = tmp_path / "a.jsonl"
    settings = consumer_settings(
        bootstrap, group, topic, batch_max_records=50, batch_max_age_ms=600_000
    )
    async with process(ConsumerProcess(sink, settings, SINK_SEEN_PATH=str(tmp_path / "seen"))) as a:
        await wait_until(lambda: seen_count(tmp_path / "seen") == 120, 30, "120 records fetched")
        await wait_committed(bootstrap, group, {tp: 100}, 20)
        # 100..119 are buffered, not flushed: the commit must not cover them.
        a.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        assert await a.wait_exit(10) == -signal.SIGKILL
    assert flushed_offsets(sink, 0) == list(range(100))
    assert (await committed_offsets(bootstrap, group, [tp]))[tp] == 100
    b = Recorder("b", **consumer_settings(bootstrap, group, topic, batch_max_age_ms=200))
    async with running(b):  # joins once the killed member's session has expired
        await wait_until(lambda: len(b.offsets(tp)) >= 20, 30, "b to flush the rest")
        await wait_committed(bootstrap, group, {tp: 120}, 10)
    assert b.offsets(tp) == list(range(100, 120))


async def test_sigterm_flushes_commits_leaves_and_exits_zero(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=2)
    group = unique_id("g")
    tps = [TopicPartition(topic, p) for p in range(2)]
    for tp in tps:
        await produce(bootstrap, topic, tp.partition, 40)
    sink, seen = tmp_path / "a.jsonl", tmp_path / "seen"
    settings = consumer_settings(bootstrap, group, topic, **HOLD, shutdown_timeout_ms=10_000)
    async with process(ConsumerProcess(sink, settings, SINK_SEEN_PATH=str(seen))) as a:
        await wait_until(lambda: seen_count(seen) == 80, 30, "80 records buffered")
        assert read_batches(sink) == [], "nothing may flush before the shutdown"
        a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        code = await a.wait_exit(settings["shutdown_timeout_ms"] / 1000 + 5)
        assert code == 0, a.stderr()[-3000:]
    for tp in tps:
        assert flushed_offsets(sink, tp.partition) == list(range(40))
    assert await committed_offsets(bootstrap, group, tps) == dict.fromkeys(tps, 40)
    events = [e["event"] for e in log_events(a.stderr())]
    assert events.index("shutdown_started") < events.index("shutdown_finished")
    assert "group_left" in events


async def test_second_signal_forces_exit_without_committing(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=1)
    group = unique_id("g")
    tp = TopicPartition(topic, 0)
    await produce(bootstrap, topic, 0, 10)
    sink, seen = tmp_path / "a.jsonl", tmp_path / "seen"
    settings = consumer_settings(bootstrap, group, topic, **HOLD, shutdown_timeout_ms=60_000)
    slow = ConsumerProcess(sink, settings, SINK_SEEN_PATH=str(seen), SINK_FLUSH_DELAY_S="60")
    async with process(slow) as a:
        await wait_until(lambda: seen_count(seen) == 10, 30, "10 records buffered")
        a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        await wait_until(lambda: "shutdown_started" in a.stderr(), 10, "the graceful shutdown")
        a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        code = await a.wait_exit(15)
    assert code == 128 + signal.SIGTERM, a.stderr()[-3000:]
    assert "forced shutdown" in a.stderr()
    assert read_batches(sink) == []
    assert (await committed_offsets(bootstrap, group, [tp]))[tp] is None


async def test_fenced_static_twin_exits_3_with_a_clear_message(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=1)
    settings = consumer_settings(
        kafka.bootstrap_servers, unique_id("g"), topic, group_instance_id="pod-0"
    )
    async with process(ConsumerProcess(tmp_path / "a.jsonl", settings)) as a:
        await wait_until(lambda: "partitions_assigned" in a.stderr(), 30, "a to join")
        async with process(ConsumerProcess(tmp_path / "b.jsonl", settings)) as b:
            code = await a.wait_exit(30)
            assert code == 3, a.stderr()[-3000:]
            assert "CAPGROUP_GROUP_INSTANCE_ID" in a.stderr()
            assert "Traceback" not in a.stderr()
            assert b.proc is not None
            assert b.proc.poll() is None, "the twin keeps running"


def capgroup_run(target: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``capgroup run TARGET`` with only ``env`` as CAPGROUP_* settings."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CAPGROUP_")}
    environment.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "capgroup.cli.main", "run", target],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


GOOD_ENV = {"CAPGROUP_GROUP_ID": "g", "CAPGROUP_TOPICS": "t", "CAPGROUP_BOOTSTRAP_SERVERS": "x:1"}
SINK = "tests.runtime.sink_consumer:SinkConsumer"


@pytest.mark.parametrize(
    ("target", "env", "named"),
    [
        (SINK, {**GOOD_ENV, "CAPGROUP_BATCH_MAX_RECORDS": "0"}, "CAPGROUP_BATCH_MAX_RECORDS"),
        (SINK, {**GOOD_ENV, "CAPGROUP_GROUP_ID": ""}, "CAPGROUP_GROUP_ID"),
        (
            SINK,
            {**GOOD_ENV, "CAPGROUP_FLUSH_FAILURE_POLICY": "dead_letter"},
            "CAPGROUP_DEAD_LETTER_TOPIC",
        ),
        ("tests.runtime.no_such_module:X", GOOD_ENV, "cannot import module"),
        ("tests.runtime.sink_consumer:Nope", GOOD_ENV, "has no attribute 'Nope'"),
        ("tests.runtime.sink_consumer", GOOD_ENV, "is not MODULE:CLASS"),
        ("capgroup.settings:CapgroupSettings", GOOD_ENV, "not a subclass"),
        ("capgroup:BatchingConsumer", GOOD_ENV, "does not implement flush"),
    ],
    ids=[
        "bad-value",
        "missing-group",
        "dlq-without-topic",
        "no-module",
        "no-class",
        "no-colon",
        "not-a-consumer",
        "abstract",
    ],
)
def test_capgroup_run_usage_errors_exit_2(target: str, env: dict[str, str], named: str) -> None:
    result = capgroup_run(target, env)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
