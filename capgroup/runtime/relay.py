"""Relaying records (``relay_enabled``, opt-in): republishing records, unprocessed, from a
partition its member cannot keep up with to healthy partitions other members own.

A partition relays when it is **relay-only** (the assignor gave it to this member at the cost
of a fetch buffer, ``engine.relay_only``) or when its lag passed ``relay_lag_records`` /
``relay_lag_seconds`` over two lag samples in a row while still growing (its owner cannot keep
up; it stops relaying once its lag is back under the threshold). A relaying partition's batches
are cut as usual (oldest records first) and handed to :meth:`Relay.deliver` instead of
``flush``: every record whose ``capgroup.relay.hops`` header is below ``relay_max_hops`` is
produced to a target partition, the others are flushed locally in a batch of their own.

Targets are partitions of the record's topic (or ``relay_topic``) that **another** live member
owns as batch partitions, by the group's current assignment read from the coordinator
(DescribeGroups, ``others_own``), whose lag, read from the broker (the group's committed offsets
and the high watermarks), is at most ``relay_lag_records``, and that this member does **not**
own at the moment of the choice (neither batch nor relay-only). A partition nobody owns (left
unassigned, or relay-only elsewhere) is never a target: records sent there would wait for an
owner. The group view and the lag figures are refreshed after every assignment change and every
lag sample interval; the owned set is read at every choice, so a rebalance never makes a member
relay to itself. When the group view cannot be read, nothing is a target. Without a target, a
lagging batch partition flushes locally; a relay-only one waits (held, nothing committed past
it).

No loss: :meth:`Relay.deliver` returns only once the producer (``acks=all``, idempotent)
acknowledged every relayed record and the local remainder was flushed; only then does the batch
settle as flushed in the :class:`~capgroup.runtime.offsets.CommitTracker`, so nothing is
committed past an unacknowledged relay. A crash between the acknowledgement and the commit
yields duplicates, never a loss. Relaying breaks per-key order and exactly-once.
"""

from __future__ import annotations

import itertools
import zlib
from collections import Counter as TallyCounter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from aiokafka import AIOKafkaProducer

from capgroup.connection import ClientRole, client_options
from capgroup.log import get_logger
from capgroup.runtime.batch import Batch, BatchLimits, Record
from capgroup.runtime.stats import Counters, PartitionLag
from capgroup.settings import CapgroupSettings
from capgroup.types import TopicPartition

__all__ = [
    "RELAY_HOPS_HEADER",
    "RELAY_ORIGIN_HEADER",
    "Relay",
    "RelayProducer",
    "RelayRecord",
    "RelaySink",
    "Relayed",
    "hops_of",
    "relay_limits",
]

_log = get_logger("consumer")

RELAY_HOPS_HEADER = "capgroup.relay.hops"
RELAY_ORIGIN_HEADER = "capgroup.relay.origin"
#: How often a relay-only partition without a target looks for one again.
TARGET_POLL_SECONDS = 0.2
#: Longest a relay-only partition's records wait in its buffer before they are relayed.
RELAY_MAX_AGE_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Relayed:
    """One record relayed: read from ``origin`` at ``offset``, produced to ``destination``,
    carrying ``hops`` (its ``capgroup.relay.hops`` header as produced, at least 1)."""

    origin: TopicPartition
    offset: int
    destination: TopicPartition
    hops: int


@dataclass(frozen=True, slots=True)
class RelayRecord:
    """A record to produce: destination, key, value and headers."""

    destination: TopicPartition
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class RelaySink(Protocol):
    """Where relayed records are produced (acks=all, idempotent in production)."""

    async def start(self) -> None:
        """Connect."""

    async def stop(self) -> None:
        """Flush pending sends and close."""

    async def partitions(self, topic: str) -> frozenset[int]:
        """The partitions of ``topic`` (empty when unknown)."""

    async def send(self, records: Sequence[RelayRecord]) -> None:
        """Produce ``records``; return once every one is acknowledged, or raise."""


