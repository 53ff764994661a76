"""Relaying records without a broker (``relay_enabled``): the relay-only and lagging paths of a
partition worker, the hop limit, commit only after the producer's acknowledgement, and targets
that are never the member's own partitions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from capgroup.runtime import Relayed
from capgroup.runtime.batch import Batch, make_record, record_sizes
from capgroup.runtime.consumer import BatchingConsumer
from capgroup.runtime.delivery import Delivery
from capgroup.runtime.partition import PartitionState, footprint
from capgroup.runtime.relay import (
    RELAY_HOPS_HEADER,
    RELAY_ORIGIN_HEADER,
    Relay,
    hops_of,
)
from capgroup.runtime.stats import PartitionLag
from capgroup.settings import load_settings
from capgroup.types import TopicPartition
from tests.runtime.parts import OTHER, TP, Hooks, Parts, delivery, make_parts
from tests.scripted.runtime_clients import ScriptedRelaySink

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

THIRD = TopicPartition("events", 2)
SETTINGS: dict[str, Any] = {"group_id": "g", "topics": ["events"], "relay_enabled": True}


@dataclass
class Group:
    """What the relay reads of the member and the broker, changed by the test."""

    owned: set[TopicPartition] = field(default_factory=set)
    relay_only: set[TopicPartition] = field(default_factory=set)
    ends: dict[TopicPartition, int] = field(default_factory=dict)
    committed: dict[TopicPartition, int | None] = field(default_factory=dict)
    figures: dict[TopicPartition, PartitionLag] = field(default_factory=dict)
    #: Batch partitions other live members own (None: the group view cannot be read).
    others: set[TopicPartition] | None = field(default_factory=lambda: {TP, OTHER, THIRD})
    relayed: list[list[Relayed]] = field(default_factory=list)
    #: Commits requested when each ``on_records_relayed`` call ran.
    commits_at_hook: list[int] = field(default_factory=list)

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> Mapping[TopicPartition, int]:
        return {tp: self.ends.get(tp, 0) for tp in tps}

    async def others_own(self) -> frozenset[TopicPartition] | None:
        return None if self.others is None else frozenset(self.others)

    async def group_committed(
        self, tps: Iterable[TopicPartition]
    ) -> Mapping[TopicPartition, int | None]:
        return {tp: self.committed.get(tp, 0) for tp in tps}


def make_relay(
    parts: Parts, group: Group, sink: ScriptedRelaySink, hooks: Hooks, **overrides: Any
) -> Relay:
    async def on_relayed(relayed: Sequence[Relayed]) -> None:
        group.relayed.append(list(relayed))
        group.commits_at_hook.append(hooks.commits)

    return Relay(
        settings=load_settings(**(SETTINGS | overrides)),
        sink=sink,
        owned=lambda: frozenset(group.owned),
        relay_only=lambda: frozenset(group.relay_only),
        end_offsets=group.end_offsets,
        group_committed=group.group_committed,
        others_own=group.others_own,
        lag_figures=lambda: group.figures,
        counters=parts.counters,
        on_relayed=on_relayed,
    )


def buffer(state: PartitionState, parts: Parts, count: int, hops: int | None = None) -> None:
    """Buffer ``count`` keyed records with a user header (and a hops header when given)."""
    start = state.buffer.last_offset + 1
    headers: list[tuple[str, bytes | None]] = [("trace", b"abc")]
    if hops is not None:
        headers.append((RELAY_HOPS_HEADER, str(hops).encode()))
    records = [
        make_record(state.tp.topic, state.tp.partition, start + i, 0, b"key-%d" % i, b"v", headers)
        for i in range(count)
    ]
    before = state.buffer.size_bytes
    state.buffer.extend(records, 0.0, record_sizes(records))
    parts.ledger.add(state.tp, footprint(state.buffer.size_bytes - before, count))


def three_partitions(group: Group, sink: ScriptedRelaySink) -> None:
    sink.topic_partitions["events"] = 3
    for tp in (TP, OTHER, THIRD):
        group.ends[tp] = 100
        group.committed[tp] = 100


async def until(done: Any) -> None:
    """Poll ``done()`` (the worker's progress has no event of its own)."""
    while True:
        if done():
            return
        await anyio.sleep(0.001)


async def settle(parts: Parts, runner: Delivery, state: PartitionState, done: Any) -> None:
    """Run ``state``'s worker until ``done()`` holds."""
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.partition_worker, state)
            await until(done)
            tg.cancel_scope.cancel()


