"""Prometheus metrics of a :class:`~capgroup.BatchingConsumer`, read at scrape time.

:class:`ConsumerCollector` keeps no counters of its own: every scrape takes one
``consumer.stats`` snapshot and one ``consumer.membership`` snapshot and turns them into
metric families, so the exported values are exactly what the runtime counted (nothing can
drift, and nothing is counted twice). Every sample carries ``group`` and ``member`` labels;
per-partition samples add ``topic`` and ``partition``.

``member`` is the static ``group_instance_id`` when there is one (the StatefulSet pod name
in Kubernetes), else the member id the coordinator gave this member (empty before the first
join; a new one if the coordinator forgets the member): unique per member, where the host name
made two members on one host collide. The member id is also a label of
``capgroup_member_info``.

The ``capgroup_group_*`` gauges are group-wide figures the leader sends every member with its
assignment, so any member's scrape answers and every member exports the same value: aggregate
with ``max by (group) (...)``, never ``sum``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from capgroup.membership.model import MembershipSnapshot, MemberState
from capgroup.runtime.stats import ConsumerStats, Counters, PartitionLag
from capgroup.settings import CapgroupSettings
from capgroup.types import TopicPartition

__all__ = [
    "EXPORTED_COUNTER_FIELDS",
    "MEMORY_PRESSURE_LEVELS",
    "METRIC_PREFIX",
    "ConsumerCollector",
    "ObservableConsumer",
    "member_label",
    "metrics_registry",
    "render_metrics",
]

METRIC_PREFIX = "capgroup_"

#: Values of ``ConsumerStats.memory_pressure``; each gets a 0/1 sample so that alerts can
#: match a level without knowing the others.
MEMORY_PRESSURE_LEVELS = ("off", "normal", "soft", "hard")


class ObservableConsumer(Protocol):
    """What the exporter and health checks read; :class:`~capgroup.BatchingConsumer` has it.

    A protocol rather than the class itself, so that the runtime can start the operations
    server without an import cycle.
    """

    @property
    def settings(self) -> CapgroupSettings:
        """The consumer's settings (group id, instance id, client id)."""

    @property
    def stats(self) -> ConsumerStats:
        """A snapshot of the counters and gauges."""

    @property
    def membership(self) -> MembershipSnapshot | None:
        """The membership engine's snapshot; None before the consumer runs."""

    @property
    def healthy(self) -> bool:
        """False after a stopped partition or a fatal error."""


@dataclass(frozen=True, slots=True)
class _Counter:
    """One counter family filled from a field of :class:`Counters`."""

    name: str
    doc: str
    #: ``(field of Counters, extra label value)`` pairs; one sample each.
    fields: tuple[tuple[str, str], ...]
    label: str | None = None


def _single(name: str, field: str, doc: str) -> _Counter:
    return _Counter(name, doc, ((field, ""),))


