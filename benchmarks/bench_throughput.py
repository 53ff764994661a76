"""End-to-end consume throughput: BatchingConsumer against a bare aiokafka ``getmany`` loop.

One topic (12 partitions, ``--records`` records of 200 bytes, 1M by default) is produced once;
then, alternately and each in its own subprocess, with a no-op flush:

- **capgroup**: a :class:`~capgroup.BatchingConsumer` in its own group (join, fetch, buffer,
  cut batches, flush, commit after flush through the generation-fenced committer);
- **aiokafka**: ``AIOKafkaConsumer`` in manual-assignment mode (all 12 partitions, from the
  beginning), ``getmany`` in a loop, committing what each ``getmany`` returned before the next.

Both use the same fetch settings (``max_partition_fetch_bytes`` 1 MiB, ``read_committed``).
Throughput is records / seconds from the start of the consumer (before connecting) until every
offset is committed. The capgroup run learns that by polling the group's committed offsets every
50 ms (the baseline knows it from its own last commit), which can only count against capgroup.
Peak RSS is the child's ``ru_maxrss`` from ``os.wait4``. Medians over ``--runs`` and the ratio
capgroup / aiokafka are printed (target: at least 0.90), end to end and "after start-up": from
the first assignment (capgroup: connect, join and sync done) or the seek to the beginning
(aiokafka) to the last commit, so a group member's join is shown apart from its rate. The last
partial batch of each partition waits out ``--batch-max-age-ms`` in both figures.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_throughput.py [--runs 3] [--records 1000000]
        [--batch-max-age-ms 200]

Uses ``KAFKA_BOOTSTRAP_SERVERS`` if set, else starts a local broker from Maven jars.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition as KafkaTopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import broker

from capgroup import Batch, BatchingConsumer, TopicPartition
from capgroup.devkafka.admin import admin_client, create_topic, group_committed_offsets

PARTITIONS = 12
RECORD_BYTES = 200
#: Same fetch sizing for both sides (aiokafka's defaults; the runtime's own default).
MAX_PARTITION_FETCH_BYTES = 1024 * 1024
DONE_POLL_SECONDS = 0.01
#: The age limit bounds how long the last, partial batch of each partition waits once the
#: topic is drained (the default 30 s would dominate the run). The baseline commits what each
#: getmany returned at once; 200 ms is the runtime's own fetch wait.
BATCH_MAX_AGE_MS = 200


class NoopConsumer(BatchingConsumer):
    """Flushes nothing: the benchmark measures the runtime, not a sink. Notes when its first
    partitions arrive (the end of its start-up: connect, join, sync)."""

    assigned_at: float | None = None

    async def flush(self, batch: Batch) -> None:
        """Do nothing."""

    async def on_partitions_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        """Note the time of the first assignment."""
        if self.assigned_at is None and partitions:
            self.assigned_at = time.perf_counter()


# ----------------------------------------------------------------------------- producing ---
async def produce(bootstrap: str, topic: str, records: int) -> None:
    """``records`` records of ``RECORD_BYTES`` bytes, round-robin over the partitions."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        per_partition = [records // PARTITIONS + (p < records % PARTITIONS) for p in range(12)]
        value = b"x" * RECORD_BYTES
        pending = []
        for partition, count in enumerate(per_partition):
            sent = 0
            while sent < count:
                batch = producer.create_batch()
                while sent < count and batch.append(key=None, value=value, timestamp=None):
                    sent += 1
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                if len(pending) > 64:
                    await pending.pop(0)
        for future in pending:
            await future
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """High watermark of every partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [KafkaTopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: int(o) for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


# ------------------------------------------------------------------------------- workers ---
async def committed_all(bootstrap: str, group: str, ends: dict[int, int]) -> None:
    """Return once ``group`` has committed every partition's end offset."""
    async with admin_client(bootstrap) as admin:
        while True:
            found = await group_committed_offsets(admin, group)
            got = {partition: offset for (_, partition), offset in found.items()}
            if all(got.get(p, -1) >= end for p, end in ends.items()):
                return
            await anyio.sleep(DONE_POLL_SECONDS)


async def run_capgroup(
    bootstrap: str, topic: str, ends: dict[int, int], age_ms: int = BATCH_MAX_AGE_MS
) -> tuple[float, float]:
    """Seconds until a BatchingConsumer has committed everything, and of them the seconds
    until its partitions were assigned."""
    group = f"bench-cg-{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    consumer = NoopConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        topics=[topic],
        max_partitions=PARTITIONS,
        memory_budget_bytes=512 * 1024 * 1024,
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        batch_max_age_ms=age_ms,
        log_level="warning",
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: consumer.run(handle_signals=False))
        await committed_all(bootstrap, group, ends)
        elapsed = time.perf_counter() - began
        consumer.stop()
    assert consumer.assigned_at is not None
    return elapsed, consumer.assigned_at - began