async def test_a_relay_only_partition_relays_every_record_with_headers_and_commits_after_ack() -> (
    None
):
    parts, hooks, group, sink = make_parts(), Hooks(), Group(), ScriptedRelaySink()
    three_partitions(group, sink)
    group.owned = {TP}
    group.relay_only = {TP}
    relay = make_relay(parts, group, sink, hooks)
    await relay.refresh_targets()
    state = parts.own(TP)
    buffer(state, parts, 10)
    sink.hold = anyio.Event()
    runner = delivery(parts, hooks, relay=relay)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.partition_worker, state)
            await sink.waiting.wait()
            await anyio.wait_all_tasks_blocked()
            # Produced, not acknowledged: nothing committable past the relay.
            assert parts.tracker.committable(TP) == 0
            assert hooks.commits == 0
            assert group.relayed == []
            sink.hold.set()
            await until(lambda: parts.tracker.committable(TP) == 10)
            tg.cancel_scope.cancel()
    assert hooks.flushed == [], "nothing processed locally"
    assert len(sink.sent) == 10
    assert {r.destination for r in sink.sent} <= {OTHER, THIRD}
    for offset, record in enumerate(sink.sent):
        headers = dict(record.headers)
        assert record.key == b"key-%d" % offset
        assert record.value == b"v"
        assert headers["trace"] == b"abc"
        assert headers[RELAY_HOPS_HEADER] == b"1"
        assert headers[RELAY_ORIGIN_HEADER] == f"events/0/{offset}".encode()
    assert [(r.origin, r.offset, r.hops) for r in group.relayed[0]] == [
        (TP, o, 1) for o in range(10)
    ]
    assert group.commits_at_hook == [0], "the hook ran after the ack, before the commit"
    assert hooks.commits == 1
    assert parts.counters.records_relayed == 10
    assert dict(relay.hops) == {1: 10}


async def test_a_failed_produce_is_retried_and_nothing_is_committed_before_the_ack() -> None:
    parts, hooks, group, sink = make_parts(), Hooks(), Group(), ScriptedRelaySink()
    three_partitions(group, sink)
    group.owned = group.relay_only = {TP}
    relay = make_relay(parts, group, sink, hooks)
    await relay.refresh_targets()
    state = parts.own(TP)
    buffer(state, parts, 10)
    sink.failures = 1
    runner = delivery(parts, hooks, relay=relay)
    await settle(parts, runner, state, lambda: parts.tracker.committable(TP) == 10)
    assert sink.attempts == 2
    assert len(sink.sent) == 10
    assert parts.counters.records_relayed == 10


async def test_a_record_at_the_hop_limit_is_processed_locally() -> None:
    parts, hooks, group, sink = make_parts(), Hooks(), Group(), ScriptedRelaySink()
    three_partitions(group, sink)
    group.owned = group.relay_only = {TP}
    relay = make_relay(parts, group, sink, hooks)
    await relay.refresh_targets()
    state = parts.own(TP)
    buffer(state, parts, 4, hops=3)  # at the limit: flushed here
    buffer(state, parts, 6, hops=2)  # one more hop allowed
    runner = delivery(parts, hooks, relay=relay)
    await settle(parts, runner, state, lambda: parts.tracker.committable(TP) == 10)
    assert [[r.offset for r in b] for b in hooks.flushed] == [[0, 1, 2, 3]]
    assert [int(dict(r.headers)[RELAY_HOPS_HEADER]) for r in sink.sent] == [3] * 6
    assert all(hops_of(r) == 3 for r in hooks.flushed[0])


async def test_targets_are_never_owned_and_follow_every_rebalance() -> None:
    parts, hooks, group, sink = make_parts(), Hooks(), Group(), ScriptedRelaySink()
    three_partitions(group, sink)
    group.owned = {TP, OTHER}
    group.relay_only = {TP}
    relay = make_relay(parts, group, sink, hooks)
    await relay.refresh_targets()
    assert relay.targets(TP) == [THIRD]
    # A rebalance moves OTHER away and THIRD here: the group view is forgotten at once (no
    # target until it is read again), and the refresh finds OTHER.
    group.owned = {TP, THIRD}
    relay.assignment_changed()
    assert relay.targets(TP) == []
    await relay.refresh_targets()
    assert relay.targets(TP) == [OTHER]
    # The owned set is still read at every choice, even with a stale view.
    group.owned = {TP, OTHER, THIRD}
    assert relay.targets(TP) == []
    group.owned = {TP, THIRD}
    # A partition no other member owns (unassigned) is never a target, whatever its lag.
    group.others = {THIRD}
    await relay.refresh_targets()
    assert relay.targets(TP) == []
    # No group view: nothing is a target.
    group.others = None
    await relay.refresh_targets()
    assert relay.targets(TP) == []
    group.others = {OTHER, THIRD}
    await relay.refresh_targets()
    assert relay.targets(TP) == [OTHER]
    # A lagging partition is no target.
    group.ends[OTHER] = 1_000_000
    await relay.refresh_targets()
    assert relay.targets(TP) == []