class RelayProducer:
    """:class:`RelaySink` over an ``acks=all`` idempotent aiokafka producer."""

    def __init__(self, settings: CapgroupSettings) -> None:
        """Create (not yet connect) the producer; call inside the event loop."""
        self._producer = AIOKafkaProducer(
            **client_options(settings, ClientRole.RELAY),
            acks="all",
            enable_idempotence=True,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def partitions(self, topic: str) -> frozenset[int]:
        return frozenset(await self._producer.partitions_for(topic) or ())

    async def send(self, records: Sequence[RelayRecord]) -> None:
        pending = [
            await self._producer.send(
                r.destination.topic,
                key=r.key,
                value=r.value,
                headers=list(r.headers),
                partition=r.destination.partition,
            )
            for r in records
        ]
        for delivery in pending:
            await delivery


def hops_of(record: Record[Any]) -> int:
    """The ``capgroup.relay.hops`` header of ``record`` (0 when absent or malformed)."""
    for name, value in record.headers:
        if name == RELAY_HOPS_HEADER and value is not None:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def relay_limits(limits: BatchLimits, settings: CapgroupSettings) -> BatchLimits:
    """Batch limits of a relay-only partition: at most one fetch buffer, relayed at once."""
    return BatchLimits(
        max_records=limits.max_records,
        max_bytes=min(limits.max_bytes, settings.max_partition_fetch_bytes),
        max_age=min(limits.max_age, RELAY_MAX_AGE_SECONDS),
    )


GroupCommitted = Callable[
    [Iterable[TopicPartition]], Awaitable[Mapping[TopicPartition, int | None]]
]
EndOffsets = Callable[[Iterable[TopicPartition]], Awaitable[Mapping[TopicPartition, int]]]
OnRelayed = Callable[[Sequence["Relayed"]], Awaitable[None]]
#: The batch partitions other live members of the group own now; None when unknown.
OthersOwn = Callable[[], Awaitable[frozenset[TopicPartition] | None]]


class Relay:
    """The relay of one consumer run: which partitions relay, where to, and the produce.

    ``owned`` and ``relay_only`` read the member's current assignment (``relay_only`` a subset
    of it); ``end_offsets`` and ``group_committed`` read the broker for the targets' lag;
    ``others_own`` reads the batch partitions the group's other live members own now (None
    when the group view cannot be read); ``lag_figures`` is the lag sampler's latest sample of
    owned partitions; ``on_relayed`` is the service's hook (after the acknowledgement, before
    the commit).
    """

    def __init__(
        self,
        *,
        settings: CapgroupSettings,
        sink: RelaySink,
        owned: Callable[[], Iterable[TopicPartition]],
        relay_only: Callable[[], Iterable[TopicPartition]],
        end_offsets: EndOffsets,
        group_committed: GroupCommitted,
        others_own: OthersOwn,
        lag_figures: Callable[[], Mapping[TopicPartition, PartitionLag]],
        counters: Counters,
        on_relayed: OnRelayed | None = None,
    ) -> None:
        self._settings = settings
        self._sink = sink
        self._owned = owned
        self._relay_only = relay_only
        self._end_offsets = end_offsets
        self._group_committed = group_committed
        self._others_own = others_own
        self._lag_figures = lag_figures
        self._counters = counters
        self._on_relayed = on_relayed
        self._max_hops = settings.relay_max_hops
        #: Owned batch partitions relaying because their lag passed the threshold.
        self._lagging: set[TopicPartition] = set()
        self._previous_lag: dict[TopicPartition, int] = {}
        #: Lag of candidate target partitions (records; None: unknown), latest refresh.
        self._target_lag: dict[TopicPartition, int | None] = {}
        #: Batch partitions other live members own, latest refresh (None: unknown).
        self._others: frozenset[TopicPartition] | None = None
        self._stale = anyio.Event()
        self._round_robin = itertools.count()
        #: Relayed records by the hops they were produced with.
        self.hops: TallyCounter[int] = TallyCounter()

    # ------------------------------------------------------------------ decisions -------
    def relaying(self, tp: TopicPartition) -> bool:
        """Whether ``tp``'s batches are relayed (relay-only, or lagging)."""
        return tp in self._lagging or tp in frozenset(self._relay_only())

    @property
    def relaying_partitions(self) -> frozenset[TopicPartition]:
        """Partitions relaying now."""
        owned = frozenset(self._owned())
        return frozenset(self._lagging & owned) | frozenset(self._relay_only())

    def relay_lag_records(self) -> int:
        """Lag (records, latest sample) of the partitions relaying now."""
        figures = self._lag_figures()
        return sum(f.lag_records for tp in self.relaying_partitions if (f := figures.get(tp)))

    def targets(self, tp: TopicPartition) -> list[TopicPartition]:
        """Healthy partitions ``tp``'s records may go to: owned as batch partitions by
        another live member (latest group view; none when it is unknown), none of them owned by
        this member now (the owned set is read at every call)."""
        others = self._others
        if not others:
            return []
        topic = self._settings.relay_topic or tp.topic
        mine = frozenset(self._owned()) | frozenset(self._relay_only())
        limit = self._settings.relay_lag_records
        return sorted(
            t
            for t, lag in self._target_lag.items()
            if t.topic == topic
            and t in others
            and t not in mine
            and (lag is None or limit is None or lag <= limit)
        )

    def must_wait(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` is relay-only and has nowhere to relay to (it is then held)."""
        return tp in frozenset(self._relay_only()) and not self.targets(tp)

    def assignment_changed(self) -> None:
        """The assignment changed: forget the group view (nothing is a target until it is read
        again), refresh it and the targets' lag now, and forget departed partitions' lag
        history."""
        self._others = None
        owned = frozenset(self._owned())
        self._lagging &= owned
        for tp in set(self._previous_lag) - owned:
            del self._previous_lag[tp]
        self._stale.set()

    def observe_lag(self) -> None:
        """Start or stop relaying owned batch partitions by their latest lag sample."""
        records_limit = self._settings.relay_lag_records
        seconds_limit = self._settings.relay_lag_seconds
        relay_only = frozenset(self._relay_only())
        owned = frozenset(self._owned())
        for tp, figure in self._lag_figures().items():
            if not figure.owned or tp not in owned or tp in relay_only:
                continue
            lag = figure.lag_records
            over = (records_limit is not None and lag > records_limit) or (
                seconds_limit is not None
                and figure.lag_seconds is not None
                and figure.lag_seconds > seconds_limit
            )
            previous = self._previous_lag.get(tp)
            self._previous_lag[tp] = lag
            if not over:
                if tp in self._lagging:
                    self._lagging.discard(tp)
                    _log.info("relay_stopped", partition=f"{tp.topic}-{tp.partition}", lag=lag)
            elif previous is not None and lag >= previous and tp not in self._lagging:
                self._lagging.add(tp)
                _log.warning("relay_started", partition=f"{tp.topic}-{tp.partition}", lag=lag)

    async def refresh_targets(self) -> None:
        """Read the group's current assignment (who owns what) and every candidate target
        partition's lag from the broker; a failed read of the group view leaves no target."""
        try:
            self._others = await self._others_own()
        except Exception as exc:
            self._others = None
            _log.warning("relay_group_view_failed", error=repr(exc))
        topics = (
            {self._settings.relay_topic}
            if self._settings.relay_topic
            else set(self._settings.topics)
        )
        candidates: list[TopicPartition] = []
        for topic in sorted(topics):
            known = await self._sink.partitions(topic)
            candidates.extend(TopicPartition(topic, p) for p in sorted(known))
        if not candidates:
            self._target_lag = {}
            return
        ends = await self._end_offsets(candidates)
        committed = await self._group_committed(candidates)
        lag: dict[TopicPartition, int | None] = {}
        for tp in candidates:
            end, done = ends.get(tp), committed.get(tp)
            lag[tp] = None if end is None or done is None else max(0, end - done)
        self._target_lag = lag

    async def run(self, interval: float) -> None:
        """Observe the lag and refresh the targets every ``interval`` seconds, and at once
        after every assignment change."""
        while True:
            self._stale = anyio.Event()
            self.observe_lag()
            try:
                await self.refresh_targets()
            except Exception as exc:  # a failed refresh keeps the last figures
                _log.warning("relay_targets_failed", error=repr(exc))
            with anyio.move_on_after(interval):
                await self._stale.wait()

    # ------------------------------------------------------------------ the produce -----
    async def deliver(
        self, batch: Batch[Any], *, flush: Callable[[Batch[Any]], Awaitable[None]]
    ) -> None:
        """Relay ``batch``'s relayable records and flush the rest locally; return once both
        are durable (the producer acknowledged every relayed record)."""
        tp = batch.tp
        if not self.relaying(tp):
            await flush(batch)
            return
        relay_only = tp in frozenset(self._relay_only())
        targets = self.targets(tp)
        while not targets:
            if not relay_only:
                await flush(batch)  # nowhere to go: process it here
                return
            await anyio.sleep(TARGET_POLL_SECONDS)  # held: nothing committed past it
            targets = self.targets(tp)
        out: list[RelayRecord] = []
        relayed: list[Relayed] = []
        local: list[Record[Any]] = []
        for record in batch:
            hops = hops_of(record)
            value = record.value
            if hops >= self._max_hops or not (value is None or isinstance(value, bytes)):
                local.append(record)
                continue
            key = record.key
            if key is not None:
                destination = targets[zlib.crc32(key) % len(targets)]
            else:
                destination = targets[next(self._round_robin) % len(targets)]
            kept = [
                (name, b"" if v is None else v)
                for name, v in record.headers
                if name not in (RELAY_HOPS_HEADER, RELAY_ORIGIN_HEADER)
            ]
            headers = (
                *kept,
                (RELAY_HOPS_HEADER, str(hops + 1).encode()),
                (RELAY_ORIGIN_HEADER, f"{tp.topic}/{tp.partition}/{record.offset}".encode()),
            )
            out.append(RelayRecord(destination, key, value, headers))
            relayed.append(Relayed(tp, record.offset, destination, hops + 1))
        if out:
            await self._sink.send(out)
            if self._on_relayed is not None:
                await self._on_relayed(relayed)
        if local:
            share = batch.size_bytes * len(local) // len(batch)
            await flush(
                Batch.of(
                    tp,
                    local,
                    started_at=batch.started_at,
                    cut_at=batch.cut_at,
                    size_bytes=share,
                )
            )
        if out:
            # Counted once the whole batch is durable (a retried batch is counted once).
            self._counters.records_relayed += len(out)
            self.hops.update(r.hops for r in relayed)
            _log.debug(
                "records_relayed",
                partition=f"{tp.topic}-{tp.partition}",
                records=len(out),
                first_offset=batch.first_offset,
                last_offset=batch.last_offset,
            )
