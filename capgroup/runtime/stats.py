"""Counters and gauges of a :class:`~capgroup.BatchingConsumer`, kept in one place.

The runtime increments :class:`Counters` as things happen; :class:`ConsumerStats` is the
immutable snapshot readers get (a metrics exporter, a health endpoint, tests), with gauges
filled in at the moment it is taken. :class:`IngressRates` turns samples of partition high
watermarks into the per-partition records/s the member advertises to the assignor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from capgroup.types import TopicPartition

__all__ = [
    "ConsumerStats",
    "Counters",
    "IngressRates",
    "PartitionLag",
    "RangeJobsProgress",
    "StoppedPartition",
]


@dataclass(slots=True)
class Counters:
    """Monotonic counters since the consumer started. Mutated only by the runtime."""

    #: Records accepted into partition buffers (duplicates after a seek are not counted).
    records_in: int = 0
    #: Bytes (key + value + headers) accepted into partition buffers.
    bytes_in: int = 0
    #: Batches whose ``flush`` returned.
    batches_flushed: int = 0
    records_flushed: int = 0
    bytes_flushed: int = 0
    #: Failed ``flush`` calls that were retried.
    flush_retries: int = 0
    #: Batches whose flush failed after every retry.
    flush_failures: int = 0
    #: Records produced to the dead-letter topic (failed batches and undecodable records).
    records_dead_lettered: int = 0
    #: Records ``deserialize`` raised on (each handled by ``deserialize_failure_policy``).
    records_undecodable: int = 0
    #: Records skipped unbuffered: ``deserialize`` returned None, or raised under ``skip``.
    records_skipped: int = 0
    #: Batches dropped unflushed (revoke DISCARD, overrun deadline, loss, stopped partition).
    batches_discarded: int = 0
    records_discarded: int = 0
    #: Successful offset commits (one request may cover several partitions).
    commits: int = 0
    #: Commits refused because the generation was lost or the member fenced.
    commits_fenced: int = 0
    #: Commits that failed otherwise (retried with the next flush).
    commit_failures: int = 0
    #: Assignment changes applied by this member (revoke, assign and lost callbacks).
    rebalances: int = 0
    partitions_assigned: int = 0
    partitions_revoked: int = 0
    partitions_lost: int = 0
    #: Revoke decisions: FLUSH, DISCARD, and FLUSHes cancelled at the deadline.
    revoke_flush: int = 0
    revoke_discard: int = 0
    revoke_overrun: int = 0
    #: Times one partition was paused because it held a whole batch.
    partition_pauses: int = 0
    #: Times all fetching paused because the buffers reached the memory budget or RSS the
    #: hard limit.
    budget_pauses: int = 0
    #: Times the RSS watchdog raised its level.
    memory_pressure_events: int = 0
    #: Partitions stopped (flush failure, failed ``on_partitions_assigned``, ...), ever.
    partitions_stopped: int = 0
    #: Records deleted by retention before the group consumed them (committed offset below
    #: the log start offset; each gap counted once): data loss.
    records_deleted_unconsumed: int = 0
    #: Records relayed to another partition (``relay_enabled``), once acknowledged.
    records_relayed: int = 0
    #: Range jobs this member's worker flushed and reported done, and their records.
    range_jobs_done: int = 0
    range_job_records: int = 0
    #: Range jobs that failed (flush failed after every retry, or a record ``deserialize``
    #: raised on under ``stop_partition``): reported failed, offered again.
    range_jobs_failed: int = 0
    #: Range jobs whose flush failed for good and whose records went to the dead-letter topic
    #: (``flush_failure_policy=dead_letter``): done.
    range_jobs_dead_lettered: int = 0


@dataclass(frozen=True, slots=True)
class StoppedPartition:
    """An owned partition that is stopped: held, never committed past ``offset``."""

    tp: TopicPartition
    #: Why: ``flush_failed``, ``on_partitions_assigned_failed``, or another runtime's reason.
    reason: str
    #: The first offset not processed: where the partition resumes (on its next owner, or
    #: here after a restart); None when unknown.
    offset: int | None


@dataclass(frozen=True, slots=True)
class RangeJobsProgress:
    """Where the range jobs of one partition this member schedules stand."""

    #: The committed frontier: every offset below it is done.
    frontier: int
    #: Jobs offered or running, and cut but not offered yet.
    outstanding: int
    #: Offsets of the jobs finished beyond the frontier (recorded in the commit metadata),
    #: waiting for the jobs before them.
    finished_ahead_offsets: int


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """A consistent snapshot of a consumer's counters and gauges."""

    counters: Counters
    #: Partitions owned now.
    owned_partitions: int
    #: ``max_partitions`` advertised now (lower than configured under RSS pressure).
    advertised_max_partitions: int
    #: The member's buffer budget in bytes.
    budget_bytes: int
    #: Bytes held by buffers and in-flight flushes, in total and per partition.
    buffered_bytes: int
    buffered_bytes_by_partition: Mapping[TopicPartition, int]
    #: ``buffered_bytes / budget_bytes``.
    utilisation: float
    #: Latest and highest RSS sample of the process, in bytes.
    rss_bytes: int
    peak_rss_bytes: int
    #: RSS watchdog level ("normal", "soft", "hard"; "off" without a memory limit).
    memory_pressure: str
    #: Whether all fetching is paused (budget reached, hard RSS limit or shutdown).
    fetch_paused: bool
    #: Owned partitions that are stopped (the member is unhealthy while it owns one); a
    #: partition that moved away is no longer listed.
    stopped_partitions: frozenset[TopicPartition]
    #: Measured flush throughput (EWMA), used by the default revoke decision.
    flush_bytes_per_second: float
    #: Ingress rates advertised to the assignor, records/s.
    ingress_rates: Mapping[TopicPartition, float]
    #: The stopped partitions with why and where they stopped (keys: ``stopped_partitions``).
    stopped: Mapping[TopicPartition, StoppedPartition] = field(default_factory=dict)
    #: Lag and retention figures of owned partitions (and, on the leader, of unassigned
    #: ones), from the latest lag sample (:mod:`capgroup.runtime.lag`).
    lag: Mapping[TopicPartition, PartitionLag] = field(default_factory=dict)
    #: Relayed records by the ``capgroup.relay.hops`` they were produced with.
    relay_hops: Mapping[int, int] = field(default_factory=dict)
    #: Lag (records, latest sample) of the partitions relaying now.
    relay_lag_records: int = 0
    #: Per owned partition, where the group's committed offset stands as far as this member
    #: knows: its last commit the coordinator acknowledged, else the offset it started from
    #: (the next record to read either way; every record before it is flushed and settled).
    committed_offsets: Mapping[TopicPartition, int] = field(default_factory=dict)
    #: Range jobs this member's worker holds now (claimed or being processed).
    range_jobs_running: int = 0
    #: The partitions this member schedules range jobs for now (range jobs on).
    range_jobs: Mapping[TopicPartition, RangeJobsProgress] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition's lag and retention risk, as of one lag sample."""

    tp: TopicPartition
    #: True for a partition this member owns; False for one nobody owns (leader only).
    owned: bool
    #: High watermark (the last stable offset under ``read_committed``).
    end_offset: int
    #: Log start offset (the first offset retention has not deleted).
    log_start_offset: int
    #: The group's committed offset (for an owned partition without a commit: the position
    #: it started at); None when nothing is committed for an unassigned partition.
    committed: int | None
    #: ``end_offset - committed`` (0 when the committed offset is at or past the end).
    lag_records: int
    #: Age of the oldest unconsumed record (now − its timestamp); 0 without lag; None when
    #: its timestamp is not known yet.
    lag_seconds: float | None
    #: Time left before the oldest unconsumed record is eligible for time-based deletion (a
    #: lower bound: see :func:`capgroup.runtime.lag.retention_margin_seconds`); None when
    #: retention is infinite or unknown.
    retention_margin_seconds: float | None


