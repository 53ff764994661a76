"""The pure checks of ``capgroup doctor``: each one's pass and fail, with the article's
arithmetic."""

from __future__ import annotations

import json

import pytest

from capgroup.cli.doctor_cmd import doctor_json, exit_code, render
from capgroup.operations.doctor import (
    CHECK_IDS,
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
    effective_max_retention_ms,
    partitions_needed,
    range_assignment,
    sort_findings,
)
from capgroup.operations.doctor_gather import DoctorReport, producer_options
from capgroup.settings import load_settings

DAY_MS = 86_400_000
MB = 1_000_000


# ------------------------------------------------------------ segment-retention ------
def test_the_articles_slow_topic_keeps_records_up_to_12_days() -> None:
    rate = 200 * MB / 86_400  # 200 MB/day
    roll, effective = effective_max_retention_ms(7 * DAY_MS, 1000 * MB, 7 * DAY_MS, rate)
    assert roll == pytest.approx(5 * DAY_MS)
    assert effective == pytest.approx(12 * DAY_MS)
    (f,) = check_segment_retention(
        "slow",
        retention_ms=7 * DAY_MS,
        segment_bytes=1000 * MB,
        segment_ms=7 * DAY_MS,
        bytes_per_second=rate,
    )
    assert (f.check, f.severity, f.subject) == ("segment-retention", "warn", "topic:slow")
    assert f.evidence["effective_max_retention_days"] == 12.0
    assert f.evidence["produce_bytes_per_day"] == 200 * MB


def test_a_busy_topic_or_a_short_segment_ms_passes() -> None:
    busy = 10 * 1000 * MB / 86_400  # 10 GB/day: a 1 GB segment rolls in 2.4 h
    assert not check_segment_retention(
        "busy",
        retention_ms=7 * DAY_MS,
        segment_bytes=1000 * MB,
        segment_ms=7 * DAY_MS,
        bytes_per_second=busy,
    )
    assert not check_segment_retention(
        "short",
        retention_ms=7 * DAY_MS,
        segment_bytes=1000 * MB,
        segment_ms=DAY_MS // 2,
        bytes_per_second=0.0,
    )
    # Infinite retention and compacted topics are not about time-based deletion.
    assert not check_segment_retention(
        "inf",
        retention_ms=-1,
        segment_bytes=1000 * MB,
        segment_ms=7 * DAY_MS,
        bytes_per_second=0.0,
    )
    assert not check_segment_retention(
        "compact",
        retention_ms=DAY_MS,
        segment_bytes=1000 * MB,
        segment_ms=7 * DAY_MS,
        bytes_per_second=0.0,
        cleanup_policy="compact",
    )


def test_a_silent_topic_rolls_at_segment_ms() -> None:
    (f,) = check_segment_retention(
        "quiet",
        retention_ms=DAY_MS,
        segment_bytes=1000 * MB,
        segment_ms=7 * DAY_MS,
        bytes_per_second=0.0,
    )
    assert f.evidence["segment_roll_ms"] == 7 * DAY_MS
    assert f.evidence["effective_max_retention_ms"] == 8 * DAY_MS


# ------------------------------------------------------ range-assignor-imbalance ------
def test_the_articles_range_example_gives_23_23_and_2() -> None:
    counts = {"big": 8, **{f"small{i:02d}": 2 for i in range(20)}}
    subs = {m: list(counts) for m in ("c1", "c2", "c3")}
    assert range_assignment(subs, counts) == {"c1": 23, "c2": 23, "c3": 2}
    (f,) = check_range_assignor_imbalance(
        "g", protocol="range", subscriptions=subs, partition_counts=counts
    )
    assert (f.check, f.severity, f.subject) == ("range-assignor-imbalance", "warn", "group:g")
    assert f.evidence["partitions_per_member"] == {"c1": 23, "c2": 23, "c3": 2}
    assert f.evidence["even_share"] == 16
    assert f.evidence["spread"] == 21


def test_range_over_one_topic_or_another_assignor_passes() -> None:
    subs = {m: ["t"] for m in ("c1", "c2", "c3")}
    assert not check_range_assignor_imbalance(
        "g", protocol="range", subscriptions=subs, partition_counts={"t": 10}
    )
    counts = {"big": 8, **{f"s{i}": 2 for i in range(20)}}
    assert not check_range_assignor_imbalance(
        "g",
        protocol="roundrobin",
        subscriptions={m: list(counts) for m in subs},
        partition_counts=counts,
    )


