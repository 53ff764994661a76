"""The partition lifecycle hooks on the scripted seam: order and counts of ``on_start``,
``on_partitions_assigned``, ``revoke_action``, ``on_partitions_revoked``,
``on_partitions_lost`` and ``on_stop``; what a failing ``on_partitions_assigned`` does; and
stopped partitions as readiness and the metrics see them (current ownership only).
``test_lifecycle_kafka.py`` proves the resource pairing against a real broker."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest

from capgroup import Batch, BatchingConsumer, RevokeAction, TopicPartition
from capgroup.errors import FencedInstanceError
from capgroup.operations.http import readiness
from capgroup.runtime.batch import BatchLimits, PartitionBuffer
from capgroup.runtime.stats import StoppedPartition
from tests.runtime._records import rec
from tests.runtime.parts import TP, Hooks, make_parts
from tests.runtime.test_consumer_scripted import BASE, GUARD
from tests.runtime.test_ownership import Group, change, owning
from tests.scripted import ScriptedCoordinator
from tests.scripted.coordinator import FENCED_INSTANCE_ID
from tests.scripted.runtime_clients import ScriptedClients, ScriptedFetcher

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

P0, P1, P2, P3 = (TopicPartition("t", i) for i in range(4))
#: Nothing is cut before a revoke, a loss or the shutdown.
HOLD = {"batch_max_records": 1000, "batch_max_age_ms": 600_000}
#: Room for four partitions.
ROOMY = {"memory_budget_bytes": 256 << 20}

#: One hook call: (hook, partitions, the group's committed offsets when it ran, and how many
#: commits the coordinator had accepted by then).
Event = tuple[str, frozenset[TopicPartition], dict[TopicPartition, int], int]


class AssignFailedError(Exception):
    """What a failing ``on_partitions_assigned`` raises."""


class Lifecycle(BatchingConsumer):
    """Records every hook call with the group's committed offsets at that moment."""

    def __init__(self, coord: ScriptedCoordinator, **overrides: Any) -> None:
        super().__init__(**(BASE | HOLD | ROOMY | overrides))
        self.coord = coord
        self.events: list[Event] = []
        self.flushed: dict[TopicPartition, list[int]] = {}
        #: ``on_partitions_assigned`` raises for these partitions.
        self.fail_assign: set[TopicPartition] = set()
        #: Flushes of batches starting at or after this offset fail.
        self.fail_from: int | None = None
        self._changed = anyio.Event()

    def _record(self, hook: str, partitions: frozenset[TopicPartition] = frozenset()) -> None:
        self.events.append((hook, partitions, dict(self.coord.committed), len(self.coord.commits)))
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def hooks(self, name: str) -> list[frozenset[TopicPartition]]:
        return [p for hook, p, _, _ in self.events if hook == name]

    def closed(self) -> Counter[TopicPartition]:
        """How many revoked or lost calls each partition got."""
        return Counter(
            tp
            for hook, ps, _, _ in self.events
            if hook in ("on_partitions_revoked", "on_partitions_lost")
            for tp in ps
        )

    async def flush(self, batch: Batch) -> None:
        if self.fail_from is not None and batch.first_offset >= self.fail_from:
            raise OSError("sink down")
        self.flushed.setdefault(batch.tp, []).extend(r.offset for r in batch.records)
        self._record("flush", frozenset({batch.tp}))

    async def revoke_action(self, batch: Batch, deadline: float) -> RevokeAction:
        self._record("revoke_action", frozenset({batch.tp}))
        return RevokeAction.FLUSH

    async def on_start(self) -> None:
        self._record("on_start")

    async def on_stop(self) -> None:
        self._record("on_stop")

    async def on_partitions_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        self._record("on_partitions_assigned", partitions)
        if partitions & self.fail_assign:
            raise AssignFailedError(f"cannot open {sorted(partitions)}")

    async def on_partitions_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        self._record("on_partitions_revoked", partitions)

    async def on_partitions_lost(self, partitions: frozenset[TopicPartition]) -> None:
        self._record("on_partitions_lost", partitions)


async def start(tg: anyio.abc.TaskGroup, consumer: BatchingConsumer, clients: Any) -> None:
    await tg.start(partial(consumer.run, handle_signals=False, clients=clients))


