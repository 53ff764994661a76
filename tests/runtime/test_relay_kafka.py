"""Relaying against a real broker: a member that cannot keep up with its partition relays the
oldest records to the other member's partition; every record is flushed at least once (by its
owner, or by the other member with the relay headers), none is lost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from capgroup import TopicPartition
from capgroup.runtime import Relayed
from capgroup.runtime.relay import RELAY_HOPS_HEADER, RELAY_ORIGIN_HEADER
from tests.runtime.harness import Recorder, consumer_settings, produce, running, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

RELAY: dict[str, Any] = {
    "relay_enabled": True,
    "relay_lag_records": 20,
    "lag_sample_interval_ms": 200,
    "max_partitions": 1,
    "batch_max_records": 10,
    "batch_max_age_ms": 200,
}


class Relaying(Recorder):
    """A recorder that keeps what the relay reported."""

    def __init__(self, name: str, **overrides: Any) -> None:
        super().__init__(name, **overrides)
        self.relayed: list[Relayed] = []

    async def on_records_relayed(self, relayed: Sequence[Relayed]) -> None:
        self.relayed.extend(relayed)


async def test_a_lagging_member_relays_to_the_other_members_partition(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=2)
    group = unique_id("g")
    a = Relaying("a", **consumer_settings(bootstrap, group, topic, **RELAY))
    b = Relaying("b", **consumer_settings(bootstrap, group, topic, **RELAY))
    a.flush_delay = 1.0  # ten records a second: it cannot keep up
    async with running(a) as start:
        await start(b)
        await wait_until(lambda: len(a.assignment) == 1 and len(b.assignment) == 1, 30, "split")
        (hot,) = a.assignment
        (cool,) = b.assignment
        produced = 0
        for _ in range(12):
            await produce(bootstrap, topic, hot.partition, 30, start=produced)
            produced += 30
            await anyio.sleep(0.3)
        await wait_until(lambda: bool(a.relayed), 30, "a to relay")
        a.flush_delay = 0.0

        def covered() -> set[int]:
            seen = {r.offset for batch in a.batches if batch.tp == hot for r in batch.records}
            for batch in b.batches:
                for record in batch.records:
                    origin = dict(record.headers).get(RELAY_ORIGIN_HEADER)
                    if origin is not None:
                        _, partition, offset = origin.decode().rsplit("/", 2)
                        assert int(partition) == hot.partition
                        seen.add(int(offset))
            return seen

        await wait_until(lambda: covered() >= set(range(produced)), 60, "every record flushed")
    assert {r.destination for r in a.relayed} == {cool}, "only to a partition a does not own"
    assert all(r.origin == hot and r.hops == 1 for r in a.relayed)
    relayed_flushed = [
        r
        for batch in b.batches
        if batch.tp == cool
        for r in batch.records
        if RELAY_ORIGIN_HEADER in dict(r.headers)
    ]
    assert relayed_flushed
    assert all(dict(r.headers)[RELAY_HOPS_HEADER] == b"1" for r in relayed_flushed)
    assert a.stats.counters.records_relayed >= len({(r.origin, r.offset) for r in a.relayed})
    assert TopicPartition(topic, hot.partition) == hot
