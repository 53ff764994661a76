"""Revoke and loss against a real broker: FLUSH commits before the hand-off, DISCARD and an
overrun flush leave the records to the next owner, retained partitions keep flowing during a
revoke, and a lost generation discards buffers and commits nothing."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from capgroup import Batch, RevokeAction, TopicPartition
from tests.runtime.harness import (
    HOLD,
    Recorder,
    committed_offsets,
    consumer_settings,
    produce,
    running,
    wait_committed,
    wait_until,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


class SlowRevoke(Recorder):
    """A recorder whose flushes become very slow once a revoke starts."""

    revoke_flush_delay = 30.0

    async def revoke_action(self, batch: Batch, deadline: float) -> RevokeAction:
        """Decide as configured, then make the flush outlast the deadline."""
        action = await super().revoke_action(batch, deadline)
        self.flush_delay = self.revoke_flush_delay
        return action


@pytest.mark.parametrize("case", ["flush", "discard", "overrun"])
async def test_revoke_flush_discard_and_overrun(
    kafka: Any, topic_factory: Any, unique_id: Any, case: str
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=2)
    group = unique_id("g")
    tps = [TopicPartition(topic, p) for p in range(2)]
    for tp in tps:
        await produce(bootstrap, topic, tp.partition, 10)
    # The overrun case gets a 5 s revoke deadline (8 s rebalance timeout - 3 s margin).
    a_overrides: dict[str, Any] = {**HOLD, "max_partitions": 2}
    if case == "overrun":
        a_overrides["rebalance_timeout_ms"] = 8_000
    cls = SlowRevoke if case == "overrun" else Recorder
    a = cls("a", **consumer_settings(bootstrap, group, topic, **a_overrides))
    a.revoke_choice = RevokeAction.DISCARD if case == "discard" else RevokeAction.FLUSH
    b = Recorder(
        "b", **consumer_settings(bootstrap, group, topic, batch_max_age_ms=200, max_partitions=2)
    )
    async with running(a) as start:
        await wait_until(lambda: a.stats.counters.records_in == 20, 20, "a to buffer 20 records")
        await start(b)
        await wait_until(lambda: bool(a.revoked), 30, "a revoke hook call")
        revoked_batch, deadline, _ = a.revoked[0]
        moved, kept = revoked_batch.tp, next(tp for tp in tps if tp != revoked_batch.tp)
        assert [r.offset for r in revoked_batch.records] == list(range(10))
        allowed = (a.settings.rebalance_timeout_ms - a.settings.revoke_safety_margin_ms) / 1000
        assert 0 < deadline - anyio.current_time() <= allowed
        if case == "overrun":
            # The revoke flush hangs; the kept partition must still take records meanwhile.
            await produce(bootstrap, topic, kept.partition, 5, start=100)
            await wait_until(
                lambda: a.stats.counters.records_in == 25, 10, "kept partition to keep flowing"
            )
            assert a.stats.counters.partitions_revoked == 0, "the revoke was not still running"
        await wait_until(lambda: moved in b.assignment, 30, "b to own the moved partition")
        a.flush_delay = 0.0
        expected_commit = 10 if case == "flush" else None
        committed = await committed_offsets(bootstrap, group, [moved])
        # Checked once b owns it: the hand-off happened after a's commit (or lack of one).
        assert committed[moved] == expected_commit
        await produce(bootstrap, topic, moved.partition, 5, start=10)
        first = 10 if case == "flush" else 0
        await wait_until(
            lambda: b.offsets(moved) == list(range(first, 15)), 20, f"b to flush {first}..14"
        )
        await wait_committed(bootstrap, group, {moved: 15}, 10)
    counters = a.stats.counters
    if case == "flush":
        assert a.offsets(moved) == list(range(10))
        assert counters.revoke_flush == 1
    else:
        assert a.offsets(moved) == []
        assert counters.revoke_overrun == (1 if case == "overrun" else 0)
        assert counters.revoke_discard == (1 if case == "discard" else 0)


async def test_lost_generation_discards_buffers_and_commits_nothing(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=2)
    group = unique_id("g")
    p0, p1 = (TopicPartition(topic, p) for p in range(2))
    a = Recorder(
        "a",
        **consumer_settings(
            bootstrap, group, topic, batch_max_records=10, batch_max_age_ms=600_000
        ),
    )
    frozen: list[float] = []

    def freeze_once(batch: Batch) -> None:
        if not frozen and batch.tp == p0:
            # Block the whole event loop past the session timeout (like a GC pause or SIGSTOP):
            # the broker evicts the member while its flush is "in progress".
            frozen.append(time.monotonic())
            time.sleep(a.settings.session_timeout_ms / 1000 + 2)

    a.on_flush = freeze_once
    async with running(a):
        await produce(bootstrap, topic, p1.partition, 3)
        await wait_until(lambda: a.stats.counters.records_in == 3, 20, "p1 records buffered")
        await produce(bootstrap, topic, p0.partition, 10)
        await wait_until(lambda: bool(a.lost), 30, "the partitions to be lost")
        assert a.lost[0] == frozenset({p0, p1})
        committed = await committed_offsets(bootstrap, group, [p0, p1])
        assert committed == {p0: None, p1: None}, "a lost generation committed"
        # After rejoining, p0 is re-read from the last commit and flushed again.
        await wait_until(lambda: len(a.offsets(p0)) == 20, 30, "p0 re-read after the loss")
        await wait_committed(bootstrap, group, {p0: 10, p1: None}, 20)
    assert a.offsets(p0) == list(range(10)) * 2
    assert a.offsets(p1) == list(range(3)), "p1 flushed once, by the shutdown"
    assert a.stats.counters.records_discarded >= 3


async def test_revoke_during_flushes_waits_for_the_batch_in_flight_then_flushes_the_rest(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=2)
    group = unique_id("g")
    tps = [TopicPartition(topic, p) for p in range(2)]
    for tp in tps:
        await produce(bootstrap, topic, tp.partition, 15)
    # One flush slot and slow flushes: at the revoke, the moved partition is either flushing
    # its first batch or queued behind the other partition's flush.
    a = Recorder(
        "a",
        **consumer_settings(
            bootstrap,
            group,
            topic,
            batch_max_records=10,
            batch_max_age_ms=600_000,
            flush_concurrency=1,
            max_partitions=2,
        ),
    )
    a.flush_delay = 1.5
    a.revoke_choice = RevokeAction.FLUSH
    b = Recorder(
        "b", **consumer_settings(bootstrap, group, topic, batch_max_age_ms=200, max_partitions=2)
    )
    async with running(a) as start:
        await wait_until(lambda: bool(a.flush_calls), 20, "a's first flush to start")
        await start(b)
        await wait_until(lambda: bool(a.revoked), 30, "a revoke hook call")
        moved = a.revoked[0][0].tp
        await wait_until(lambda: moved in b.assignment, 30, "b to own the moved partition")
        assert (await committed_offsets(bootstrap, group, [moved]))[moved] == 15
        await produce(bootstrap, topic, moved.partition, 5, start=15)
        await wait_until(lambda: b.offsets(moved) == list(range(15, 20)), 20, "b from 15")
    assert a.offsets(moved) == list(range(15))
