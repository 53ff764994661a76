"""The I/O edge of ``capgroup doctor``: ask the cluster for the figures the pure checks of
:mod:`capgroup.operations.doctor` need, and run them.

Every client is built from the connection settings (:mod:`capgroup.connection`, TLS and SASL
included). What is asked:

- the brokers (Metadata) and their configuration (DescribeConfigs, per broker):
  ``unclean.leader.election.enable``, ``offsets.retention.minutes``;
- the topics (``--topic``, else every non-internal topic, plus the groups' topics for the
  group checks): partitions and replicas (Metadata) and configuration (DescribeConfigs);
- the groups (``--group``, else every consumer group ListGroups returns), each through
  :func:`capgroup.operations.describe.describe_group`;
- a sample: high watermarks and the groups' committed offsets twice, ``sample_seconds`` apart
  (per-partition produce and consume rates), the key + value sizes of up to
  :data:`SIZE_SAMPLE_RECORDS` recent records per partition (average record size), and the
  timestamps of the oldest unconsumed record (lag) and the newest consumed one (idle time);
- capgroup's own producers' options, read from the code that builds them.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from capgroup.connection import ClientRole, client_options
from capgroup.membership.transport import bootstrap_with_retries
from capgroup.operations.describe import GroupNotFoundError, GroupState, describe_group
from capgroup.operations.doctor import (
    Finding,
    GroupLagFigures,
    check_capacity_headroom,
    check_lag_vs_retention,
    check_min_insync_replicas,
    check_offsets_retention,
    check_partition_count,
    check_producer_durability,
    check_range_assignor_imbalance,
    check_segment_retention,
    check_unclean_leader_election,
    sort_findings,
)
from capgroup.settings import CapgroupSettings
from capgroup.types import TopicPartition

__all__ = [
    "DEFAULT_SAMPLE_SECONDS",
    "PRODUCERS",
    "SIZE_SAMPLE_RECORDS",
    "DoctorReport",
    "producer_options",
    "run_doctor",
]

#: Seconds between the two samples of high watermarks and committed offsets.
DEFAULT_SAMPLE_SECONDS = 5.0
#: Recent records read per partition to average the record size.
SIZE_SAMPLE_RECORDS = 20
#: capgroup's producers: name, module, class, constructor arguments after the settings.
PRODUCERS: tuple[tuple[str, str, str, tuple[Any, ...]], ...] = (
    ("dead-letter", "capgroup.runtime.deadletter", "DeadLetterProducer", ("doctor-check",)),
    ("relay", "capgroup.runtime.relay", "RelayProducer", ()),
)


@dataclass(frozen=True, slots=True)
class DoctorReport:
    """What was checked and what was found."""

    findings: list[Finding]
    brokers: list[int] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    sample_seconds: float = 0.0


class _Recorder:
    """Stands in for ``AIOKafkaProducer`` and keeps the keyword arguments it was given."""

    last: dict[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).last = dict(kwargs)


def producer_options(
    settings: CapgroupSettings, module: str, cls: str, args: Sequence[Any]
) -> dict[str, Any] | None:
    """The keyword arguments ``module.cls(settings, *args)`` passes to ``AIOKafkaProducer``
    (the producer class is swapped for a recorder while it is built; nothing connects).
    None when the module or class does not exist in this build."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    factory = getattr(mod, cls, None)
    if factory is None or not hasattr(mod, "AIOKafkaProducer"):
        return None
    original = getattr(mod, "AIOKafkaProducer")  # noqa: B009
    _Recorder.last = None
    setattr(mod, "AIOKafkaProducer", _Recorder)  # noqa: B010
    try:
        factory(settings, *args)
    finally:
        setattr(mod, "AIOKafkaProducer", original)  # noqa: B010
    return _Recorder.last


