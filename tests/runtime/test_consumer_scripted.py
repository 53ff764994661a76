"""A whole :class:`BatchingConsumer` against the scripted coordinator and scripted clients: the
revoke, loss, fenced-commit and flush-failure paths with exact interleavings, no broker and no
fixed sleeps. ``test_consumer_rebalance.py`` and friends stay the proof against a real broker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest

from capgroup import Batch, BatchingConsumer, Record, RevokeAction, TopicPartition
from capgroup.membership.model import MemberState
from tests.scripted import Logged, ScriptedCoordinator, ScriptedTransport
from tests.scripted.coordinator import ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID
from tests.scripted.runtime_clients import ScriptedClients, ScriptedDeadLetterSink, ScriptedFetcher

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)
GUARD = 10  # seconds any single test step may take

#: Fast group timings (heartbeat every 100 ms, revoke deadline 1 s after the revoke starts),
#: small batches, and an explicit budget and container limit so no real cgroup is consulted.
BASE: dict[str, Any] = {
    "bootstrap_servers": "scripted:9092",
    "group_id": "g",
    "topics": ["t"],
    "session_timeout_ms": 1000,
    "heartbeat_interval_ms": 100,
    "rebalance_timeout_ms": 1500,
    "revoke_safety_margin_ms": 500,
    "shutdown_timeout_ms": 2000,
    "batch_max_records": 5,
    "batch_max_age_ms": 30_000,
    "memory_budget_bytes": 64 << 20,
    "container_memory_limit_bytes": 64 << 30,
    "flush_concurrency": 4,
    "flush_retry_initial_ms": 1,
    "flush_retry_max_ms": 2,
    "flush_retry_max_attempts": 2,
}


class FlushFailedError(Exception):
    """What a failing test flush raises."""


@dataclass(frozen=True)
class Flushed:
    """One batch a :class:`Service` flushed, and the ownership it flushed it under."""

    tp: TopicPartition
    offsets: tuple[int, ...]
    #: The member's generation id when the flush returned.
    generation: int
    #: How many times the member had been assigned ``tp`` when the flush returned (1 = first).
    ownership: int


class Service(BatchingConsumer):
    """A test service: records what it flushes; flushes of a partition can be blocked (on an
    event the test sets) or made to fail."""

    def __init__(self, name: str, **overrides: Any) -> None:
        super().__init__(**(BASE | overrides))
        self.name = name
        self.flushed: list[Flushed] = []
        #: Flushes of these partitions wait for the event (the test sets it).
        self.blocked: dict[TopicPartition, anyio.Event] = {}
        #: Likewise for single batches, by (partition, ownership, first offset).
        self.blocked_batches: dict[tuple[TopicPartition, int, int], anyio.Event] = {}
        #: Partitions with a flush call running now, and every flush call's first offset.
        self.flushing: set[TopicPartition] = set()
        self.flush_calls: list[tuple[TopicPartition, int]] = []
        self.cancelled_flushes: list[tuple[TopicPartition, tuple[int, ...]]] = []
        #: Batches starting at or after this offset fail to flush.
        self.fail_from: int | None = None
        self.revoke_choice = RevokeAction.FLUSH
        self.revoked: list[tuple[TopicPartition, tuple[int, ...]]] = []
        self.ownerships: dict[TopicPartition, int] = {}
        self.assigned: list[tuple[int, frozenset[TopicPartition]]] = []
        self.lost: list[frozenset[TopicPartition]] = []
        #: Called at the start of ``on_partitions_assigned`` (before any record flows).
        self.assign_probe: Callable[[frozenset[TopicPartition]], None] | None = None
        self._changed = anyio.Event()

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every hook call."""
        while not predicate():
            await self._changed.wait()

    def offsets(self, tp: TopicPartition) -> list[int]:
        """Offsets of ``tp`` flushed, in flush order."""
        return [o for f in self.flushed if f.tp == tp for o in f.offsets]

    def deserialize(self, record: Record) -> Record:
        """Unchanged; lets :meth:`wait_for` see records arrive (``stats.counters.records_in``)."""
        self._notify()
        return record

    async def flush(self, batch: Batch) -> None:
        tp = batch.tp
        offsets = tuple(r.offset for r in batch.records)
        self.flush_calls.append((tp, batch.first_offset))
        self.flushing.add(tp)
        self._notify()
        try:
            key = (tp, self.ownerships.get(tp, 0), batch.first_offset)
            for gate in (self.blocked.get(tp), self.blocked_batches.get(key)):
                if gate is not None:
                    await gate.wait()
            if self.fail_from is not None and batch.first_offset >= self.fail_from:
                raise FlushFailedError(f"{tp} {offsets}")
        except anyio.get_cancelled_exc_class():
            self.cancelled_flushes.append((tp, offsets))
            raise
        finally:
            self.flushing.discard(tp)
            self._notify()
        self.flushed.append(
            Flushed(tp, offsets, self.generation.generation_id, self.ownerships.get(tp, 0))
        )
        self._notify()

    async def revoke_action(self, batch: Batch, deadline: float) -> RevokeAction:
        self.revoked.append((batch.tp, tuple(r.offset for r in batch.records)))
        self._notify()
        return self.revoke_choice

    async def on_partitions_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        if self.assign_probe is not None:
            self.assign_probe(partitions)
        for tp in partitions:
            self.ownerships[tp] = self.ownerships.get(tp, 0) + 1
        self.assigned.append((self.generation.generation_id, partitions))
        self._notify()

    async def on_partitions_lost(self, partitions: frozenset[TopicPartition]) -> None:
        self.lost.append(partitions)
        self._notify()


