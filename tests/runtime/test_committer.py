"""The committer without a broker: commits what the tracker allows through a scripted commit
callable; fenced commits are dropped, failed ones retried, and commits never overlap."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import pytest
from structlog.testing import capture_logs

from capgroup.errors import CommitFailedError, CommitFencedError
from capgroup.runtime.committer import Committer
from capgroup.runtime.offsets import BatchOutcome, CommitTracker
from capgroup.runtime.stats import Counters
from capgroup.types import TopicPartition
from tests.runtime.parts import OTHER, TP

pytestmark = pytest.mark.anyio


class Span:
    def __init__(self, first: int, last: int) -> None:
        self.first_offset, self.last_offset = first, last


class ScriptedCommit:
    """A commit callable: records offsets, raises the scripted errors first."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls: list[dict[TopicPartition, int]] = []
        self.running = 0
        self.overlapped = False
        #: While set to an unset event, a commit waits for it (to catch overlapping calls).
        self.gate: anyio.Event | None = None
        self.succeeded = anyio.Event()

    async def __call__(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.running += 1
        self.overlapped |= self.running > 1
        try:
            self.calls.append(dict(offsets))
            if self.gate is not None:
                await self.gate.wait()
            if self.errors:
                raise self.errors.pop(0)
            self.succeeded.set()
        finally:
            self.running -= 1


def flushed(tracker: CommitTracker, tp: TopicPartition, first: int, last: int) -> None:
    epoch = tracker.assign(tp, first) if tracker.epoch(tp) is None else tracker.epoch(tp)
    assert epoch is not None
    tracker.batch_cut(tp, epoch, Span(first, last))
    tracker.batch_settled(tp, epoch, Span(first, last), BatchOutcome.FLUSHED)


def committer(commit: ScriptedCommit, tracker: CommitTracker, counters: Counters) -> Committer:
    return Committer(tracker, counters, commit, lambda: 7, retry_seconds=0.01)


async def test_nothing_committable_commits_nothing() -> None:
    commit, counters = ScriptedCommit(), Counters()
    assert await committer(commit, CommitTracker(), counters).commit_ready()
    assert commit.calls == []
    assert counters.commits == 0


async def test_flushed_offsets_are_committed_once() -> None:
    commit, tracker, counters = ScriptedCommit(), CommitTracker(), Counters()
    flushed(tracker, TP, 0, 9)
    flushed(tracker, OTHER, 100, 104)
    with capture_logs() as logs:
        assert await committer(commit, tracker, counters).commit_ready()
    assert commit.calls == [{TP: 10, OTHER: 105}]
    assert tracker.committed(TP) == 10
    assert counters.commits == 1
    assert [(e["event"], e["generation"], e["offsets"]) for e in logs] == [
        ("offsets_committed", 7, {"events-0": 10, "events-1": 105})
    ]
    assert await committer(commit, tracker, counters).commit_ready()
    assert len(commit.calls) == 1, "already committed"


async def test_a_fenced_commit_is_counted_and_not_retried() -> None:
    commit, tracker, counters = (
        ScriptedCommit(CommitFencedError("generation lost")),
        *(
            CommitTracker(),
            Counters(),
        ),
    )
    flushed(tracker, TP, 0, 9)
    with capture_logs() as logs:
        assert await committer(commit, tracker, counters).commit_ready()
    assert counters.commits_fenced == 1
    assert tracker.committed(TP) == 0, "still the position it was assigned at"
    assert [(e["event"], e["reason"]) for e in logs] == [("commit_fenced", "generation lost")]


async def test_the_committer_task_retries_a_failed_commit() -> None:
    commit = ScriptedCommit(CommitFailedError("coordinator moved"))
    tracker, counters = CommitTracker(), Counters()
    flushed(tracker, TP, 0, 9)
    task = committer(commit, tracker, counters)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(task.run)
            task.request()
            await commit.succeeded.wait()
            tg.cancel_scope.cancel()
    assert tracker.committed(TP) == 10
    assert commit.calls == [{TP: 10}, {TP: 10}]
    assert (counters.commit_failures, counters.commits) == (1, 1)


async def test_commits_never_overlap() -> None:
    commit, tracker, counters = ScriptedCommit(), CommitTracker(), Counters()
    task = committer(commit, tracker, counters)
    flushed(tracker, TP, 0, 9)
    commit.gate = gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.commit_ready)
        await anyio.wait_all_tasks_blocked()
        flushed(tracker, TP, 10, 19)
        tg.start_soon(task.commit_ready)
        await anyio.wait_all_tasks_blocked()
        assert commit.calls == [{TP: 10}], "the second commit waits for the first"
        gate.set()
    assert not commit.overlapped
    assert commit.calls == [{TP: 10}, {TP: 20}]
