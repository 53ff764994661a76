"""Hot keys measured out of band: partition rates, skew, the heaviest keys and shard factors.

The analysis is pure: :class:`KeySketch` wraps Apache DataSketches' frequent-items sketch
(bounded memory whatever the key cardinality), :func:`analyse` turns per-partition windows and
the sketch into a :class:`HotkeysReport` (skew, hot keys with their shares, shard factors).
:func:`read_topic` is the one part that talks to Kafka: an ``AIOKafkaConsumer`` without a group
(no join, no commits) reads the recent end of a topic into the windows and the sketch; its
client library is imported inside the function only.

Error bound: with ``lg_max_map_size`` = L the sketch keeps at most 0.75 × 2^L keys and every
count it reports is within ε·N of the true count, where N is the number of keyed records read
and ε = 3.5 / 2^L (L = 12: ε ≈ 0.00085, i.e. a key's share of the topic is off by at most
0.085 percentage points; its share of its partition by at most ε·N / partition records).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from capgroup.connection import ClientRole, client_options
from capgroup.errors import CapgroupError
from capgroup.settings import CapgroupSettings

__all__ = [
    "DEFAULT_LG_MAX_MAP_SIZE",
    "HotKey",
    "HotkeysReport",
    "KeyCount",
    "KeySketch",
    "PartitionWindow",
    "TopicNotFoundError",
    "analyse",
    "read_topic",
    "shard_factor",
    "skew",
]

#: log2 of the sketch's hash map: at most 0.75 × 4096 = 3072 keys are tracked, ε = 3.5/4096.
DEFAULT_LG_MAX_MAP_SIZE = 12


class TopicNotFoundError(CapgroupError):
    """The topic ``capgroup hotkeys`` was asked to read does not exist (exit 2)."""

    def __init__(self, topic: str, servers: Iterable[str]) -> None:
        self.topic = topic
        super().__init__(f"topic {topic!r} does not exist on {','.join(servers)}")


@dataclass(frozen=True, slots=True)
class KeyCount:
    """One (partition, key) the sketch reports, with its count's guaranteed bounds."""

    partition: int
    key: bytes
    estimate: int
    lower_bound: int
    upper_bound: int


class KeySketch:
    """Counts of (partition, key) pairs in bounded memory: a DataSketches frequent-items sketch.

    Memory does not grow with the number of distinct keys: at most 0.75 × 2^L pairs are
    tracked (L = ``lg_max_map_size``). A key is counted per partition, so its share of its
    partition and of the topic both follow from one sketch whatever the partition count.
    """

    def __init__(self, lg_max_map_size: int = DEFAULT_LG_MAX_MAP_SIZE) -> None:
        """``lg_max_map_size`` in [3, 26]: log2 of the sketch's internal map size."""
        if not 3 <= lg_max_map_size <= 26:
            raise ValueError(f"lg_max_map_size must be in [3, 26], got {lg_max_map_size}")
        import datasketches

        self.lg_max_map_size = lg_max_map_size
        self._ds = datasketches
        self._sketch = datasketches.frequent_items_sketch(lg_max_map_size)

    def update(self, partition: int, key: bytes, weight: int = 1) -> None:
        """Count ``weight`` records of ``key`` on ``partition``."""
        self._sketch.update((partition, key), weight)

    @property
    def total(self) -> int:
        """Records counted so far (N)."""
        return int(self._sketch.total_weight)

    @property
    def epsilon(self) -> float:
        """ε: every count is within ε·N of the truth (3.5 / 2^L)."""
        return float(self._ds.frequent_items_sketch.get_epsilon_for_lg_size(self.lg_max_map_size))

    @property
    def error_bound(self) -> float:
        """The a priori bound on any count's error, in records: ε·N."""
        return self.epsilon * self.total

    @property
    def tracked(self) -> int:
        """Pairs the sketch tracks now (at most 0.75 × 2^L)."""
        return int(self._sketch.num_active_items)

    def heaviest(self, n: int) -> list[KeyCount]:
        """The ``n`` pairs with the highest estimates, heaviest first, among those whose lower
        bound is above the sketch's maximum error (no false positives: a key reported is
        really heavier than the noise; any key whose true count exceeds twice the error
        bound ε·N is among them)."""
        rows = self._sketch.get_frequent_items(
            self._ds.frequent_items_error_type.NO_FALSE_POSITIVES
        )
        found = [
            KeyCount(int(item[0]), bytes(item[1]), int(est), int(lower), int(upper))
            for item, est, lower, upper in rows
        ]
        found.sort(key=lambda c: (-c.estimate, c.partition, c.key))
        return found[:n]


