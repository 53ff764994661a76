"""The samplers without a broker: RSS samples drive memory pressure (shedding, forced cuts,
the fetch hold), and high watermarks from a scripted fetcher drive the ingress rates."""

from __future__ import annotations

import anyio
import pytest
from aiokafka.errors import KafkaConnectionError
from structlog.testing import capture_logs

from capgroup.runtime.batch import FlushReason
from capgroup.runtime.memory import RssWatchdog, WatchdogLevel
from capgroup.runtime.sampling import MemoryPressure, sample_ingress_rates
from capgroup.runtime.stats import IngressRates
from tests.runtime.parts import OTHER, TP, Parts, make_parts

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

COST = 100


def pressure(parts: Parts, watchdog: RssWatchdog | None, rejoins: list[str]) -> MemoryPressure:
    return MemoryPressure(
        watchdog,
        max_partitions=8,
        partition_cost=COST,
        counters=parts.counters,
        partitions=parts.partitions,
        backpressure=parts.backpressure,
        owned=lambda: len(parts.partitions),
        rejoin=rejoins.append,
    )


async def test_without_a_watchdog_samples_are_only_recorded() -> None:
    parts, rejoins = make_parts(), list[str]()
    monitor = pressure(parts, None, rejoins)
    for rss in (500, 900, 700):
        monitor.observe(rss)
    assert (monitor.rss, monitor.peak_rss, monitor.pressure) == (700, 900, "off")
    assert monitor.max_partitions == 8
    assert rejoins == []


async def test_pressure_sheds_cuts_holds_and_recovers() -> None:
    parts, rejoins = make_parts(), list[str]()
    states = [parts.own(TP), parts.own(OTHER)]
    monitor = pressure(parts, RssWatchdog(1000, 2000, hysteresis=0.0), rejoins)
    monitor.observe(900)
    assert (monitor.pressure, rejoins) == ("normal", [])

    with capture_logs() as logs:
        monitor.observe(1050)  # soft: shed one partition (50 bytes over, one at least)
    assert monitor.level is WatchdogLevel.SOFT
    assert monitor.max_partitions == 1
    assert rejoins == ["rss above the soft limit: shedding partitions"]
    assert [s.force for s in states] == [None, None]
    assert not parts.fetcher.held_all
    assert parts.counters.memory_pressure_events == 1
    event = logs[-1]
    assert (event["event"], event["level"], event["previous"]) == (
        "memory_pressure",
        "soft",
        "normal",
    )
    assert event["advertised_max_partitions"] == 1

    monitor.observe(2500)  # hard: cut everything now and stop fetching
    assert [s.force for s in states] == [FlushReason.MEMORY_PRESSURE] * 2
    assert parts.fetcher.held_all
    assert parts.counters.memory_pressure_events == 2
    assert len(rejoins) == 1, "already shedding"

    monitor.observe(100)  # back to normal: full capacity, fetching again
    assert (monitor.level, monitor.max_partitions) == (WatchdogLevel.NORMAL, 8)
    assert rejoins[-1] == "rss back below the soft limit"
    assert [s.force for s in states] == [None, None]
    assert not parts.fetcher.held_all
    assert monitor.peak_rss == 2500
    assert parts.counters.memory_pressure_events == 2


async def test_the_watchdog_can_be_replaced_while_running() -> None:
    parts, rejoins = make_parts(), list[str]()
    monitor = pressure(parts, RssWatchdog(1 << 40, 1 << 41, 0.0), rejoins)
    hard = anyio.Event()

    def rss() -> int:
        if monitor.level is WatchdogLevel.HARD:
            hard.set()
        return 10

    async with anyio.create_task_group() as tg:
        tg.start_soon(monitor.run, 0.001, rss)
        await anyio.wait_all_tasks_blocked()
        assert monitor.level is WatchdogLevel.NORMAL
        monitor.watchdog = RssWatchdog(1, 2, 0.0)
        with anyio.fail_after(5):
            await hard.wait()
        tg.cancel_scope.cancel()
    assert parts.fetcher.held_all


async def test_ingress_rates_come_from_high_watermark_samples() -> None:
    parts, rates = make_parts(), IngressRates(alpha=1.0)
    parts.own(TP)
    now = [0.0]
    parts.fetcher.append_many(TP, 5)

    async def sample_twice() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                sample_ingress_rates, parts.fetcher, lambda: [TP], rates, 3600.0, lambda: now[0]
            )
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()

    await sample_twice()
    assert rates.rates() == {}, "one sample is no rate"
    now[0] = 2.0
    parts.fetcher.append_many(TP, 10)
    await sample_twice()
    assert rates.rates() == {TP: 5.0}
    parts.fetcher.end_offsets_error = KafkaConnectionError()
    now[0] = 4.0
    with capture_logs() as logs:
        await sample_twice()
    assert rates.rates() == {TP: 5.0}, "a failed sample changes nothing"
    assert [e["event"] for e in logs] == ["ingress_sample_failed"]