class HookedTransport(ScriptedTransport):
    """A scripted transport that calls ``on_answer`` with each answer's log entry just before
    the member sees the answer (no task switch in between)."""

    def __init__(self, coordinator: ScriptedCoordinator) -> None:
        super().__init__(coordinator)
        self.on_answer: Callable[[Logged], object] | None = None

    async def send(self, node_id: int, request: Any, *, coordination: bool) -> Any:
        response = await super().send(node_id, request, coordination=coordination)
        if self.on_answer is not None:
            self.on_answer(self.coordinator.log[-1])
        return response


async def start(tg: anyio.abc.TaskGroup, service: Service, clients: ScriptedClients) -> None:
    """Run ``service`` in ``tg``; returns once its first assignment is applied."""
    await tg.start(partial(service.run, handle_signals=False, clients=clients))


def commits_of(coord: ScriptedCoordinator, tp: TopicPartition) -> list[tuple[int, str, int]]:
    """(generation, member id, offset) of every accepted commit of ``tp``."""
    return [(c.generation, c.member_id, c.offsets[tp]) for c in coord.commits if tp in c.offsets]


def assert_commits_within_flushed(
    coord: ScriptedCoordinator, tp: TopicPartition, *services: Service
) -> None:
    """No accepted commit of ``tp`` is past a record some member did not flush."""
    flushed = {o for s in services for o in s.offsets(tp)}
    for generation, member, offset in commits_of(coord, tp):
        missing = set(range(offset)) - flushed
        assert not missing, f"commit {offset} of {tp} (gen {generation}, {member}) covers {missing}"