# ------------------------------------------------------ unclean-leader-election ------
def test_unclean_leader_election() -> None:
    (f,) = check_unclean_leader_election("topic:t", True, source="topic")
    assert (f.check, f.severity) == ("unclean-leader-election", "error")
    assert not check_unclean_leader_election("topic:t", False)
    assert not check_unclean_leader_election("broker:1", None)
    assert "broker" in check_unclean_leader_election("broker:1", True)[0].fix


# ---------------------------------------------------------- min-insync-replicas ------
@pytest.mark.parametrize(
    ("rf", "mi", "brokers", "expected"),
    [
        (3, 2, 3, []),
        (2, 1, 3, []),
        (1, 1, 3, ["error"]),  # RF 1 on a cluster that could replicate
        (1, 1, 1, ["info"]),  # RF 1 on a one-broker cluster
        (3, 1, 3, ["warn"]),  # acks=all satisfied by the leader alone
        (3, 3, 3, ["error"]),  # one replica down: unwritable
        (2, 2, 3, ["error"]),
        (1, 2, 1, ["error", "info"]),  # never writable with acks=all, and RF 1
    ],
)
def test_min_insync_replicas(rf: int, mi: int, brokers: int, expected: list[str]) -> None:
    found = check_min_insync_replicas(
        "t", replication_factor=rf, min_insync_replicas=mi, brokers=brokers
    )
    assert [f.severity for f in found] == expected
    assert all(f.check == "min-insync-replicas" for f in found)


# -------------------------------------------------------------- partition-count ------
def test_partitions_needed_is_max_of_t_over_p_and_t_over_c() -> None:
    assert partitions_needed(1000, 100, 50) == 20
    assert partitions_needed(1000, 10, 500) == 100
    assert partitions_needed(100, 100, 100) == 1
    with pytest.raises(ValueError, match="positive"):
        partitions_needed(1, 0, 1)


def test_partition_count() -> None:
    kw = {"target_throughput": 1000.0, "produce_per_partition": 100.0}
    assert not check_partition_count("t", partitions=20, consume_per_partition=50.0, **kw)
    (warn,) = check_partition_count("t", partitions=12, consume_per_partition=50.0, **kw)
    assert (warn.severity, warn.evidence["partitions_needed"]) == ("warn", 20)
    (error,) = check_partition_count("t", partitions=10, consume_per_partition=50.0, **kw)
    assert error.severity == "error"
    (unknown,) = check_partition_count("t", partitions=10, consume_per_partition=None, **kw)
    assert unknown.severity == "info"


# ------------------------------------------------------------ offsets-retention ------
def test_offsets_retention() -> None:
    week = 7 * 24 * 60
    # A group with members keeps its offsets.
    assert not check_offsets_retention(
        "g",
        offsets_retention_minutes=week,
        topic_retention_ms={"t": 30 * DAY_MS},
        has_members=True,
        idle_seconds=None,
    )
    # Idle, records kept longer than the offsets: warn.
    (f,) = check_offsets_retention(
        "g",
        offsets_retention_minutes=week,
        topic_retention_ms={"t": 30 * DAY_MS},
        has_members=False,
        idle_seconds=60.0,
    )
    assert (f.check, f.severity, f.evidence["topics_retained_longer"]) == (
        "offsets-retention",
        "warn",
        ["t"],
    )
    # Idle past the offsets' retention: error.
    (f,) = check_offsets_retention(
        "g",
        offsets_retention_minutes=60,
        topic_retention_ms={"t": 3_600_000},
        has_members=False,
        idle_seconds=4000.0,
    )
    assert f.severity == "error"
    # Idle briefly, retentions aligned: info only.
    (f,) = check_offsets_retention(
        "g",
        offsets_retention_minutes=week,
        topic_retention_ms={"t": 7 * DAY_MS},
        has_members=False,
        idle_seconds=60.0,
    )
    assert f.severity == "info"


# ------------------------------------------------------------- lag-vs-retention ------
def lagging(stamp_ms: int | None, **kw: int) -> GroupLagFigures:
    return GroupLagFigures(
        topic="t",
        partition=kw.get("partition", 0),
        committed=kw.get("committed", 10),
        log_start=kw.get("log_start", 0),
        high_watermark=kw.get("hw", 100),
        oldest_timestamp_ms=stamp_ms,
        retention_ms=3_600_000,
    )


