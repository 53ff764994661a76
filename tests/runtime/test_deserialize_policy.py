"""Poison records and the generation-loss findings, on the scripted seam (no broker, no fixed
sleeps): a whole :class:`BatchingConsumer` against the scripted coordinator and fetcher.

- ``deserialize_failure_policy``: a record ``deserialize`` raises on never crashes the member;
  it stops its partition there, goes raw to the dead-letter sink, or is skipped;
- ``deserialize`` returning None skips a record (its offset is committed, also at the end);
- decoded values reach ``flush`` (``BatchingConsumer[T]``, ``with_value``);
- a member whose generation is lost makes no ``flush`` call before the loss is delivered;
- ``offsets_committed`` names the generation the commit was really made under.

``test_poison_records.py`` is the proof against a real broker.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest
from structlog.testing import capture_logs

from capgroup import Batch, BatchingConsumer, Record, TopicPartition
from capgroup.membership.model import AssignmentChange
from capgroup.runtime.batch import (
    BatchLimits,
    FlushReason,
    PartitionBuffer,
    make_record,
    with_value,
)
from capgroup.runtime.offsets import BatchOutcome, CommitTracker
from capgroup.runtime.retry import UndecodableRecordError, dead_letter_records
from capgroup.settings import SettingsError, load_settings
from tests.scripted import ScriptedCoordinator
from tests.scripted.coordinator import ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS
from tests.scripted.runtime_clients import ScriptedClients, ScriptedDeadLetterSink, ScriptedFetcher

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

P0, P1 = TopicPartition("t", 0), TopicPartition("t", 1)
GUARD = 10  # seconds any single test step may take
POISON = b"not json"

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
    "flush_retry_initial_ms": 1,
    "flush_retry_max_ms": 2,
    "flush_retry_max_attempts": 2,
}


class DecodeError(ValueError):
    """What the test service's ``deserialize`` raises on a poison record."""