# ---------------------------------------------------------------------- 1. revoke -----
@pytest.mark.parametrize("case", ["flush_completes", "flush_overruns"])
async def test_rebalance_in_the_middle_of_a_flush(case: str) -> None:
    """A's flush of p is in flight when B joins and the leader revokes p from A: the revoke
    waits for it until the deadline; a completed flush is committed under the revoke's
    generation before B gets p, an overrun one is cancelled and never committed; B starts at
    the committed offset and p never has two owners."""
    coord = ScriptedCoordinator({"t": 2})
    fa = ScriptedFetcher()
    fb = ScriptedFetcher()
    fb.logs = fa.logs  # one topic, two members' fetchers
    # Batches are cut by age, so records can arrive behind a batch whose flush is in flight.
    a = Service("a", batch_max_records=100, batch_max_age_ms=50)
    b = Service("b", batch_max_records=100, batch_max_age_ms=50)
    a.revoke_choice = RevokeAction.DISCARD
    a.blocked = {P0: anyio.Event(), P1: anyio.Event()}
    seen_at_b_gain: list[tuple[TopicPartition, bool, bool, dict[TopicPartition, int], int]] = []

    def b_gains(partitions: frozenset[TopicPartition]) -> None:
        for tp in partitions:
            seen_at_b_gain.append(
                (tp, tp in a.assignment, tp in a.flushing, dict(coord.committed), coord.generation)
            )

    b.assign_probe = b_gains
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fa))
            a_member = a.generation.member_id
            assert a.assignment == {P0, P1}
            for tp in (P0, P1):
                fa.append_many(tp, 5)
            await a.wait_for(lambda: a.flushing == {P0, P1})
            for tp in (P0, P1):  # buffered behind the in-flight flush
                fa.append_many(tp, 3)
            await a.wait_for(lambda: a.stats.counters.records_in == 16)

            await start(tg, b, ScriptedClients(coord.transport(), fb))
            # The generation in which A gives p up (B gets it only in a later one).
            revoke_gen = coord.generation
            moved = {P0, P1} - coord.assignment_of(a_member)
            assert len(moved) == 1, f"expected one partition to move, A keeps {a.assignment}"
            (p,) = moved
            (q,) = {P0, P1} - moved
            a.blocked[q].set()
            await coord.wait_until(
                lambda: (
                    a.membership is not None
                    and a.membership.state is MemberState.ASSIGNING
                    and a.generation.generation_id == revoke_gen
                )
            )
            assert p in a.flushing, "A's flush of p should still be in flight during the revoke"
            if case == "flush_completes":
                a.blocked[p].set()
            await b.wait_for(lambda: p in b.assignment and len(b.offsets(p)) >= 8 - first_b(case))
            await a.wait_for(lambda: a.offsets(q) == list(range(8)))
            await coord.wait_until(lambda: coord.committed.get(q) == 8)
            tg.cancel_scope.cancel()

    # p had one owner at a time: when B gained it, A no longer owned it nor flushed it.
    ((_, a_owned, a_flushing, committed_then, gain_gen),) = [s for s in seen_at_b_gain if s[0] == p]
    assert (a_owned, a_flushing) == (False, False)
    assert gain_gen > revoke_gen
    if case == "flush_completes":
        # The in-flight batch finished within the deadline: committed by A under the revoke's
        # generation, before B gained p; the buffered rest was discarded, never committed.
        assert a.offsets(p) == [0, 1, 2, 3, 4]
        assert a.revoked == [(p, (5, 6, 7))]
        assert [c for c in commits_of(coord, p) if c[1] == a_member] == [(revoke_gen, a_member, 5)]
        assert committed_then.get(p) == 5
        assert a.stats.counters.revoke_overrun == 0
    else:
        # The flush outlived the revoke deadline: cancelled, counted as discarded, and nothing
        # of A's ownership was committed; B starts from the beginning.
        assert a.offsets(p) == []
        assert a.cancelled_flushes == [(p, (0, 1, 2, 3, 4))]
        assert a.stats.counters.revoke_overrun == 1
        assert p not in committed_then
        assert all(member != a_member for _, member, _ in commits_of(coord, p))
    assert b.offsets(p) == list(range(first_b(case), 8))
    assert_commits_within_flushed(coord, p, a, b)
    assert_commits_within_flushed(coord, q, a, b)


def first_b(case: str) -> int:
    """First offset of p the new owner reads in :func:`test_rebalance_in_the_middle_of_a_flush`."""
    return 5 if case == "flush_completes" else 0


