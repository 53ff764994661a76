"""When partitions go to range jobs and come back, without a broker: a lagging owned partition
of a range-jobs topic is handed off (ordinary path flushed and committed first) and scheduled
from its commit; an idle one whose lag fell below half the threshold is committed and taken
back; a revoke commits the finished jobs before the scheduler lets go; a loss commits nothing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

from capgroup.runtime.rangejobs.controller import RangeJobsController
from capgroup.runtime.rangejobs.scheduler import RangeJobScheduler
from capgroup.runtime.stats import PartitionLag
from capgroup.settings import load_settings
from capgroup.types import TopicPartition

pytestmark = [pytest.mark.anyio]

HOT = TopicPartition("jobs-topic", 0)
ORDERED = TopicPartition("ordered", 0)


def lag(tp: TopicPartition, records: int) -> PartitionLag:
    return PartitionLag(tp, True, 1_000, 0, 1_000 - records, records, None, None)


class World:
    """The controller's surroundings, recorded."""

    def __init__(self) -> None:
        self.settings = load_settings(
            group_id="g",
            topics="jobs-topic,ordered",
            range_jobs_enabled=True,
            range_jobs_topics="jobs-topic",
            range_jobs_lag_records=100,
        )
        self.owned = {HOT, ORDERED}
        self.stopped: set[TopicPartition] = set()
        self.figures: dict[TopicPartition, PartitionLag] = {}
        self.ends: dict[TopicPartition, int] = {HOT: 1_000}
        self.events: list[tuple[str, TopicPartition | int]] = []
        self.commits: list[tuple[dict[TopicPartition, int], str]] = []
        self.scheduler = RangeJobScheduler(
            self.settings,
            reader=None,
            completions=None,
            producer=None,
            commit=self.commit,
            committed=self.committed,
            member=lambda: ("m1", 3),
        )
        self.controller = RangeJobsController(
            self.settings,
            self.scheduler,
            owned=lambda: self.owned,
            lag_figures=lambda: self.figures,
            end_offsets=self.end_offsets,
            hand_off=self.hand_off,
            take_back=self.take_back,
        )

    async def commit(self, offsets: Mapping[TopicPartition, int], metadata: str) -> object:
        self.commits.append((dict(offsets), metadata))
        return None

    async def committed(
        self, tps: Iterable[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, str] | None]:
        return dict.fromkeys(tps, (900, ""))

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in tps}

    async def hand_off(self, tp: TopicPartition) -> bool:
        self.events.append(("hand_off", tp))
        return tp not in self.stopped

    async def take_back(self, tp: TopicPartition) -> None:
        self.events.append(("take_back", tp))


async def test_a_lagging_range_jobs_partition_is_handed_off_and_taken_back() -> None:
    w = World()
    w.figures = {HOT: lag(HOT, 50), ORDERED: lag(ORDERED, 5_000)}
    await w.controller.check()
    assert w.events == []  # HOT below the threshold, ORDERED not a range-jobs topic
    w.figures[HOT] = lag(HOT, 500)
    await w.controller.check()
    assert w.events == [("hand_off", HOT)]
    assert w.controller.scheduling == {HOT}
    window = w.scheduler.partitions[HOT].window
    assert window.frontier == 900  # from the commit the ordinary path made
    # Not idle yet: a job is queued.
    window.cut([(o, 10) for o in range(900, 960)], w.scheduler.partitions[HOT].limits, upto=960)
    await w.controller.check()
    assert w.events == [("hand_off", HOT)]
    for job in window.queued:
        window.complete(job.start, job.end)
    w.ends[HOT] = 960 + 49  # lag 49 < 100 / 2
    await w.controller.check()
    assert w.events == [("hand_off", HOT), ("take_back", HOT)]
    assert w.commits == [({HOT: 960}, "")]
    assert w.controller.scheduling == frozenset()


async def test_idle_but_still_lagging_stays_with_range_jobs() -> None:
    w = World()
    w.figures = {HOT: lag(HOT, 500)}
    await w.controller.check()
    w.ends[HOT] = 900 + 50  # lag 50: not below half the threshold
    await w.controller.check()
    assert w.events == [("hand_off", HOT)]


async def test_revoke_commits_finished_jobs_and_loss_commits_nothing() -> None:
    w = World()
    w.figures = {HOT: lag(HOT, 500)}
    await w.controller.check()
    window = w.scheduler.partitions[HOT].window
    window.cut([(o, 10) for o in range(900, 1000)], w.scheduler.partitions[HOT].limits, upto=1000)
    window.complete(910, 920)  # beyond the frontier: goes into the metadata
    await w.controller.revoked([HOT])
    ((offsets, metadata),) = w.commits
    assert offsets == {HOT: 900}
    assert metadata.startswith("cgr1")
    assert w.controller.scheduling == frozenset()
    w.figures = {HOT: lag(HOT, 500)}
    await w.controller.check()
    w.controller.lost([HOT])
    assert w.controller.scheduling == frozenset()
    assert len(w.commits) == 1


async def test_a_stopped_partition_is_not_handed_to_range_jobs() -> None:
    w = World()
    w.stopped.add(HOT)
    w.figures = {HOT: lag(HOT, 500)}
    await w.controller.check()
    assert w.events == [("hand_off", HOT)]
    assert w.controller.scheduling == frozenset()