def test_lag_vs_retention() -> None:
    now = 10_000.0
    # 50 min old with a 60 min retention: 10 min (17 %) left: warn.
    (f,) = check_lag_vs_retention("g", [lagging(int((now - 3000) * 1000))], now)
    assert (f.check, f.severity) == ("lag-vs-retention", "warn")
    assert f.evidence["retention_margin_seconds"] == pytest.approx(600.0)
    assert f.evidence["lag_records"] == 90
    # 5 min old: fine; no lag: fine.
    assert not check_lag_vs_retention("g", [lagging(int((now - 300) * 1000))], now)
    assert not check_lag_vs_retention("g", [lagging(None, committed=100)], now)
    # Past retention: error; committed below the log start: records lost.
    (f,) = check_lag_vs_retention("g", [lagging(int((now - 4000) * 1000))], now)
    assert f.severity == "error"
    found = check_lag_vs_retention("g", [lagging(int(now * 1000), log_start=30)], now)
    assert [f.evidence.get("records_deleted_unconsumed") for f in found] == [20]


# ------------------------------------------------------------ capacity-headroom ------
def test_capacity_headroom() -> None:
    base = {
        "capacity_aware": True,
        "members": 3,
        "headroom_wanted": 1,
        "capacity_partitions": 12,
        "demand_partitions": 8,
        "replicas_wanted": 3,
    }
    assert not check_capacity_headroom("g", unassigned=0, headroom=1, **base)  # type: ignore[arg-type]
    (f,) = check_capacity_headroom("g", unassigned=0, headroom=0, **base)  # type: ignore[arg-type]
    assert (f.check, f.severity) == ("capacity-headroom", "warn")
    (f,) = check_capacity_headroom("g", unassigned=2, headroom=0, **base)  # type: ignore[arg-type]
    assert f.severity == "error"
    blind = {**base, "capacity_aware": False}
    assert not check_capacity_headroom("g", unassigned=2, headroom=None, **blind)  # type: ignore[arg-type]


# ---------------------------------------------------------- producer-durability ------
def test_producer_durability() -> None:
    assert not check_producer_durability("p", {"acks": "all", "enable_idempotence": True})
    (f,) = check_producer_durability("p", {"acks": 1})
    assert (f.check, f.severity) == ("producer-durability", "error")
    (f,) = check_producer_durability("p", None)
    assert f.severity == "info"


def test_the_dead_letter_producer_is_read_from_the_code() -> None:
    settings = load_settings(bootstrap_servers="localhost:1")
    options = producer_options(
        settings, "capgroup.runtime.deadletter", "DeadLetterProducer", ("dlq",)
    )
    assert options is not None
    assert (options["acks"], options["enable_idempotence"]) == ("all", True)
    assert not check_producer_durability("dead-letter", options)
    assert producer_options(settings, "capgroup.runtime.no_such_module", "X", ()) is None


# ------------------------------------------------------------------- rendering ------
def test_json_is_sorted_and_stable_and_exit_codes_follow_fail_on() -> None:
    findings = sort_findings(
        [
            Finding("segment-retention", "warn", "topic:b", "m", "f", {"z": 1, "a": 2}),
            Finding("min-insync-replicas", "info", "topic:a", "m", "f"),
            Finding("unclean-leader-election", "error", "topic:a", "m", "f"),
        ]
    )
    assert [f.severity for f in findings] == ["error", "warn", "info"]
    assert {f.check for f in findings} <= set(CHECK_IDS)
    report = DoctorReport(findings, brokers=[1], topics=["a", "b"], groups=[], sample_seconds=1)
    doc = doctor_json(report)
    assert doc["summary"] == {"error": 1, "warn": 1, "info": 1}
    assert set(doc) == {"version", "checked", "summary", "findings"}
    assert set(doc["findings"][0]) == {"check", "severity", "subject", "message", "evidence", "fix"}
    text = json.dumps(doc, indent=2, sort_keys=True)
    assert text == json.dumps(doctor_json(report), indent=2, sort_keys=True)
    assert "1 errors, 1 warnings, 1 info" in render(report)
    assert exit_code(findings, "error") == 1
    assert exit_code(findings[1:], "error") == 0
    assert exit_code(findings[1:], "warn") == 1
    assert exit_code(findings[2:], "warn") == 0