# ---------------------------------------------------------------------- 2. loss -------
@pytest.mark.parametrize(
    "code",
    [
        pytest.param(ILLEGAL_GENERATION, id="illegal_generation"),
        # The coordinator keeps the old member id until the round's deadline: ~1.5 s slower.
        pytest.param(UNKNOWN_MEMBER_ID, id="unknown_member_id"),
    ],
)
async def test_records_after_loss_are_not_processed_under_the_lost_ownership(code: int) -> None:
    """Chaos regression "records processed after loss": once a heartbeat says the generation
    is gone, records appended to the partition are never flushed (nor committed) under the
    lost ownership; after the rejoin they are flushed and committed under the new one."""
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    transport = HookedTransport(coord)
    a = Service("a", batch_max_records=2, batch_max_age_ms=20)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(transport, fetcher))
            first_gen = a.generation.generation_id
            fetcher.append_many(P0, 4)
            await coord.wait_until(lambda: coord.committed.get(P0) == 4)
            assert a.offsets(P0) == [0, 1, 2, 3]

            joins = coord.gate("join")
            # Offsets 4..6 arrive the moment the heartbeat answer reaches the member, before
            # the engine marks the generation lost and long before the loss callback releases
            # the partition: the fetcher still serves it, so this is the race's window.
            transport.on_answer = lambda logged: (
                fetcher.append_many(P0, 3) if logged.api == "heartbeat" and logged.error else None
            )
            coord.fail("heartbeat", code)
            await joins.arrived.wait()  # the loss was handled; the rejoin is held
            transport.on_answer = None
            assert fetcher.position(P0) == 7, "the fetcher should have served 4..6 in the window"
            fetcher.append_many(P0, 3)  # offsets 7..9: while not in any generation
            assert a.lost == [frozenset({P0})]
            # Fetched in the window, but not buffered for the lost ownership.
            assert a.stats.counters.records_in == 4
            assert a.assignment == frozenset()
            assert P0 not in fetcher.owned
            assert a.offsets(P0) == [0, 1, 2, 3]
            assert max(c.offsets.get(P0, 0) for c in coord.commits) == 4

            joins.release()
            await coord.wait_until(lambda: coord.committed.get(P0) == 10)
            tg.cancel_scope.cancel()

    new_gen = coord.generation
    assert new_gen > first_gen
    assert a.ownerships[P0] == 2
    for f in a.flushed:
        if max(f.offsets) >= 4:
            assert (f.ownership, f.generation) == (2, new_gen), f
    assert sorted(set(a.offsets(P0))) == list(range(10))
    assert [o for f in a.flushed if f.ownership == 1 for o in f.offsets] == [0, 1, 2, 3]
    # The lost ownership committed nothing past what it flushed before the loss (4); every
    # later commit is the new generation's.
    for generation, _, offset in commits_of(coord, P0):
        assert generation in (first_gen, new_gen)
        if generation == first_gen:
            assert offset <= 4
    assert commits_of(coord, P0)[-1][::2] == (new_gen, 10)
    assert_commits_within_flushed(coord, P0, a)


