"""The flush path without a broker: worker cuts and flushes, retries, dead-letters or stops a
partition, and the revoke/shutdown drain with its decision and deadline."""

from __future__ import annotations

import math

import anyio
import pytest
from structlog.testing import capture_logs

from capgroup.runtime.batch import FlushReason
from capgroup.runtime.partition import PartitionState
from capgroup.runtime.policy import RevokeAction
from tests.runtime.parts import TP, Hooks, Parts, delivery, make_parts
from tests.scripted.runtime_clients import ScriptedDeadLetterSink

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def flush_once(parts: Parts, hooks: Hooks, sink: ScriptedDeadLetterSink | None) -> None:
    """Run the worker of a partition holding one full batch until that batch is settled."""
    state = parts.partitions[TP]
    runner = delivery(parts, hooks, sink)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.partition_worker, state)
            while True:
                await anyio.wait_all_tasks_blocked()
                if hooks.attempts and not state.flushing:
                    break
                await anyio.sleep(0.001)  # a retry backoff
            tg.cancel_scope.cancel()


async def test_the_worker_flushes_a_full_batch_and_frees_its_bytes() -> None:
    parts, hooks = make_parts(), Hooks()
    state = parts.own(TP)
    parts.buffer(state, 12)
    parts.backpressure.update_holds([state])
    assert parts.fetcher.held == {TP}
    with capture_logs() as logs:
        await flush_once(parts, hooks, None)
    assert [len(b) for b in hooks.flushed] == [10]
    assert parts.tracker.committable(TP) == 10
    assert hooks.commits == 1
    assert parts.fetcher.held == set(), "resumed once the batch was cut and settled"
    assert (parts.counters.batches_flushed, parts.counters.records_flushed) == (1, 10)
    assert parts.counters.bytes_flushed == 100
    assert len(state.buffer) == 2
    assert parts.ledger.total_bytes == parts.ledger.held(TP) > 0
    flushed = [e for e in logs if e["event"] == "batch_flushed"]
    assert [(e["reason"], e["generation"], e["records"]) for e in flushed] == [("records", 4, 10)]


async def test_a_batch_failing_every_retry_goes_to_the_dead_letter_sink() -> None:
    parts, hooks, sink = make_parts(), Hooks(fail=True), ScriptedDeadLetterSink("dlq")
    sink.failures = 1  # the sink is retried too
    state = parts.own(TP)
    parts.buffer(state, 10)
    with capture_logs() as logs:
        await flush_once(parts, hooks, sink)
    assert hooks.attempts == 2
    assert [(len(s.batch), s.attempts, s.member_id) for s in sink.sent] == [(10, 2, "member-1")]
    assert isinstance(sink.sent[0].error, OSError)
    assert parts.tracker.committable(TP) == 10, "dead-lettered counts as done"
    assert hooks.commits == 1
    assert (parts.counters.flush_retries, parts.counters.flush_failures) == (1, 1)
    assert parts.counters.records_dead_lettered == 10
    assert not state.stopped
    assert [e["event"] for e in logs if e["log_level"] != "info"] == [
        "flush_retry",
        "flush_failed",
        "batch_dead_lettered",
    ]


@pytest.mark.parametrize("with_sink", [False, True])
async def test_a_batch_that_cannot_be_flushed_or_dead_lettered_stops_its_partition(
    with_sink: bool,
) -> None:
    parts, hooks = make_parts(), Hooks(fail=True)
    sink = ScriptedDeadLetterSink() if with_sink else None
    if sink is not None:
        sink.always_fail = True
    state = parts.own(TP)
    parts.buffer(state, 13)
    with capture_logs() as logs:
        await flush_once(parts, hooks, sink)
    assert state.stopped
    assert parts.stopped == {TP}
    assert parts.fetcher.held == {TP}
    assert parts.tracker.committable(TP) == 0, "never committed past the failed batch"
    assert hooks.commits == 0
    assert parts.ledger.total_bytes == 0
    assert not state.buffer
    # The three records behind the batch, and the batch itself.
    assert (parts.counters.records_discarded, parts.counters.batches_discarded) == (13, 1)
    events = [e["event"] for e in logs if e["log_level"] == "error"]
    expected = ["flush_failed", "dead_letter_failed", "partition_stopped"]
    assert events == (expected if with_sink else [expected[0], expected[2]])


async def drained(parts: Parts, hooks: Hooks, deadline: float) -> PartitionState:
    """Drain the partition's buffer for a revoke, its worker idle as between batches."""
    state = parts.partitions[TP]
    runner = delivery(parts, hooks)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.partition_worker, state)
            await anyio.wait_all_tasks_blocked()
            await runner.drain(state, deadline, FlushReason.REVOKE)
    assert state.worker_done.is_set()
    return state


async def test_a_revoke_drain_flushes_everything_buffered_when_the_hook_says_so() -> None:
    parts, hooks = make_parts(), Hooks(action=RevokeAction.FLUSH)
    parts.buffer(parts.own(TP), 4)
    with capture_logs() as logs:
        await drained(parts, hooks, anyio.current_time() + 10)
    assert [len(b) for b in hooks.flushed] == [4]
    assert parts.tracker.committable(TP) == 4
    assert parts.counters.revoke_flush == 1
    decision = next(e for e in logs if e["event"] == "revoke_decision")
    assert (decision["action"], decision["records"]) == ("flush", 4)


@pytest.mark.parametrize("action", [RevokeAction.DISCARD, LookupError("hook bug")])
async def test_a_revoke_drain_discards_when_the_hook_says_so_or_fails(
    action: RevokeAction | Exception,
) -> None:
    parts, hooks = make_parts(), Hooks(action=action)
    parts.buffer(parts.own(TP), 4)
    await drained(parts, hooks, anyio.current_time() + 10)
    assert hooks.flushed == []
    assert parts.tracker.committable(TP) == 0
    assert parts.counters.revoke_discard == 1
    assert (parts.counters.batches_discarded, parts.counters.records_discarded) == (1, 4)
    assert parts.ledger.total_bytes == 0


async def test_a_revoke_flush_past_its_deadline_is_cancelled_and_discarded() -> None:
    parts, hooks = make_parts(), Hooks(block=True)
    parts.buffer(parts.own(TP), 4)
    with capture_logs() as logs:
        await drained(parts, hooks, anyio.current_time() + 0.05)
    assert parts.counters.revoke_overrun == 1
    assert parts.counters.batches_discarded == 1
    assert parts.tracker.committable(TP) == 0
    assert "revoke_flush_overrun" in [e["event"] for e in logs]


async def test_a_drain_runs_once_even_when_revoke_and_shutdown_both_ask() -> None:
    parts, hooks = make_parts(), Hooks()
    state = parts.own(TP)
    parts.buffer(state, 4)
    runner = delivery(parts, hooks)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.partition_worker, state)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(runner.drain, state, math.inf, FlushReason.REVOKE)
        tg.start_soon(runner.drain, state, math.inf, FlushReason.SHUTDOWN)
    assert [len(b) for b in hooks.flushed] == [4]
    assert hooks.attempts == 1
    assert parts.tracker.committable(TP) == 4