async def test_revoked_once_per_partition_after_the_final_commit_and_on_stop_last() -> None:
    """A owns four partitions, two with buffered records; B joins and two move to B; then A
    stops. ``on_partitions_revoked`` runs exactly once for each of A's partitions, empty
    buffers included, after the final commit of what was buffered; ``on_start`` and
    ``on_stop`` run once each, ``on_stop`` after the last commit and every other hook."""
    coord = ScriptedCoordinator({"t": 4})
    fa = ScriptedFetcher()
    fb = ScriptedFetcher()
    fb.logs = fa.logs
    a, b = Lifecycle(coord), Lifecycle(coord)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fa))
            a_member = a.generation.member_id
            assert a.assignment == {P0, P1, P2, P3}
            for tp in (P0, P2):
                fa.append_many(tp, 3)
            await coord.wait_until(lambda: a.stats.counters.records_in == 6)

            await start(tg, b, ScriptedClients(coord.transport(), fb))
            await a.wait_for(
                lambda: len(a.assignment) == 2 and bool(a.hooks("on_partitions_revoked"))
            )
            moved = {P0, P1, P2, P3} - a.assignment
            kept = a.assignment
            await b.wait_for(lambda: b.assignment == moved)

            a.stop()
            await a.wait_for(lambda: bool(a.hooks("on_stop")))
            tg.cancel_scope.cancel()

    names = [hook for hook, _, _, _ in a.events]
    assert names.count("on_start") == names.count("on_stop") == 1
    assert names[0] == "on_start"
    assert names[-1] == "on_stop"
    # Exactly one on_partitions_revoked per partition ever assigned, none lost.
    assert a.closed() == Counter({P0: 1, P1: 1, P2: 1, P3: 1})
    assert a.hooks("on_partitions_lost") == []
    revoked = a.hooks("on_partitions_revoked")
    assert revoked == [frozenset(moved), frozenset(kept)]
    # Every buffered record was flushed (in the revoke or at shutdown), then committed, before
    # its partition's on_partitions_revoked ran.
    assert a.flushed == {P0: [0, 1, 2], P2: [0, 1, 2]}
    for hook, partitions, committed, _ in a.events:
        if hook == "on_partitions_revoked":
            for tp in partitions & {P0, P2}:
                assert committed.get(tp) == 3, (tp, committed)
    # A's last commit was accepted before on_stop ran.
    ours = [i for i, c in enumerate(coord.commits) if c.member_id == a_member]
    assert ours
    assert max(ours) < a.events[-1][3]


async def test_failing_on_partitions_assigned_stops_the_partitions_until_they_move() -> None:
    """``on_partitions_assigned`` raises: the partitions never flow, nothing of them is
    flushed or committed, readiness and the stats name them (reason, offset) and the member is
    unhealthy. When one moves to another member it is no longer listed, and it still gets its
    ``on_partitions_revoked``; the new owner consumes it from the start."""
    coord = ScriptedCoordinator({"t": 2})
    fa = ScriptedFetcher()
    fb = ScriptedFetcher()
    fb.logs = fa.logs
    a, b = Lifecycle(coord, batch_max_records=2), Lifecycle(coord, batch_max_records=2)
    a.fail_assign = {P0, P1}
    for tp in (P0, P1):
        fa.append_many(tp, 4)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fa))
            a_member = a.generation.member_id
            assert a.assignment == {P0, P1}
            assert fa.flowing == frozenset(), "held: not a record may flow"
            stats = a.stats
            assert stats.stopped_partitions == {P0, P1}
            assert stats.stopped[P0] == StoppedPartition(P0, "on_partitions_assigned_failed", 0)
            assert stats.counters.partitions_stopped == 2
            assert not a.healthy
            ready = readiness(a)
            assert not ready.ok
            assert "partitions stopped because on_partitions_assigned raised: t-0, t-1" in (
                ready.reasons
            )
            assert ready.detail["stopped"] == {
                "t-0": {"reason": "on_partitions_assigned_failed", "offset": 0},
                "t-1": {"reason": "on_partitions_assigned_failed", "offset": 0},
            }

            await start(tg, b, ScriptedClients(coord.transport(), fb))
            await a.wait_for(lambda: bool(a.hooks("on_partitions_revoked")))
            ((moved,),) = [tuple(p) for p in a.hooks("on_partitions_revoked")]
            (kept,) = {P0, P1} - {moved}
            await b.wait_for(lambda: b.flushed.get(moved) == [0, 1, 2, 3])
            # Moved away: no longer A's concern; the one it keeps stays stopped.
            assert a.stats.stopped_partitions == {kept}
            assert set(a.stats.stopped) == {kept}
            assert readiness(a).detail["stopped_partitions"] == [f"t-{kept.partition}"]
            assert not a.healthy
            assert a.stats.counters.partitions_stopped == 2
            a.stop()
            await a.wait_for(lambda: bool(a.hooks("on_stop")))
            tg.cancel_scope.cancel()

    assert a.flushed == {}
    assert not [c for c in coord.commits if c.member_id == a_member]
    assert a.closed() == Counter({P0: 1, P1: 1})
    assert b.healthy