@dataclass(slots=True)
class PartitionWindow:
    """What was read from one partition: records, null-keyed ones, and the window's length."""

    partition: int
    #: Records read (keyed and null-keyed).
    records: int = 0
    #: Records without a key (spread by the producer, never hot as a key).
    null_key_records: int = 0
    #: First and last record timestamps read (ms), None before the first record.
    first_timestamp_ms: int | None = None
    last_timestamp_ms: int | None = None
    #: Length of the window the records arrived in, seconds (None when unknown: no records).
    seconds: float | None = None

    @property
    def rate(self) -> float:
        """Records/s over the window (0 when the window is unknown or empty)."""
        if not self.seconds or self.seconds <= 0:
            return 0.0
        return self.records / self.seconds

    def observe(self, timestamp_ms: int, keyed: bool) -> None:
        """Count one record."""
        self.records += 1
        if not keyed:
            self.null_key_records += 1
        if self.first_timestamp_ms is None or timestamp_ms < self.first_timestamp_ms:
            self.first_timestamp_ms = timestamp_ms
        if self.last_timestamp_ms is None or timestamp_ms > self.last_timestamp_ms:
            self.last_timestamp_ms = timestamp_ms


def skew(rates: Iterable[float]) -> float:
    """max / mean of the partition rates (1.0 is perfectly even; 1.0 for an idle topic)."""
    values = list(rates)
    if not values:
        return 1.0
    mean = sum(values) / len(values)
    return 1.0 if mean <= 0 else max(values) / mean


def shard_factor(key_rate: float, target_rate: float) -> int:
    """The smallest ``k`` with ``key_rate / k <= target_rate``: how many shards
    (``key.0 … key.k-1``) bring each shard of the key under the target per-partition rate.

    1 means the key needs no sharding. Splitting a key gives up that key's total order.
    """
    if target_rate <= 0 or math.isnan(target_rate):
        raise ValueError(f"target rate must be positive, got {target_rate}")
    if key_rate <= target_rate:
        return 1
    k = math.ceil(key_rate / target_rate)
    # Guard against a float ratio a hair above an integer (e.g. 3.0000000000000004).
    return k - 1 if key_rate / (k - 1) <= target_rate * (1 + 1e-12) else k


@dataclass(frozen=True, slots=True)
class HotKey:
    """A heavy key, its shares and the shard factor it needs."""

    partition: int
    key: bytes
    #: Estimated records of the key in the window, and the guaranteed bounds.
    records: int
    lower_bound: int
    upper_bound: int
    share_of_partition: float
    share_of_topic: float
    #: records/s of the key (its share of its partition's rate).
    rate: float
    #: Shards that bring each under the target per-partition rate (1: no sharding needed).
    shard_factor: int


@dataclass(frozen=True, slots=True)
class HotkeysReport:
    """The whole measurement: partition rates and skew, the hot keys, the sketch's error."""

    topic: str
    partitions: tuple[PartitionWindow, ...]
    hot_keys: tuple[HotKey, ...]
    target_rate: float
    lg_max_map_size: int
    epsilon: float
    #: ε·N: the most any key's count can be off, in records.
    error_records: int
    #: Pairs the sketch tracked (bounded by 0.75 × 2^L).
    tracked_keys: int
    #: False when reading stopped before the end offsets were reached (no progress).
    complete: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def records(self) -> int:
        """Records read over all partitions."""
        return sum(p.records for p in self.partitions)

    @property
    def total_rate(self) -> float:
        """The topic's rate, records/s (the sum of the partition rates)."""
        return sum(p.rate for p in self.partitions)

    @property
    def mean_rate(self) -> float:
        """Mean partition rate, records/s."""
        return self.total_rate / len(self.partitions) if self.partitions else 0.0

    @property
    def max_rate(self) -> float:
        """The busiest partition's rate, records/s."""
        return max((p.rate for p in self.partitions), default=0.0)

    @property
    def skew(self) -> float:
        """max / mean partition rate."""
        return skew(p.rate for p in self.partitions)


