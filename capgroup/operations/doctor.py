"""``capgroup doctor``: the configuration traps of a Kafka cluster, checked with their arithmetic.

Every check is a pure function: configuration values and measured figures in, a list of
:class:`Finding` out. Gathering the inputs (DescribeConfigs, DescribeGroups, offsets, a short
sample of high watermarks) is :mod:`capgroup.operations.doctor_gather`; rendering is
``capgroup doctor`` (:mod:`capgroup.cli.doctor_cmd`).

Each finding carries a stable check id (:data:`CHECK_IDS`), a severity (``info`` < ``warn`` <
``error``), the subject it is about (``topic:NAME``, ``group:ID``, ``broker:ID``,
``producer:NAME``), one line saying what is wrong, the evidence (the config values and
figures the arithmetic used, JSON-ready) and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from capgroup.runtime.lag import deleted_unconsumed, retention_margin_seconds

__all__ = [
    "CHECK_IDS",
    "SEVERITIES",
    "Finding",
    "GroupLagFigures",
    "Severity",
    "at_or_above",
    "check_capacity_headroom",
    "check_lag_vs_retention",
    "check_min_insync_replicas",
    "check_offsets_retention",
    "check_partition_count",
    "check_producer_durability",
    "check_range_assignor_imbalance",
    "check_segment_retention",
    "check_unclean_leader_election",
    "effective_max_retention_ms",
    "partitions_needed",
    "range_assignment",
    "sort_findings",
]

Severity = Literal["info", "warn", "error"]
#: Severities from least to most severe.
SEVERITIES: tuple[Severity, ...] = ("info", "warn", "error")

#: Every check id, as it appears in findings (stable: scripts and alerts key on them).
CHECK_IDS = (
    "offsets-retention",
    "segment-retention",
    "unclean-leader-election",
    "min-insync-replicas",
    "partition-count",
    "range-assignor-imbalance",
    "lag-vs-retention",
    "capacity-headroom",
    "producer-durability",
)

_DAY_MS = 86_400_000
#: A segment that takes this share of ``retention.ms`` or more to roll keeps records this much
#: longer than configured: worth a warning.
SEGMENT_OVERSHOOT_WARN = 0.25
#: The oldest unconsumed record has less than this share of ``retention.ms`` left: warn.
LAG_MARGIN_WARN = 0.25
#: An idle group with less than this share of ``offsets.retention.minutes`` left: warn.
OFFSETS_IDLE_WARN = 0.5


@dataclass(frozen=True, slots=True)
class Finding:
    """One trap found: what, where, how bad, from which figures, and the fix."""

    check: str
    severity: Severity
    subject: str
    message: str
    fix: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of a finding (keys sorted by the encoder)."""
        return {
            "check": self.check,
            "severity": self.severity,
            "subject": self.subject,
            "message": self.message,
            "evidence": dict(self.evidence),
            "fix": self.fix,
        }