_COUNTERS: tuple[_Counter, ...] = (
    _single("records_in", "records_in", "Records accepted into partition buffers."),
    _single("bytes_in", "bytes_in", "Bytes (key + value + headers) accepted into buffers."),
    _single("batches_flushed", "batches_flushed", "Batches whose flush returned."),
    _single("records_flushed", "records_flushed", "Records in batches whose flush returned."),
    _single("bytes_flushed", "bytes_flushed", "Bytes in batches whose flush returned."),
    _single("flush_retries", "flush_retries", "Failed flush calls that were retried."),
    _single("flush_failures", "flush_failures", "Batches whose flush failed after every retry."),
    _single(
        "records_dead_lettered",
        "records_dead_lettered",
        "Records produced to the dead-letter topic.",
    ),
    _single(
        "records_undecodable",
        "records_undecodable",
        "Records deserialize raised on (handled by deserialize_failure_policy).",
    ),
    _single(
        "records_skipped",
        "records_skipped",
        "Records skipped unbuffered (deserialize returned None, or raised under skip).",
    ),
    _single(
        "batches_discarded",
        "batches_discarded",
        "Batches dropped unflushed (revoke DISCARD, deadline overrun, loss, stopped partition).",
    ),
    _single("records_discarded", "records_discarded", "Records in batches dropped unflushed."),
    _Counter(
        "commits",
        "Offset commit requests by result: ok, fenced (generation lost or member fenced), "
        "failed (retried with the next flush).",
        (("commits", "ok"), ("commits_fenced", "fenced"), ("commit_failures", "failed")),
        label="result",
    ),
    _single("rebalances", "rebalances", "Assignment changes applied (revoke, assign, lost)."),
    _single("partitions_assigned", "partitions_assigned", "Partitions gained."),
    _single("partitions_revoked", "partitions_revoked", "Partitions given up in a rebalance."),
    _single("partitions_lost", "partitions_lost", "Partitions lost with the generation."),
    _Counter(
        "revoke_decisions",
        "Revoked partitions' buffered batches by decision: flush, discard, or overrun (a "
        "flush cancelled at the revoke deadline).",
        (("revoke_flush", "flush"), ("revoke_discard", "discard"), ("revoke_overrun", "overrun")),
        label="decision",
    ),
    _single(
        "partition_pauses",
        "partition_pauses",
        "Times one partition's fetching paused because it held a whole batch.",
    ),
    _single(
        "budget_pauses",
        "budget_pauses",
        "Times all fetching paused at the memory budget or the hard RSS limit.",
    ),
    _single(
        "memory_pressure_events", "memory_pressure_events", "Times the RSS watchdog level rose."
    ),
    _single(
        "partitions_stopped",
        "partitions_stopped",
        "Partitions ever stopped (flush failure, failed on_partitions_assigned, ...).",
    ),
    _single(
        "records_deleted_unconsumed",
        "records_deleted_unconsumed",
        "Records deleted by retention before the group consumed them (committed offset below "
        "the log start offset): data loss.",
    ),
    _single(
        "records_relayed",
        "records_relayed",
        "Records relayed to another member's partition (relay_enabled), once acknowledged.",
    ),
    _Counter(
        "range_jobs",
        "Range jobs this member's worker finished, by outcome: done (flushed, then reported), "
        "dead_lettered (flush failed for good, records in the dead-letter topic) or failed "
        "(offered again).",
        (
            ("range_jobs_done", "done"),
            ("range_jobs_dead_lettered", "dead_lettered"),
            ("range_jobs_failed", "failed"),
        ),
        label="outcome",
    ),
    _single(
        "range_job_records",
        "range_job_records",
        "Records flushed by the range jobs this member's worker finished.",
    ),
)

#: Upper bounds of the ``capgroup_relay_hops`` histogram's buckets.
RELAY_HOPS_BUCKETS = (1, 2, 3, 5, 10)

#: Fields of :class:`Counters` that have a metric (a test checks that this is all of them, so
#: a counter added to the runtime without a metric fails the suite).
EXPORTED_COUNTER_FIELDS = frozenset(field for counter in _COUNTERS for field, _ in counter.fields)


def member_label(settings: CapgroupSettings, member_id: str = "") -> str:
    """The ``member`` label: the static instance id, else the member id (unique per member;
    empty before the member first joins)."""
    return settings.group_instance_id or member_id


#: The group figures of :class:`~capgroup.protocol.AssignmentInfo` exported as
#: ``capgroup_group_<name>`` gauges, with their help text.
_GROUP_FIGURES: tuple[tuple[str, str], ...] = (
    ("unassigned", "Partitions no member could take in this generation (capacity shortfall)."),
    ("pending", "Partitions withheld for one round while they move (another rebalance is due)."),
    ("members", "Members in this generation (draining and rejected ones included)."),
    ("capacity_partitions", "Partitions the live (not draining) members can hold."),
    ("demand_partitions", "Partitions of the subscribed topics."),
    ("capacity_bytes", "Sum of the live members' memory budgets."),
    ("demand_bytes", "Bytes holding every partition costs at the typical member's costs."),
    (
        "headroom_members",
        "Members, largest first, the group can lose and still place every partition.",
    ),
    (
        "replicas_wanted",
        "Members needed to place every partition with CAPGROUP_AUTOSCALE_HEADROOM_MEMBERS "
        "spare (the autoscaling target).",
    ),
)