def _configs(responses: Iterable[Any]) -> dict[str, dict[str, str | None]]:
    """``{resource name: {config name: value}}`` from DescribeConfigs responses."""
    found: dict[str, dict[str, str | None]] = {}
    for response in responses:
        for resource in response.resources:
            error, name, entries = resource[0], resource[3], resource[4]
            if error:
                continue
            found[str(name)] = {str(e[0]): e[1] for e in entries}
    return found


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


async def _timestamps(
    consumer: Any, offsets: Mapping[Any, int], timeout_s: float = 3.0
) -> dict[Any, int]:
    """Timestamp of the record at each offset (absent when none arrives in time)."""
    if not offsets:
        return {}
    consumer.assign(list(offsets))
    for ktp, offset in offsets.items():
        consumer.seek(ktp, offset)
    found: dict[Any, int] = {}
    with anyio.move_on_after(timeout_s):
        while len(found) < len(offsets):
            batches = await consumer.getmany(timeout_ms=500)
            for ktp, records in batches.items():
                if records and ktp in offsets and ktp not in found:
                    found[ktp] = int(records[0].timestamp)
                    consumer.pause(ktp)
    consumer.assign([])
    return found


async def _record_sizes(
    consumer: Any, ranges: Mapping[Any, tuple[int, int]], timeout_s: float = 3.0
) -> dict[str, tuple[int, int]]:
    """Per topic: (records read, key + value bytes) of the last records of each partition."""
    wanted = {k: (max(s, e - SIZE_SAMPLE_RECORDS), e) for k, (s, e) in ranges.items() if e > s}
    totals: dict[str, tuple[int, int]] = {}
    if not wanted:
        return totals
    consumer.assign(list(wanted))
    for ktp, (start, _) in wanted.items():
        consumer.seek(ktp, start)
    done: set[Any] = set()
    with anyio.move_on_after(timeout_s):
        while len(done) < len(wanted):
            batches = await consumer.getmany(timeout_ms=500)
            for ktp, records in batches.items():
                end = wanted[ktp][1]
                n, b = totals.get(ktp.topic, (0, 0))
                for r in records:
                    if r.offset >= end:
                        break
                    n += 1
                    b += max(r.serialized_key_size, 0) + max(r.serialized_value_size, 0)
                totals[ktp.topic] = (n, b)
                if records and records[-1].offset >= end - 1:
                    done.add(ktp)
                    consumer.pause(ktp)
    consumer.assign([])
    return totals