# ---------------------------------------------------------------------- 3. fencing ----
async def test_commit_held_across_a_generation_change_is_fenced() -> None:
    """Chaos regression "commit crossing generations": A's commit of 10 waits at the
    coordinator while A's generation is lost and the partition regained; the held commit is
    refused (ILLEGAL_GENERATION) instead of landing in the new generation for the old
    ownership, nothing is committed while the new ownership has flushed nothing, and what is
    finally committed is what the new ownership flushed."""
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    a = Service("a", batch_max_records=10)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher))
            member, first_gen = a.generation.member_id, a.generation.generation_id
            commits = coord.gate("commit")
            fetcher.append_many(P0, 10)
            await commits.arrived.wait()  # commit of 10 under the first generation, held
            assert a.offsets(P0) == list(range(10))

            new_flush = a.blocked_batches[(P0, 2, 0)] = anyio.Event()
            coord.fail("heartbeat", ILLEGAL_GENERATION)
            # Lost and regained; nothing was committed, so 0..9 are read and flushed again.
            await a.wait_for(lambda: a.ownerships.get(P0) == 2 and P0 in a.flushing)
            new_gen = a.generation.generation_id
            assert new_gen > first_gen
            assert a.lost == [frozenset({P0})]

            commits.release()
            await coord.wait_until(lambda: bool(coord.received("commit", ILLEGAL_GENERATION)))
            # Nothing lands for the new ownership before it flushed (two heartbeats later).
            heartbeats = len(coord.received("heartbeat"))
            await coord.wait_until(lambda: len(coord.received("heartbeat")) > heartbeats + 1)
            assert P0 not in coord.committed
            assert coord.commits == []

            new_flush.set()
            await coord.wait_until(lambda: coord.committed.get(P0) == 10)
            tg.cancel_scope.cancel()

    (refused,) = coord.received("commit", ILLEGAL_GENERATION)
    assert refused.fields["generation_id"] == first_gen
    # Only the new ownership's commit landed, under the new generation, after its flush.
    assert commits_of(coord, P0) == [(new_gen, member, 10)]
    assert [(f.ownership, f.offsets) for f in a.flushed] == [
        (1, tuple(range(10))),
        (2, tuple(range(10))),
    ]
    assert a.stats.counters.commits_fenced == 1
    assert_commits_within_flushed(coord, P0, a)


# ---------------------------------------------------------------------- 4. retry ------
async def test_commit_answered_rebalance_in_progress_is_retried_under_next_generation() -> None:
    """REBALANCE_IN_PROGRESS on a commit: the member rejoins and the committer's commit is
    made under the next generation, at last flushed offset + 1."""
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    a = Service("a")
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher))
            member, first_gen = a.generation.member_id, a.generation.generation_id
            coord.fail("commit", REBALANCE_IN_PROGRESS)
            fetcher.append_many(P0, 5)
            await coord.wait_until(lambda: coord.committed.get(P0) == 5)
            tg.cancel_scope.cancel()

    (refused,) = coord.received("commit", REBALANCE_IN_PROGRESS)
    assert refused.fields["generation_id"] == first_gen
    assert a.offsets(P0) == [0, 1, 2, 3, 4]
    assert commits_of(coord, P0) == [(first_gen + 1, member, a.offsets(P0)[-1] + 1)]
    # Never lost while running (the cancellation at the end hands P0 to on_partitions_lost).
    assert a.stats.counters.partitions_lost == 0
    assert a.ownerships == {P0: 1}


# ---------------------------------------------------------------------- 5. failures ---
async def test_failed_flush_is_dead_lettered_and_committed_past() -> None:
    """flush_failure_policy=dead_letter: a batch whose flush fails after every retry goes to
    the dead-letter sink and the offset is committed past it; the member stays healthy."""
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    sink = ScriptedDeadLetterSink("dlq")
    a = Service("a", flush_failure_policy="dead_letter", dead_letter_topic="dlq")
    a.fail_from = 5
    clients = ScriptedClients(coord.transport(), fetcher, sink)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, clients)
            fetcher.append_many(P0, 10)
            await coord.wait_until(lambda: coord.committed.get(P0) == 10)
            tg.cancel_scope.cancel()

    assert a.offsets(P0) == [0, 1, 2, 3, 4]
    assert a.flush_calls == [(P0, 0), (P0, 5), (P0, 5)]  # 2 attempts
    (sent,) = sink.sent
    assert [r.offset for r in sent.batch.records] == [5, 6, 7, 8, 9]
    assert isinstance(sent.error, FlushFailedError)
    assert sent.attempts == 2
    assert sink.started
    assert sink.stopped
    assert [o for _, _, o in commits_of(coord, P0)] == [5, 10]
    assert a.healthy
    assert a.stats.counters.records_dead_lettered == 5


