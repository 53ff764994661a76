"""The membership engine against a scripted coordinator: exact interleavings, no broker, no
sleeps. ``test_engine_kafka.py`` stays the proof against a real broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
import structlog.testing

from capgroup.errors import CommitFencedError, FencedInstanceError
from capgroup.membership.engine import MembershipEngine
from capgroup.membership.model import AssignmentChange, MemberState
from capgroup.settings import CapgroupSettings, load_settings
from capgroup.types import CapacityAdvertisement, TopicPartition
from tests.scripted import ScriptedCoordinator, ScriptedTransport
from tests.scripted.coordinator import (
    FENCED_INSTANCE_ID,
    ILLEGAL_GENERATION,
    MEMBER_ID_REQUIRED,
    NOT_COORDINATOR,
    REBALANCE_IN_PROGRESS,
    UNKNOWN_MEMBER_ID,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

T0, T1, T2, T3 = (TopicPartition("t", p) for p in range(4))
ALL = frozenset({T0, T1, T2, T3})
GUARD = 10  # seconds any single test step may take


def settings(**overrides: Any) -> CapgroupSettings:
    """Fast group timings: heartbeats every 100 ms."""
    return load_settings(
        bootstrap_servers="scripted:9092",
        group_id="g",
        topics=["t"],
        session_timeout_ms=3000,
        heartbeat_interval_ms=100,
        rebalance_timeout_ms=3000,
        revoke_safety_margin_ms=1000,
        **overrides,
    )


def capacity(max_partitions: int) -> Callable[[], CapacityAdvertisement]:
    """A capacity source allowing ``max_partitions`` partitions."""
    adv = CapacityAdvertisement(
        max_partitions=max_partitions,
        memory_budget_bytes=1 << 30,
        partition_bytes={},
        default_partition_bytes=1,
    )
    return lambda: adv


class Recorder:
    """Listener recording its callbacks; ``owners`` (shared between members) catches a
    partition owned by two members at once."""

    def __init__(self, name: str, owners: dict[TopicPartition, str] | None = None) -> None:
        self.name = name
        self.events: list[tuple[str, int, frozenset[TopicPartition]]] = []
        self.owners = {} if owners is None else owners
        self.double_owned: list[tuple[TopicPartition, str]] = []
        self.engine: MembershipEngine | None = None
        self.transport: ScriptedTransport | None = None
        #: Offsets the revoke hook commits, per partition.
        self.commit_on_revoke: dict[TopicPartition, int] = {}

    def of(self, kind: str) -> list[tuple[str, int, frozenset[TopicPartition]]]:
        return [e for e in self.events if e[0] == kind]

    async def on_partitions_revoked(self, change: AssignmentChange) -> None:
        self.events.append(("revoked", change.generation.generation_id, change.partitions))
        wanted = {tp: o for tp, o in self.commit_on_revoke.items() if tp in change.partitions}
        if wanted and self.engine is not None:
            await self.engine.commit(wanted)
        self._release(change.partitions)

    async def on_partitions_assigned(self, change: AssignmentChange) -> None:
        self.events.append(("assigned", change.generation.generation_id, change.partitions))
        for tp in change.partitions:
            other = self.owners.setdefault(tp, self.name)
            if other != self.name:
                self.double_owned.append((tp, other))

    async def on_partitions_lost(self, change: AssignmentChange) -> None:
        self.events.append(("lost", change.generation.generation_id, change.partitions))
        self._release(change.partitions)

    def _release(self, partitions: frozenset[TopicPartition]) -> None:
        for tp in partitions:
            if self.owners.get(tp) == self.name:
                del self.owners[tp]


def member(
    coord: ScriptedCoordinator,
    recorder: Recorder,
    max_partitions: int = 4,
    **overrides: Any,
) -> MembershipEngine:
    recorder.transport = coord.transport()
    engine = MembershipEngine(
        settings(**overrides), recorder, capacity(max_partitions), transport=recorder.transport
    )
    recorder.engine = engine
    return engine


@asynccontextmanager
async def running(*engines: MembershipEngine) -> AsyncIterator[anyio.abc.TaskGroup]:
    """Run ``engines`` (each returns from ``start`` once its first assignment is applied);
    stop them all on exit."""
    async with anyio.create_task_group() as tg:
        for engine in engines:
            with anyio.fail_after(GUARD):
                await tg.start(engine.run)
        yield tg
        for engine in engines:
            engine.stop()


async def outcome(call: Callable[[], Awaitable[Any]], done: anyio.Event, box: list[Any]) -> None:
    """Run ``call``; put its result or exception in ``box`` and set ``done``."""
    try:
        box.append(await call())
    except Exception as exc:
        box.append(exc)
    done.set()


async def settled(coord: ScriptedCoordinator, engine: MembershipEngine, generation: int) -> None:
    """Wait until ``engine`` is stable in ``generation`` (or later) at the coordinator."""
    with anyio.fail_after(GUARD):
        await coord.wait_until(
            lambda: (
                engine.state is MemberState.STABLE
                and engine.generation.generation_id >= generation
                and coord.state == "stable"
            )
        )


async def test_fenced_static_twin_stops_the_first_process() -> None:
    coord = ScriptedCoordinator({"t": 4})
    first, twin = Recorder("first"), Recorder("twin")
    a = member(coord, first, group_instance_id="pod-0")
    b = member(coord, twin, group_instance_id="pod-0")
    done, box = anyio.Event(), list[Any]()
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(GUARD):
            tg.start_soon(outcome, a.run, done, box)
            await coord.wait_until(lambda: a.state is MemberState.STABLE)
            first_id = a.generation.member_id
            async with running(b):
                await done.wait()
                assert b.assignment == ALL
    [result] = box
    assert isinstance(result, FencedInstanceError), result
    assert a.state is MemberState.STOPPED
    assert first.transport is not None
    assert first.transport.closed
    # The old process was fenced by the coordinator, and did not leave (that would have
    # removed the twin's instance).
    fenced = [e for e in coord.log if e.error == FENCED_INSTANCE_ID]
    assert fenced
    assert all(e.fields["member_id"] == first_id for e in fenced)
    assert not [e for e in coord.received("leave") if e.fields["members"][0][0] == first_id]
    # The twin took over without a rebalance: answered from the coordinator's cache.
    assert twin.of("assigned")[0][1:] == (1, ALL)
    assert not twin.double_owned


async def test_coordinator_move_during_join_and_commit() -> None:
    coord = ScriptedCoordinator({"t": 2})
    rec = Recorder("a")
    engine = member(coord, rec)
    joins = coord.gate("join")
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.run)
        with anyio.fail_after(GUARD):
            await joins.arrived.wait()
        coord.move(1)
        joins.release()
        await settled(coord, engine, 1)
        assert engine.assignment == {T0, T1}

        # Heartbeats wait meanwhile, so only the commit can notice the move.
        heartbeats = coord.gate("heartbeat")
        commits = coord.gate("commit")
        done, box = anyio.Event(), list[Any]()
        tg.start_soon(outcome, lambda: engine.commit({T0: 5, T1: 6}), done, box)
        with anyio.fail_after(GUARD):
            await commits.arrived.wait()
            coord.move(2)
            commits.release()
            await done.wait()
        heartbeats.release()
        engine.stop()
    # The commit returns the generation it was made under.
    assert [g.generation_id for g in box] == [1]
    assert [e.node_id for e in coord.received("join", NOT_COORDINATOR)] == [0]
    assert [e.node_id for e in coord.received("commit", NOT_COORDINATOR)] == [1]
    assert [e.node_id for e in coord.received("commit", 0)] == [2]
    assert coord.committed == {T0: 5, T1: 6}
    assert coord.lookups >= 3  # initial, after the join moved, after the commit moved


async def test_unknown_member_on_heartbeat_loses_and_rejoins_with_fresh_id() -> None:
    coord = ScriptedCoordinator({"t": 4})
    rec = Recorder("a")
    engine = member(coord, rec)
    async with running(engine):
        first_id = engine.generation.member_id
        coord.expire(first_id)  # the session expired at the coordinator
        with anyio.fail_after(GUARD):
            await coord.wait_until(
                lambda: (
                    engine.state is MemberState.STABLE
                    and engine.generation.member_id not in ("", first_id)
                )
            )
        assert engine.assignment == ALL
    assert coord.received("heartbeat", UNKNOWN_MEMBER_ID)
    kinds = [(kind, parts) for kind, _, parts in rec.events]
    assert kinds == [("assigned", ALL), ("lost", ALL), ("assigned", ALL)]


async def test_rebalance_in_progress_on_commit_retries_under_next_generation() -> None:
    coord = ScriptedCoordinator({"t": 4})
    engine = member(coord, Recorder("a"))
    async with running(engine):
        member_id = engine.generation.member_id
        coord.fail("commit", REBALANCE_IN_PROGRESS)
        with anyio.fail_after(GUARD):
            await engine.commit({T0: 7})
    sent = [(e.fields["generation_id"], e.error) for e in coord.received("commit")]
    assert sent == [(1, REBALANCE_IN_PROGRESS), (2, 0)]
    assert coord.commits == [(2, member_id, {T0: 7})]


async def test_generation_lost_while_commit_waits_is_fenced() -> None:
    coord = ScriptedCoordinator({"t": 4})
    rec = Recorder("a")
    engine = member(coord, rec)
    async with running(engine) as tg:
        commits = coord.gate("commit")
        done, box = anyio.Event(), list[Any]()
        tg.start_soon(outcome, lambda: engine.commit({T0: 3}), done, box)
        with anyio.fail_after(GUARD):
            await commits.arrived.wait()
        coord.fail("heartbeat", ILLEGAL_GENERATION)
        await settled(coord, engine, 2)
        commits.release()
        with anyio.fail_after(GUARD):
            await done.wait()
        assert engine.generation.generation_id == 2
    [result] = box
    assert isinstance(result, CommitFencedError), result
    assert [e.error for e in coord.received("commit")] == [ILLEGAL_GENERATION]
    assert coord.commits == []
    assert coord.committed == {}
    assert ("lost", -1, ALL) in rec.events


async def test_stale_cached_assignment_after_static_restart_with_lower_budget() -> None:
    coord = ScriptedCoordinator({"t": 4})
    before = member(coord, Recorder("before"), 4, group_instance_id="pod-0")
    async with running(before):
        assert before.assignment == ALL
    assert not coord.received("leave")  # a static member stays in the group on restart

    rec = Recorder("after")
    after = member(coord, rec, 2, group_instance_id="pod-0")
    async with running(after):
        # The coordinator answered from its cache (generation 1, all four partitions), the
        # engine took only what fits and asked for a real rebalance.
        assert rec.events[0] == ("assigned", 1, rec.events[0][2])
        assert len(rec.events[0][2]) == 2
        await settled(coord, after, 2)
        assert len(after.assignment) == 2
        assert coord.assignment_of(after.generation.member_id) == after.assignment
    assert all(len(parts) <= 2 for kind, _, parts in rec.events if kind == "assigned")
    assert not rec.of("lost")


async def test_commit_crossing_generations_is_fenced() -> None:
    coord = ScriptedCoordinator({"t": 4})
    rec = Recorder("a")
    engine = member(coord, rec)
    async with running(engine) as tg:
        commits = coord.gate("commit")
        done, box = anyio.Event(), list[Any]()
        tg.start_soon(outcome, lambda: engine.commit({T0: 9}), done, box)
        with anyio.fail_after(GUARD):
            await commits.arrived.wait()
        # T0 is lost and regained while the commit for the old ownership waits ...
        coord.fail("heartbeat", ILLEGAL_GENERATION)
        await settled(coord, engine, 2)
        assert T0 in engine.assignment
        # ... and the coordinator moves, so the commit is retried by the engine.
        coord.move(1)
        commits.release()
        with anyio.fail_after(GUARD):
            await done.wait()
    [result] = box
    assert isinstance(result, CommitFencedError), result
    assert "ownership changed" in result.reason
    assert [e.error for e in coord.received("commit")] == [NOT_COORDINATOR]
    assert coord.commits == []


async def test_second_member_joins_cooperatively() -> None:
    coord = ScriptedCoordinator({"t": 4})
    owners: dict[TopicPartition, str] = {}
    ra, rb = Recorder("a", owners), Recorder("b", owners)
    ra.commit_on_revoke = {tp: 100 + tp.partition for tp in ALL}
    a, b = member(coord, ra), member(coord, rb)
    async with running(a):
        assert a.assignment == ALL
        async with running(b):
            with anyio.fail_after(GUARD):
                await coord.wait_until(
                    lambda: (
                        len(a.assignment) == 2
                        and len(b.assignment) == 2
                        and a.state is MemberState.STABLE
                        and b.state is MemberState.STABLE
                    )
                )
            a_id = a.generation.member_id
    moved = b.assignment
    assert moved
    assert not moved & a.assignment
    # a gave up only what moved, in one revoke, and committed it under that generation.
    [(_, revoked_gen, revoked)] = ra.of("revoked")
    assert revoked == moved
    assert ra.of("assigned") == [("assigned", 1, ALL)]
    assert not ra.of("lost")
    assert not rb.of("lost")
    assert (revoked_gen, a_id, {tp: 100 + tp.partition for tp in moved}) in coord.commits
    # b got them only in a later generation.
    assert [(gen > revoked_gen, parts) for _, gen, parts in rb.of("assigned")] == [(True, moved)]
    assert not ra.double_owned
    assert not rb.double_owned


async def test_a_new_member_s_member_id_step_is_not_logged_as_a_failure() -> None:
    """KIP-394: a new member's first JoinGroup is answered MEMBER_ID_REQUIRED with its id; the
    engine joins again with that id at once, logging ``member_id_assigned``, not a warning."""
    coord = ScriptedCoordinator({"t": 4})
    engine = member(coord, Recorder("a"))
    with structlog.testing.capture_logs() as logs:
        async with running(engine):
            member_id = engine.generation.member_id
    joins = coord.received("join")
    assert [j.error for j in joins[:2]] == [MEMBER_ID_REQUIRED, 0]
    events = [e["event"] for e in logs]
    assert events.count("member_id_assigned") == 1
    assert "rebalance_attempt_failed" not in events
    assert [e for e in logs if e["log_level"] == "warning"] == []
    assert member_id