def analyse(
    topic: str,
    windows: Sequence[PartitionWindow],
    sketch: KeySketch,
    *,
    top: int = 10,
    target_rate: float | None = None,
    complete: bool = True,
) -> HotkeysReport:
    """The report for what was read: the ``top`` heaviest keys with their shares, rates and the
    shard factor for ``target_rate`` (default: the mean partition rate).

    A key's rate is its share of its partition times that partition's rate; its share of the
    topic is that rate over the topic's rate (or of the records read, when no rate is known).
    """
    by_partition = {w.partition: w for w in windows}
    total_rate = sum(w.rate for w in windows)
    mean = total_rate / len(windows) if windows else 0.0
    target = mean if target_rate is None else target_rate
    total_records = sum(w.records for w in windows)
    hot: list[HotKey] = []
    for count in sketch.heaviest(top):
        window = by_partition.get(count.partition)
        records = window.records if window else 0
        share_p = count.estimate / records if records else 0.0
        rate = share_p * (window.rate if window else 0.0)
        if total_rate > 0:
            share_t = rate / total_rate
        else:
            share_t = count.estimate / total_records if total_records else 0.0
        k = shard_factor(rate, target) if target > 0 else 1
        hot.append(
            HotKey(
                partition=count.partition,
                key=count.key,
                records=count.estimate,
                lower_bound=count.lower_bound,
                upper_bound=count.upper_bound,
                share_of_partition=share_p,
                share_of_topic=share_t,
                rate=rate,
                shard_factor=k,
            )
        )
    return HotkeysReport(
        topic=topic,
        partitions=tuple(sorted(windows, key=lambda w: w.partition)),
        hot_keys=tuple(hot),
        target_rate=target,
        lg_max_map_size=sketch.lg_max_map_size,
        epsilon=sketch.epsilon,
        error_records=math.ceil(sketch.error_bound),
        tracked_keys=sketch.tracked,
        complete=complete,
    )


# --- reading the topic (the only part that talks to Kafka) --------------------------------


async def read_topic(
    settings: CapgroupSettings,
    topic: str,
    sketch: KeySketch,
    *,
    records: int | None = None,
    seconds: float | None = None,
    idle_timeout_s: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> tuple[list[PartitionWindow], bool]:
    """Read the recent end of ``topic`` into ``sketch``; returns the partition windows and
    whether every partition was read up to the end offsets taken at the start.

    Exactly one of ``records`` (the last ``ceil(records / partitions)`` records of each
    partition; the window of a partition runs from its first record read to the topic's
    newest record) and
    ``seconds`` (the records of the last ``seconds``, found by timestamp) is given. The
    consumer has no group: nothing is joined or committed. Raises :class:`TopicNotFoundError`
    and :class:`~capgroup.membership.transport.KafkaUnreachableError`.
    """
    if (records is None) == (seconds is None):
        raise ValueError("give exactly one of records and seconds")
    import anyio
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition as KafkaTopicPartition

    from capgroup.membership.transport import bootstrap_with_retries

    consumer = AIOKafkaConsumer(
        **client_options(settings, ClientRole.HOTKEYS),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        await bootstrap_with_retries(consumer.start, settings, client="hotkeys")
        # What ``consumer.topics()`` fetches (all topics: asking for one could create it on a
        # broker with auto-creation on); its public result has the names only.
        cluster = await consumer._client.fetch_all_metadata()
        numbers = sorted(cluster.partitions_for_topic(topic) or ())
        if not numbers:
            raise TopicNotFoundError(topic, settings.bootstrap_servers)
        tps = [KafkaTopicPartition(topic, p) for p in numbers]
        consumer.assign(tps)
        now = clock()
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        windows = {p: PartitionWindow(p) for p in numbers}
        starts: dict[Any, int] = {}
        if records is not None:
            per = math.ceil(records / len(tps))
            starts = {tp: max(begins[tp], ends[tp] - per) for tp in tps}
        else:
            assert seconds is not None
            since_ms = int((now - seconds) * 1000)
            found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
            for tp in tps:
                hit = found.get(tp)
                starts[tp] = ends[tp] if hit is None else max(begins[tp], hit.offset)
                windows[tp.partition].seconds = float(seconds)
        pending = set()
        for tp in tps:
            consumer.seek(tp, starts[tp])
            if starts[tp] < ends[tp]:
                pending.add(tp)
            else:
                consumer.pause(tp)
        last_progress = anyio.current_time()
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=10_000)
            progressed = False
            for tp, batch in batches.items():
                window = windows[tp.partition]
                end = ends[tp]
                for record in batch:
                    if record.offset >= end:
                        break
                    progressed = True
                    key = record.key
                    window.observe(record.timestamp, key is not None)
                    if key is not None:
                        sketch.update(tp.partition, bytes(key))
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
            if progressed:
                last_progress = anyio.current_time()
            elif anyio.current_time() - last_progress > idle_timeout_s:
                break
        if records is not None:
            # Each partition's window runs from its first record read to the topic's newest
            # record: a busy partition's last records span less time (a higher rate), an idle
            # one's more, and a producer that stopped a while ago still shows its rates.
            newest = max((w.last_timestamp_ms or 0 for w in windows.values()), default=0)
            for w in windows.values():
                if w.first_timestamp_ms is not None:
                    w.seconds = max((newest - w.first_timestamp_ms) / 1000, 1e-3)
        return [windows[p] for p in numbers], not pending
    finally:
        await consumer.stop()