async def test_a_flush_failure_stops_the_partition_at_the_failed_offset() -> None:
    """flush_failure_policy=stop_partition: the stopped view names the offset the partition
    resumes at (the failed batch's first), and a graceful stop still hands it to
    ``on_partitions_revoked``."""
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    a = Lifecycle(coord, batch_max_records=5, flush_failure_policy="stop_partition")
    a.fail_from = 5
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher))
            fetcher.append_many(P0, 10)
            await coord.wait_until(lambda: not a.healthy)
            assert a.stats.stopped == {P0: StoppedPartition(P0, "flush_failed", 5)}
            assert "partitions stopped after a flush failure: t-0" in readiness(a).reasons
            a.stop()
            await a.wait_for(lambda: bool(a.hooks("on_stop")))
            tg.cancel_scope.cancel()

    assert coord.committed == {P0: 5}
    assert a.hooks("on_partitions_revoked") == [frozenset({P0})]


async def test_a_fatal_error_hands_owned_partitions_to_on_partitions_lost_then_on_stop() -> None:
    """A static member fenced by a twin fails fatally: nothing more is committed; its
    partitions go to ``on_partitions_lost`` and ``on_stop`` still runs, so resources close."""
    coord = ScriptedCoordinator({"t": 2})
    a = Lifecycle(coord, group_instance_id="a-0")

    async def fence() -> None:
        await a.wait_for(lambda: bool(a.hooks("on_partitions_assigned")))
        coord.fail("heartbeat", FENCED_INSTANCE_ID)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fence)
            with pytest.raises(FencedInstanceError):
                await a.run(handle_signals=False, clients=ScriptedClients(coord.transport()))

    names = [hook for hook, _, _, _ in a.events]
    assert names == ["on_start", "on_partitions_assigned", "on_partitions_lost", "on_stop"]
    assert a.hooks("on_partitions_lost") == [frozenset({P0, P1})]


async def test_on_start_failure_is_raised_and_skips_on_stop() -> None:
    coord = ScriptedCoordinator({"t": 1})

    class Broken(Lifecycle):
        async def on_start(self) -> None:
            await super().on_start()
            raise RuntimeError("no database")

    a = Broken(coord)
    with anyio.fail_after(GUARD), pytest.raises(RuntimeError, match="no database"):
        await a.run(handle_signals=False, clients=ScriptedClients(coord.transport()))
    assert [hook for hook, _, _, _ in a.events] == ["on_start"]
    assert coord.log == [], "never joined"


async def test_shutdown_hooks_wait_for_a_running_hook() -> None:
    """Hooks never overlap: the shutdown's ``on_partitions_revoked`` (called from ``run``, not
    the engine) waits for an ``on_partitions_assigned`` the engine is still in."""
    order: list[str] = []
    gate = anyio.Event()

    class SlowGroup(Group):
        async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
            order.append("assigned")
            await gate.wait()
            order.append("assigned done")

        async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
            order.append("revoked")

    parts = make_parts()
    async with owning(parts, SlowGroup(), Hooks()) as ownership, anyio.create_task_group() as tg:
        tg.start_soon(ownership.on_partitions_assigned, change(TP, assigned=[TP]))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(ownership.close)
        await anyio.wait_all_tasks_blocked()
        assert order == ["assigned"]
        gate.set()
    assert order == ["assigned", "assigned done", "revoked"]
    assert ownership.open == set()


async def test_old_hook_names_still_work_with_a_deprecation_warning() -> None:
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    calls: list[str] = []
    with pytest.deprecated_call() as warned:

        class Legacy(BatchingConsumer):
            async def flush(self, batch: Batch) -> None:
                calls.append("flush")

            async def on_assign(self, partitions: frozenset[TopicPartition]) -> None:
                calls.append("on_assign")

            async def on_revoke(self, batch: Batch, deadline: float) -> RevokeAction:
                calls.append("on_revoke")
                return await super().on_revoke(batch, deadline)

            async def on_lost(self, partitions: frozenset[TopicPartition]) -> None:
                calls.append("on_lost")

    assert sorted(str(w.message).split(" is deprecated")[0].rsplit(".", 1)[1] for w in warned) == [
        "on_assign",
        "on_lost",
        "on_revoke",
    ]
    assert "rename it to on_partitions_assigned" in str(warned[0].message) + str(
        warned[1].message
    ) + str(warned[2].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = Legacy(**BASE)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher))
            fetcher.append_many(P0, 2)
            await coord.wait_until(lambda: a.stats.counters.records_in == 2)
            a.stop()
    assert calls == ["on_assign", "flush"], "a shutdown flushes without asking on_revoke"
    # Through the new name the runtime reaches the old on_revoke (and its default decision).
    buffer = PartitionBuffer(P0, BatchLimits(max_records=10, max_bytes=1 << 20, max_age=60.0))
    buffer.append(rec(0, tp=P0), now=0.0)
    far = anyio.current_time() + 3600
    assert await a.revoke_action(buffer.take_all(0.0), far) is RevokeAction.FLUSH
    assert calls[-1] == "on_revoke"
