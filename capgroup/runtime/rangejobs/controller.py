"""When an owned partition goes to range jobs and when it comes back.

The member keeps owning the partition throughout (no rebalance): range jobs only change who
processes its records.

- **To jobs**: an owned partition of ``range_jobs_topics`` whose lag (latest lag sample) passes
  ``range_jobs_lag_records`` is handed off: the ordinary path stops fetching it, flushes what it
  buffered and commits (``hand_off``), then the scheduler takes it over from that commit.
- **Back**: once its scheduler has nothing leased or queued and the lag is below half the
  threshold (hysteresis), the scheduler commits a last time and the ordinary path takes the
  partition back from that commit (``take_back``).
- **Revoked**: the scheduler commits what is finished (within the revoke, under the generation
  that still owns the partition), then stops; **lost**: it stops at once (nothing can be
  committed any more; the fenced commit would refuse it anyway).

Order across the two modes is given up for these topics (documented with the setting).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

import anyio

from capgroup.log import get_logger
from capgroup.runtime.rangejobs.scheduler import RangeJobScheduler
from capgroup.runtime.stats import PartitionLag
from capgroup.settings import CapgroupSettings
from capgroup.types import TopicPartition

__all__ = ["EndOffsets", "HandOff", "RangeJobsController", "Switch"]

_log = get_logger("rangejobs")

EndOffsets = Callable[[Iterable[TopicPartition]], Awaitable[Mapping[TopicPartition, int]]]
#: Stops the ordinary path of a partition; False when it could not (not owned, stopped).
HandOff = Callable[[TopicPartition], Awaitable[bool]]
Switch = Callable[[TopicPartition], Awaitable[None]]


class RangeJobsController:
    """Moves owned partitions between the ordinary path and range jobs; see the module docs.

    ``owned`` reads the member's assignment, ``lag_figures`` the lag sampler's latest sample,
    ``end_offsets`` the brokers' high watermarks; ``hand_off`` stops the ordinary path of a
    partition (flushed and committed; False if it could not), ``take_back`` restarts it from the
    committed offset.
    """

    def __init__(
        self,
        settings: CapgroupSettings,
        scheduler: RangeJobScheduler,
        *,
        owned: Callable[[], Iterable[TopicPartition]],
        lag_figures: Callable[[], Mapping[TopicPartition, PartitionLag]],
        end_offsets: EndOffsets,
        hand_off: HandOff,
        take_back: Switch,
    ) -> None:
        self._settings = settings
        self._scheduler = scheduler
        self._owned = owned
        self._lag_figures = lag_figures
        self._end_offsets = end_offsets
        self._hand_off = hand_off
        self._take_back = take_back
        self._topics = settings.effective_range_jobs_topics
        self._threshold = settings.range_jobs_lag_records
        #: Serialises switches with revokes and losses.
        self._lock = anyio.Lock()

    @property
    def scheduling(self) -> frozenset[TopicPartition]:
        """Partitions in range-jobs mode now."""
        return frozenset(self._scheduler.partitions)

    async def check(self) -> None:
        """Hand off partitions whose lag passed the threshold; take back idle ones."""
        async with self._lock:
            owned = frozenset(self._owned())
            for tp, figure in sorted(self._lag_figures().items()):
                if (
                    tp in owned
                    and tp.topic in self._topics
                    and figure.owned
                    and figure.lag_records > self._threshold
                    and tp not in self._scheduler.partitions
                ):
                    _log.warning(
                        "range_jobs_handoff",
                        partition=f"{tp.topic}-{tp.partition}",
                        lag=figure.lag_records,
                        threshold=self._threshold,
                    )
                    # Not taken when the partition was revoked meanwhile or is stopped.
                    if await self._hand_off(tp) and tp in frozenset(self._owned()):
                        await self._scheduler.take(tp)
            idle = [tp for tp, s in self._scheduler.partitions.items() if s.idle]
            if not idle:
                return
            ends = await self._end_offsets(idle)
            for tp in idle:
                scheduler = self._scheduler.partitions[tp]
                lag = ends.get(tp, 0) - scheduler.window.frontier
                if lag * 2 >= self._threshold:
                    continue
                await self._scheduler.commit_due()
                if scheduler.commit_due() is not None:
                    continue  # the commit failed: try again next round
                self._scheduler.drop(tp)
                _log.info("range_jobs_takeback", partition=f"{tp.topic}-{tp.partition}", lag=lag)
                await self._take_back(tp)

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Commit what is finished of revoked partitions, then stop scheduling them."""
        gone = [tp for tp in partitions if tp in self._scheduler.partitions]
        if not gone:
            return
        async with self._lock:
            await self._scheduler.commit_due()
            for tp in gone:
                self._scheduler.drop(tp)

    def lost(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop scheduling lost partitions at once (nothing more may be committed)."""
        for tp in partitions:
            self._scheduler.drop(tp)

    async def run(self, interval: float, step_interval: float = 0.05) -> None:
        """Check every ``interval`` seconds and step the scheduler in between; until
        cancelled."""
        next_check = anyio.current_time()
        failures = 0
        while True:
            try:
                if anyio.current_time() >= next_check:
                    await self.check()
                    next_check = anyio.current_time() + interval
                if self._scheduler.partitions:
                    async with self._lock:
                        await self._scheduler.step()
                failures = 0
            except Exception as exc:
                # A broker hiccup must not end the member: the jobs wait, nothing is committed
                # past an unfinished one, and the next round carries on.
                failures += 1
                _log.warning("range_jobs_round_failed", error=repr(exc), failures=failures)
                await anyio.sleep(min(0.1 * 2**failures, 5.0))
            await anyio.sleep(step_interval)