class JsonService(BatchingConsumer[dict[str, int]]):
    """Decodes JSON values (a dict reaches ``flush``); ``POISON`` does not decode, and values
    listed in ``filtered`` are skipped on purpose (``deserialize`` returns None)."""

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**(BASE | overrides))
        self.flushed: list[tuple[TopicPartition, int, dict[str, int]]] = []
        self.flush_calls: list[tuple[TopicPartition, int]] = []
        self.filtered: set[bytes] = set()
        self._changed = anyio.Event()

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds: re-checked after each hook call, and every 10 ms
        for what no hook sees (a batch settled, a partition stopped)."""
        while not predicate():
            with anyio.move_on_after(0.01):
                await self._changed.wait()

    def deserialize(self, record: Record) -> Record[dict[str, int]] | None:
        self._notify()
        if record.value in self.filtered:
            return None
        if record.value == POISON:
            raise DecodeError(f"cannot decode {record.value!r}")
        value: dict[str, int] = json.loads(record.value or b"{}")
        return with_value(record, value)

    async def flush(self, batch: Batch[dict[str, int]]) -> None:
        self.flush_calls.append((batch.tp, batch.first_offset))
        for record in batch:
            assert record.value is not None
            self.flushed.append((batch.tp, record.offset, record.value))
        self._notify()

    def offsets(self, tp: TopicPartition) -> list[int]:
        return [o for t, o, _ in self.flushed if t == tp]


def fill(fetcher: ScriptedFetcher, tp: TopicPartition, count: int, poison: set[int]) -> None:
    """Append ``count`` records to ``tp``: JSON ``{"n": i}``, or ``POISON`` at ``poison``."""
    for i in range(count):
        value = POISON if i in poison else json.dumps({"n": i}).encode()
        fetcher.append(tp, value, key=f"k{i}".encode(), headers=[("trace", f"t{i}".encode())])


async def start(
    tg: anyio.abc.TaskGroup, service: BatchingConsumer[Any], clients: ScriptedClients
) -> None:
    await tg.start(partial(service.run, handle_signals=False, clients=clients))


async def settle_heartbeats(coord: ScriptedCoordinator) -> None:
    """Two more heartbeats: any commit asked for before has been made by then."""
    heartbeats = len(coord.received("heartbeat"))
    await coord.wait_until(lambda: len(coord.received("heartbeat")) > heartbeats + 1)


def undecodable_events(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == "record_undecodable"]


# ---------------------------------------------------------------------- settings ------
def test_dead_letter_policy_requires_the_topic() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(**BASE, deserialize_failure_policy="dead_letter")
    assert "CAPGROUP_DEAD_LETTER_TOPIC" in str(caught.value)
    assert "CAPGROUP_DESERIALIZE_FAILURE_POLICY" in str(caught.value)
    assert load_settings(**BASE).deserialize_failure_policy == "stop_partition"
    with pytest.raises(SettingsError, match="deserialize_failure_policy"):
        load_settings(**BASE, deserialize_failure_policy="ignore")


# ---------------------------------------------------------------------- policies ------
async def test_stop_partition_stops_at_the_poison_record_and_keeps_the_rest() -> None:
    """Default policy: P0 flushes and commits 0..4, stops at 5 and commits nothing past it;
    P1 is consumed and committed to its end; the member stays in the group, unhealthy, and
    names the stopped partition and offset."""
    coord = ScriptedCoordinator({"t": 2})
    fetcher = ScriptedFetcher()
    a = JsonService()
    with capture_logs() as logs, anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher))
            fill(fetcher, P0, 10, poison={5})
            fill(fetcher, P1, 10, poison=set())
            await coord.wait_until(
                lambda: coord.committed.get(P0) == 5 and coord.committed.get(P1) == 10
            )
            await a.wait_for(lambda: not a.healthy)
            fill(fetcher, P1, 5, poison=set())  # P1 keeps flowing after P0 stopped
            await coord.wait_until(lambda: coord.committed.get(P1) == 15)
            await settle_heartbeats(coord)
            stats = a.stats
            tg.cancel_scope.cancel()

    assert a.offsets(P0) == [0, 1, 2, 3, 4]
    assert a.offsets(P1) == list(range(15))
    assert all(isinstance(v, dict) for _, _, v in a.flushed)
    assert max(c.offsets[P0] for c in coord.commits if P0 in c.offsets) == 5
    assert stats.stopped_partitions == frozenset({P0})
    assert stats.stopped[P0].reason == "undecodable_record"
    assert stats.stopped[P0].offset == 5
    assert stats.counters.records_undecodable == 1
    assert stats.counters.records_skipped == 0
    (event,) = undecodable_events(logs)
    assert event["topic"] == "t"
    assert event["partition"] == 0
    assert event["offset"] == 5
    assert event["policy"] == "stop_partition"
    assert event["error_type"].endswith("DecodeError")
    (stopped,) = [e for e in logs if e["event"] == "partition_stopped"]
    assert (stopped["reason"], stopped["offset"]) == ("undecodable_record", 5)


async def test_dead_letter_sends_the_raw_record_and_commits_past_it() -> None:
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    sink = ScriptedDeadLetterSink("dlq")
    a = JsonService(
        deserialize_failure_policy="dead_letter", dead_letter_topic="dlq", batch_max_age_ms=50
    )
    with capture_logs() as logs, anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher, sink))
            fill(fetcher, P0, 12, poison={3, 7})
            await coord.wait_until(lambda: coord.committed.get(P0) == 12)
            tg.cancel_scope.cancel()

    assert a.offsets(P0) == [o for o in range(12) if o not in (3, 7)]
    # Raw records, in offset order, each on its own, with what deserialize raised.
    assert [(s.batch.first_offset, len(s.batch)) for s in sink.sent] == [(3, 1), (7, 1)]
    raw = sink.sent[0].batch.records[0]
    assert (raw.key, raw.value, list(raw.headers)) == (b"k3", POISON, [("trace", b"t3")])
    error = sink.sent[0].error
    assert isinstance(error, UndecodableRecordError)
    assert isinstance(error.error, DecodeError)
    # Nothing was committed past a record before it was flushed or dead-lettered.
    for commit in coord.commits:
        assert set(range(commit.offsets[P0])) <= set(a.offsets(P0)) | {3, 7}
    assert a.healthy
    counters = a.stats.counters
    assert (counters.records_undecodable, counters.records_dead_lettered) == (2, 2)
    assert [e["offset"] for e in undecodable_events(logs)] == [3, 7]
    assert {e["policy"] for e in undecodable_events(logs)} == {"dead_letter"}


async def test_dead_letter_failure_stops_the_partition_at_the_record() -> None:
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    sink = ScriptedDeadLetterSink("dlq")
    sink.always_fail = True
    a = JsonService(deserialize_failure_policy="dead_letter", dead_letter_topic="dlq")
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher, sink))
            fill(fetcher, P0, 8, poison={5})
            await coord.wait_until(lambda: coord.committed.get(P0) == 5)
            await a.wait_for(lambda: not a.healthy)
            await settle_heartbeats(coord)
            stats = a.stats
            tg.cancel_scope.cancel()
    assert max(c.offsets[P0] for c in coord.commits) == 5
    assert stats.stopped[P0].offset == 5
    assert sink.attempts == 2  # flush_retry_max_attempts


async def test_skip_counts_logs_and_commits_past_the_record() -> None:
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    a = JsonService(deserialize_failure_policy="skip", batch_max_age_ms=50)
    with capture_logs() as logs, anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher))
            fill(fetcher, P0, 10, poison={5, 9})  # the last record too
            await coord.wait_until(lambda: coord.committed.get(P0) == 10)
            tg.cancel_scope.cancel()
    assert a.offsets(P0) == [0, 1, 2, 3, 4, 6, 7, 8]
    counters = a.stats.counters
    assert (counters.records_undecodable, counters.records_skipped) == (2, 2)
    assert [(e["offset"], e["policy"]) for e in undecodable_events(logs)] == [
        (5, "skip"),
        (9, "skip"),
    ]
    assert a.healthy


async def test_deserialize_returning_none_skips_the_record() -> None:
    """None is a filter: counted, not logged, never flushed, and committed past, also when
    the skipped records end the partition."""
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    a = JsonService(batch_max_age_ms=50)
    a.filtered = {json.dumps({"n": i}).encode() for i in (0, 4, 8, 9)}
    with capture_logs() as logs, anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher))
            fill(fetcher, P0, 10, poison=set())
            await coord.wait_until(lambda: coord.committed.get(P0) == 10)
            tg.cancel_scope.cancel()
    assert a.offsets(P0) == [1, 2, 3, 5, 6, 7]
    assert a.stats.counters.records_skipped == 4
    assert a.stats.counters.records_undecodable == 0
    assert undecodable_events(logs) == []
    assert a.healthy


def test_dead_letter_headers_name_the_deserialize_failure() -> None:
    raw = make_record("t", 3, 41, 1_000, b"k", POISON, (("trace", b"x"),))
    batch = Batch.of(TopicPartition("t", 3), [raw], started_at=0.0)
    (out,) = dead_letter_records(
        batch,
        topic="dlq",
        error=UndecodableRecordError(DecodeError("bad")),
        attempts=1,
        member_id="m",
        failed_at_ms=5,
    )
    assert (out.key, out.value, out.timestamp_ms) == (b"k", POISON, 1_000)
    assert out.headers[0] == ("trace", b"x")
    ours = dict(out.headers[1:])
    p = "capgroup.dlq."
    assert ours[p + "stage"] == b"deserialize"
    assert ours[p + "error.type"] == f"{__name__}.DecodeError".encode()
    assert ours[p + "error.message"] == b"bad"
    assert (ours[p + "origin.topic"], ours[p + "origin.partition"]) == (b"t", b"3")
    assert ours[p + "origin.offset"] == b"41"


# ---------------------------------------------------------------------- chaos findings
class _LossGate:
    """Holds the delivery of a loss to the runtime (the engine has marked the generation lost
    but its manage loop has not yet called the listener): the window of the chaos finding."""

    def __init__(self, consumer: BatchingConsumer[Any]) -> None:
        ownership = consumer._rt.ownership
        self._deliver: Callable[[AssignmentChange], Awaitable[None]] = ownership.on_partitions_lost
        self.arrived = anyio.Event()
        self.opened = anyio.Event()
        ownership.on_partitions_lost = self._held  # type: ignore[method-assign]

    async def _held(self, change: AssignmentChange) -> None:
        self.arrived.set()
        await self.opened.wait()
        await self._deliver(change)


async def test_no_flush_after_the_generation_is_lost_before_the_loss_is_delivered() -> None:
    """Chaos finding "a frozen member flushes after its partitions are gone": with the
    generation lost and the loss not yet delivered, a due buffer is not cut and ``flush`` is
    not called; the loss then drops the buffer, and the regained partition is flushed under
    the new generation only."""
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    a = JsonService(batch_max_records=100)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher))
            first_gen = a.generation.generation_id
            fill(fetcher, P0, 3, poison=set())
            await a.wait_for(lambda: a.stats.counters.records_in == 3)
            gate = _LossGate(a)
            joins = coord.gate("join")
            coord.fail("heartbeat", ILLEGAL_GENERATION)
            await gate.arrived.wait()
            assert not a.generation.valid
            # The buffer becomes due now (as an age limit or memory pressure would make it).
            state = a._partitions[P0]
            state.force = FlushReason.MEMORY_PRESSURE
            state.poke()
            with anyio.move_on_after(0.3):  # several of the worker's looks; nothing happens
                await a.wait_for(lambda: bool(a.flush_calls))
            assert a.flush_calls == []
            assert len(state.buffer) == 3
            gate.opened.set()
            await joins.arrived.wait()  # the loss was delivered; the rejoin is held
            assert a.stats.counters.records_discarded == 3
            joins.release()
            await a.wait_for(lambda: a.generation.valid and a.assignment == {P0})
            await a.wait_for(lambda: a.stats.counters.records_in == 6)
            a.stop()  # the shutdown flushes the regained buffer and commits it
    assert coord.committed.get(P0) == 3
    assert coord.generation > first_gen
    assert a.flush_calls == [(P0, 0)]  # once, by the new ownership
    assert a.offsets(P0) == [0, 1, 2]
    assert {c.generation for c in coord.commits} == {coord.generation}


async def test_no_flush_retry_after_the_generation_is_lost() -> None:
    """A flush that failed is not retried once the generation is lost: the batch counts as
    discarded and nothing is committed for it."""
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    failing = anyio.Event()
    release = anyio.Event()

    class Failing(JsonService):
        async def flush(self, batch: Batch[dict[str, int]]) -> None:
            self.flush_calls.append((batch.tp, batch.first_offset))
            if len(self.flush_calls) == 1:
                failing.set()
                await release.wait()
                raise RuntimeError("first attempt fails")
            await super().flush(batch)

    a = Failing(flush_retry_max_attempts=5, flush_retry_initial_ms=1)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher))
            fill(fetcher, P0, 5, poison=set())
            await failing.wait()
            gate = _LossGate(a)
            joins = coord.gate("join")
            coord.fail("heartbeat", ILLEGAL_GENERATION)
            await gate.arrived.wait()
            release.set()  # the first attempt fails now; the retry must not call flush
            await a.wait_for(lambda: a.stats.counters.batches_discarded == 1)
            assert a.flush_calls == [(P0, 0)]
            gate.opened.set()
            await joins.arrived.wait()
            assert a.flush_calls == [(P0, 0)]
            assert coord.commits == []
            tg.cancel_scope.cancel()
    assert a.stats.counters.flush_failures == 0


async def test_offsets_committed_names_the_generation_the_commit_was_made_under() -> None:
    """Chaos finding: REBALANCE_IN_PROGRESS on the commit; the commit waits out the rebalance
    and lands under the next generation, which is what ``offsets_committed`` names."""
    coord = ScriptedCoordinator({"t": 1})
    fetcher = ScriptedFetcher()
    a = JsonService()
    with capture_logs() as logs, anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await start(tg, a, ScriptedClients(coord.transport(), fetcher))
            first_gen = a.generation.generation_id
            coord.fail("commit", REBALANCE_IN_PROGRESS)
            fill(fetcher, P0, 5, poison=set())
            await coord.wait_until(lambda: coord.committed.get(P0) == 5)
            tg.cancel_scope.cancel()
    (commit,) = coord.commits
    assert commit.generation == first_gen + 1
    (event,) = [e for e in logs if e["event"] == "offsets_committed"]
    assert event["generation"] == commit.generation
    assert event["offsets"] == {"t-0": 5}


# ---------------------------------------------------------------------- pure parts ----
def test_buffer_cuts_up_to_an_undecodable_record_and_then_it_alone() -> None:
    buffer = PartitionBuffer(P0, BatchLimits(max_records=100, max_bytes=1 << 20, max_age=60.0))
    records = [make_record("t", 0, o, 0, None, b"v%d" % o) for o in range(6)]
    buffer.extend(records[:2], 0.0)
    error = DecodeError("x")
    assert buffer.append_undecodable(records[2], 2, 0.0, error, halts=False)
    buffer.extend(records[3:], 0.0)
    assert len(buffer) == 6
    assert buffer.due(0.0) is None  # not halting: only the limits make it due
    assert buffer.head_undecodable() is None
    assert [r.offset for r in buffer.take(1.0)] == [0, 1]
    assert buffer.due(1.0) is FlushReason.UNDECODABLE
    batch, entry = buffer.take_undecodable(1.0)
    assert ([r.offset for r in batch], entry.error) == ([2], error)
    assert [r.offset for r in buffer.take_all(1.0)] == [3, 4, 5]
    assert not buffer


def test_a_halting_undecodable_record_makes_the_buffer_due_and_full() -> None:
    buffer = PartitionBuffer(P0, BatchLimits(max_records=100, max_bytes=1 << 20, max_age=60.0))
    buffer.extend([make_record("t", 0, 0, 0, None, b"a")], 0.0)
    buffer.append_undecodable(
        make_record("t", 0, 1, 0, None, POISON), 8, 0.0, DecodeError(), halts=True
    )
    assert buffer.is_full
    assert buffer.halted
    assert buffer.due(0.0) is FlushReason.UNDECODABLE
    assert [r.offset for r in buffer.take(0.0)] == [0]
    assert buffer.head_undecodable() is not None
    assert buffer.discard() == 8
    assert not buffer.halted


def test_tracker_commits_past_skipped_records_only_after_what_came_before() -> None:
    tracker = CommitTracker()
    epoch = tracker.assign(P0, 0)
    first = Batch.of(P0, [make_record("t", 0, o, 0) for o in range(3)], started_at=0.0)
    tracker.batch_cut(P0, epoch, first)
    assert not tracker.skip(P0, epoch, 3, after=2)  # 0..2 still in flight
    assert not tracker.skip(P0, epoch, 4, after=3)  # the same run
    assert tracker.committable(P0) == 0
    tracker.batch_settled(P0, epoch, first, BatchOutcome.FLUSHED)
    assert tracker.committable(P0) == 5
    assert tracker.skip(P0, epoch, 6, after=4)  # nothing pending: moves at once
    assert tracker.committable(P0) == 7
    # Never past a discarded batch.
    dropped = Batch.of(P0, [make_record("t", 0, 7, 0)], started_at=0.0)
    tracker.batch_cut(P0, epoch, dropped)
    tracker.batch_settled(P0, epoch, dropped, BatchOutcome.DISCARDED)
    assert not tracker.skip(P0, epoch, 8, after=7)
    assert tracker.committable(P0) == 7
