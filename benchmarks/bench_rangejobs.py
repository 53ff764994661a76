"""Range jobs (issue 14): time to drain a backlog on one partition with a slow ``flush``,
``CAPGROUP_RANGE_JOBS_ENABLED`` off vs on, 4 members, side by side in one run.

A topic with **one** partition holds ``--records`` records before the members start; ``flush``
sleeps ``--flush-ms`` per record (5 ms: 200 records/s). Four members join (``max_partitions``
1): one owns the partition, three own nothing. Off: the owner flushes the whole backlog alone.
On (``range_jobs_lag_records`` 200, lag sampled every 0.5 s, jobs of 100 records, 8 in flight,
2 slots per member): the owner hands the backlog to range jobs, which all four members take.
Time: from the members' start until the group's committed offset equals the high watermark
(polled every 100 ms). Each measurement is its own subprocess on a fresh topic and group; off
and on alternate.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_rangejobs.py [--runs 2] [--records 3000] [--flush-ms 5]

Uses ``KAFKA_BOOTSTRAP_SERVERS`` if set, else starts a local broker from Maven jars.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition as KafkaTopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import broker, run_child

from capgroup import Batch, BatchingConsumer
from capgroup.devkafka.admin import admin_client, create_topic

RECORD_BYTES = 200
MEMBERS = 4
POLL_SECONDS = 0.1


class SlowConsumer(BatchingConsumer):
    """``flush`` sleeps ``delay`` seconds per record; counts what it flushed."""

    def __init__(self, delay: float, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.delay = delay
        self.flushed = 0

    async def flush(self, batch: Batch) -> None:
        """Sleep for the batch."""
        await anyio.sleep(self.delay * len(batch.records))
        self.flushed += len(batch.records)


async def produce(bootstrap: str, topic: str, records: int) -> None:
    """``records`` records to partition 0."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        value = b"x" * RECORD_BYTES
        pending = [await producer.send(topic, value=value, partition=0) for _ in range(records)]
        for future in pending:
            await future
    finally:
        await producer.stop()


async def drained(bootstrap: str, topic: str, group: str) -> None:
    """Return once the group's committed offset equals the high watermark."""
    tp = KafkaTopicPartition(topic, 0)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await reader.start()
    try:
        end = int((await reader.end_offsets([tp]))[tp])
        async with admin_client(bootstrap) as admin:
            while True:
                try:
                    found = await admin.list_consumer_group_offsets(group, partitions=[tp])
                except KafkaError:  # the group's coordinator is not known yet
                    found = {}
                meta = found.get(tp)
                if meta is not None and meta.offset >= end:
                    return
                await anyio.sleep(POLL_SECONDS)
    finally:
        await reader.stop()


async def measure_once(
    jobs: bool, bootstrap: str, records: int, flush_ms: float, bound: float
) -> dict[str, Any]:
    """One measurement: seconds to drain (None when not drained within ``bound``)."""
    topic = f"bench-rangejobs-{uuid.uuid4().hex[:8]}"
    group = f"{topic}-g"
    await create_topic(bootstrap, topic, 1)
    await produce(bootstrap, topic, records)
    consumers = [
        SlowConsumer(
            flush_ms / 1000,
            bootstrap_servers=bootstrap,
            group_id=group,
            topics=[topic],
            max_partitions=1,
            memory_budget_bytes=64 * 1024 * 1024,
            batch_max_records=100,
            batch_max_age_ms=200,
            max_partition_fetch_bytes=64 * 1024,
            lag_sample_interval_ms=500,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            rebalance_timeout_ms=15000,
            range_jobs_enabled=jobs,
            range_jobs_lag_records=200,
            range_jobs_max_records=100,
            range_jobs_max_bytes=256 * 1024,
            range_jobs_max_in_flight=8,
            range_jobs_worker_slots=2,
            range_jobs_timeout_ms=30_000,
            log_level="warning",
        )
        for _ in range(MEMBERS)
    ]
    result: dict[str, Any] = {"seconds": None}
    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for consumer in consumers:
            tg.start_soon(lambda c=consumer: c.run(handle_signals=False))
        with anyio.move_on_after(bound):
            await drained(bootstrap, topic, group)
            result["seconds"] = time.perf_counter() - began
        result["flushed_by_member"] = sorted((c.flushed for c in consumers), reverse=True)
        for consumer in consumers:
            consumer.stop()
    return result


def worker(args: argparse.Namespace) -> None:
    """Child process: one measurement, printed as JSON."""
    result = anyio.run(
        measure_once, args.jobs == "on", args.bootstrap, args.records, args.flush_ms, args.bound
    )
    print(json.dumps(result), flush=True)


def measure(jobs: bool, bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh subprocess."""
    cmd = [sys.executable, __file__, "--worker", "--jobs", "on" if jobs else "off"]
    cmd += ["--bootstrap", bootstrap, "--records", str(args.records)]
    cmd += ["--flush-ms", str(args.flush_ms), "--bound", str(args.bound)]
    return run_child(cmd, timeout=900)


def main(args: argparse.Namespace) -> None:
    """Measure off and on alternately; print medians and the ratio."""
    seconds: dict[bool, list[float | None]] = {False: [], True: []}
    with broker() as bootstrap:
        for i in range(args.runs):
            for jobs in (False, True) if i % 2 == 0 else (True, False):
                r = measure(jobs, bootstrap, args)
                seconds[jobs].append(r["seconds"])
                took = "-" if r["seconds"] is None else f"{r['seconds']:.1f} s"
                print(
                    f"  run {i + 1} range jobs {'on ' if jobs else 'off'} {took:>8s}  "
                    f"flushed by member {r['flushed_by_member']}",
                    flush=True,
                )
    print(
        f"{args.records} records on 1 partition, flush {args.flush_ms} ms/record, {MEMBERS} members"
    )
    done = {k: [s for s in v if s is not None] for k, v in seconds.items()}
    for jobs in (False, True):
        side = "on " if jobs else "off"
        if len(done[jobs]) < len(seconds[jobs]):
            print(f"  range jobs {side} did not drain in {args.bound:.0f} s")
        else:
            print(f"  range jobs {side} {statistics.median(done[jobs]):6.1f} s (median)")
    if all(len(done[k]) == len(seconds[k]) for k in seconds):
        ratio = statistics.median(done[False]) / statistics.median(done[True])
        print(f"  ratio off / on {ratio:.2f}x", flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="measurements per side")
    parser.add_argument("--records", type=int, default=3000, help="backlog on the partition")
    parser.add_argument("--flush-ms", type=float, default=5.0, help="flush time per record")
    parser.add_argument("--bound", type=float, default=120.0, help="give up after (s)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", choices=("on", "off"), default="off", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.worker:
        worker(arguments)
    else:
        main(arguments)