def at_or_above(severity: Severity, threshold: Severity) -> bool:
    """Whether ``severity`` is at least ``threshold``."""
    return SEVERITIES.index(severity) >= SEVERITIES.index(threshold)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first, then by check id and subject, then message: a stable order."""
    return sorted(
        findings,
        key=lambda f: (-SEVERITIES.index(f.severity), f.check, f.subject, f.message),
    )


def _days(ms: float) -> float:
    return round(ms / _DAY_MS, 2)


# ------------------------------------------------------------ offsets-retention ------
def check_offsets_retention(
    group: str,
    *,
    offsets_retention_minutes: int | None,
    topic_retention_ms: Mapping[str, int | None],
    has_members: bool,
    idle_seconds: float | None,
) -> list[Finding]:
    """An empty group's committed offsets expire ``offsets.retention.minutes`` after it became
    empty (Kafka ≥ 2.1); it then restarts from ``auto.offset.reset``: reprocessing everything
    (earliest) or skipping everything in between (latest).

    ``idle_seconds`` is an upper bound of how long the group has been idle (now − timestamp
    of the newest record it consumed). A group with members keeps its offsets: no finding.
    Error when idle ≥ offsets retention; warn when offsets retention is shorter than a
    topic's retention (the records outlive the position) or less than half of it is left;
    info otherwise (the time left).
    """
    if has_members or offsets_retention_minutes is None:
        return []
    offsets_ms = offsets_retention_minutes * 60_000
    longer = sorted(
        t for t, r in topic_retention_ms.items() if r is not None and (r < 0 or r > offsets_ms)
    )
    evidence: dict[str, Any] = {
        "offsets_retention_minutes": offsets_retention_minutes,
        "offsets_retention_days": _days(offsets_ms),
        "idle_seconds_at_most": None if idle_seconds is None else round(idle_seconds, 1),
        "topic_retention_ms": {t: topic_retention_ms[t] for t in sorted(topic_retention_ms)},
        "topics_retained_longer": longer,
    }
    left = None if idle_seconds is None else offsets_ms / 1000 - idle_seconds
    evidence["offsets_expire_in_seconds_at_least"] = None if left is None else round(left, 1)
    subject = f"group:{group}"
    fix = (
        "keep the group running, or raise offsets.retention.minutes (broker) above the topics' "
        "retention.ms and the longest time the group may stay idle"
    )
    if left is not None and left <= 0:
        return [
            Finding(
                "offsets-retention",
                "error",
                subject,
                f"idle for up to {idle_seconds:.0f} s, past offsets.retention.minutes "
                f"({offsets_retention_minutes}): its offsets expire and it restarts from "
                "auto.offset.reset",
                fix,
                evidence,
            )
        ]
    if longer:
        return [
            Finding(
                "offsets-retention",
                "warn",
                subject,
                f"idle group: its offsets expire after {offsets_retention_minutes} min "
                f"({_days(offsets_ms)} d) idle, while {', '.join(longer)} keep records longer; "
                "it would then restart from auto.offset.reset (reprocess or skip)",
                fix,
                evidence,
            )
        ]
    if left is not None and left < offsets_ms / 1000 * OFFSETS_IDLE_WARN:
        return [
            Finding(
                "offsets-retention",
                "warn",
                subject,
                f"idle group: its offsets expire in {left:.0f} s or more",
                fix,
                evidence,
            )
        ]
    return [
        Finding(
            "offsets-retention",
            "info",
            subject,
            "idle group (no members): its offsets expire after "
            f"{offsets_retention_minutes} min idle",
            fix,
            evidence,
        )
    ]


# ------------------------------------------------------------ segment-retention ------
def effective_max_retention_ms(
    retention_ms: int, segment_bytes: int, segment_ms: int, bytes_per_second: float
) -> tuple[float, float]:
    """``(roll_ms, effective_ms)``: how long the active segment takes to roll at the produce
    rate (``min(segment.ms, segment.bytes ÷ rate)``) and the longest a record can then be kept
    (``retention.ms + roll time``): Kafka deletes closed segments only, once their newest
    record is past ``retention.ms``, so the first record of a segment waits for the segment
    to fill (or ``segment.ms``) and then for its last record to expire.

    200 MB/day with 1 GB segments and a 7-day retention: a segment rolls after 5 days, so
    records are kept up to 12 days."""
    by_size = segment_bytes / bytes_per_second * 1000 if bytes_per_second > 0 else math.inf
    roll_ms = min(float(segment_ms), by_size)
    return roll_ms, retention_ms + roll_ms


def check_segment_retention(
    topic: str,
    *,
    retention_ms: int | None,
    segment_bytes: int | None,
    segment_ms: int | None,
    bytes_per_second: float,
    cleanup_policy: str = "delete",
) -> list[Finding]:
    """Warn when a slow topic's segments roll so late that records are kept
    ``SEGMENT_OVERSHOOT_WARN`` × ``retention.ms`` or more past their retention."""
    if (
        retention_ms is None
        or retention_ms < 0
        or segment_bytes is None
        or segment_ms is None
        or "delete" not in cleanup_policy
    ):
        return []
    roll_ms, effective_ms = effective_max_retention_ms(
        retention_ms, segment_bytes, segment_ms, bytes_per_second
    )
    if roll_ms < retention_ms * SEGMENT_OVERSHOOT_WARN:
        return []
    evidence = {
        "retention_ms": retention_ms,
        "segment_bytes": segment_bytes,
        "segment_ms": segment_ms,
        "produce_bytes_per_second": round(bytes_per_second, 3),
        "produce_bytes_per_day": round(bytes_per_second * 86_400),
        "segment_roll_ms": round(roll_ms),
        "effective_max_retention_ms": round(effective_ms),
        "effective_max_retention_days": _days(effective_ms),
        "retention_days": _days(retention_ms),
    }
    return [
        Finding(
            "segment-retention",
            "warn",
            f"topic:{topic}",
            f"segments roll after {_days(roll_ms)} d at {bytes_per_second * 86_400:,.0f} B/day: "
            f"records are kept up to {_days(effective_ms)} d, not the {_days(retention_ms)} d "
            "of retention.ms",
            "lower segment.ms (e.g. to a tenth of retention.ms) or segment.bytes for this topic, "
            "so that segments close and expire close to retention.ms",
            evidence,
        )
    ]


# ------------------------------------------------------ unclean-leader-election ------
def check_unclean_leader_election(
    subject: str, enabled: bool | None, *, source: str | None = None
) -> list[Finding]:
    """Error when ``unclean.leader.election.enable`` is true for ``subject`` (``topic:T`` or
    ``broker:ID``): an out-of-sync replica may become leader and acknowledged records are
    lost."""
    if not enabled:
        return []
    return [
        Finding(
            "unclean-leader-election",
            "error",
            subject,
            "unclean.leader.election.enable is true: an out-of-sync replica can become leader "
            "and acknowledged records are lost",
            "set unclean.leader.election.enable=false "
            + ("on the broker" if subject.startswith("broker:") else "on the topic"),
            {"unclean.leader.election.enable": True, "source": source},
        )
    ]


# ---------------------------------------------------------- min-insync-replicas ------
def check_min_insync_replicas(
    topic: str, *, replication_factor: int, min_insync_replicas: int | None, brokers: int
) -> list[Finding]:
    """The three traps of ``min.insync.replicas`` against the replication factor:

    - RF 1: one disk or broker lost is the data lost (info only on a one-broker cluster,
      which cannot do better);
    - ``min.insync.replicas`` 1 with RF ≥ 3: ``acks=all`` is satisfied by the leader alone;
    - ``min.insync.replicas`` ≥ RF (with RF > 1), or above RF 1: one replica down (or always)
      and ``acks=all`` producers cannot write.
    """
    rf, mi = replication_factor, min_insync_replicas
    evidence = {
        "replication_factor": rf,
        "min.insync.replicas": mi,
        "brokers": brokers,
    }
    subject = f"topic:{topic}"
    found: list[Finding] = []
    if (mi is not None and mi > rf) or (rf > 1 and mi is not None and mi >= rf):
        found.append(
            Finding(
                "min-insync-replicas",
                "error",
                subject,
                f"min.insync.replicas {mi} ≥ replication factor {rf}: "
                + (
                    "acks=all producers can never write"
                    if mi > rf
                    else "one replica down and acks=all producers cannot write"
                ),
                f"set min.insync.replicas to {max(1, rf - 1)} (RF − 1), or raise the "
                "replication factor",
                evidence,
            )
        )
    if rf == 1:
        single = brokers <= 1
        found.append(
            Finding(
                "min-insync-replicas",
                "info" if single else "error",
                subject,
                "replication factor 1: losing one broker or disk loses the data"
                + (" (a one-broker cluster cannot replicate)" if single else ""),
                "recreate the topic (or reassign its partitions) with replication factor 3 and "
                "min.insync.replicas 2",
                evidence,
            )
        )
    elif rf >= 3 and mi == 1:
        found.append(
            Finding(
                "min-insync-replicas",
                "warn",
                subject,
                f"min.insync.replicas 1 with replication factor {rf}: acks=all is satisfied by "
                "the leader alone, so an acknowledged record may exist on one broker only",
                f"set min.insync.replicas to {rf - 1}",
                evidence,
            )
        )
    return found


# -------------------------------------------------------------- partition-count ------
def partitions_needed(
    target: float, produce_per_partition: float, consume_per_partition: float
) -> int:
    """``ceil(max(T ÷ P, T ÷ C))``: partitions needed for a target throughput ``T`` when one
    partition takes ``P`` produced and ``C`` consumed per second (same unit as ``T``)."""
    if produce_per_partition <= 0 or consume_per_partition <= 0:
        raise ValueError("per-partition rates must be positive")
    return math.ceil(max(target / produce_per_partition, target / consume_per_partition) - 1e-9)


def check_partition_count(
    topic: str,
    *,
    partitions: int,
    target_throughput: float,
    produce_per_partition: float | None,
    consume_per_partition: float | None,
) -> list[Finding]:
    """Warn when the topic has fewer partitions than ``max(T/P, T/C)``; error when fewer
    than half. Info when a rate could not be measured (nothing produced or consumed)."""
    evidence: dict[str, Any] = {
        "partitions": partitions,
        "target_throughput": target_throughput,
        "produce_per_partition": None
        if produce_per_partition is None
        else round(produce_per_partition, 3),
        "consume_per_partition": None
        if consume_per_partition is None
        else round(consume_per_partition, 3),
    }
    subject = f"topic:{topic}"
    if not produce_per_partition or not consume_per_partition:
        return [
            Finding(
                "partition-count",
                "info",
                subject,
                "per-partition produce or consume rate not measured (no traffic in the "
                "sample): partitions needed unknown",
                "sample while the topic is busy (--sample-seconds), or give --produce-rate "
                "and --consume-rate",
                evidence,
            )
        ]
    needed = partitions_needed(target_throughput, produce_per_partition, consume_per_partition)
    evidence["partitions_needed"] = needed
    if partitions >= needed:
        return []
    severity: Severity = "error" if partitions * 2 <= needed else "warn"
    return [
        Finding(
            "partition-count",
            severity,
            subject,
            f"{partitions} partitions, {needed} needed for {target_throughput:g}/s "
            f"(max(T/P, T/C) with P={produce_per_partition:.3g}/s, "
            f"C={consume_per_partition:.3g}/s per partition)",
            f"add partitions (kafka-topics --alter --partitions {needed}); keyed records move "
            "to other partitions, so plan it with their consumers",
            evidence,
        )
    ]


# ----------------------------------------------------- range-assignor-imbalance ------
def range_assignment(
    subscriptions: Mapping[str, Iterable[str]], partition_counts: Mapping[str, int]
) -> dict[str, int]:
    """Partitions each member gets from the range assignor: per topic, its subscribers sorted
    by member id share the partitions in ranges, the first ``P mod N`` taking one more."""
    counts = dict.fromkeys(subscriptions, 0)
    for topic in sorted(partition_counts):
        members = sorted(m for m, topics in subscriptions.items() if topic in set(topics))
        if not members:
            continue
        share, extra = divmod(partition_counts[topic], len(members))
        for i, member in enumerate(members):
            counts[member] += share + (1 if i < extra else 0)
    return counts


def check_range_assignor_imbalance(
    group: str,
    *,
    protocol: str,
    subscriptions: Mapping[str, Iterable[str]],
    partition_counts: Mapping[str, int],
) -> list[Finding]:
    """Warn when a range-assignor group's members get uneven shares: the most loaded member
    has at least 2 partitions and 25 % more than an even share (``ceil(total ÷ members)``).
    Range assigns each topic alone, so many small topics pile up on the first members."""
    if protocol != "range" or not subscriptions:
        return []
    counts = range_assignment(subscriptions, partition_counts)
    total = sum(counts.values())
    even = math.ceil(total / len(counts)) if counts else 0
    most, least = max(counts.values()), min(counts.values())
    if most - even < max(2, math.ceil(even * 0.25)):
        return []
    topics = sorted({t for ts in subscriptions.values() for t in ts if t in partition_counts})
    return [
        Finding(
            "range-assignor-imbalance",
            "warn",
            f"group:{group}",
            f"range assignor over {len(topics)} topics gives {len(counts)} members "
            f"{', '.join(str(c) for c in sorted(counts.values(), reverse=True))} partitions "
            f"(even share {even})",
            "use the cooperative-sticky or round-robin assignor (or capgroup's), or give the "
            "topics equal partition counts",
            {
                "protocol": protocol,
                "members": len(counts),
                "partitions_per_member": {m: counts[m] for m in sorted(counts)},
                "partition_counts": {t: partition_counts[t] for t in topics},
                "total_partitions": total,
                "even_share": even,
                "spread": most - least,
            },
        )
    ]


# ------------------------------------------------------------- lag-vs-retention ------
@dataclass(frozen=True, slots=True)
class GroupLagFigures:
    """One partition of a group: offsets, the oldest unconsumed record's timestamp and the
    topic's ``retention.ms``."""

    topic: str
    partition: int
    committed: int | None
    log_start: int | None
    high_watermark: int | None
    oldest_timestamp_ms: int | None
    retention_ms: int | None