async def run_doctor(
    settings: CapgroupSettings,
    *,
    groups: Sequence[str] = (),
    topics: Sequence[str] = (),
    sample_seconds: float = DEFAULT_SAMPLE_SECONDS,
    target_throughput: float | None = None,
    produce_rate: float | None = None,
    consume_rate: float | None = None,
) -> DoctorReport:
    """Gather the figures and run every check; see the module's docstring."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.structs import TopicPartition as KafkaTopicPartition

    admin = AIOKafkaAdminClient(**client_options(settings, ClientRole.ADMIN))
    try:
        await bootstrap_with_retries(admin.start, settings, client="admin")
        cluster = await admin.describe_cluster()
        brokers = sorted(int(b["node_id"]) for b in cluster.get("brokers", ()))
        topic_names = sorted(set(topics)) or sorted(
            t for t in await admin.list_topics() if not t.startswith("__")
        )
        group_names = sorted(set(groups)) or sorted(
            str(g[0]) for g in await admin.list_consumer_groups() if g[1] in ("consumer", "")
        )
        states: dict[str, GroupState] = {}
        for g in group_names:
            try:
                states[g] = await describe_group(settings, g)
            except GroupNotFoundError:
                if groups:  # named on the command line: exit 2
                    raise
        group_names = sorted(states)  # a listed group may be gone by now
        group_topics = {tp.topic for s in states.values() for tp in s.partitions}
        all_topics = sorted(set(topic_names) | group_topics)
        meta = await admin.describe_topics(all_topics) if all_topics else []
        replicas: dict[str, list[int]] = {}
        counts: dict[str, int] = {}
        for entry in meta:
            if entry.get("error_code"):
                continue
            parts = entry.get("partitions") or ()
            counts[entry["topic"]] = len(parts)
            replicas[entry["topic"]] = [len(p.get("replicas") or ()) for p in parts]
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in sorted(counts)]
        topic_cfg = _configs(await admin.describe_configs(resources)) if resources else {}
        broker_cfg = _configs(
            await admin.describe_configs(
                [ConfigResource(ConfigResourceType.BROKER, str(b)) for b in brokers]
            )
        )
        committed0 = {g: _committed(s) for g, s in states.items()}
        consumer = AIOKafkaConsumer(
            **client_options(settings, ClientRole.ADMIN),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=64 * 1024,
        )
        await bootstrap_with_retries(consumer.start, settings, client="admin")
        try:
            ktps = [KafkaTopicPartition(t, p) for t in sorted(counts) for p in range(counts[t])]
            began = time.monotonic()
            ends0 = await consumer.end_offsets(ktps) if ktps else {}
            await anyio.sleep(sample_seconds)
            ends1 = await consumer.end_offsets(ktps) if ktps else {}
            committed1 = {}
            for g in group_names:
                offsets = await admin.list_consumer_group_offsets(g)
                committed1[g] = {
                    TopicPartition(k.topic, k.partition): int(v.offset)
                    for k, v in offsets.items()
                    if v.offset >= 0
                }
            elapsed = max(time.monotonic() - began, 1e-3)
            starts = await consumer.beginning_offsets(ktps) if ktps else {}
            sizes = await _record_sizes(
                consumer, {k: (starts.get(k, 0), ends1.get(k, 0)) for k in ktps}
            )
            # The oldest unconsumed record (lag) and the newest consumed one (idle time).
            oldest: dict[tuple[str, Any], int] = {}
            newest: dict[tuple[str, Any], int] = {}
            for g, s in states.items():
                for tp, c in committed1[g].items():
                    k = KafkaTopicPartition(tp.topic, tp.partition)
                    if k not in ends1:
                        continue
                    if c < ends1[k]:
                        oldest[(g, k)] = max(c, starts.get(k, 0))
                    if not s.members and starts.get(k, 0) < c <= ends1[k]:
                        newest[(g, k)] = c - 1
            stamps: dict[tuple[str, Any], int] = {}
            for wanted in (oldest, newest):
                for g in group_names:
                    mine = {k: o for (gg, k), o in wanted.items() if gg == g}
                    for k, ts in (await _timestamps(consumer, mine)).items():
                        stamps[(("o" if wanted is oldest else "n") + g, k)] = ts
        finally:
            await consumer.stop()
    finally:
        await admin.close()

    now = time.time()
    findings: list[Finding] = []
    # ---- brokers
    broker_unclean = False
    offsets_minutes: int | None = None
    for b in brokers:
        cfg = broker_cfg.get(str(b), {})
        unclean = (cfg.get("unclean.leader.election.enable") or "").lower() == "true"
        broker_unclean = broker_unclean or unclean
        findings += check_unclean_leader_election(f"broker:{b}", unclean, source="broker")
        minutes = _int(cfg.get("offsets.retention.minutes"))
        if minutes is not None:
            offsets_minutes = minutes if offsets_minutes is None else min(offsets_minutes, minutes)
    # ---- topics
    rates: dict[str, list[float]] = {}
    for k in ends1:
        rates.setdefault(k.topic, []).append((ends1[k] - ends0.get(k, ends1[k])) / elapsed)
    for t in topic_names:
        if t not in counts:
            continue
        cfg = topic_cfg.get(t, {})
        unclean = (cfg.get("unclean.leader.election.enable") or "").lower() == "true"
        if not broker_unclean:
            findings += check_unclean_leader_election(f"topic:{t}", unclean, source="topic")
        rf = min(replicas[t]) if replicas[t] else 0
        findings += check_min_insync_replicas(
            t,
            replication_factor=rf,
            min_insync_replicas=_int(cfg.get("min.insync.replicas")),
            brokers=len(brokers),
        )
        n, b = sizes.get(t, (0, 0))
        avg = b / n if n else 0.0
        records_per_s = sum(rates.get(t, []))
        holds = any(
            ends1.get(KafkaTopicPartition(t, p), 0) > starts.get(KafkaTopicPartition(t, p), 0)
            for p in range(counts[t])
        )
        if holds:
            seg = check_segment_retention(
                t,
                retention_ms=_int(cfg.get("retention.ms")),
                segment_bytes=_int(cfg.get("segment.bytes")),
                segment_ms=_int(cfg.get("segment.ms")),
                bytes_per_second=records_per_s * avg,
                cleanup_policy=cfg.get("cleanup.policy") or "delete",
            )
            extra = {
                "average_record_bytes": round(avg, 1),
                "produce_records_per_second": round(records_per_s, 3),
                "sample_seconds": round(elapsed, 1),
            }
            findings += [replace(f, evidence={**f.evidence, **extra}) for f in seg]
        if target_throughput is not None:
            produce = produce_rate
            if produce is None:
                produce = max(rates.get(t, [0.0]) or [0.0])
            consume = consume_rate
            if consume is None:
                consume = 0.0
                for g in group_names:
                    for tp, c1 in committed1[g].items():
                        c0 = committed0[g].get(tp)
                        if tp.topic == t and c0 is not None:
                            consume = max(consume, (c1 - c0) / elapsed)
            findings += check_partition_count(
                t,
                partitions=counts[t],
                target_throughput=target_throughput,
                produce_per_partition=produce,
                consume_per_partition=consume,
            )
    # ---- groups
    for g, s in states.items():
        committed = committed1[g]
        g_topics = sorted({tp.topic for tp in committed} | set(s.topics))
        retention = {t: _int(topic_cfg.get(t, {}).get("retention.ms")) for t in g_topics}
        idle: float | None = None
        consumed = [ts for (key, _), ts in stamps.items() if key == "n" + g]
        if not s.members and consumed:
            idle = max(now - max(consumed) / 1000, 0.0)
        findings += check_offsets_retention(
            g,
            offsets_retention_minutes=offsets_minutes,
            topic_retention_ms=retention,
            has_members=bool(s.members),
            idle_seconds=idle,
        )
        findings += check_range_assignor_imbalance(
            g,
            protocol=s.protocol,
            subscriptions={m.member_id: m.topics for m in s.members},
            partition_counts={t: counts[t] for t in s.topics if t in counts},
        )
        lag_figures = []
        for tp, c in sorted(committed.items()):
            k = KafkaTopicPartition(tp.topic, tp.partition)
            lag_figures.append(
                GroupLagFigures(
                    topic=tp.topic,
                    partition=tp.partition,
                    committed=c,
                    log_start=starts.get(k),
                    high_watermark=ends1.get(k),
                    oldest_timestamp_ms=stamps.get(("o" + g, k)),
                    retention_ms=retention.get(tp.topic),
                )
            )
        findings += check_lag_vs_retention(g, lag_figures, now)
        findings += check_capacity_headroom(
            g,
            capacity_aware=s.capacity_aware,
            members=len(s.members),
            unassigned=len(s.unassigned),
            headroom=s.headroom,
            headroom_wanted=s.autoscale_headroom,
            capacity_partitions=s.capacity_partitions,
            demand_partitions=sum(1 for tp in s.partitions if tp.topic in s.topics),
            replicas_wanted=s.replicas_wanted,
        )
    # ---- capgroup's own producers
    for name, module, cls, args in PRODUCERS:
        findings += check_producer_durability(name, producer_options(settings, module, cls, args))
    return DoctorReport(
        findings=sort_findings(findings),
        brokers=brokers,
        topics=[t for t in topic_names if t in counts],
        groups=group_names,
        sample_seconds=round(elapsed, 1),
    )


def _committed(state: GroupState) -> dict[TopicPartition, int]:
    return {tp: p.committed for tp, p in state.partitions.items() if p.committed is not None}
