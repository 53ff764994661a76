"""Rebalance cost, measured side by side on one broker in one run.

1. A third member joins a two-member group consuming a 12-partition topic with a steady
   producer. For partitions whose owner did not change, we take the longest gap between two
   consecutive consumed records around the rebalance. capgroup (cooperative) is measured
   beside a plain aiokafka consumer group (eager, its default assignor); the ratio is
   aiokafka / capgroup. The steady-state gap (no rebalance) is printed as the fetch jitter.
2. A member is SIGKILLed: time until its partitions are consumed again, dynamic member
   (survivors take over after the session timeout) versus a static member restarted at once
   (it gets its partitions back without a rebalance).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_rebalance.py [--runs 3] [--quick]

Uses ``KAFKA_BOOTSTRAP_SERVERS`` if set, else starts a local broker from Maven jars.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capgroup.devkafka.admin import create_topic
from capgroup.devkafka.cluster import LocalKafkaCluster
from capgroup.log import configure_logging
from tests.membership.harness import (
    EventLog,
    MemberProcess,
    current_assignment,
    in_process_group,
    member_settings,
    process_settings,
    processes,
    steady_producer,
    wait_until,
)

PARTITIONS = 12
RATE = 600.0  # records/s over all partitions: one record per partition every 20 ms
Receipt = tuple[float, int]  # (receive time, partition)


def longest_gap(receipts: list[Receipt], partitions: set[int], start: float, end: float) -> float:
    """Longest interval without a consumed record on any of ``partitions`` in [start, end]."""
    worst = 0.0
    by_partition: dict[int, list[float]] = defaultdict(list)
    for t, p in receipts:
        if p in partitions:
            by_partition[p].append(t)
    for times in by_partition.values():
        times.sort()
        inside = [t for t in times if start <= t <= end]
        edges = [start, *inside, end]
        worst = max(worst, *(b - a for a, b in itertools.pairwise(edges)))
    return worst


async def capgroup_join_gap(bootstrap: str, flush_seconds: float) -> tuple[float, float]:
    """(rebalance gap, steady-state gap) in seconds for capgroup; a revoke takes
    ``flush_seconds`` (flushing what was buffered for the revoked partitions)."""
    topic = await new_topic(bootstrap)
    log = EventLog()
    settings = member_settings(bootstrap, f"bench-{uuid.uuid4().hex[:8]}", topic, max_partitions=12)
    async with in_process_group(log) as group, steady_producer(bootstrap, topic, PARTITIONS, RATE):
        a = await group.add("a", settings)
        b = await group.add("b", settings)
        await wait_until(
            lambda: len(a.engine.assignment) + len(b.engine.assignment) == 12, 30, "a+b"
        )
        await anyio.sleep(3)
        steady_start = time.time()
        await anyio.sleep(3)
        before = {n: {tp.partition for tp in m.engine.assignment} for n, m in group.members.items()}
        start = time.time()
        c = await group.add("c", settings)
        await wait_until(lambda: all(len(m.engine.assignment) == 4 for m in (a, b, c)), 30, "4/4/4")
        await anyio.sleep(2)
        end = time.time()
        after = {n: {tp.partition for tp in m.engine.assignment} for n, m in group.members.items()}
    retained = (before["a"] & after["a"]) | (before["b"] & after["b"])
    receipts = [(e["t"], e["partition"]) for e in log.of("record")]
    return (
        longest_gap(receipts, retained, start, end),
        longest_gap(receipts, set(range(PARTITIONS)), steady_start, start),
    )


class _FlushOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """An eager member flushes everything it buffered before giving partitions up."""

    def __init__(self, flush_seconds: float) -> None:
        self.flush_seconds = flush_seconds

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            await anyio.sleep(self.flush_seconds)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


async def aiokafka_join_gap(bootstrap: str, flush_seconds: float) -> float:
    """The same scenario with plain aiokafka consumers (eager rebalancing); revoking takes
    ``flush_seconds`` as in :func:`capgroup_join_gap`."""
    topic = await new_topic(bootstrap)
    group_id = f"bench-{uuid.uuid4().hex[:8]}"
    receipts: list[Receipt] = []
    consumers: dict[str, AIOKafkaConsumer] = {}

    async def consume(name: str, task_status: Any) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )
        consumer.subscribe([topic], listener=_FlushOnRevoke(flush_seconds))
        await consumer.start()
        consumers[name] = consumer
        task_status.started()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                now = time.time()
                for tp, records in batches.items():
                    receipts.extend((now, tp.partition) for _ in records)
                if batches:
                    await consumer.commit()
        finally:
            with anyio.CancelScope(shield=True):
                await consumer.stop()

    def owned(name: str) -> set[int]:
        return {tp.partition for tp in consumers[name].assignment()}

    async with anyio.create_task_group() as tg, steady_producer(bootstrap, topic, PARTITIONS, RATE):
        await tg.start(consume, "a")
        await tg.start(consume, "b")
        await wait_until(lambda: len(owned("a")) + len(owned("b")) == 12, 60, "a+b")
        await anyio.sleep(3)
        before = {n: owned(n) for n in ("a", "b")}
        start = time.time()
        await tg.start(consume, "c")
        await wait_until(lambda: len(owned("c")) == 4 and len(owned("a")) == 4, 60, "4/4/4")
        await anyio.sleep(2)
        end = time.time()
        after = {n: owned(n) for n in ("a", "b")}
        tg.cancel_scope.cancel()
    retained = (before["a"] & after["a"]) | (before["b"] & after["b"])
    return longest_gap(receipts, retained, start, end)


async def kill_recovery(bootstrap: str, *, static: bool, workdir: Path) -> float:
    """Seconds from SIGKILL of one of two members to its partitions being consumed again."""
    topic = await new_topic(bootstrap)
    group = f"bench-{uuid.uuid4().hex[:8]}"

    def spec(name: str) -> dict[str, Any]:
        extra = {"group_instance_id": f"{name}-0", "session_timeout_ms": 15000} if static else {}
        return process_settings(bootstrap, group, topic, max_partitions=12, **extra)

    tag = uuid.uuid4().hex[:6]
    victim = MemberProcess("victim", workdir / f"victim-{tag}.jsonl", spec("victim"))
    other = MemberProcess("other", workdir / f"other-{tag}.jsonl", spec("other"))
    async with steady_producer(bootstrap, topic, PARTITIONS, RATE), processes(victim, other):
        await wait_until(
            lambda: (
                len(current_assignment(victim.events())[1]) == 6
                and len(current_assignment(other.events())[1]) == 6
            ),
            60,
            "6/6",
        )
        await anyio.sleep(2)
        lost = {p for _, p in current_assignment(victim.events())[1]}
        victim.signal(signal.SIGKILL)
        killed_at = time.time()
        sinks: list[Callable[[], list[dict[str, Any]]]] = [other.events]
        if static:
            reborn = MemberProcess("victim", workdir / f"reborn-{tag}.jsonl", spec("victim"))
            reborn.start()
            sinks.append(reborn.events)
        try:

            def recovered() -> bool:
                seen = {
                    e["partition"]
                    for sink in sinks
                    for e in sink()
                    if e["event"] == "record" and e["t"] > killed_at
                }
                return lost <= seen

            await wait_until(recovered, 60, "the victim's partitions to be consumed again")
            return time.time() - killed_at
        finally:
            if static:
                reborn.close()


async def new_topic(bootstrap: str) -> str:
    """A fresh 12-partition topic."""
    name = f"bench-{uuid.uuid4().hex[:10]}"
    await create_topic(bootstrap, name, PARTITIONS)
    return name


@contextlib.asynccontextmanager
async def broker() -> AsyncIterator[str]:
    """The broker to measure against."""
    import os

    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    async with LocalKafkaCluster(1) as cluster:
        yield cluster.bootstrap_servers


async def main(runs: int, flush_seconds: float) -> None:
    """Run every scenario ``runs`` times and print medians and ratios."""
    configure_logging(level="error", fmt="json")
    results: dict[str, list[float]] = defaultdict(list)
    async with broker() as bootstrap:
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(runs):
                gap, jitter = await capgroup_join_gap(bootstrap, flush_seconds)
                results["capgroup_gap"].append(gap)
                results["jitter"].append(jitter)
                results["aiokafka_gap"].append(await aiokafka_join_gap(bootstrap, flush_seconds))
                results["kill_dynamic"].append(
                    await kill_recovery(bootstrap, static=False, workdir=Path(tmp))
                )
                results["kill_static"].append(
                    await kill_recovery(bootstrap, static=True, workdir=Path(tmp))
                )
                print(
                    f"run {run + 1}/{runs}: "
                    + ", ".join(f"{k}={v[-1] * 1000:.0f}ms" for k, v in results.items()),
                    flush=True,
                )
    med = {k: statistics.median(v) for k, v in results.items()}
    gap_ratio = med["aiokafka_gap"] / med["capgroup_gap"]
    kill_ratio = med["kill_dynamic"] / med["kill_static"]
    print()
    print(
        f"third member joins: {PARTITIONS} partitions, {RATE:.0f} records/s, a revoke flushes "
        f"for {flush_seconds:.1f} s, {runs} runs (medians)"
    )
    print(f"  steady-state fetch jitter (longest gap)     {med['jitter'] * 1000:8.0f} ms")
    print(f"  capgroup longest gap, retained partitions   {med['capgroup_gap'] * 1000:8.0f} ms")
    print(f"  aiokafka longest gap, retained partitions   {med['aiokafka_gap'] * 1000:8.0f} ms")
    print(f"  ratio aiokafka / capgroup                   {gap_ratio:8.1f} x")
    print("SIGKILL of one of two members until its partitions are consumed again (medians)")
    print(f"  dynamic member (session timeout 6 s)        {med['kill_dynamic'] * 1000:8.0f} ms")
    print(f"  static member restarted at once             {med['kill_static'] * 1000:8.0f} ms")
    print(f"  ratio dynamic / static                      {kill_ratio:8.1f} x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run")
    parser.add_argument(
        "--flush-seconds",
        type=float,
        default=1.0,
        help="how long a member's revoke takes (flushing its buffers), in both groups",
    )
    args = parser.parse_args()
    anyio.run(main, 1 if args.quick else args.runs, args.flush_seconds)