def check_lag_vs_retention(
    group: str, partitions: Sequence[GroupLagFigures], now_s: float
) -> list[Finding]:
    """Per topic of the group, the partition with the least retention margin
    (:func:`capgroup.runtime.lag.retention_margin_seconds`: ``oldest unconsumed timestamp +
    retention.ms − now``). Error when records were deleted unconsumed (committed below the
    log start) or the margin is gone; warn when less than ``LAG_MARGIN_WARN`` of
    ``retention.ms`` is left."""
    found: list[Finding] = []
    by_topic: dict[str, list[GroupLagFigures]] = {}
    for p in partitions:
        by_topic.setdefault(p.topic, []).append(p)
    for topic in sorted(by_topic):
        worst: tuple[float, GroupLagFigures, int, int] | None = None
        lost_total = 0
        for p in sorted(by_topic[topic], key=lambda x: x.partition):
            if p.committed is None or p.high_watermark is None:
                continue
            lost = deleted_unconsumed(p.committed, p.log_start or 0)
            lost_total += lost
            lag = max(p.high_watermark - p.committed, 0)
            margin = retention_margin_seconds(p.retention_ms, lag, p.oldest_timestamp_ms, now_s)
            if margin is None or lag <= 0:
                continue
            if worst is None or margin < worst[0]:
                worst = (margin, p, lag, lost)
        subject = f"group:{group}"
        if lost_total:
            found.append(
                Finding(
                    "lag-vs-retention",
                    "error",
                    subject,
                    f"{lost_total} records of {topic} were deleted by retention before the "
                    "group consumed them",
                    "add consumers (or capacity) and raise the topic's retention.ms",
                    {"topic": topic, "records_deleted_unconsumed": lost_total},
                )
            )
        if worst is None:
            continue
        margin, p, lag, _ = worst
        assert p.retention_ms is not None
        if margin >= p.retention_ms / 1000 * LAG_MARGIN_WARN:
            continue
        severity: Severity = "error" if margin <= 0 else "warn"
        found.append(
            Finding(
                "lag-vs-retention",
                severity,
                subject,
                f"{topic}[{p.partition}]: the oldest unconsumed record is eligible for deletion "
                + (
                    f"since {-margin:.0f} s"
                    if margin <= 0
                    else f"in {margin:.0f} s ({100 * margin * 1000 / p.retention_ms:.0f} % of "
                    "retention.ms left)"
                ),
                "add consumers or capacity to the group, or raise the topic's retention.ms",
                {
                    "topic": topic,
                    "partition": p.partition,
                    "lag_records": lag,
                    "committed": p.committed,
                    "high_watermark": p.high_watermark,
                    "oldest_timestamp_ms": p.oldest_timestamp_ms,
                    "lag_seconds": round(now_s - (p.oldest_timestamp_ms or 0) / 1000, 1),
                    "retention_ms": p.retention_ms,
                    "retention_margin_seconds": round(margin, 1),
                },
            )
        )
    return found


