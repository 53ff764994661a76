"""The fetch loop without a broker: records from a scripted fetcher into partition buffers,
counted in the ledger, dropped when not ours, and fetch failures retried."""

from __future__ import annotations

import anyio
import pytest
from aiokafka.errors import KafkaConnectionError
from structlog.testing import capture_logs

from capgroup.runtime.batch import Record, make_record
from capgroup.runtime.ingest import Ingest
from capgroup.runtime.partition import footprint
from capgroup.types import TopicPartition
from tests.runtime.parts import OTHER, TP, Parts, make_parts

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def ingest(
    parts: Parts,
    *,
    valid: bool = True,
    deserialize: object = None,
    stop_after: int | None = None,
) -> Ingest:
    return Ingest(
        fetcher=parts.fetcher,
        generation_valid=lambda: valid,
        partitions=parts.partitions,
        ledger=parts.ledger,
        counters=parts.counters,
        backpressure=parts.backpressure,
        deserialize=deserialize,  # type: ignore[arg-type]
        stopping=lambda: stop_after is not None and parts.fetcher.fetches >= stop_after,
        clock=lambda: 42.0,
    )


async def test_fetched_records_are_buffered_counted_and_wake_their_worker() -> None:
    parts = make_parts()
    state = parts.own(TP)
    parts.fetcher.owned.discard(OTHER)
    await parts.fetcher.gain({TP: 0})
    parts.fetcher.append_many(TP, 3, size=7)
    wake = state.arm()
    await ingest(parts, stop_after=1).run()
    assert [r.offset for r in state.buffer.take_all(50.0)] == [0, 1, 2]
    assert parts.ledger.held(TP) == footprint(21, 3)
    assert (parts.counters.records_in, parts.counters.bytes_in) == (3, 21)
    assert wake.is_set()
    assert state.buffer.started_at is None


async def test_records_not_ours_are_dropped() -> None:
    parts = make_parts()
    closing, stopped = parts.own(TP), parts.own(OTHER)
    closing.closing, stopped.stopped = True, True
    not_owned = TopicPartition("events", 9)
    ingest(parts).absorb(
        {
            TP: [make_record("events", 0, 0, 0, None, b"x")],
            OTHER: [make_record("events", 1, 0, 0, None, b"x")],
            not_owned: [make_record("events", 9, 0, 0, None, b"x")],
        }
    )
    assert parts.counters.records_in == 0
    assert parts.ledger.total_bytes == 0


async def test_nothing_is_buffered_while_the_generation_is_lost() -> None:
    parts = make_parts()
    state = parts.own(TP)
    ingest(parts, valid=False).absorb({TP: [make_record("events", 0, 0, 0, None, b"x")]})
    assert not state.buffer
    assert parts.counters.records_in == 0


async def test_the_budget_counts_records_as_fetched_not_as_deserialized() -> None:
    parts = make_parts()
    state = parts.own(TP)

    def shrink(record: Record) -> Record:
        return make_record(record.topic, record.partition, record.offset, 0, None, b"")

    ingest(parts, deserialize=shrink).absorb({TP: [make_record("events", 0, 0, 0, None, b"x" * 9)]})
    assert [r.value for r in state.buffer.take_all(0.0)] == [b""]
    assert parts.counters.bytes_in == 9
    assert parts.ledger.held(TP) == footprint(9, 1)


async def test_a_full_buffer_is_held_after_the_fetch_that_filled_it() -> None:
    parts = make_parts()
    parts.own(TP)
    records = [make_record("events", 0, i, 0, None, b"x") for i in range(10)]
    ingest(parts).absorb({TP: records})
    assert parts.fetcher.held == {TP}


async def test_a_failed_fetch_is_logged_and_retried() -> None:
    parts = make_parts()
    state = parts.own(TP)
    await parts.fetcher.gain({TP: 0})
    parts.fetcher.append_many(TP, 2)
    parts.fetcher.fetch_errors.append(KafkaConnectionError())
    with capture_logs() as logs, anyio.fail_after(5):
        await ingest(parts, stop_after=2).run()
    assert len(state.buffer) == 2
    assert [(e["event"], e["consecutive_failures"]) for e in logs] == [("fetch_failed", 1)]
