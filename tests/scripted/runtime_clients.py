"""In-memory runtime clients for broker-less tests: a scripted :class:`Fetcher`, a scripted
:class:`DeadLetterSink`, and a :class:`KafkaClients` factory handing them out.

A test appends records to a partition's log; the fetcher serves them from the position a
partition was gained at, to owned partitions that are not held, in offset order, as a real
fetcher would. Nothing sleeps: an empty fetch waits for an append or a resume, at most its
``timeout_ms``. The sink records every batch it got and can be told to fail.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from aiokafka.errors import KafkaError

from capgroup.membership.transport import CoordinatorTransport
from capgroup.runtime.batch import Batch, Record, make_record
from capgroup.runtime.clients import DeadLetterSink, Fetcher, KafkaClients
from capgroup.runtime.relay import RelayRecord, RelaySink
from capgroup.types import TopicPartition

__all__ = [
    "DeadLetterSent",
    "ScriptedClients",
    "ScriptedDeadLetterSink",
    "ScriptedFetcher",
    "ScriptedRelaySink",
]


class ScriptedFetcher:
    """A :class:`~capgroup.runtime.clients.Fetcher` over in-memory partition logs."""

    def __init__(
        self,
        *,
        reset: Literal["earliest", "latest"] = "earliest",
        max_records: int = 500,
        timestamp_ms: int = 1_700_000_000_000,
    ) -> None:
        """``reset`` places a partition gained without a committed offset; one fetch returns
        at most ``max_records`` per partition."""
        self.logs: dict[TopicPartition, list[Record]] = {}
        self.reset = reset
        self.max_records = max_records
        self.timestamp_ms = timestamp_ms
        self.started = False
        self.stopped = False
        self.owned: set[TopicPartition] = set()
        self.held: set[TopicPartition] = set()
        self.held_all = False
        #: Errors the next fetches raise, first first (e.g. a ``KafkaConnectionError``).
        self.fetch_errors: list[KafkaError] = []
        #: When set, ``end_offsets`` raises it.
        self.end_offsets_error: BaseException | None = None
        self.fetches = 0
        #: Log start offset per partition (0 unless :meth:`delete_before` moved it).
        self.log_start: dict[TopicPartition, int] = {}
        #: ``retention.ms`` per topic answered by ``topic_retention_ms`` (absent: None).
        self.retention_ms: dict[str, int] = {}
        self._position: dict[TopicPartition, int] = {}
        self._changed: anyio.Event | None = None

    # ------------------------------------------------------------------ script ----------
    def append(
        self,
        tp: TopicPartition,
        value: bytes | None = b"",
        key: bytes | None = None,
        headers: Iterable[tuple[str, bytes | None]] = (),
    ) -> int:
        """Append one record to ``tp``'s log; returns its offset."""
        log = self.logs.setdefault(tp, [])
        offset = len(log)
        log.append(
            make_record(
                tp.topic, tp.partition, offset, self.timestamp_ms, key, value, tuple(headers)
            )
        )
        self._wake()
        return offset

    def append_many(self, tp: TopicPartition, count: int, size: int = 10) -> list[int]:
        """Append ``count`` records of ``size`` value bytes to ``tp``; returns their offsets."""
        return [self.append(tp, b"x" * size) for _ in range(count)]

    def delete_before(self, tp: TopicPartition, offset: int) -> None:
        """Move ``tp``'s log start offset to ``offset``, as retention deleting a segment
        would (records below it can no longer be read)."""
        self.log_start[tp] = max(self.log_start.get(tp, 0), offset)

    @property
    def flowing(self) -> frozenset[TopicPartition]:
        """Partitions a fetch would serve now."""
        return frozenset() if self.held_all else frozenset(self.owned - self.held)

    def position(self, tp: TopicPartition) -> int | None:
        """Next offset to be served for ``tp`` (None when never gained)."""
        return self._position.get(tp)

    # ------------------------------------------------------------------ Fetcher ---------
    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def gain(self, positions: Mapping[TopicPartition, int | None]) -> None:
        for tp, offset in positions.items():
            end = len(self.logs.get(tp, ()))
            if offset is None:
                offset = 0 if self.reset == "earliest" else end
            self._position[tp] = offset
            self.owned.add(tp)
        self._wake()

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self.owned.discard(tp)
            self.held.discard(tp)

    def hold(self, partitions: Iterable[TopicPartition]) -> None:
        self.held.update(partitions)

    def unhold(self, partitions: Iterable[TopicPartition]) -> None:
        self.held.difference_update(partitions)
        self._wake()

    def hold_all(self, held: bool) -> None:
        self.held_all = held
        self._wake()

    async def fetch(
        self, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        self.fetches += 1
        if self.fetch_errors:
            raise self.fetch_errors.pop(0)
        with anyio.move_on_after(timeout_ms / 1000):
            while True:
                chunks = self._take(max_records or self.max_records)
                if chunks:
                    return chunks
                self._changed = changed = anyio.Event()
                await changed.wait()
        return {}

    async def positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._position[tp] for tp in partitions}

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        if self.end_offsets_error is not None:
            raise self.end_offsets_error
        return {tp: len(self.logs.get(tp, ())) for tp in partitions}

    async def beginning_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        if self.end_offsets_error is not None:
            raise self.end_offsets_error
        return {tp: self.log_start.get(tp, 0) for tp in partitions}

    async def record_timestamps(
        self, offsets: Mapping[TopicPartition, int], timeout_ms: int = 2_000
    ) -> dict[TopicPartition, int]:
        found: dict[TopicPartition, int] = {}
        for tp, offset in offsets.items():
            log = self.logs.get(tp, [])
            first = max(offset, self.log_start.get(tp, 0))
            if first < len(log):
                found[tp] = log[first].timestamp
        return found

    async def topic_retention_ms(self, topics: Iterable[str]) -> dict[str, int | None]:
        return {topic: self.retention_ms.get(topic) for topic in topics}

    # ------------------------------------------------------------------ internals -------
    def _take(self, limit: int) -> dict[TopicPartition, list[Any]]:
        chunks: dict[TopicPartition, list[Any]] = {}
        for tp in sorted(self.flowing):
            log = self.logs.get(tp, [])
            start = self._position[tp]
            records = log[start : start + limit]
            if records:
                chunks[tp] = records
                self._position[tp] = start + len(records)
        return chunks

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()