async def run_aiokafka(bootstrap: str, topic: str, ends: dict[int, int]) -> tuple[float, float]:
    """Seconds until a manual-assignment getmany loop has committed everything, and of them
    the seconds until its partitions were assigned and positioned."""
    group = f"bench-ak-{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tps = [KafkaTopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ready = time.perf_counter() - began
        remaining = {p for p, end in ends.items() if end > 0}
        while remaining:
            fetched = await consumer.getmany(timeout_ms=200)
            offsets = {}
            for tp, records in fetched.items():
                if not records:
                    continue
                last = records[-1].offset + 1
                offsets[tp] = last
                if last >= ends[tp.partition]:
                    remaining.discard(tp.partition)
            if offsets:
                await consumer.commit(offsets)
        return time.perf_counter() - began, ready
    finally:
        await consumer.stop()


def worker(kind: str, bootstrap: str, topic: str, ends: dict[int, int], age_ms: int) -> None:
    """Child process: run one side once, print ``{"seconds": ..., "start": ...}``."""
    if kind == "capgroup":
        seconds, start = anyio.run(run_capgroup, bootstrap, topic, ends, age_ms)
    else:
        seconds, start = anyio.run(run_aiokafka, bootstrap, topic, ends)
    print(json.dumps({"seconds": seconds, "start": start}), flush=True)


# -------------------------------------------------------------------------------- parent ---
def measure(
    kind: str, bootstrap: str, topic: str, ends: dict[int, int], age_ms: int
) -> dict[str, float]:
    """Run one side in a fresh subprocess; seconds and its peak RSS (bytes)."""
    args = [sys.executable, __file__, "--worker", kind, "--bootstrap", bootstrap]
    args += ["--topic", topic, "--ends", json.dumps(ends), "--batch-max-age-ms", str(age_ms)]
    env = {**os.environ, "CAPGROUP_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker exited {proc.returncode}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "seconds": float(result["seconds"]),
        "start": float(result["start"]),
        "rss": usage.ru_maxrss * 1024.0,
    }


def main(runs: int, records: int, age_ms: int = BATCH_MAX_AGE_MS) -> None:
    """Produce once, measure both sides ``runs`` times alternately, print medians and ratio."""
    with broker() as bootstrap:
        topic = f"bench-throughput-{uuid.uuid4().hex[:8]}"
        anyio.run(create_topic, bootstrap, topic, PARTITIONS)
        began = time.perf_counter()
        anyio.run(produce, bootstrap, topic, records)
        ends = anyio.run(end_offsets, bootstrap, topic)
        total = sum(ends.values())
        print(
            f"produced {total} records of {RECORD_BYTES} bytes to {PARTITIONS} partitions "
            f"in {time.perf_counter() - began:.1f} s",
            flush=True,
        )
        results: dict[str, list[dict[str, float]]] = {"capgroup": [], "aiokafka": []}
        for i in range(runs):
            order = ("aiokafka", "capgroup") if i % 2 == 0 else ("capgroup", "aiokafka")
            for kind in order:
                result = measure(kind, bootstrap, topic, ends, age_ms)
                results[kind].append(result)
                print(
                    f"  run {i + 1} {kind:8s} {total / result['seconds']:10,.0f} records/s  "
                    f"{result['seconds']:6.2f} s (start-up {result['start']:4.2f} s)  "
                    f"peak RSS {result['rss'] / 2**20:6.1f} MiB",
                    flush=True,
                )
    med: dict[str, dict[str, float]] = {
        kind: {
            "rate": statistics.median(total / r["seconds"] for r in rs),
            "steady": statistics.median(total / (r["seconds"] - r["start"]) for r in rs),
            "start": statistics.median(r["start"] for r in rs),
            "rss": statistics.median(r["rss"] for r in rs),
        }
        for kind, rs in results.items()
    }
    print()
    print(f"throughput, {total} records, medians of {runs} runs, capgroup batch age {age_ms} ms")
    for kind in ("aiokafka", "capgroup"):
        print(
            f"  {kind:8s} end to end {med[kind]['rate']:10,.0f} records/s  "
            f"after start-up {med[kind]['steady']:10,.0f} records/s  "
            f"start-up {med[kind]['start']:4.2f} s  peak RSS {med[kind]['rss'] / 2**20:6.1f} MiB"
        )
    for label, key in (("end to end", "rate"), ("after start-up", "steady")):
        ratio = med["capgroup"][key] / med["aiokafka"][key]
        verdict = "meets" if ratio >= 0.90 else "MISSES"
        print(f"  ratio capgroup / aiokafka, {label}: {ratio:.3f} ({verdict} the 0.90 target)")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per side (default 3)")
    parser.add_argument(
        "--records", type=int, default=1_000_000, help="records to produce (default 1M)"
    )
    parser.add_argument(
        "--batch-max-age-ms",
        type=int,
        default=BATCH_MAX_AGE_MS,
        help=f"capgroup's batch age limit (default {BATCH_MAX_AGE_MS})",
    )
    parser.add_argument("--worker", choices=["capgroup", "aiokafka"], help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--ends", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    options: Any = parse()
    if options.worker:
        worker(
            options.worker,
            options.bootstrap,
            options.topic,
            {int(p): int(o) for p, o in json.loads(options.ends).items()},
            options.batch_max_age_ms,
        )
    else:
        main(options.runs, options.records, options.batch_max_age_ms)