class ConsumerCollector(Collector):
    """A Prometheus collector reading a consumer's snapshots at each scrape."""

    def __init__(self, consumer: ObservableConsumer) -> None:
        """Export ``consumer``; nothing is read until the first scrape."""
        self._consumer = consumer
        settings = consumer.settings
        # Refreshed at every scrape: the member id is known only once the member joins.
        self._base = (settings.group_id, member_label(settings))

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not take a snapshot of a consumer not yet
        running (prometheus_client would otherwise call :meth:`collect` to learn names)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Metric families from one stats snapshot and one membership snapshot."""
        stats = self._consumer.stats
        snapshot = self._consumer.membership
        settings = self._consumer.settings
        self._base = (
            settings.group_id,
            member_label(settings, "" if snapshot is None else snapshot.member_id),
        )
        yield from self._counters(stats.counters)
        yield from self._gauges(stats)
        yield from self._partitions(stats)
        yield from self._lag(stats)
        yield from self._relay(stats)
        yield from self._range_jobs(stats)
        yield from self._membership(snapshot)
        yield from self._group_figures(snapshot)
        yield self._gauge(
            "healthy",
            "1 unless the member owns a stopped partition or failed fatally.",
            1.0 if self._consumer.healthy else 0.0,
        )

    # ----------------------------------------------------------------- builders ------
    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(METRIC_PREFIX + name, doc, labels=["group", "member"])
        family.add_metric(list(self._base), value)
        return family

    def _counters(self, counters: Counters) -> Iterator[Metric]:
        for spec in _COUNTERS:
            labels = ["group", "member"] + ([spec.label] if spec.label else [])
            family = CounterMetricFamily(METRIC_PREFIX + spec.name, spec.doc, labels=labels)
            for field, value in spec.fields:
                extra = [value] if spec.label else []
                family.add_metric([*self._base, *extra], getattr(counters, field))
            yield family

    def _gauges(self, stats: ConsumerStats) -> Iterator[Metric]:
        yield self._gauge(
            "buffered_bytes",
            "Bytes held by partition buffers and in-flight flushes.",
            stats.buffered_bytes,
        )
        yield self._gauge("budget_bytes", "Memory budget of partition buffers.", stats.budget_bytes)
        yield self._gauge(
            "budget_utilisation_ratio", "buffered_bytes / budget_bytes.", stats.utilisation
        )
        yield self._gauge(
            "advertised_max_partitions",
            "max_partitions advertised to the assignor (lowered under RSS pressure).",
            stats.advertised_max_partitions,
        )
        yield self._gauge(
            "owned_partitions", "Partitions assigned to this member now.", stats.owned_partitions
        )
        yield self._gauge(
            "stopped_partitions",
            "Owned partitions that are stopped (flush failure, failed on_partitions_assigned).",
            len(stats.stopped_partitions),
        )
        yield self._gauge("rss_bytes", "Latest RSS sample of the process.", stats.rss_bytes)
        yield self._gauge("peak_rss_bytes", "Highest RSS sample so far.", stats.peak_rss_bytes)
        pressure = GaugeMetricFamily(
            METRIC_PREFIX + "memory_pressure",
            "RSS watchdog level: 1 for the current level (off without a memory limit).",
            labels=["group", "member", "level"],
        )
        for level in MEMORY_PRESSURE_LEVELS:
            pressure.add_metric(
                [*self._base, level], 1.0 if stats.memory_pressure == level else 0.0
            )
        yield pressure
        yield self._gauge(
            "fetch_paused",
            "1 while all fetching is paused (budget, hard RSS limit or shutdown).",
            1.0 if stats.fetch_paused else 0.0,
        )
        yield self._gauge(
            "flush_throughput_bytes_per_second",
            "Measured flush throughput (moving average) used by the revoke decision.",
            stats.flush_bytes_per_second,
        )

    def _relay(self, stats: ConsumerStats) -> Iterator[Metric]:
        hops = HistogramMetricFamily(
            METRIC_PREFIX + "relay_hops",
            "Relayed records by the capgroup.relay.hops header they were produced with.",
            labels=["group", "member"],
        )
        buckets = [
            (str(bound), float(sum(n for h, n in stats.relay_hops.items() if h <= bound)))
            for bound in RELAY_HOPS_BUCKETS
        ]
        total = float(sum(stats.relay_hops.values()))
        buckets.append(("+Inf", total))
        hops.add_metric(
            list(self._base),
            buckets,
            float(sum(h * n for h, n in stats.relay_hops.items())),
        )
        yield hops
        yield self._gauge(
            "relay_lag_records",
            "Lag (records, latest sample) of the partitions this member relays now.",
            stats.relay_lag_records,
        )

    def _range_jobs(self, stats: ConsumerStats) -> Iterator[Metric]:
        yield self._gauge(
            "range_jobs_running",
            "Range jobs this member's worker holds now (claimed or being processed).",
            stats.range_jobs_running,
        )
        progress = stats.range_jobs
        yield self._per_partition(
            "range_jobs_frontier_offset",
            "Committed frontier of a partition this member schedules range jobs for: every "
            "offset below it is done.",
            {tp: p.frontier for tp, p in progress.items()},
        )
        yield self._per_partition(
            "range_jobs_outstanding",
            "Range jobs of a partition offered or running, or cut and waiting to be offered.",
            {tp: p.outstanding for tp, p in progress.items()},
        )
        yield self._per_partition(
            "range_jobs_finished_ahead_offsets",
            "Offsets finished by range jobs beyond the frontier (in the commit metadata), "
            "waiting for the jobs before them.",
            {tp: p.finished_ahead_offsets for tp, p in progress.items()},
        )

    def _per_partition(self, name: str, doc: str, values: Mapping[TopicPartition, float]) -> Metric:
        family = GaugeMetricFamily(
            METRIC_PREFIX + name, doc, labels=["group", "member", "topic", "partition"]
        )
        for tp in sorted(values):
            family.add_metric([*self._base, tp.topic, str(tp.partition)], values[tp])
        return family

    def _partitions(self, stats: ConsumerStats) -> Iterator[Metric]:
        yield self._per_partition(
            "partition_buffered_bytes",
            "Bytes held by one partition's buffer and in-flight flushes.",
            {tp: float(n) for tp, n in stats.buffered_bytes_by_partition.items()},
        )
        yield self._per_partition(
            "partition_ingress_records_per_second",
            "Ingress rate of an owned partition as advertised to the assignor.",
            stats.ingress_rates,
        )
        yield self._per_partition(
            "partition_stopped",
            "1 for an owned partition that is stopped (moved-away ones are not listed).",
            dict.fromkeys(stats.stopped_partitions, 1.0),
        )
        yield self._per_partition(
            "partition_stopped_offset",
            "Offset a stopped partition stopped at (nothing is committed past it).",
            {
                tp: float(stop.offset)
                for tp, stop in stats.stopped.items()
                if stop.offset is not None
            },
        )

    def _lag(self, stats: ConsumerStats) -> Iterator[Metric]:
        """Lag and retention figures: ``owner="member"`` for partitions this member owns,
        ``owner="none"`` for unassigned ones (exported by the leader only)."""
        figures = [stats.lag[tp] for tp in sorted(stats.lag)]
        specs: tuple[tuple[str, str, Callable[[PartitionLag], float | None]], ...] = (
            (
                "partition_lag_records",
                "High watermark minus committed offset (owner=none: unassigned, on the leader).",
                lambda f: float(f.lag_records),
            ),
            (
                "partition_lag_seconds",
                "Age of the oldest unconsumed record (now minus its timestamp); 0 without lag.",
                lambda f: f.lag_seconds,
            ),
            (
                "partition_retention_margin_seconds",
                "Time before the oldest unconsumed record is eligible for time-based deletion "
                "(a lower bound; negative once eligible; absent for infinite retention).",
                lambda f: f.retention_margin_seconds,
            ),
        )
        for name, doc, read in specs:
            family = GaugeMetricFamily(
                METRIC_PREFIX + name,
                doc,
                labels=["group", "member", "topic", "partition", "owner"],
            )
            for figure in figures:
                value = read(figure)
                if value is None:
                    continue
                owner = "member" if figure.owned else "none"
                family.add_metric(
                    [*self._base, figure.tp.topic, str(figure.tp.partition), owner], value
                )
            yield family

    def _membership(self, snapshot: MembershipSnapshot | None) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            METRIC_PREFIX + "member_state",
            "Group protocol state: 1 for the current state.",
            labels=["group", "member", "state"],
        )
        current = None if snapshot is None else snapshot.state
        for candidate in MemberState:
            value = 1.0 if candidate is current else 0.0
            state.add_metric([*self._base, candidate.value], value)
        yield state
        yield self._gauge(
            "generation",
            "Generation id the member is in (-1 when in none).",
            -1 if snapshot is None else snapshot.generation_id,
        )
        yield self._gauge(
            "leader",
            "1 while this member leads the group (runs the assignor).",
            1.0 if snapshot is not None and snapshot.is_leader else 0.0,
        )
        info = GaugeMetricFamily(
            METRIC_PREFIX + "member_info",
            "Identity of the member; the value is always 1.",
            labels=["group", "member", "member_id", "instance_id", "client_id"],
        )
        settings = self._consumer.settings
        info.add_metric(
            [
                *self._base,
                "" if snapshot is None else snapshot.member_id,
                settings.group_instance_id or "",
                settings.client_id,
            ],
            1.0,
        )
        yield info
        joins = CounterMetricFamily(
            METRIC_PREFIX + "group_joins",
            "Join/sync rounds completed by the membership engine.",
            labels=["group", "member"],
        )
        joins.add_metric(list(self._base), 0 if snapshot is None else snapshot.rebalances)
        yield joins
        if snapshot is not None and snapshot.last_rebalance_seconds is not None:
            yield self._gauge(
                "last_rebalance_duration_seconds",
                "Duration of the latest join/sync round.",
                snapshot.last_rebalance_seconds,
            )
        advertised = None if snapshot is None else snapshot.advertised
        if advertised is not None:
            yield self._gauge(
                "advertised_budget_bytes",
                "memory_budget_bytes in the latest capacity advertisement.",
                advertised.memory_budget_bytes,
            )
            yield self._gauge(
                "advertised_weight", "Weight in the latest advertisement.", advertised.weight
            )
            yield self._gauge(
                "draining",
                "1 when the latest advertisement asks for no partitions (scale-down).",
                1.0 if advertised.draining else 0.0,
            )

    def _group_figures(self, snapshot: MembershipSnapshot | None) -> Iterator[Metric]:
        """``capgroup_group_*``: what the leader sent with the current generation's
        assignment; no sample outside a generation, or for a figure the leader did not send."""
        info = None if snapshot is None else snapshot.group_figures
        for name, doc in _GROUP_FIGURES:
            family = GaugeMetricFamily(
                f"{METRIC_PREFIX}group_{name}_partitions"
                if name in ("unassigned", "pending")
                else f"{METRIC_PREFIX}group_{name}",
                doc,
                labels=["group", "member"],
            )
            value = None if info is None else getattr(info, name)
            if value is not None:
                family.add_metric(list(self._base), value)
            yield family


def metrics_registry(consumer: ObservableConsumer, *, process: bool = True) -> CollectorRegistry:
    """A registry with ``consumer``'s collector (and, by default, the standard ``process_*``
    metrics: CPU seconds, open file descriptors, start time).

    A registry of its own rather than prometheus_client's global one: two consumers in one
    process (tests, an embedding service) must not collide.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ConsumerCollector(consumer))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render_metrics(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The registry in the format the ``Accept`` header asks for (Prometheus text unless it
    asks for OpenMetrics); returns the body and its content type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