@dataclass(frozen=True)
class DeadLetterSent:
    """One batch a :class:`ScriptedDeadLetterSink` accepted."""

    batch: Batch
    error: BaseException
    attempts: int
    member_id: str


class ScriptedDeadLetterSink:
    """A :class:`~capgroup.runtime.clients.DeadLetterSink` that records what it got.

    ``failures`` sends fail (with ``error``) before the next one succeeds; ``always_fail``
    makes every send fail.
    """

    def __init__(self, topic: str = "dead-letters") -> None:
        self.topic = topic
        self.sent: list[DeadLetterSent] = []
        self.attempts = 0
        self.failures = 0
        self.always_fail = False
        self.error: Exception = KafkaError("scripted dead-letter failure")
        self.started = False
        self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(
        self, batch: Batch, *, error: BaseException, attempts: int, member_id: str
    ) -> None:
        self.attempts += 1
        if self.always_fail:
            raise self.error
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        self.sent.append(DeadLetterSent(batch, error, attempts, member_id))

    @property
    def records(self) -> list[Record]:
        """Every record accepted, in order."""
        return [r for sent in self.sent for r in sent.batch.records]


class ScriptedRelaySink:
    """A :class:`~capgroup.runtime.relay.RelaySink` that records what it got.

    ``topic_partitions`` maps a topic to its partitions; ``hold`` (an event) makes every send
    wait for it before it is acknowledged; ``failures`` sends fail before the next succeeds.
    """

    def __init__(self, topic_partitions: dict[str, int] | None = None) -> None:
        self.topic_partitions = dict(topic_partitions or {})
        self.sent: list[RelayRecord] = []
        self.attempts = 0
        self.failures = 0
        self.hold: anyio.Event | None = None
        #: Set once a send is waiting on ``hold``.
        self.waiting = anyio.Event()
        self.started = False
        self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def partitions(self, topic: str) -> frozenset[int]:
        return frozenset(range(self.topic_partitions.get(topic, 0)))

    async def send(self, records: Sequence[RelayRecord]) -> None:
        self.attempts += 1
        if self.hold is not None:
            self.waiting.set()
            await self.hold.wait()
        if self.failures > 0:
            self.failures -= 1
            raise KafkaError("scripted relay failure")
        self.sent.extend(records)


class ScriptedClients:
    """A :class:`~capgroup.runtime.clients.KafkaClients` handing out the given clients.

    ``transport`` is the coordinator transport for the membership engine (e.g. the scripted
    coordinator of ``tests/scripted``); the fetcher and sink are created when not given.
    """

    def __init__(
        self,
        transport: CoordinatorTransport,
        fetcher: ScriptedFetcher | None = None,
        dead_letter: ScriptedDeadLetterSink | None = None,
    ) -> None:
        self.transport = transport
        self.scripted_fetcher = fetcher or ScriptedFetcher()
        self.scripted_dead_letter = dead_letter
        self.fetch_max_bytes: int | None = None
        self.scripted_relay: ScriptedRelaySink | None = None

    def coordinator_transport(self) -> CoordinatorTransport:
        return self.transport

    def fetcher(self, fetch_max_bytes: int) -> Fetcher:
        self.fetch_max_bytes = fetch_max_bytes
        return self.scripted_fetcher

    def dead_letter(self, topic: str) -> DeadLetterSink:
        if self.scripted_dead_letter is None:
            self.scripted_dead_letter = ScriptedDeadLetterSink(topic)
        return self.scripted_dead_letter

    def relay(self) -> RelaySink:
        if self.scripted_relay is None:
            self.scripted_relay = ScriptedRelaySink()
        return self.scripted_relay


def _conforms_relay(sink: ScriptedRelaySink) -> RelaySink:
    """Type-checked only: the scripted relay sink satisfies the runtime's protocol."""
    return sink


def _conforms(
    fetcher: ScriptedFetcher, sink: ScriptedDeadLetterSink, clients: ScriptedClients
) -> tuple[Fetcher, DeadLetterSink, KafkaClients]:
    """Type-checked only: the scripted clients satisfy the runtime's protocols."""
    return fetcher, sink, clients
