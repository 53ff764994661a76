"""Relay (issue 13): how long a backlog takes to drain with ``CAPGROUP_RELAY_ENABLED`` off vs on.

Two cases, each measured with relay off and on, side by side in one run (each measurement in
its own subprocess, on a fresh topic and group; the two sides alternate):

- **hot**: 3 members, 6 partitions (2 each). Once every partition is assigned, a burst of
  ``--records`` records is produced to partition 0 at 1,000 records/s. ``flush`` takes
  ``--flush-ms`` per record (10 ms: 100 records/s per partition), so the owner of partition 0
  cannot keep up. With relay on (``relay_lag_records`` 100, lag sampled every 0.5 s) the owner
  republishes the backlog to the 4 partitions it does not own. Time: from the first record of
  the burst until every record of the topic (copies included) is committed.
- **unassigned**: 2 members, 3 partitions, ``--records`` records already in each. Member A
  can batch one partition; member B's budget buys one batch partition plus one fetch reserve
  (``max_partitions`` 2). With relay off the third partition is unassigned and never drains:
  reported as "did not drain in X s" (``--unassigned-bound``). With relay on the assignor
  should give it to B relay-only and B relay it to A's partition. Time: from the members'
  start until every record of the topic is committed.

"Committed" is polled every 100 ms: committed offset = high watermark on every partition at
once (a relayed record's offset is committed only after its copy was acknowledged, so no copy
can be in flight then). Members run as tasks of one subprocess (their flush is a sleep, not CPU).
Batches: 50 records or 200 ms; ``max_partition_fetch_bytes`` 64 KiB.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_relay.py [--runs 3] [--records 2000] [--flush-ms 10]
        [--bound 90] [--unassigned-bound 90] [--cases hot,unassigned]

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
from aiokafka.structs import TopicPartition as KafkaTopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import broker, run_child

from capgroup import Batch, BatchingConsumer
from capgroup.devkafka.admin import admin_client, create_topic, group_committed_offsets
from capgroup.settings import fetch_reserve_bytes, load_settings

RECORD_BYTES = 200
FETCH_BYTES = 64 * 1024
BATCH_MAX_RECORDS = 50
BATCH_MAX_AGE_MS = 200
POLL_SECONDS = 0.1
BURST_RATE = 1000.0
CASES = ("hot", "unassigned")


class SlowConsumer(BatchingConsumer):
    """``flush`` sleeps ``delay`` seconds per record: a sink slower than the topic."""

    def __init__(self, delay: float, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.delay = delay

    async def flush(self, batch: Batch) -> None:
        """Sleep for the batch."""
        await anyio.sleep(self.delay * len(batch.records))


def partition_cost() -> int:
    """The runtime's own per-partition cost for these batch and fetch limits."""
    settings = load_settings(
        batch_max_records=BATCH_MAX_RECORDS,
        max_partition_fetch_bytes=FETCH_BYTES,
    )
    return int(settings.partition_cost_bytes)


# ----------------------------------------------------------------------------- the run -----
async def produce(bootstrap: str, topic: str, partitions: list[int], per_partition: int) -> None:
    """``per_partition`` records to each of ``partitions`` at ``BURST_RATE`` records/s."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        value = b"x" * RECORD_BYTES
        pending = []
        began = anyio.current_time()
        sent = 0
        for i in range(per_partition):
            for p in partitions:
                pending.append(await producer.send(topic, value=value, partition=p))
                sent += 1
            if i % 50 == 49:
                await anyio.sleep(max(0.0, began + sent / BURST_RATE - anyio.current_time()))
        for future in pending:
            await future
    finally:
        await producer.stop()


async def drained(bootstrap: str, topic: str, group: str, partitions: int) -> None:
    """Return once the group's committed offset equals the high watermark everywhere."""
    tps = [KafkaTopicPartition(topic, p) for p in range(partitions)]
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await reader.start()
    try:
        async with admin_client(bootstrap) as admin:
            while True:
                found = await group_committed_offsets(admin, group, tps)
                committed = {partition: offset for (_, partition), offset in found.items()}
                ends = await reader.end_offsets(tps)
                if all(
                    max(committed.get(tp.partition, -1), 0) >= int(end) for tp, end in ends.items()
                ):
                    return
                await anyio.sleep(POLL_SECONDS)
    finally:
        await reader.stop()


async def run_member(consumer: SlowConsumer) -> None:
    """Run one member until stopped."""
    await consumer.run(handle_signals=False)


def members(case: str) -> list[tuple[int, int]]:
    """(max_partitions, budget) of each member of ``case``."""
    cost = partition_cost()
    if case == "hot":
        return [(2, 2 * cost)] * 3
    return [(1, cost), (2, cost + fetch_reserve_bytes(FETCH_BYTES))]