# ------------------------------------------------------------ capacity-headroom ------
def check_capacity_headroom(
    group: str,
    *,
    capacity_aware: bool,
    members: int,
    unassigned: int,
    headroom: int | None,
    headroom_wanted: int,
    capacity_partitions: int | None,
    demand_partitions: int,
    replicas_wanted: int | None,
) -> list[Finding]:
    """For a capgroup group (``capacity_aware``): error with unassigned partitions (nobody
    consumes them), warn with less than ``headroom_wanted`` members of N+k headroom."""
    if not capacity_aware:
        return []
    evidence = {
        "members": members,
        "unassigned_partitions": unassigned,
        "headroom_members": headroom,
        "headroom_wanted": headroom_wanted,
        "capacity_partitions": capacity_partitions,
        "demand_partitions": demand_partitions,
        "replicas_wanted": replicas_wanted,
    }
    subject = f"group:{group}"
    fix = (
        f"scale the group to {replicas_wanted} members (replicas wanted), or raise the "
        "members' partition cap or memory budget"
    )
    if unassigned:
        return [
            Finding(
                "capacity-headroom",
                "error",
                subject,
                f"{unassigned} partitions unassigned: capacity {capacity_partitions} of "
                f"{demand_partitions} partitions",
                fix,
                evidence,
            )
        ]
    if headroom is not None and headroom < headroom_wanted:
        return [
            Finding(
                "capacity-headroom",
                "warn",
                subject,
                f"headroom {headroom} members, {headroom_wanted} wanted: losing "
                f"{headroom + 1} member(s) leaves partitions unconsumed",
                fix,
                evidence,
            )
        ]
    return []


# ---------------------------------------------------------- producer-durability ------
def check_producer_durability(name: str, options: Mapping[str, Any] | None) -> list[Finding]:
    """capgroup's own producers (dead-letter, relay) must use ``acks=all`` and idempotence,
    or a record the runtime commits past may be lost or duplicated. ``options`` are the
    keyword arguments the code passes to ``AIOKafkaProducer`` (None: not found)."""
    subject = f"producer:{name}"
    if options is None:
        return [
            Finding(
                "producer-durability",
                "info",
                subject,
                "producer not present in this build: not checked",
                "none",
                {},
            )
        ]
    acks = options.get("acks")
    idempotent = bool(options.get("enable_idempotence")) or (
        options.get("transactional_id") is not None
    )
    evidence = {"acks": acks, "enable_idempotence": idempotent}
    if acks in ("all", -1) and idempotent:
        return []
    return [
        Finding(
            "producer-durability",
            "error",
            subject,
            f"acks={acks!r}, enable_idempotence={idempotent}: a record may be lost or written "
            "twice after a retry",
            "create the producer with acks='all' and enable_idempotence=True",
            evidence,
        )
    ]
