"""Memory budget derivation (fake cgroup trees), ledger backpressure and the RSS watchdog."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from capgroup.runtime.memory import (
    MemoryBudget,
    MemoryLedger,
    MemoryLimitSource,
    RssWatchdog,
    WatchdogLevel,
    container_memory_limit,
    derive_memory_budget,
    effective_max_partitions,
    memory_budget_from_settings,
    shed_capacity,
)
from capgroup.settings import RECORD_OVERHEAD_BYTES, CapgroupSettings
from capgroup.types import TopicPartition

GIB = 1 << 30
MIB = 1 << 20


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def no_physical() -> int:
    raise AssertionError("physical memory must not be consulted when a limit is known")


def test_cgroup_v2_limit_times_fraction(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/memory.max", f"{2 * GIB}\n")
    budget = derive_memory_budget(
        explicit_bytes=None, fraction=0.5, root=tmp_path, physical_bytes=no_physical
    )
    assert budget == MemoryBudget(GIB, 2 * GIB, MemoryLimitSource.CGROUP_V2)


def test_cgroup_v2_nested_cgroup_takes_the_tightest_ancestor(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/kubepods/pod1/ctr\n")
    write(tmp_path, "sys/fs/cgroup/memory.max", "max\n")
    write(tmp_path, "sys/fs/cgroup/kubepods/pod1/memory.max", f"{3 * GIB}\n")
    write(tmp_path, "sys/fs/cgroup/kubepods/pod1/ctr/memory.max", "max\n")
    assert container_memory_limit(tmp_path) == (3 * GIB, MemoryLimitSource.CGROUP_V2)


def test_cgroup_v2_max_everywhere_means_unlimited(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/memory.max", "max\n")
    assert container_memory_limit(tmp_path) is None


def test_cgroup_v1_limit(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "12:cpu,cpuacct:/docker/x\n4:memory:/docker/x\n")
    write(tmp_path, "sys/fs/cgroup/memory/docker/x/memory.limit_in_bytes", f"{GIB}\n")
    budget = derive_memory_budget(
        explicit_bytes=None, fraction=0.25, root=tmp_path, physical_bytes=no_physical
    )
    assert budget == MemoryBudget(GIB // 4, GIB, MemoryLimitSource.CGROUP_V1)


def test_cgroup_v1_huge_value_means_unlimited(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    assert container_memory_limit(tmp_path) is None


def test_env_limit_used_without_cgroup_limit(tmp_path: Path) -> None:
    budget = derive_memory_budget(
        explicit_bytes=None,
        fraction=0.5,
        env_limit_bytes=512 * MIB,
        root=tmp_path,
        physical_bytes=no_physical,
    )
    assert budget == MemoryBudget(256 * MIB, 512 * MIB, MemoryLimitSource.ENV)


def test_tightest_of_env_and_cgroup_wins(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/memory.max", f"{GIB}")
    kwargs = {"explicit_bytes": None, "fraction": 1.0, "root": tmp_path}
    tighter_env = derive_memory_budget(env_limit_bytes=GIB // 2, **kwargs)  # type: ignore[arg-type]
    looser_env = derive_memory_budget(env_limit_bytes=2 * GIB, **kwargs)  # type: ignore[arg-type]
    assert tighter_env.source is MemoryLimitSource.ENV
    assert tighter_env.budget_bytes == GIB // 2
    assert looser_env.source is MemoryLimitSource.CGROUP_V2
    assert looser_env.budget_bytes == GIB


def test_explicit_budget_wins_but_keeps_the_container_limit(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/memory.max", f"{4 * GIB}")
    budget = derive_memory_budget(explicit_bytes=123, fraction=0.5, root=tmp_path)
    assert budget == MemoryBudget(123, 4 * GIB, MemoryLimitSource.EXPLICIT)
    empty_root = tmp_path / "nothing"
    assert derive_memory_budget(
        explicit_bytes=123, fraction=0.5, root=empty_root, physical_bytes=no_physical
    ) == MemoryBudget(123, 123, MemoryLimitSource.EXPLICIT)


def test_physical_memory_fallback_logs_a_warning(tmp_path: Path) -> None:
    write(tmp_path, "sys/fs/cgroup/memory.max", "garbage")
    with capture_logs() as logs:
        budget = derive_memory_budget(
            explicit_bytes=None, fraction=0.5, root=tmp_path, physical_bytes=lambda: 8 * GIB
        )
    assert budget == MemoryBudget(4 * GIB, 8 * GIB, MemoryLimitSource.PHYSICAL)
    assert [(e["event"], e["log_level"], e["budget_bytes"]) for e in logs] == [
        ("memory_budget_from_physical_memory", "warning", 4 * GIB)
    ]


def test_budget_from_settings_reads_the_downward_api_setting(tmp_path: Path) -> None:
    settings = CapgroupSettings(container_memory_limit_bytes=GIB, memory_budget_fraction=0.75)
    budget = memory_budget_from_settings(settings, root=tmp_path, physical_bytes=no_physical)
    assert budget == MemoryBudget(3 * GIB // 4, GIB, MemoryLimitSource.ENV)


def test_downward_api_env_var_reaches_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPGROUP_CONTAINER_MEMORY_LIMIT_BYTES", "1048576")
    assert CapgroupSettings().container_memory_limit_bytes == MIB


@pytest.mark.parametrize(
    ("max_partitions", "budget", "cost", "expected"),
    [(64, 100, 10, 10), (4, 100, 10, 4), (64, 9, 10, 0), (0, 100, 10, 0)],
)
def test_effective_max_partitions(
    max_partitions: int, budget: int, cost: int, expected: int
) -> None:
    assert effective_max_partitions(max_partitions, budget, cost) == expected


def test_effective_max_partitions_uses_the_settings_cost() -> None:
    settings = CapgroupSettings(
        batch_max_bytes=3 * MIB, batch_max_records=1024, max_partition_fetch_bytes=MIB
    )
    # A full batch (3 MiB payload + 1024 records' overhead), plus one fetch on top: 1 MiB of
    # payload and the overhead of at most 1 MiB // RECORD_OVERHEAD_BYTES records.
    fetch_records = MIB // RECORD_OVERHEAD_BYTES
    assert settings.fetch_max_records == fetch_records
    assert settings.fetch_reserve_bytes == MIB + fetch_records * RECORD_OVERHEAD_BYTES
    assert settings.partition_cost_bytes == (
        3 * MIB + 1024 * RECORD_OVERHEAD_BYTES + MIB + fetch_records * RECORD_OVERHEAD_BYTES
    )
    assert effective_max_partitions(64, 11 * MIB, settings.partition_cost_bytes) == 2
    assert effective_max_partitions(64, 10 * MIB, settings.partition_cost_bytes) == 1
    with pytest.raises(ValueError, match="positive"):
        effective_max_partitions(1, 1, 0)


@pytest.mark.parametrize(
    ("max_partitions", "budget", "cost", "relay", "expected"),
    [
        (64, 100, 30, 0, 3),  # relay off: unchanged, the 10 bytes left buy nothing
        (64, 100, 30, 10, 4),  # 3 batch partitions + 10 left // 10 = 1 relay-only slot
        (64, 100, 30, 4, 5),  # 10 left buy 2 relay-only slots
        (64, 100, 30, 11, 3),  # the leftover cannot pay for one fetch buffer
        (64, 120, 30, 10, 4),  # nothing left over: no relay-only slot
        (4, 100, 30, 4, 4),  # the configured cap still wins
        (64, 20, 30, 10, 2),  # no batch partition fits, two relay-only ones do
    ],
)
def test_effective_max_partitions_leaves_room_for_relay_only_partitions(
    max_partitions: int, budget: int, cost: int, relay: int, expected: int
) -> None:
    assert effective_max_partitions(max_partitions, budget, cost, relay) == expected


def test_effective_max_partitions_with_relay_off_ignores_the_fetch_buffer() -> None:
    for budget in range(0, 200, 7):
        assert effective_max_partitions(64, budget, 30, 0) == effective_max_partitions(
            64, budget, 30
        )
    with pytest.raises(ValueError, match=">= 0"):
        effective_max_partitions(1, 1, 1, -1)


A = TopicPartition("t", 0)
B = TopicPartition("t", 1)


def test_ledger_counts_per_partition_and_total() -> None:
    ledger = MemoryLedger(budget_bytes=100, partition_limit_bytes=40)
    ledger.add(A, 30)
    ledger.add(B, 50)
    assert (ledger.held(A), ledger.held(B), ledger.total_bytes) == (30, 50, 80)
    assert ledger.utilisation == 0.8
    assert not ledger.should_pause_partition(A)
    assert ledger.should_pause_partition(B)
    assert not ledger.should_pause_all()
    ledger.add(A, 20)
    assert ledger.should_pause_all()
    ledger.release(B, 50)
    assert ledger.held(B) == 0
    assert not ledger.should_pause_all()
    assert ledger.drop(A) == 50
    assert ledger.total_bytes == 0


def test_ledger_refuses_impossible_amounts() -> None:
    ledger = MemoryLedger(budget_bytes=100, partition_limit_bytes=40)
    ledger.add(A, 10)
    with pytest.raises(ValueError, match="cannot release"):
        ledger.release(A, 11)
    with pytest.raises(ValueError, match=">= 0"):
        ledger.add(A, -1)
    with pytest.raises(ValueError, match="positive"):
        MemoryLedger(budget_bytes=0, partition_limit_bytes=1)


@given(
    budget=st.integers(1, 200).map(lambda n: n * 1000),
    batch_bytes=st.integers(100, 5000),
    fetch_bytes=st.integers(100, 3000),
    rounds=st.lists(
        st.tuples(
            st.lists(st.integers(0, 3000), min_size=1, max_size=8),  # a fetch: chunk sizes
            st.lists(st.booleans(), min_size=8, max_size=8),  # which partitions finish a flush
        ),
        max_size=40,
    ),
)
def test_a_burst_bigger_than_the_budget_stays_within_it(
    budget: int,
    batch_bytes: int,
    fetch_bytes: int,
    rounds: list[tuple[list[int], list[bool]]],
) -> None:
    cost = batch_bytes + fetch_bytes
    count = min(effective_max_partitions(8, budget, cost), 8)
    partitions = [TopicPartition("burst", i) for i in range(count)]
    ledger = MemoryLedger(budget_bytes=budget, partition_limit_bytes=batch_bytes)
    for chunks, flushed in rounds:
        # The fetcher only fetches partitions the ledger does not pause, one chunk each,
        # each at most max_partition_fetch_bytes; the producer's burst is unbounded.
        if not ledger.should_pause_all():
            for tp, chunk in zip(partitions, chunks, strict=False):
                if not ledger.should_pause_partition(tp):
                    ledger.add(tp, min(chunk, fetch_bytes))
        for tp, done in zip(partitions, flushed, strict=False):
            if done:
                ledger.drop(tp)
        assert all(ledger.held(tp) <= cost for tp in partitions)
        assert ledger.total_bytes <= budget


def test_watchdog_rises_at_once_and_falls_with_hysteresis() -> None:
    dog = RssWatchdog(soft_limit_bytes=800, hard_limit_bytes=1000, hysteresis=0.1)
    samples = [500, 800, 1000, 950, 900, 899, 760, 719, 800, 730, 719]
    levels = [dog.observe(s) for s in samples]
    n, s, h = WatchdogLevel.NORMAL, WatchdogLevel.SOFT, WatchdogLevel.HARD
    assert levels == [n, s, h, h, h, s, s, n, s, s, n]
    assert dog.level is n


def test_watchdog_limits_from_settings() -> None:
    settings = CapgroupSettings(
        rss_soft_limit_fraction=0.5, rss_hard_limit_fraction=0.75, rss_hysteresis_fraction=0.2
    )
    dog = RssWatchdog.from_settings(settings, limit_bytes=1000)
    assert (dog.soft_limit_bytes, dog.hard_limit_bytes, dog.hysteresis) == (500, 750, 0.2)


@pytest.mark.parametrize(("soft", "hard", "hysteresis"), [(0, 1, 0.0), (5, 5, 0.0), (1, 2, 1.0)])
def test_watchdog_rejects_bad_limits(soft: int, hard: int, hysteresis: float) -> None:
    with pytest.raises(ValueError, match=r"need|hysteresis"):
        RssWatchdog(soft, hard, hysteresis)


@given(
    soft=st.integers(1, 10_000),
    gap=st.integers(1, 10_000),
    hysteresis=st.floats(0.0, 0.5),
    samples=st.lists(st.integers(0, 25_000), max_size=50),
)
def test_watchdog_levels_respect_limits_and_release_points(
    soft: int, gap: int, hysteresis: float, samples: list[int]
) -> None:
    hard = soft + gap
    keep = 1.0 - hysteresis
    dog = RssWatchdog(soft, hard, hysteresis)
    previous = WatchdogLevel.NORMAL
    for rss in samples:
        level = dog.observe(rss)
        if rss >= hard:
            assert level is WatchdogLevel.HARD
        elif rss >= soft:
            assert level in (WatchdogLevel.SOFT, WatchdogLevel.HARD)
        if level is WatchdogLevel.HARD:
            assert rss >= hard * keep
        if level is not WatchdogLevel.NORMAL:
            assert rss >= soft * keep
        # Hysteresis: HARD only clears below its release point, SOFT likewise.
        if previous is WatchdogLevel.HARD and rss >= hard * keep:
            assert level is WatchdogLevel.HARD
        if previous is WatchdogLevel.SOFT and rss >= soft * keep:
            assert level is not WatchdogLevel.NORMAL
        previous = level


@pytest.mark.parametrize(
    ("owned", "rss", "max_partitions", "expected"),
    [
        (10, 1250, 64, 7),  # 250 bytes over at 100 a partition: shed 3
        (10, 1000, 64, 9),  # at the limit: still shed one
        (2, 9999, 64, 0),  # never below zero
        (10, 1001, 5, 5),  # never above max_partitions
    ],
)
def test_shed_capacity(owned: int, rss: int, max_partitions: int, expected: int) -> None:
    reduced = shed_capacity(
        owned,
        rss_bytes=rss,
        soft_limit_bytes=1000,
        partition_cost=100,
        max_partitions=max_partitions,
    )
    assert reduced == expected


def test_shed_capacity_needs_a_positive_cost() -> None:
    with pytest.raises(ValueError, match="positive"):
        shed_capacity(1, 1, 1, 0, 1)


def test_record_overhead_bound_covers_a_buffered_record() -> None:
    """The per-record overhead the budget counts is at least what a buffered record costs
    beyond its payload (aiokafka's ConsumerRecord object and the buffer's list slots)."""
    import tracemalloc

    from aiokafka.structs import ConsumerRecord

    from capgroup.runtime.batch import BatchLimits, PartitionBuffer, record_sizes
    from capgroup.settings import RECORD_OVERHEAD_BYTES
    from tests.runtime._records import TP

    count, payload = 20_000, 200
    buffer = PartitionBuffer(TP, BatchLimits(10**9, 1 << 40, 3600.0))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        records = [
            ConsumerRecord(
                TP.topic,
                TP.partition,
                1_000_000 + i,
                1_700_000_000_000 + i,
                0,
                None,
                bytes(payload),
                None,
                -1,
                payload,
                (),
            )
            for i in range(count)
        ]
        buffer.extend(records, 0.0, record_sizes(records))
        del records
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert buffer.record_count == count
    overhead = held / count - payload
    assert overhead <= RECORD_OVERHEAD_BYTES, f"measured {overhead:.0f} B per record"
    assert overhead > RECORD_OVERHEAD_BYTES / 4, f"the bound is far off: {overhead:.0f} B"


def test_ledger_pauses_a_relay_only_partition_at_its_own_limit() -> None:
    ledger = MemoryLedger(budget_bytes=100, partition_limit_bytes=40)
    ledger.set_partition_limit(A, 10)
    ledger.add(A, 10)
    ledger.add(B, 10)
    assert ledger.should_pause_partition(A)
    assert not ledger.should_pause_partition(B)
    ledger.set_partition_limit(A, None)
    assert not ledger.should_pause_partition(A)
    ledger.set_partition_limit(A, 10)
    ledger.drop(A)  # a new ownership starts from the default again
    ledger.add(A, 10)
    assert not ledger.should_pause_partition(A)
