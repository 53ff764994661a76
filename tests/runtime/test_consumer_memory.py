"""Backpressure against a real broker: a 100 MB burst into a member with a 32 MiB budget and a
slow flush does not grow the process's RSS past the budget plus the documented overhead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from aiokafka import AIOKafkaProducer

from capgroup.runtime.consumer import rss_overhead_bytes
from tests.runtime.harness import (
    ConsumerProcess,
    consumer_settings,
    log_events,
    process,
    wait_until,
)
from tests.runtime.sink_consumer import read_batches

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

MiB = 1024 * 1024
PARTITIONS = 6
RECORD_BYTES = 10 * 1024
BURST_RECORDS = 10_000  # 100 MiB of values


async def produce_burst(bootstrap: str, topic: str) -> None:
    """Produce ``BURST_RECORDS`` records of ``RECORD_BYTES`` round-robin, as fast as possible."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1024 * 1024
    )
    await producer.start()
    try:
        pending = []
        for i in range(BURST_RECORDS):
            value = i.to_bytes(8, "big") * (RECORD_BYTES // 8)
            pending.append(await producer.send(topic, value=value, partition=i % PARTITIONS))
        for delivery in pending:
            await delivery
    finally:
        await producer.stop()


async def test_burst_larger_than_budget_keeps_rss_within_budget(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=PARTITIONS)
    budget = 32 * MiB
    settings = consumer_settings(
        bootstrap,
        unique_id("g"),
        topic,
        memory_budget_bytes=budget,
        batch_max_bytes=4 * MiB,
        max_partition_fetch_bytes=1 * MiB,
        batch_max_records=1_000_000,
        batch_max_age_ms=1_000,
    )
    sink = tmp_path / "sink.jsonl"
    member = ConsumerProcess(sink, settings, SINK_FLUSH_DELAY_S="0.3")
    async with process(member) as a:
        proc = psutil.Process(a.pid)
        # Baseline: the joined, idle member (interpreter, aiokafka clients, group session).
        await wait_until(lambda: _owned(a) == PARTITIONS, 30, "the member to own 6 partitions")
        baseline = 0
        for _ in range(10):
            baseline = max(baseline, proc.memory_info().rss)
            await anyio.sleep(0.1)
        peak = baseline

        def flushed() -> int:
            return sum(len(b["offsets"]) for b in read_batches(sink))  # type: ignore[arg-type]

        async with anyio.create_task_group() as tg:

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, proc.memory_info().rss)
                    await anyio.sleep(0.05)

            tg.start_soon(sample)
            await produce_burst(bootstrap, topic)
            await wait_until(lambda: flushed() == BURST_RECORDS, 120, "the burst to be flushed")
            tg.cancel_scope.cancel()
    batches = read_batches(sink)
    buffered = max(int(b["buffered"]) for b in batches)  # type: ignore[call-overload]
    growth = peak - baseline
    allowed = budget + rss_overhead_bytes(PARTITIONS, settings["max_partition_fetch_bytes"])
    print(
        f"baseline RSS {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, growth "
        f"{growth / MiB:.1f} MiB (allowed {allowed / MiB:.1f} MiB), "
        f"max buffered {buffered / MiB:.1f} MiB, budget {budget / MiB} MiB"
    )
    # The buffers really were under pressure, and the ledger never passed the budget...
    assert buffered > budget // 2
    assert buffered <= budget
    # ...and neither did the process, beyond the documented overhead.
    assert growth <= allowed


def _owned(member: ConsumerProcess) -> int:
    """Partitions the member owns after its latest ``partitions_assigned`` log event."""
    owned = [e["owned"] for e in log_events(member.stderr()) if e["event"] == "partitions_assigned"]
    return owned[-1] if owned else 0
