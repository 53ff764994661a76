"""Helpers for the BatchingConsumer tests against a real broker: a recording consumer for
in-process runs, a producer of numbered records, and readers of committed offsets and topics."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition as KafkaTopicPartition

from capgroup import Batch, BatchingConsumer, RevokeAction, TopicPartition
from capgroup.operations.serve import run_with_operations
from tests.membership.harness import FAST, wait_until
from tests.processes import ROOT, ChildProcess, capgroup_env, json_objects

__all__ = ["FAST", "HOLD", "ROOT", "wait_until"]


#: Batch limits that keep everything buffered until a revoke, a loss or the shutdown.
HOLD = {"batch_max_records": 100_000, "batch_max_age_ms": 600_000}


def consumer_settings(bootstrap: str, group: str, topic: str, **overrides: Any) -> dict[str, Any]:
    """Setting values for a test consumer: fast group timings, quick retries, and a budget."""
    return {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "topics": [topic],
        **FAST,
        "memory_budget_bytes": 256 * 1024 * 1024,
        "flush_retry_initial_ms": 10,
        "flush_retry_max_ms": 50,
        "flush_retry_max_attempts": 3,
        "shutdown_timeout_ms": 10_000,
        "revoke_safety_margin_ms": 3_000,
        "ingress_rate_interval_ms": 500,
        **overrides,
    }


class Recorder(BatchingConsumer):
    """A consumer that keeps every flushed batch in memory, with knobs to misbehave."""

    def __init__(self, name: str, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.name = name
        self.batches: list[Batch] = []
        self.flush_calls: list[tuple[TopicPartition, int, int]] = []
        self.flush_delay = 0.0
        self.fail: Callable[[Batch], bool] = lambda _batch: False
        self.revoke_choice: RevokeAction | None = None
        self.revoked: list[tuple[Batch, float, RevokeAction]] = []
        self.assigned: list[frozenset[TopicPartition]] = []
        self.lost: list[frozenset[TopicPartition]] = []
        self.in_flight: dict[TopicPartition, int] = {}
        self.max_in_flight_per_partition = 0
        self.max_in_flight = 0
        self.on_flush: Callable[[Batch], None] = lambda _batch: None

    async def flush(self, batch: Batch) -> None:
        """Record the call, maybe wait and maybe fail, then keep the batch."""
        self.flush_calls.append((batch.tp, batch.first_offset, batch.last_offset))
        self.in_flight[batch.tp] = self.in_flight.get(batch.tp, 0) + 1
        self.max_in_flight_per_partition = max(
            self.max_in_flight_per_partition, self.in_flight[batch.tp]
        )
        self.max_in_flight = max(self.max_in_flight, sum(self.in_flight.values()))
        try:
            self.on_flush(batch)
            if self.flush_delay:
                await anyio.sleep(self.flush_delay)
            if self.fail(batch):
                raise RuntimeError(f"planted failure at {batch.first_offset}..{batch.last_offset}")
            self.batches.append(batch)
        finally:
            self.in_flight[batch.tp] -= 1

    async def revoke_action(self, batch: Batch, deadline: float) -> RevokeAction:
        """The configured action, or the default decision."""
        action = self.revoke_choice or await super().revoke_action(batch, deadline)
        self.revoked.append((batch, deadline, action))
        return action

    async def on_partitions_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        """Remember the gained partitions."""
        self.assigned.append(partitions)

    async def on_partitions_lost(self, partitions: frozenset[TopicPartition]) -> None:
        """Remember the lost partitions."""
        self.lost.append(partitions)

    def offsets(self, tp: TopicPartition) -> list[int]:
        """Offsets flushed for ``tp``, in flush order."""
        return [r.offset for b in self.batches if b.tp == tp for r in b.records]


@asynccontextmanager
async def running(*consumers: BatchingConsumer, operations: bool = False) -> AsyncIterator[Any]:
    """Run consumers in this event loop (each returns from start once it has an assignment);
    stop them all on exit and wait for their graceful shutdown. With ``operations``, each runs
    with its operations HTTP server beside it (``run_with_operations``, as ``capgroup run``)."""
    async with anyio.create_task_group() as tg:
        started: list[BatchingConsumer] = []

        async def start(consumer: BatchingConsumer) -> None:
            if operations:
                await tg.start(
                    lambda task_status: run_with_operations(
                        consumer, handle_signals=False, task_status=task_status
                    )
                )
            else:
                await tg.start(
                    lambda task_status: consumer.run(handle_signals=False, task_status=task_status)
                )
            started.append(consumer)

        try:
            for consumer in consumers:
                await start(consumer)
            yield start
        finally:
            for consumer in started:
                consumer.stop()


async def produce(
    bootstrap: str,
    topic: str,
    partition: int,
    count: int,
    *,
    value_size: int = 20,
    headers: list[tuple[str, bytes]] | None = None,
    start: int = 0,
) -> list[int]:
    """Produce ``count`` numbered records to one partition; returns their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for i in range(start, start + count):
            value = f"{i:010d}".encode().ljust(value_size, b".")
            futures.append(
                await producer.send(
                    topic, value=value, key=str(i).encode(), partition=partition, headers=headers
                )
            )
        return [(await f).offset for f in futures]
    finally:
        await producer.stop()


async def committed_offsets(
    bootstrap: str, group: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The group's committed offsets (None where nothing is committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    result: dict[TopicPartition, int | None] = {}
    for tp in partitions:
        meta = found.get(KafkaTopicPartition(tp.topic, tp.partition))
        result[tp] = None if meta is None or meta.offset < 0 else meta.offset
    return result


async def wait_committed(
    bootstrap: str,
    group: str,
    expected: dict[TopicPartition, int | None],
    within: float,
) -> None:
    """Poll the group's committed offsets until they equal ``expected`` (fails after
    ``within`` seconds, showing the last offsets seen)."""
    deadline = anyio.current_time() + within
    while True:
        found = await committed_offsets(bootstrap, group, expected)
        if found == expected:
            return
        if anyio.current_time() > deadline:
            raise AssertionError(f"committed offsets {found}, expected {expected}")
        await anyio.sleep(0.2)


async def read_topic(bootstrap: str, topic: str, expected: int, within: float = 20.0) -> list[Any]:
    """Read ``expected`` records from ``topic`` from the beginning (fails after ``within``)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:
        with anyio.fail_after(within):
            while len(records) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                for chunk in batch.values():
                    records.extend(chunk)
    finally:
        await consumer.stop()
    return records


def log_events(stderr: str) -> list[dict[str, Any]]:
    """The JSON log events a consumer process wrote (other lines are skipped)."""
    return list(json_objects(stderr.splitlines()))


class ConsumerProcess(ChildProcess):
    """``capgroup run TARGET`` as an OS process, with :attr:`sink` in ``SINK_PATH``."""

    #: The consumer class to run.
    target = "tests.runtime.sink_consumer:SinkConsumer"

    def __init__(self, sink: Path, settings: dict[str, Any], **env: str) -> None:
        super().__init__(
            capgroup_env(settings, **env, SINK_PATH=str(sink)), sink.with_suffix(".stderr")
        )
        self.sink = sink

    def command(self) -> list[str]:
        """``capgroup run`` of :attr:`target`."""
        return [sys.executable, "-m", "capgroup.cli.main", "run", self.target]


@asynccontextmanager
async def process(consumer: ConsumerProcess) -> AsyncIterator[ConsumerProcess]:
    """Start a consumer process and always reap it."""
    try:
        yield consumer.start()
    finally:
        consumer.close()
