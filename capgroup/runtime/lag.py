"""Lag and retention risk: how far the group is behind, and how close to losing records.

Every ``lag_sample_interval_ms`` the :class:`LagSampler` asks the brokers for the high
watermark and the log start offset of the partitions this member owns and, on the leader,
of the partitions nobody owns (the assignor left them unassigned for lack of capacity; no
other member sees them). With the committed offset of each, it computes:

- **lag in records**: ``high watermark − committed`` (:func:`lag_records`). For an owned
  partition the committed offset is the last one the broker acknowledged, or the position
  the member started at when nothing is committed yet. For an unassigned partition it is
  the group's committed offset (OffsetFetch, refreshed at most every
  :data:`COMMITTED_REFRESH_S` or when the set of unassigned partitions changes); without
  one, the offset a new owner would start at (the log start under ``auto_offset_reset =
  earliest``, the high watermark under ``latest``).
- **lag in seconds**: the age of the oldest unconsumed record, ``now − timestamp`` of the
  record at the committed offset (:func:`lag_seconds`); 0 without lag. The timestamp is
  read once per committed offset (one small fetch, cached), and is the producer's create
  time (or the broker's append time under ``LogAppendTime``); a producer clock that is off
  shifts it.
- **retention margin**: ``timestamp + retention.ms − now`` of that same record
  (:func:`retention_margin_seconds`): time left before it becomes eligible for time-based
  deletion. Kafka deletes whole closed segments, once the newest record of a segment is past
  ``retention.ms`` and the next retention check runs; so the real deletion comes at or after
  the margin reaches zero and the margin is a **lower bound** (it goes negative while the
  segment waits to roll or for the check). ``retention.bytes`` (size-based deletion) is not
  modelled. ``retention.ms`` comes from the topic's configuration (describe_configs through
  :func:`capgroup.connection.admin_client`, cached for :data:`RETENTION_REFRESH_S`);
  ``-1`` (infinite) gives no margin.
- **records deleted unconsumed**: a committed offset below the log start offset means
  retention deleted ``log start − committed`` records nobody consumed (data loss);
  :class:`LossLedger` counts each gap once per member and the sampler logs it as the error
  ``records_deleted_unconsumed``. For an owned partition only the records deleted before
  the member fetched them count (from ``max(committed, fetch position)`` to the log
  start): the ones it fetched are in its buffers and still get flushed. A new leader, or a
  restarted member, may count a gap another member already counted.

The arithmetic is pure functions of offsets, timestamps and the time; the sampler does the
I/O at the edge, through the :class:`~capgroup.runtime.clients.Fetcher` seam and injected
callables for committed offsets and retention.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Literal

import anyio
from aiokafka.errors import KafkaError

from capgroup.errors import CapgroupError
from capgroup.log import get_logger
from capgroup.runtime.clients import Fetcher
from capgroup.runtime.stats import Counters, PartitionLag
from capgroup.types import TopicPartition

__all__ = [
    "COMMITTED_REFRESH_S",
    "RETENTION_REFRESH_S",
    "LagSampler",
    "LossLedger",
    "deleted_unconsumed",
    "lag_records",
    "lag_seconds",
    "oldest_unconsumed",
    "retention_margin_seconds",
]

_log = get_logger("consumer")

#: How often, at most, the committed offsets of unassigned partitions are asked from the
#: coordinator (nobody commits them, so they rarely move); sooner when the set changes.
COMMITTED_REFRESH_S = 30.0
#: How long a topic's ``retention.ms`` is cached.
RETENTION_REFRESH_S = 300.0

#: Errors a sample survives (skipped, tried again at the next interval).
_SAMPLE_ERRORS = (KafkaError, OSError, CapgroupError)

GroupCommitted = Callable[
    [Iterable[TopicPartition]], Awaitable[Mapping[TopicPartition, int | None]]
]
RetentionLookup = Callable[[Iterable[str]], Awaitable[Mapping[str, int | None]]]


# --------------------------------------------------------------------- arithmetic ------
def lag_records(end_offset: int, committed: int) -> int:
    """Records between the committed offset and the high watermark (never negative)."""
    return max(end_offset - committed, 0)


def lag_seconds(lag: int, oldest_timestamp_ms: int | None, now_s: float) -> float | None:
    """Age of the oldest unconsumed record at wall-clock ``now_s``: 0 without lag, None when
    its timestamp is unknown (a timestamp in the future counts as 0)."""
    if lag <= 0:
        return 0.0
    if oldest_timestamp_ms is None:
        return None
    return max(now_s - oldest_timestamp_ms / 1000, 0.0)


def retention_margin_seconds(
    retention_ms: int | None, lag: int, oldest_timestamp_ms: int | None, now_s: float
) -> float | None:
    """Seconds before the oldest unconsumed record is eligible for time-based deletion.

    ``oldest_timestamp_ms + retention_ms − now`` (negative once eligible but not yet deleted);
    the whole ``retention_ms`` without lag (the next record gets all of it). None for infinite
    (negative) or unknown retention, or an unknown timestamp. A lower bound: Kafka deletes a
    segment only once its newest record is past retention and the retention check runs.
    """
    if retention_ms is None or retention_ms < 0:
        return None
    if lag <= 0:
        return retention_ms / 1000
    if oldest_timestamp_ms is None:
        return None
    return (oldest_timestamp_ms + retention_ms) / 1000 - now_s


def deleted_unconsumed(committed: int | None, log_start: int) -> int:
    """Records deleted before being consumed: ``log_start − committed`` when positive."""
    return 0 if committed is None else max(log_start - committed, 0)


def oldest_unconsumed(committed: int, log_start: int) -> int:
    """Offset of the oldest unconsumed record that still exists."""
    return max(committed, log_start)


class LossLedger:
    """Counts records deleted unconsumed, each gap once: it remembers, per partition, the
    log start offset up to which losses were already counted."""

    __slots__ = ("_counted",)

    def __init__(self) -> None:
        self._counted: dict[TopicPartition, int] = {}

    def observe(self, tp: TopicPartition, committed: int | None, log_start: int) -> int:
        """Records newly found deleted unconsumed on ``tp`` (0 when none or already counted)."""
        if committed is None or log_start <= committed:
            return 0
        counted = self._counted.get(tp)
        start = committed if counted is None else max(committed, counted)
        self._counted[tp] = max(log_start, counted or 0)
        return max(log_start - start, 0)


# --------------------------------------------------------------------- I/O edge -------
class LagSampler:
    """Samples lag and retention risk of owned (and, on the leader, unassigned) partitions.

    ``owned`` lists the partitions this member owns and ``owned_committed`` gives each one's
    committed offset (the commit tracker's); ``unassigned`` lists the partitions nobody owns
    (the engine's, empty except on the leader) and ``group_committed`` fetches committed
    offsets from the coordinator; ``retention`` looks up topics' ``retention.ms``.
    ``wall_clock`` is compared with record timestamps; ``clock`` paces the caches.
    """

    def __init__(
        self,
        fetcher: Fetcher,
        *,
        owned: Callable[[], Iterable[TopicPartition]],
        owned_committed: Callable[[TopicPartition], int | None],
        unassigned: Callable[[], Iterable[TopicPartition]],
        group_committed: GroupCommitted,
        retention: RetentionLookup,
        counters: Counters,
        reset: Literal["earliest", "latest"] = "earliest",
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = anyio.current_time,
        committed_refresh_s: float = COMMITTED_REFRESH_S,
        retention_refresh_s: float = RETENTION_REFRESH_S,
    ) -> None:
        self._fetcher = fetcher
        self._owned = owned
        self._owned_committed = owned_committed
        self._unassigned = unassigned
        self._group_committed = group_committed
        self._retention = retention
        self._counters = counters
        self._reset = reset
        self._wall_clock = wall_clock
        self._clock = clock
        self._committed_refresh_s = committed_refresh_s
        self._retention_refresh_s = retention_refresh_s
        self._losses = LossLedger()
        #: Unassigned partitions' committed offsets, the set they were asked for, and when.
        self._group_offsets: dict[TopicPartition, int | None] = {}
        self._group_asked: tuple[frozenset[TopicPartition], float] | None = None
        #: topic -> (retention.ms or None, when asked).
        self._retention_ms: dict[str, tuple[int | None, float]] = {}
        #: (partition, offset) -> timestamp ms of the first record there.
        self._timestamps: dict[tuple[TopicPartition, int], int] = {}
        #: The latest figures (replaced whole by each sample).
        self.figures: dict[TopicPartition, PartitionLag] = {}

    async def run(self, interval: float) -> None:
        """Sample every ``interval`` seconds, forever; a failed sample is skipped."""
        while True:
            try:
                await self.sample()
            except _SAMPLE_ERRORS as exc:
                _log.debug("lag_sample_failed", error=repr(exc))
            except Exception as exc:  # a metrics sampler must never take the member down
                _log.warning("lag_sample_failed", error=repr(exc))
            await anyio.sleep(interval)

    async def sample(self) -> None:
        """Take one sample and replace :attr:`figures`."""
        owned = frozenset(self._owned())
        unassigned = frozenset(self._unassigned()) - owned
        wanted = owned | unassigned
        if not wanted:
            self.figures = {}
            return
        ends = await self._fetcher.end_offsets(wanted)
        starts = await self._fetcher.beginning_offsets(wanted)
        group = await self._unassigned_committed(unassigned)
        retention = await self._retention_of({tp.topic for tp in wanted})
        committed: dict[TopicPartition, int | None] = {}
        for tp in wanted:
            if tp not in ends or tp not in starts:
                continue
            if tp in owned:
                offset = self._owned_committed(tp)
                if offset is None:  # not in the tracker yet (being gained)
                    continue
                committed[tp] = offset
            else:
                committed[tp] = group.get(tp)
        oldest: dict[TopicPartition, int] = {}
        for tp, offset in committed.items():
            start, end = self._start_of(tp, offset, starts[tp], ends[tp]), ends[tp]
            if lag_records(end, start) > 0:
                oldest[tp] = oldest_unconsumed(start, starts[tp])
        timestamps = await self._timestamps_at(oldest)
        positions = await self._positions(owned & committed.keys())
        now = self._wall_clock()
        figures: dict[TopicPartition, PartitionLag] = {}
        for tp, offset in committed.items():
            start, end = self._start_of(tp, offset, starts[tp], ends[tp]), ends[tp]
            lag = lag_records(end, start)
            stamp = timestamps.get(tp)
            figures[tp] = PartitionLag(
                tp=tp,
                owned=tp in owned,
                end_offset=end,
                log_start_offset=starts[tp],
                committed=offset,
                lag_records=lag,
                lag_seconds=lag_seconds(lag, stamp, now),
                retention_margin_seconds=retention_margin_seconds(
                    retention.get(tp.topic), lag, stamp, now
                ),
            )
            if tp not in owned or tp in positions:  # an owned one needs its position
                self._count_loss(tp, offset, starts[tp], positions.get(tp))
        self.figures = figures

    # ----------------------------------------------------------------- internals -----
    def _start_of(self, tp: TopicPartition, committed: int | None, start: int, end: int) -> int:
        """Where consumption of ``tp`` stands: the committed offset, or where a new owner
        would start (the reset policy) when nothing is committed."""
        if committed is not None:
            return committed
        return start if self._reset == "earliest" else end

    def _count_loss(
        self, tp: TopicPartition, committed: int | None, log_start: int, position: int | None
    ) -> None:
        # An owned partition's records below its fetch position were read into memory before
        # retention deleted them: only what was deleted before it was fetched is lost.
        read = committed if position is None or committed is None else max(committed, position)
        lost = self._losses.observe(tp, read, log_start)
        if lost:
            self._counters.records_deleted_unconsumed += lost
            _log.error(
                "records_deleted_unconsumed",
                topic=tp.topic,
                partition=tp.partition,
                committed=committed,
                log_start=log_start,
                records=lost,
                owner="none" if position is None else "member",
            )

    async def _positions(self, owned: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        wanted = sorted(owned)
        if not wanted:
            return {}
        try:
            return await self._fetcher.positions(wanted)
        except (*_SAMPLE_ERRORS, KeyError) as exc:  # released meanwhile
            _log.debug("lag_positions_failed", error=repr(exc))
            return {}

    async def _unassigned_committed(
        self, unassigned: frozenset[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        if not unassigned:
            self._group_asked, self._group_offsets = None, {}
            return {}
        now = self._clock()
        asked = self._group_asked
        if asked is None or asked[0] != unassigned or now - asked[1] >= self._committed_refresh_s:
            try:
                self._group_offsets = dict(await self._group_committed(unassigned))
                self._group_asked = (unassigned, now)
            except _SAMPLE_ERRORS as exc:
                _log.debug("lag_committed_fetch_failed", error=repr(exc))
                if asked is None or asked[0] != unassigned:
                    # No answer for this set yet: its lag is not known this round.
                    return {}
        return {tp: self._group_offsets.get(tp) for tp in unassigned if tp in self._group_offsets}

    async def _retention_of(self, topics: set[str]) -> dict[str, int | None]:
        now = self._clock()
        stale = [
            t
            for t in sorted(topics)
            if t not in self._retention_ms
            or now - self._retention_ms[t][1] >= self._retention_refresh_s
        ]
        if stale:
            try:
                found = await self._retention(stale)
            except (*_SAMPLE_ERRORS, TimeoutError) as exc:
                _log.debug("lag_retention_lookup_failed", error=repr(exc))
            else:
                for topic in stale:
                    self._retention_ms[topic] = (found.get(topic), now)
        return {t: self._retention_ms[t][0] for t in topics if t in self._retention_ms}

    async def _timestamps_at(
        self, oldest: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        wanted = {(tp, offset) for tp, offset in oldest.items()}
        self._timestamps = {k: v for k, v in self._timestamps.items() if k in wanted}
        missing = {
            tp: offset for tp, offset in oldest.items() if (tp, offset) not in self._timestamps
        }
        if missing:
            try:
                found = await self._fetcher.record_timestamps(missing)
            except _SAMPLE_ERRORS as exc:
                _log.debug("lag_timestamp_read_failed", error=repr(exc))
            else:
                for tp, stamp in found.items():
                    self._timestamps[(tp, missing[tp])] = stamp
        return {
            tp: self._timestamps[(tp, offset)]
            for tp, offset in oldest.items()
            if (tp, offset) in self._timestamps
        }