async def measure_once(
    case: str, relay: bool, bootstrap: str, records: int, flush_ms: float, bound: float
) -> dict[str, Any]:
    """One measurement: seconds to drain, or ``None`` when not drained within ``bound``."""
    partitions = 6 if case == "hot" else 3
    topic = f"bench-relay-{case}-{uuid.uuid4().hex[:8]}"
    group = f"{topic}-g"
    await create_topic(bootstrap, topic, partitions)
    if case == "unassigned":
        await produce(bootstrap, topic, list(range(partitions)), records)
    consumers = [
        SlowConsumer(
            flush_ms / 1000,
            bootstrap_servers=bootstrap,
            group_id=group,
            topics=[topic],
            max_partitions=max_partitions,
            memory_budget_bytes=budget,
            batch_max_records=BATCH_MAX_RECORDS,
            batch_max_age_ms=BATCH_MAX_AGE_MS,
            max_partition_fetch_bytes=FETCH_BYTES,
            relay_enabled=relay,
            relay_lag_records=100 if case == "hot" else 10_000,
            lag_sample_interval_ms=500,
            log_level="warning",
        )
        for max_partitions, budget in members(case)
    ]
    result: dict[str, Any] = {"seconds": None}
    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for consumer in consumers:
            tg.start_soon(run_member, consumer)
        if case == "hot":
            with anyio.fail_after(60):
                while sum(len(c.assignment) for c in consumers) < partitions:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            began = time.perf_counter()
            tg.start_soon(produce, bootstrap, topic, [0], records)
        with anyio.move_on_after(bound):
            await drained(bootstrap, topic, group, partitions)
            result["seconds"] = time.perf_counter() - began
        result["relayed"] = sum(c.stats.counters.records_relayed for c in consumers)
        result["relay_only"] = sum(
            len(getattr(c.engine, "relay_only", ())) for c in consumers if c.engine is not None
        )
        for consumer in consumers:
            consumer.stop()
    return result


def worker(args: argparse.Namespace) -> None:
    """Child process: one measurement, printed as JSON."""
    result = anyio.run(
        measure_once,
        args.case,
        args.relay == "on",
        args.bootstrap,
        args.records,
        args.flush_ms,
        args.bound,
    )
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------ parent -----
def bound_of(case: str, args: argparse.Namespace) -> float:
    """How long ``case`` may take before it counts as not drained."""
    return float(args.bound if case == "hot" else args.unassigned_bound)


def measure(case: str, relay: bool, bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh subprocess."""
    cmd = [sys.executable, __file__, "--worker", case, "--relay", "on" if relay else "off"]
    cmd += ["--bootstrap", bootstrap, "--records", str(args.records)]
    cmd += ["--flush-ms", str(args.flush_ms), "--bound", str(bound_of(case, args))]
    return run_child(cmd, timeout=600)


def describe(seconds: list[float | None], bound: float) -> str:
    """Median seconds, or how many runs did not drain."""
    done = [s for s in seconds if s is not None]
    if len(done) < len(seconds):
        return f"did not drain in {bound:.0f} s ({len(seconds) - len(done)}/{len(seconds)} runs)"
    return f"{statistics.median(done):6.1f} s"


def main(args: argparse.Namespace) -> None:
    """Measure every case off and on, alternately; print medians and ratios."""
    with broker() as bootstrap:
        for case in args.cases.split(","):
            runs = args.runs if case == "hot" else args.unassigned_runs
            seconds: dict[bool, list[float | None]] = {False: [], True: []}
            for i in range(runs):
                for relay in (False, True) if i % 2 == 0 else (True, False):
                    r = measure(case, relay, bootstrap, args)
                    seconds[relay].append(r["seconds"])
                    took = "-" if r["seconds"] is None else f"{r['seconds']:.1f} s"
                    print(
                        f"  {case:10s} run {i + 1} relay {'on ' if relay else 'off'} {took:>8s}  "
                        f"relayed {r['relayed']}, relay-only partitions {r['relay_only']}",
                        flush=True,
                    )
            total = args.records * (1 if case == "hot" else 3)
            print(f"{case}: {total} records, flush {args.flush_ms} ms/record, medians of {runs}")
            bound = bound_of(case, args)
            off, on = describe(seconds[False], bound), describe(seconds[True], bound)
            print(f"  relay off {off}\n  relay on  {on}")
            off_s = [s for s in seconds[False] if s is not None]
            on_s = [s for s in seconds[True] if s is not None]
            if len(off_s) == len(seconds[False]) and len(on_s) == len(seconds[True]):
                ratio = statistics.median(off_s) / statistics.median(on_s)
                print(f"  ratio off / on {ratio:.2f}x", flush=True)
            else:
                print("  ratio: no finite ratio (one side did not drain)", flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="measurements per side (hot)")
    parser.add_argument("--unassigned-runs", type=int, default=1)
    parser.add_argument("--records", type=int, default=2000, help="backlog per partition")
    parser.add_argument("--flush-ms", type=float, default=10.0, help="flush time per record")
    parser.add_argument("--bound", type=float, default=90.0, help="hot: give up after (s)")
    parser.add_argument(
        "--unassigned-bound", type=float, default=90.0, help="unassigned: give up after (s)"
    )
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--worker", choices=CASES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--relay", choices=("on", "off"), default="off", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.worker:
        arguments.case = arguments.worker
        worker(arguments)
    else:
        main(arguments)
