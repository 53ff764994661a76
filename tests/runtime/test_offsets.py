"""Commit tracker: commit after flush only, gap-free, fenced by ownership epoch."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from capgroup.runtime.offsets import BatchOutcome, CommitCandidate, CommitTracker
from capgroup.types import TopicPartition

TP = TopicPartition("events", 0)
OTHER = TopicPartition("events", 1)


@dataclass(frozen=True)
class Span:
    first_offset: int
    last_offset: int


def test_new_ownership_commits_nothing_until_a_batch_flushes() -> None:
    tracker = CommitTracker()
    epoch = tracker.assign(TP, position=100)
    assert tracker.committable(TP) == 100
    assert tracker.candidates() == []
    tracker.batch_cut(TP, epoch, Span(100, 109))
    assert tracker.committable(TP) == 100
    assert tracker.batch_settled(TP, epoch, Span(100, 109), BatchOutcome.FLUSHED)
    assert tracker.committable(TP) == 110
    assert tracker.candidates() == [CommitCandidate(TP, epoch, 110)]


def test_out_of_order_flushes_advance_only_over_a_contiguous_prefix() -> None:
    tracker = CommitTracker()
    epoch = tracker.assign(TP, position=0)
    spans = [Span(0, 4), Span(5, 9), Span(12, 20)]  # 10..11 compacted away
    for span in spans:
        tracker.batch_cut(TP, epoch, span)
    tracker.batch_settled(TP, epoch, spans[2], BatchOutcome.FLUSHED)
    tracker.batch_settled(TP, epoch, spans[1], BatchOutcome.FLUSHED)
    assert tracker.committable(TP) == 0
    tracker.batch_settled(TP, epoch, spans[0], BatchOutcome.FLUSHED)
    assert tracker.committable(TP) == 21
    assert tracker.in_flight(TP) == 0


def test_dead_lettered_batches_count_as_done() -> None:
    tracker = CommitTracker()
    epoch = tracker.assign(TP, position=0)
    tracker.batch_cut(TP, epoch, Span(0, 9))
    tracker.batch_settled(TP, epoch, Span(0, 9), BatchOutcome.DEAD_LETTERED)
    assert tracker.committable(TP) == 10


def test_discarded_batch_blocks_later_flushes_in_that_epoch() -> None:
    tracker = CommitTracker()
    epoch = tracker.assign(TP, position=0)
    for span in (Span(0, 4), Span(5, 9), Span(10, 14)):
        tracker.batch_cut(TP, epoch, span)
    tracker.batch_settled(TP, epoch, Span(5, 9), BatchOutcome.DISCARDED)
    tracker.batch_settled(TP, epoch, Span(10, 14), BatchOutcome.FLUSHED)
    tracker.batch_settled(TP, epoch, Span(0, 4), BatchOutcome.FLUSHED)
    assert tracker.committable(TP) == 5
    assert tracker.is_blocked(TP)
    # A seek back to the committable offset starts a new, unblocked epoch.
    fresh = tracker.assign(TP, position=5)
    assert fresh != epoch
    assert not tracker.is_blocked(TP)
    assert tracker.committable(TP) == 5


def test_flush_finishing_after_revoke_does_not_touch_a_later_ownership() -> None:
    tracker = CommitTracker()
    old = tracker.assign(TP, position=0)
    tracker.batch_cut(TP, old, Span(0, 9))
    assert tracker.release(TP)
    new = tracker.assign(TP, position=0)
    # The zombie flush of the first ownership lands now.
    assert not tracker.batch_settled(TP, old, Span(0, 9), BatchOutcome.FLUSHED)
    assert not tracker.batch_cut(TP, old, Span(10, 19))
    assert not tracker.mark_committed(TP, old, 0)
    assert tracker.committable(TP) == 0
    assert tracker.epoch(TP) == new
    assert tracker.is_current(TP, new)
    assert not tracker.is_current(TP, old)


def test_released_partition_offers_nothing() -> None:
    tracker = CommitTracker()
    epoch = tracker.assign(TP, position=0)
    tracker.batch_cut(TP, epoch, Span(0, 0))
    tracker.batch_settled(TP, epoch, Span(0, 0), BatchOutcome.FLUSHED)
    assert tracker.release(TP)
    assert not tracker.release(TP)
    assert tracker.committable(TP) is None
    assert tracker.committed(TP) is None
    assert tracker.candidates() == []
    assert tracker.owned() == frozenset()


def test_mark_committed_is_monotone_and_bounded() -> None:
    tracker = CommitTracker()
    epoch = tracker.assign(TP, position=0)
    tracker.batch_cut(TP, epoch, Span(0, 9))
    tracker.batch_settled(TP, epoch, Span(0, 9), BatchOutcome.FLUSHED)
    with pytest.raises(ValueError, match="past its committable"):
        tracker.mark_committed(TP, epoch, 11)
    assert tracker.mark_committed(TP, epoch, 10)
    assert tracker.mark_committed(TP, epoch, 3)
    assert tracker.committed(TP) == 10
    assert tracker.candidates() == []


def test_epochs_are_never_reused_across_partitions() -> None:
    tracker = CommitTracker()
    epochs = [tracker.assign(TP, 0), tracker.assign(OTHER, 0), tracker.assign(TP, 0)]
    assert len(set(epochs)) == 3


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        ([Span(5, 4)], "empty offset span"),
        ([Span(0, 4), Span(4, 6)], "overlaps"),
        ([Span(-1, 3)], "precedes"),
    ],
)
def test_bad_cuts_are_programming_errors(spans: list[Span], message: str) -> None:
    tracker = CommitTracker()
    epoch = tracker.assign(TP, position=0)
    *earlier, bad = spans
    for span in earlier:
        tracker.batch_cut(TP, epoch, span)
    with pytest.raises(ValueError, match=message):
        tracker.batch_cut(TP, epoch, bad)


def test_settling_unknown_or_twice_is_a_programming_error() -> None:
    tracker = CommitTracker()
    epoch = tracker.assign(TP, position=0)
    tracker.batch_cut(TP, epoch, Span(0, 4))
    tracker.batch_cut(TP, epoch, Span(5, 6))
    with pytest.raises(ValueError, match="was not cut"):
        tracker.batch_settled(TP, epoch, Span(1, 4), BatchOutcome.FLUSHED)
    tracker.batch_settled(TP, epoch, Span(5, 6), BatchOutcome.FLUSHED)
    with pytest.raises(ValueError, match="settled twice"):
        tracker.batch_settled(TP, epoch, Span(5, 6), BatchOutcome.FLUSHED)


def test_negative_position_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        CommitTracker().assign(TP, -1)


@dataclass
class _ModelBatch:
    epoch: int
    span: Span
    outcome: BatchOutcome | None = None


class TrackerMachine(RuleBasedStateMachine):
    """Any interleaving of fetch, cut, flush, DLQ, discard, commit, revoke, loss and seek."""

    @initialize(position=st.integers(0, 50))
    def start(self, position: int) -> None:
        self.tracker = CommitTracker()
        self.epoch: int | None = self.tracker.assign(TP, position)
        self.position = position
        self.next_offset = position
        self.batches: list[_ModelBatch] = []
        self.stale: list[_ModelBatch] = []

    @precondition(lambda self: self.epoch is not None)
    @rule(gap=st.integers(0, 3), length=st.integers(1, 5))
    def cut(self, gap: int, length: int) -> None:
        assert self.epoch is not None
        first = self.next_offset + gap
        span = Span(first, first + length - 1)
        self.next_offset = span.last_offset + 1
        assert self.tracker.batch_cut(TP, self.epoch, span)
        self.batches.append(_ModelBatch(self.epoch, span))

    @rule(data=st.data(), outcome=st.sampled_from(BatchOutcome))
    def settle(self, data: st.DataObject, outcome: BatchOutcome) -> None:
        open_batches = [b for b in self.batches if b.outcome is None]
        if not open_batches:
            return
        batch = data.draw(st.sampled_from(open_batches))
        assert self.tracker.batch_settled(TP, batch.epoch, batch.span, outcome)
        batch.outcome = outcome

    @rule(data=st.data(), outcome=st.sampled_from(BatchOutcome))
    def zombie_settles(self, data: st.DataObject, outcome: BatchOutcome) -> None:
        if not self.stale:
            return
        batch = data.draw(st.sampled_from(self.stale))
        assert not self.tracker.batch_settled(TP, batch.epoch, batch.span, outcome)

    @precondition(lambda self: self.epoch is not None)
    @rule()
    def commit(self) -> None:
        for candidate in self.tracker.candidates():
            assert self.tracker.mark_committed(candidate.tp, candidate.epoch, candidate.offset)

    @precondition(lambda self: self.epoch is not None)
    @rule()
    def revoke_or_lose(self) -> None:
        assert self.tracker.release(TP)
        self._retire()
        self.epoch = None

    @rule(position=st.integers(0, 80))
    def assign_or_seek(self, position: int) -> None:
        self._retire()
        self.epoch = self.tracker.assign(TP, position)
        self.position = position
        self.next_offset = position

    def _retire(self) -> None:
        self.stale.extend(b for b in self.batches if b.outcome is None)
        self.batches = []

    def _expected(self) -> int:
        """Committable offset by definition: the end of the longest done prefix."""
        offset = self.position
        for batch in self.batches:
            if batch.outcome not in (BatchOutcome.FLUSHED, BatchOutcome.DEAD_LETTERED):
                break
            offset = batch.span.last_offset + 1
        return offset

    @invariant()
    def committable_is_exactly_the_done_prefix(self) -> None:
        if self.epoch is None:
            assert self.tracker.committable(TP) is None
            return
        committable = self.tracker.committable(TP)
        assert committable is not None
        assert committable == self._expected()
        # Safety spelled out: every batch below the committable offset is durable.
        for batch in self.batches:
            if batch.span.first_offset < committable:
                assert batch.outcome in (BatchOutcome.FLUSHED, BatchOutcome.DEAD_LETTERED)
        committed = self.tracker.committed(TP)
        assert committed is not None
        assert self.position <= committed <= committable


TrackerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_tracker_state_machine = TrackerMachine.TestCase
