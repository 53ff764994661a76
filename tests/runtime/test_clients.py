"""The runtime's Kafka client seam: the production factory builds the aiokafka clients, and the
scripted fetcher and dead-letter sink of ``tests/scripted`` behave as the runtime expects."""

from __future__ import annotations

import anyio
import pytest
from aiokafka.errors import KafkaConnectionError

from capgroup.membership.transport import AiokafkaTransport
from capgroup.runtime.batch import Batch
from capgroup.runtime.clients import AiokafkaClients, KafkaClients
from capgroup.runtime.deadletter import DeadLetterProducer
from capgroup.runtime.fetcher import PartitionFetcher
from capgroup.settings import load_settings
from tests.runtime.parts import OTHER, TP
from tests.scripted.runtime_clients import (
    ScriptedClients,
    ScriptedDeadLetterSink,
    ScriptedFetcher,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def test_the_production_factory_builds_the_aiokafka_clients() -> None:
    settings = load_settings(group_id="g", topics=["events"], bootstrap_servers="127.0.0.1:1")
    clients: KafkaClients = AiokafkaClients(settings)
    assert isinstance(clients.coordinator_transport(), AiokafkaTransport)
    fetcher = clients.fetcher(1 << 20)
    assert isinstance(fetcher, PartitionFetcher)
    sink = clients.dead_letter("events.dlq")
    assert isinstance(sink, DeadLetterProducer)
    assert sink.topic == "events.dlq"


async def test_the_scripted_fetcher_serves_owned_partitions_from_their_position() -> None:
    fetcher = ScriptedFetcher(max_records=3)
    fetcher.append_many(TP, 5)
    fetcher.append_many(OTHER, 2)
    assert await fetcher.fetch(timeout_ms=0) == {}, "nothing owned yet"
    await fetcher.gain({TP: 1, OTHER: None})
    assert await fetcher.positions([TP, OTHER]) == {TP: 1, OTHER: 0}
    chunks = await fetcher.fetch(timeout_ms=0)
    assert {tp: [r.offset for r in rs] for tp, rs in chunks.items()} == {
        TP: [1, 2, 3],
        OTHER: [0, 1],
    }
    fetcher.hold([TP])
    assert await fetcher.fetch(timeout_ms=0) == {}
    fetcher.unhold([TP])
    fetcher.hold_all(True)
    assert await fetcher.fetch(timeout_ms=0) == {}
    fetcher.hold_all(False)
    assert [r.offset for r in (await fetcher.fetch(timeout_ms=0))[TP]] == [4]
    fetcher.release([TP])
    fetcher.append(TP, b"late")
    assert await fetcher.fetch(timeout_ms=0) == {}
    assert await fetcher.end_offsets([TP, OTHER]) == {TP: 6, OTHER: 2}


async def test_an_empty_fetch_waits_for_an_append_not_for_its_timeout() -> None:
    fetcher = ScriptedFetcher(reset="latest")
    fetcher.append_many(TP, 3)
    await fetcher.gain({TP: None})
    assert fetcher.position(TP) == 3
    got: list[int] = []

    async def fetch() -> None:
        chunks = await fetcher.fetch(timeout_ms=60_000)
        got.extend(r.offset for r in chunks[TP])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch)
            await anyio.wait_all_tasks_blocked()
            fetcher.append(TP, b"now")
    assert got == [3]


async def test_scripted_fetch_errors_are_raised_first() -> None:
    fetcher = ScriptedFetcher()
    fetcher.fetch_errors.append(KafkaConnectionError())
    with pytest.raises(KafkaConnectionError):
        await fetcher.fetch(timeout_ms=0)
    assert await fetcher.fetch(timeout_ms=0) == {}


async def test_the_scripted_sink_records_batches_and_fails_when_told() -> None:
    fetcher = ScriptedFetcher()
    fetcher.append_many(TP, 2)
    batch = Batch.of(TP, fetcher.logs[TP], started_at=0.0)
    sink = ScriptedDeadLetterSink("dlq")
    sink.failures = 1
    with pytest.raises(Exception, match="scripted dead-letter failure"):
        await sink.send(batch, error=OSError("x"), attempts=3, member_id="m")
    await sink.send(batch, error=OSError("x"), attempts=3, member_id="m")
    assert [r.offset for r in sink.records] == [0, 1]
    assert (sink.attempts, sink.sent[0].member_id) == (2, "m")


async def test_scripted_clients_hand_out_their_clients() -> None:
    transport = AiokafkaTransport(load_settings(group_id="g", topics=["t"]))
    clients: KafkaClients = ScriptedClients(transport)
    assert clients.coordinator_transport() is transport
    fetcher = clients.fetcher(1234)
    assert isinstance(fetcher, ScriptedFetcher)
    sink = clients.dead_letter("t.dlq")
    assert sink.topic == "t.dlq"
    assert clients.dead_letter("t.dlq") is sink
