"""Backpressure without a broker: per-partition holds and the global fetch hold, steered on a
scripted fetcher."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from capgroup.runtime.backpressure import Backpressure
from capgroup.runtime.memory import MemoryLedger
from capgroup.runtime.partition import footprint
from capgroup.runtime.stats import Counters
from tests.runtime.parts import OTHER, TP, make_parts

#: PartitionState holds anyio primitives, which need a running event loop.
pytestmark = pytest.mark.anyio


async def test_a_full_buffer_holds_its_partition_until_cut() -> None:
    parts = make_parts()
    state, other = parts.own(TP), parts.own(OTHER)
    parts.buffer(state, 10)
    parts.buffer(other, 3)
    with capture_logs() as logs:
        parts.backpressure.update_holds([state, other])
        parts.backpressure.update_holds([state, other])  # no change: nothing happens twice
    assert parts.fetcher.held == {TP}
    assert (state.held, other.held) == (True, False)
    assert parts.counters.partition_pauses == 1
    assert [(e["event"], e.get("partitions")) for e in logs] == [
        ("partitions_paused", ["events-0"])
    ]
    batch = state.buffer.take(0.0)
    parts.ledger.release(TP, footprint(batch.size_bytes, len(batch)))
    with capture_logs() as logs:
        parts.backpressure.update_holds([state])
    assert parts.fetcher.held == set()
    assert not state.held
    assert [e["event"] for e in logs] == ["partitions_resumed"]


async def test_a_partition_over_its_ledger_share_or_stopped_is_held() -> None:
    parts = make_parts(partition_limit_bytes=footprint(30, 3))
    over, stopped = parts.own(TP), parts.own(OTHER)
    parts.buffer(over, 3)
    stopped.stopped = True
    parts.backpressure.update_holds([over, stopped])
    assert parts.fetcher.held == {TP, OTHER}
    assert parts.counters.partition_pauses == 2


async def test_a_finished_ownership_is_left_alone() -> None:
    parts = make_parts()
    old = parts.own(TP)
    parts.buffer(old, 10)
    parts.own(TP)  # a new ownership of the same partition replaced it
    parts.backpressure.update_holds([old])
    assert parts.fetcher.held == set()
    assert not old.held


async def test_all_fetching_is_held_at_the_budget_and_resumed_below_it() -> None:
    parts = make_parts(budget_bytes=footprint(100, 10))
    state = parts.own(TP)
    parts.buffer(state, 9)
    parts.backpressure.update_holds([state])
    assert not parts.fetcher.held_all
    parts.buffer(state, 1)
    with capture_logs() as logs:
        parts.backpressure.update_holds([state])
    assert parts.fetcher.held_all
    assert parts.backpressure.held_all
    assert parts.counters.budget_pauses == 1
    paused = next(e for e in logs if e["event"] == "fetch_paused")
    assert (paused["reason"], paused["buffered_bytes"]) == ("budget", footprint(100, 10))
    assert paused["budget_bytes"] == footprint(100, 10)
    parts.ledger.drop(TP)
    with capture_logs() as logs:
        parts.backpressure.update_fetch_hold()
    assert not parts.fetcher.held_all
    assert [(e["event"], e["reason"]) for e in logs] == [("fetch_resumed", None)]
    assert parts.counters.budget_pauses == 1


async def test_shutdown_and_the_hard_rss_limit_hold_all_fetching_with_their_reason() -> None:
    parts = make_parts()
    parts.backpressure.rss_hard = True
    with capture_logs() as logs:
        parts.backpressure.update_fetch_hold()
    assert parts.fetcher.held_all
    assert logs[0]["reason"] == "rss_hard_limit"
    parts.backpressure.rss_hard = False
    parts.backpressure.update_fetch_hold()
    assert not parts.fetcher.held_all
    parts.backpressure.shutting_down = True
    with capture_logs() as logs:
        parts.backpressure.update_fetch_hold()
    assert parts.fetcher.held_all
    assert logs[0]["reason"] == "shutdown"
    assert parts.counters.budget_pauses == 2


async def test_without_a_fetcher_nothing_is_held() -> None:
    ledger = MemoryLedger(1, 1)
    ledger.add(TP, 5)
    backpressure = Backpressure(ledger, Counters(), {})
    backpressure.update_fetch_hold()
    assert not backpressure.held_all
