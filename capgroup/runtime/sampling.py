"""The samplers: the RSS watchdog loop with its memory-pressure reactions, and ingress rates.

:class:`MemoryPressure` folds RSS samples into the watchdog's level and reacts to a change:
under SOFT pressure it lowers the advertised ``max_partitions`` (sheds partitions through a
rejoin), under HARD it also cuts every buffer at once and holds all fetching, and back at
NORMAL it advertises the full capacity again. :func:`sample_ingress_rates` samples the owned
partitions' high watermarks for the rates advertised to the assignor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import anyio
import psutil
from aiokafka.errors import KafkaError

from capgroup.log import get_logger
from capgroup.runtime.backpressure import Backpressure
from capgroup.runtime.batch import FlushReason
from capgroup.runtime.clients import Fetcher
from capgroup.runtime.memory import RssWatchdog, WatchdogLevel, shed_capacity
from capgroup.runtime.partition import PartitionState
from capgroup.runtime.stats import Counters, IngressRates
from capgroup.types import TopicPartition

__all__ = ["MemoryPressure", "process_rss", "sample_ingress_rates"]

_log = get_logger("consumer")


def process_rss() -> Callable[[], int]:
    """This process's resident set size, bytes (a sampler for :meth:`MemoryPressure.run`)."""
    process = psutil.Process()
    return lambda: int(process.memory_info().rss)


class MemoryPressure:
    """RSS samples, the watchdog's level, and the capacity shed under pressure.

    ``watchdog`` is None when the process has no memory limit to compare RSS with (samples are
    still recorded). ``owned`` counts the partitions owned now; ``rejoin`` asks the membership
    engine for a rebalance with a reason; ``partitions`` is the consumer's live map of owned
    partitions (their workers are forced to cut under HARD pressure).
    """

    def __init__(
        self,
        watchdog: RssWatchdog | None,
        *,
        max_partitions: int,
        partition_cost: int,
        counters: Counters,
        partitions: Mapping[TopicPartition, PartitionState],
        backpressure: Backpressure,
        owned: Callable[[], int],
        rejoin: Callable[[str], None],
    ) -> None:
        #: Replaceable while running (tests lower the limits to simulate pressure).
        self.watchdog = watchdog
        self._max_partitions = max_partitions
        self._partition_cost = partition_cost
        self._counters = counters
        self._partitions = partitions
        self._backpressure = backpressure
        self._owned = owned
        self._rejoin = rejoin
        self.level = WatchdogLevel.NORMAL
        self.rss = 0
        self.peak_rss = 0
        self._shed_to: int | None = None

    @property
    def max_partitions(self) -> int:
        """``max_partitions`` to advertise now: lowered while capacity is shed."""
        if self._shed_to is None:
            return self._max_partitions
        return min(self._max_partitions, self._shed_to)

    @property
    def pressure(self) -> str:
        """The level for stats: ``off`` without a watchdog, else ``normal``/``soft``/``hard``."""
        return "off" if self.watchdog is None else self.level.value

    async def run(self, interval: float, rss: Callable[[], int] | None = None) -> None:
        """Sample ``rss`` (default: this process's) every ``interval`` seconds, forever."""
        sample = rss or process_rss()
        while True:
            self.observe(sample())
            await anyio.sleep(interval)

    def observe(self, rss: int) -> None:
        """Fold in one RSS sample and react if the level changed."""
        self.rss = rss
        self.peak_rss = max(self.peak_rss, rss)
        if self.watchdog is not None:
            level = self.watchdog.observe(rss)
            if level is not self.level:
                self._changed(level, rss)

    def _changed(self, level: WatchdogLevel, rss: int) -> None:
        watchdog = self.watchdog
        if watchdog is None:
            return
        previous, self.level = self.level, level
        if level is WatchdogLevel.NORMAL:
            self._shed_to = None
            self._rejoin("rss back below the soft limit")
        elif previous is WatchdogLevel.NORMAL:
            self._shed_to = shed_capacity(
                self._owned(),
                rss,
                watchdog.soft_limit_bytes,
                self._partition_cost,
                self._max_partitions,
            )
            self._rejoin("rss above the soft limit: shedding partitions")
        if level is WatchdogLevel.HARD or (
            level is WatchdogLevel.SOFT and previous is WatchdogLevel.NORMAL
        ):
            self._counters.memory_pressure_events += 1
        force = FlushReason.MEMORY_PRESSURE if level is WatchdogLevel.HARD else None
        for state in self._partitions.values():
            state.force = force
            state.poke()
        self._backpressure.rss_hard = level is WatchdogLevel.HARD
        self._backpressure.update_fetch_hold()
        _log.warning(
            "memory_pressure",
            level=level.value,
            previous=previous.value,
            rss_bytes=rss,
            soft_limit_bytes=watchdog.soft_limit_bytes,
            hard_limit_bytes=watchdog.hard_limit_bytes,
            advertised_max_partitions=self.max_partitions,
        )


async def sample_ingress_rates(
    fetcher: Fetcher,
    owned: Callable[[], Iterable[TopicPartition]],
    rates: IngressRates,
    interval: float,
    clock: Callable[[], float] = anyio.current_time,
) -> None:
    """Every ``interval`` seconds, fold the high watermarks of the ``owned`` partitions into
    ``rates`` (a failed sample is skipped), forever."""
    while True:
        try:
            ends = await fetcher.end_offsets(owned())
        except (KafkaError, OSError) as exc:
            _log.debug("ingress_sample_failed", error=repr(exc))
        else:
            rates.observe(clock(), ends)
        await anyio.sleep(interval)