async def test_without_a_target_a_relay_only_partition_waits_and_a_lagging_one_flushes() -> None:
    parts, hooks, group, sink = make_parts(), Hooks(), Group(), ScriptedRelaySink()
    three_partitions(group, sink)
    group.owned = {TP, OTHER, THIRD}
    group.relay_only = {TP}
    relay = make_relay(parts, group, sink, hooks)
    await relay.refresh_targets()
    state = parts.own(TP)
    buffer(state, parts, 10)
    runner = delivery(parts, hooks, relay=relay)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.partition_worker, state)
            await anyio.sleep(0.5)
            assert relay.must_wait(TP)
            assert sink.attempts == 0
            assert hooks.flushed == []
            assert parts.tracker.committable(TP) == 0, "held: nothing committed"
            # A rebalance gives THIRD away: the held partition relays to it.
            group.owned = {TP, OTHER}
            relay.assignment_changed()
            await relay.refresh_targets()  # what run() does at once after the change
            await until(lambda: parts.tracker.committable(TP) == 10)
            tg.cancel_scope.cancel()
    assert {r.destination for r in sink.sent} == {THIRD}

    # A lagging batch partition with nowhere to go flushes its records itself.
    parts2, hooks2, group2, sink2 = make_parts(), Hooks(), Group(), ScriptedRelaySink()
    three_partitions(group2, sink2)
    group2.owned = {TP, OTHER, THIRD}
    relay2 = make_relay(parts2, group2, sink2, hooks2)
    relay2._lagging.add(TP)
    state2 = parts2.own(TP)
    buffer(state2, parts2, 10)
    runner2 = delivery(parts2, hooks2, relay=relay2)
    await settle(parts2, runner2, state2, lambda: parts2.tracker.committable(TP) == 10)
    assert [len(b) for b in hooks2.flushed] == [10]
    assert sink2.sent == []


def lag(tp: TopicPartition, records: int) -> PartitionLag:
    return PartitionLag(tp, True, 1_000_000, 0, 1_000_000 - records, records, 1.0, None)


async def test_a_partition_relays_while_its_lag_is_over_the_threshold_and_growing() -> None:
    parts, hooks, group, sink = make_parts(), Hooks(), Group(), ScriptedRelaySink()
    group.owned = {TP}
    relay = make_relay(parts, group, sink, hooks, relay_lag_records=1000)
    group.figures = {TP: lag(TP, 5000)}
    relay.observe_lag()
    assert not relay.relaying(TP), "one sample does not tell a growing lag"
    group.figures = {TP: lag(TP, 4000)}
    relay.observe_lag()
    assert not relay.relaying(TP), "shrinking: the owner keeps up"
    group.figures = {TP: lag(TP, 6000)}
    relay.observe_lag()
    assert relay.relaying(TP)
    assert relay.relay_lag_records() == 6000
    group.figures = {TP: lag(TP, 900)}
    relay.observe_lag()
    assert not relay.relaying(TP), "back under the threshold"


async def test_relay_off_leaves_the_flush_path_and_the_advertisement_alone() -> None:
    parts, hooks = make_parts(), Hooks()
    state = parts.own(TP)
    buffer(state, parts, 10)
    runner = delivery(parts, hooks, relay=None)
    assert runner._flush == hooks.flush
    await settle(parts, runner, state, lambda: parts.tracker.committable(TP) == 10)
    assert [len(b) for b in hooks.flushed] == [10]
    assert parts.counters.records_relayed == 0

    class Service(BatchingConsumer):
        async def flush(self, batch: Batch) -> None:
            pass

    off = Service(group_id="g", topics=["events"])
    assert not off.settings.relay_enabled
    assert off._capacity().relay_partition_bytes == 0
    assert off.stats.relay_hops == {}
    assert off.stats.relay_lag_records == 0
    on = Service(group_id="g", topics=["events"], relay_enabled=True)
    assert on._capacity().relay_partition_bytes == on.settings.fetch_reserve_bytes
