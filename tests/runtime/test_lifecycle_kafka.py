"""The partition lifecycle hooks against a real broker: a service that opens a resource per
partition in ``on_partitions_assigned`` and closes it in ``on_partitions_revoked`` or
``on_partitions_lost`` ends a run of joins, leaves and stops with nothing open, and
``on_stop`` runs once, after the member's last commit."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from capgroup import TopicPartition
from tests.runtime.harness import Recorder, consumer_settings, produce, running, wait_committed
from tests.runtime.harness import wait_until as wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

PARTITIONS = 4
RECORDS = 10


class Resources(Recorder):
    """Opens a "connection" per partition it is given and closes it when the partition goes;
    a process-wide one from ``on_start`` to ``on_stop``."""

    def __init__(self, name: str, **overrides: Any) -> None:
        super().__init__(name, **overrides)
        self.open: Counter[TopicPartition] = Counter()
        self.opened = 0
        self.closed: list[tuple[str, TopicPartition]] = []
        self.errors: list[str] = []
        self.pool_open = False
        self.starts = 0
        self.stops = 0
        #: Commit counters when ``on_stop`` ran.
        self.commits_at_stop: tuple[int, int, int] | None = None

    def _commits(self) -> tuple[int, int, int]:
        c = self.stats.counters
        return (c.commits, c.commits_fenced, c.commit_failures)

    async def on_start(self) -> None:
        self.starts += 1
        self.pool_open = True

    async def on_stop(self) -> None:
        self.stops += 1
        if any(self.open.values()):
            self.errors.append(f"on_stop with partitions still open: {dict(self.open)}")
        self.pool_open = False
        self.commits_at_stop = self._commits()

    async def on_partitions_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        await super().on_partitions_assigned(partitions)
        if not self.pool_open:
            self.errors.append("on_partitions_assigned before on_start")
        for tp in partitions:
            if self.open[tp]:
                self.errors.append(f"{tp} opened twice")
            self.open[tp] += 1
            self.opened += 1

    async def _close(self, how: str, partitions: frozenset[TopicPartition]) -> None:
        for tp in partitions:
            if not self.open[tp]:
                self.errors.append(f"{how} for {tp}, which is not open")
            self.open[tp] -= 1
            self.closed.append((how, tp))

    async def on_partitions_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        # Drained, committed and forgotten by the runtime before the hook runs.
        still = partitions & set(self.stats.buffered_bytes_by_partition)
        if still:
            self.errors.append(f"revoked {sorted(still)} still held by the runtime")
        await self._close("revoked", partitions)

    async def on_partitions_lost(self, partitions: frozenset[TopicPartition]) -> None:
        await super().on_partitions_lost(partitions)
        await self._close("lost", partitions)


async def test_resources_per_partition_are_all_closed_after_joins_leaves_and_stops(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=PARTITIONS)
    group = unique_id("g")
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    for tp in tps:
        await produce(bootstrap, topic, tp.partition, RECORDS)

    def member(name: str) -> Resources:
        return Resources(name, **consumer_settings(bootstrap, group, topic, batch_max_age_ms=200))

    a, b, c = member("a"), member("b"), member("c")
    members = (a, b, c)
    async with running(a) as start:
        await wait_for(lambda: len(a.batches) >= PARTITIONS, 30, "a to flush every partition")
        await start(b)
        await wait_for(lambda: len(a.assignment) == 2 and len(b.assignment) == 2, 60, "a/b")
        await start(c)
        await wait_for(
            lambda: sum(len(m.assignment) for m in members) == PARTITIONS and bool(c.assignment),
            60,
            "c to get partitions",
        )
        for tp in tps:
            await produce(bootstrap, topic, tp.partition, RECORDS, start=RECORDS)
        # b leaves (a graceful stop); a and c take its partitions.
        b.stop()
        await wait_for(lambda: b.stops == 1, 60, "b to stop")
        await wait_for(
            lambda: len(a.assignment) + len(c.assignment) == PARTITIONS, 60, "a/c to take over"
        )
        await wait_committed(bootstrap, group, dict.fromkeys(tps, 2 * RECORDS), 60)
        a.stop()
        await wait_for(lambda: a.stops == 1, 60, "a to stop")
    # running() stopped c and waited for it.

    for m in members:
        assert m.errors == [], m.name
        assert (m.starts, m.stops) == (1, 1), m.name
        assert sum(m.open.values()) == 0, (m.name, dict(m.open))
        assert len(m.closed) == m.opened, m.name
        # Nothing was committed after on_stop ran.
        assert m.commits_at_stop == m._commits(), m.name
        assert not m.pool_open
    assert sum(m.opened for m in members) >= PARTITIONS + 2
    await wait_committed(bootstrap, group, dict.fromkeys(tps, 2 * RECORDS), 30)