class IngressRates:
    """Per-partition ingress rates (records/s) from successive high-watermark samples.

    Each sample's rate is ``Δ end offset / Δ t``; rates are smoothed with an exponentially
    weighted moving average. Partitions missing from a sample are forgotten, so a partition
    given up and later regained starts afresh.
    """

    __slots__ = ("_last", "_rates", "alpha")

    def __init__(self, alpha: float = 0.5) -> None:
        """``alpha`` is the weight of each new sample, in (0, 1]."""
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._last: dict[TopicPartition, tuple[float, int]] = {}
        self._rates: dict[TopicPartition, float] = {}

    def observe(self, now: float, end_offsets: Mapping[TopicPartition, int]) -> None:
        """Fold in the high watermarks sampled at clock value ``now``."""
        for tp in list(self._last):
            if tp not in end_offsets:
                del self._last[tp]
                self._rates.pop(tp, None)
        for tp, end in end_offsets.items():
            previous = self._last.get(tp)
            self._last[tp] = (now, end)
            if previous is None or now <= previous[0]:
                continue
            # A truncated or recreated partition can move its end backwards: count as idle.
            rate = max(end - previous[1], 0) / (now - previous[0])
            old = self._rates.get(tp)
            self._rates[tp] = rate if old is None else old + self.alpha * (rate - old)

    def rates(self) -> dict[TopicPartition, float]:
        """Current smoothed rates (partitions with fewer than two samples are absent)."""
        return dict(self._rates)