async def test_failed_flush_stops_the_partition_and_is_never_committed_past() -> None:
    """flush_failure_policy=stop_partition: after the last retry the partition stops, nothing
    is committed past the failed batch (nor past records behind it), and the member reports
    itself unhealthy."""
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    a = Service("a", flush_failure_policy="stop_partition")
    a.fail_from = 5
    clients = ScriptedClients(coord.transport(), fetcher)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, clients)
            fetcher.append_many(P0, 5)
            await coord.wait_until(lambda: coord.committed.get(P0) == 5)
            fetcher.append_many(P0, 7)
            await a.wait_for(lambda: not a.healthy)
            # Any commit the stop could have asked for has been made by the next heartbeat.
            heartbeats = len(coord.received("heartbeat"))
            await coord.wait_until(lambda: len(coord.received("heartbeat")) > heartbeats + 1)
            tg.cancel_scope.cancel()

    assert a.offsets(P0) == [0, 1, 2, 3, 4]
    assert a.flush_calls == [(P0, 0), (P0, 5), (P0, 5)]
    assert clients.scripted_dead_letter is None
    assert coord.committed == {P0: 5}
    assert [o for _, _, o in commits_of(coord, P0)] == [5]
    assert a.stats.stopped_partitions == {P0}
    assert not a.healthy


# ------------------------------------------------------------------- 6. memory -----
class CountingFetcher(ScriptedFetcher):
    """A scripted fetcher that notes the ``max_records`` of every fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int | None] = []

    async def fetch(self, timeout_ms: int, max_records: int | None = None) -> dict[Any, Any]:
        self.asked.append(max_records)
        return await super().fetch(timeout_ms, max_records)


async def test_a_backlog_of_tiny_records_stays_within_the_partition_cost() -> None:
    """Records far smaller than their object overhead: with the flush blocked, the partition
    fills up to a batch and then pauses, and what one fetch lands on top stays within the
    fetch reserve of the advertised cost (without the per-fetch cap one scripted fetch would
    bring 500 records, 40 times the reserve's overhead)."""
    coord = ScriptedCoordinator({"t": 1})
    fetcher = CountingFetcher()
    a = Service("a", batch_max_bytes=100, max_partition_fetch_bytes=4096)
    settings = a.settings
    assert settings.fetch_max_records == 4096 // 384
    gate = a.blocked[P0] = anyio.Event()
    clients = ScriptedClients(coord.transport(), fetcher)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, clients)
            fetcher.append_many(P0, 2000, size=1)
            await a.wait_for(lambda: P0 in a.flushing and P0 in fetcher.held)
            held = a._ledger.held(P0)
            gate.set()
            await coord.wait_until(lambda: coord.committed.get(P0) == 2000)
            tg.cancel_scope.cancel()

    assert 0 < held <= settings.partition_cost_bytes, (held, settings.partition_cost_bytes)
    assert set(fetcher.asked) == {settings.fetch_max_records}
    assert a.offsets(P0) == list(range(2000))


async def test_stats_name_the_offsets_the_coordinator_acknowledged() -> None:
    """``stats.committed_offsets``: the starting offset before any commit, then each commit
    once acknowledged, never an offset past an unflushed record."""
    coord = ScriptedCoordinator({"t": 2})
    fetcher = ScriptedFetcher()
    a = Service("a", batch_max_records=3, batch_max_age_ms=30_000)
    a.blocked = {P1: anyio.Event()}
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher))
            assert a.stats.committed_offsets == {P0: 0, P1: 0}
            fetcher.append_many(P0, 6)
            fetcher.append_many(P1, 3)
            await coord.wait_until(lambda: a.stats.committed_offsets.get(P0) == 6)
            assert coord.committed[P0] == 6
            # P1's only batch is still flushing: nothing of it is reported committed.
            assert P1 in a.flushing
            assert a.stats.committed_offsets[P1] == 0
            a.blocked[P1].set()
            await coord.wait_until(lambda: a.stats.committed_offsets.get(P1) == 3)
            assert coord.committed[P1] == 3
            tg.cancel_scope.cancel()
