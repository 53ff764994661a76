"""The gap-free completion window of range jobs (issue 14), pure: cutting a backlog into jobs
by records and bytes, leases bounded in flight, the frontier that never passes an unfinished
job, reoffers of failed and timed-out jobs, a takeover from committed metadata, and the
metadata budget. A hypothesis state machine checks the invariants against a model (the set of
offsets reported done) under any interleaving."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from capgroup.protocol.completed_ranges import (
    CompletedRanges,
    decode_completed,
    encode_completed,
)
from capgroup.runtime.rangejobs.window import CompletionWindow, JobLimits, RangeJob, cut_jobs
from capgroup.types import TopicPartition

TP = TopicPartition("events", 3)


def records(first: int, last: int, size: int = 100) -> list[tuple[int, int]]:
    return [(o, size) for o in range(first, last + 1)]


# ------------------------------------------------------------------ cutting -------------
def test_cut_by_records_and_bytes() -> None:
    recs = [(o, 100 if o != 7 else 1_000) for o in range(12)]
    jobs, empty, cursor = cut_jobs(TP, 0, recs, JobLimits(max_records=4, max_bytes=450), upto=12)
    assert [(j.start, j.end, j.records, j.size_bytes) for j in jobs] == [
        (0, 4, 4, 400),
        (4, 7, 3, 300),
        (7, 8, 1, 1_000),  # a record over the byte limit is a job of its own
        (8, 12, 4, 400),
    ]
    assert empty == []
    assert cursor == 12


def test_jobs_are_contiguous_over_offsets_without_records() -> None:
    # Offsets 3 and 4 hold transaction markers (no record): they belong to a job.
    recs = [(0, 1), (1, 1), (2, 1), (5, 1), (6, 1)]
    jobs, _, cursor = cut_jobs(TP, 0, recs, JobLimits(3, 10**9), upto=8)
    assert [(j.start, j.end) for j in jobs] == [(0, 5), (5, 8)]
    assert cursor == 8


def test_the_tail_waits_for_more_records_unless_the_read_reached_its_end() -> None:
    jobs, _, cursor = cut_jobs(TP, 10, records(10, 24), JobLimits(10, 10**9))
    assert [(j.start, j.end) for j in jobs] == [(10, 20)]
    assert cursor == 20  # 20..24 are read again with what follows


def test_done_ranges_are_skipped_and_split_jobs() -> None:
    jobs, empty, cursor = cut_jobs(
        TP, 0, records(0, 99), JobLimits(30, 10**9), done=[(0, 5), (40, 50), (90, 100)], upto=100
    )
    assert [(j.start, j.end) for j in jobs] == [(5, 35), (35, 40), (50, 80), (80, 90)]
    assert empty == []
    assert cursor == 100


# ------------------------------------------------------------------ the window ----------
def window(**kw: object) -> CompletionWindow:
    options: dict = {"max_in_flight": 3, "job_timeout": 10.0} | kw
    return CompletionWindow(TP, 0, **options)


def test_in_flight_is_bounded_and_jobs_are_offered_in_offset_order() -> None:
    w = window()
    w.cut(records(0, 99), JobLimits(10, 10**9), upto=100)
    leases = [w.offer(0.0) for _ in range(5)]
    assert [(lease.job.start if lease else None) for lease in leases] == [0, 10, 20, None, None]
    assert len(w.leases) == 3
    assert not w.wants_more()


def test_the_frontier_waits_for_the_straggler() -> None:
    w = window()
    w.cut(records(0, 29), JobLimits(10, 10**9), upto=30)
    for _ in range(3):
        w.offer(0.0)
    assert not w.complete(10, 20)
    assert not w.complete(20, 30)
    assert w.frontier == 0  # job [0, 10) is not done: never committed past
    assert w.finished.ranges == ((10, 30),)
    assert w.complete(0, 10)
    assert w.frontier == 30
    assert w.finished.ranges == ()
    assert w.metadata() == ""


def test_a_failed_job_is_offered_again_and_duplicates_are_harmless() -> None:
    w = window(max_in_flight=1)
    w.cut(records(0, 19), JobLimits(10, 10**9), upto=20)
    first = w.offer(0.0)
    assert first is not None
    assert first.attempt == 1
    assert w.fail(0, 10)
    again = w.offer(1.0)
    assert again is not None
    assert (again.job.start, again.attempt) == (0, 2)
    assert w.complete(0, 10)
    assert not w.complete(0, 10)  # the first worker reports too: a duplicate, no effect
    assert not w.fail(0, 10)
    assert w.frontier == 10


def test_a_timed_out_job_is_offered_again_and_its_late_completion_counts() -> None:
    w = window(max_in_flight=2, job_timeout=5.0)
    w.cut(records(0, 19), JobLimits(10, 10**9), upto=20)
    w.offer(0.0)
    w.offer(0.0)
    assert w.next_deadline() == 5.0
    assert w.expire(4.9) == []
    late = w.expire(5.0)
    assert sorted(lease.job.start for lease in late) == [0, 10]
    retry = w.offer(6.0)
    assert retry is not None
    assert retry.attempt == 2
    # The frozen worker wakes and reports: done is done, the reoffered lease is freed.
    assert w.complete(0, 10)
    assert [lease.job.start for lease in w.leases] == []
    assert [job.start for job in w.queued] == [10]


def test_a_takeover_skips_what_the_metadata_records() -> None:
    first = window(max_in_flight=4)
    first.cut(records(0, 39), JobLimits(10, 10**9), upto=40)
    for _ in range(4):
        first.offer(0.0)
    first.complete(10, 20)
    first.complete(30, 40)
    committed, metadata = first.frontier, first.metadata()
    # The owner dies; the next one reads the commit and its metadata back.
    decoded = decode_completed(metadata, committed)
    assert decoded.reason is None
    second = CompletionWindow(TP, committed, decoded.ranges, max_in_flight=4, job_timeout=10.0)
    jobs = second.cut(records(0, 39), JobLimits(10, 10**9), upto=40)
    assert [(j.start, j.end) for j in jobs] == [(0, 10), (20, 30)]
    assert second.complete(0, 10) is True
    assert second.frontier == 20
    assert second.complete(20, 30)
    assert second.frontier == 40


def test_ignoring_the_metadata_on_takeover_redoes_finished_jobs() -> None:
    # The planted bug "ignore metadata on takeover" shows as redone jobs.
    second = CompletionWindow(TP, 0, None, max_in_flight=4, job_timeout=10.0)
    jobs = second.cut(records(0, 39), JobLimits(10, 10**9), upto=40)
    assert len(jobs) == 4


def test_offers_stop_before_the_metadata_could_overflow() -> None:
    # A tiny metadata limit: at most a few ranges fit.
    w = CompletionWindow(TP, 0, max_in_flight=100, job_timeout=10.0, metadata_limit=60)
    w.cut(records(0, 999), JobLimits(1, 10**9), upto=1000)
    offered = []
    while (lease := w.offer(0.0)) is not None:
        offered.append(lease)
    assert 1 < len(offered) < 100
    assert w.metadata_full
    assert w.metadata_refusals == 1
    # Every job but the first finishes, in the worst order (every other one first).
    for lease in offered[1::2] + offered[2::2]:
        w.complete(lease.job.start, lease.job.end)
        assert len(encode_completed(w.finished)) <= w.metadata_budget
    # The frontier job is always offered: the straggler finishes and everything moves on.
    w.complete(offered[0].job.start, offered[0].job.end)
    assert w.frontier == offered[-1].job.end
    assert not w.metadata_full
    assert w.offer(0.0) is not None


def test_unleased_completions_beyond_the_budget_are_dropped_not_trusted_blindly() -> None:
    w = CompletionWindow(TP, 0, max_in_flight=2, job_timeout=10.0, metadata_limit=40)
    accepted = sum(w.complete(s, s + 1) or w.is_done(s) for s in range(10, 400, 2))
    assert w.completions_dropped > 0
    assert accepted < 195
    assert len(w.metadata()) <= w.metadata_budget


def test_metadata_is_cut_to_the_limit_from_the_far_end() -> None:
    w = CompletionWindow(TP, 0, max_in_flight=1, job_timeout=1.0, metadata_limit=100)
    # Force ranges in directly (a takeover of someone else's larger metadata).
    many = CompletedRanges(0, tuple((s, s + 1) for s in range(2, 2000, 7)))
    w2 = CompletionWindow(TP, 0, many, max_in_flight=1, job_timeout=1.0, metadata_limit=100)
    text = w2.metadata()
    assert len(text) <= 100
    kept = decode_completed(text, 0).ranges.ranges
    assert kept
    assert kept == many.ranges[: len(kept)]
    assert w.metadata() == ""


@pytest.mark.parametrize("bad", [{"max_in_flight": 0}, {"job_timeout": 0.0}])
def test_bad_parameters_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="max_in_flight must be >= 1 and job_timeout > 0"):
        window(**bad)
    with pytest.raises(ValueError, match="start < end"):
        RangeJob(TP, 5, 5)


# ------------------------------------------------------------------ the model -----------
class WindowMachine(RuleBasedStateMachine):
    """Random cuts, offers, completions (leased and foreign), failures and timeouts against a
    model: the set of offsets reported done."""

    def __init__(self) -> None:
        super().__init__()
        self.committed = 1_000
        self.window = CompletionWindow(
            TP, self.committed, max_in_flight=5, job_timeout=3.0, metadata_limit=200
        )
        self.done: set[int] = set()
        self.now = 0.0
        self.end = self.committed  # offsets produced so far
        self.missing: set[int] = set()  # offsets without a record (markers)

    @rule(n=st.integers(1, 40), holes=st.sets(st.integers(0, 39), max_size=5))
    def produce(self, n: int, holes: set[int]) -> None:
        self.missing |= {self.end + h for h in holes if h < n}
        self.end += n

    @rule(max_records=st.integers(1, 12), upto=st.booleans(), size=st.integers(1, 300))
    def cut(self, max_records: int, upto: bool, size: int) -> None:
        recs = [(o, size) for o in range(self.window.cursor, self.end) if o not in self.missing]
        self.window.cut(recs, JobLimits(max_records, 1_000), upto=self.end if upto else None)

    @rule()
    def offer(self) -> None:
        self.window.offer(self.now)

    @precondition(lambda self: self.window.leases)
    @rule(data=st.data())
    def complete_leased(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.window.leases))
        self.window.complete(lease.job.start, lease.job.end)
        self.done |= set(range(lease.job.start, lease.job.end))

    @rule(start=st.integers(900, 1_400), length=st.integers(1, 20))
    def complete_foreign(self, start: int, length: int) -> None:
        # A previous owner's job, fully processed: recording it is optional, never wrong.
        if self.window.complete(start, start + length) or self.window.covered(
            start, start + length
        ):
            self.done |= set(range(start, start + length))

    @precondition(lambda self: self.window.leases)
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.window.leases))
        assert self.window.fail(lease.job.start, lease.job.end)

    @rule(dt=st.floats(0.0, 5.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        for lease in self.window.expire(self.now):
            assert lease.deadline <= self.now

    def settled(self, offset: int) -> bool:
        """Reported done, or an offset the cut saw without a record (nothing to process: a
        finished range or the frontier may pass it)."""
        return offset in self.done or offset in self.missing

    @invariant()
    def frontier_never_passes_an_unfinished_offset(self) -> None:
        w = self.window
        assert all(self.settled(o) for o in range(self.committed, w.frontier))
        assert w.frontier not in self.done or w.frontier < self.committed

    @invariant()
    def finished_ranges_are_reported_offsets(self) -> None:
        for start, end in self.window.finished.ranges:
            assert all(self.settled(o) for o in range(start, end))

    @invariant()
    def backlog_is_covered_exactly_once(self) -> None:
        w = self.window
        pending = [(j.start, j.end) for j in w.queued] + [
            (lease.job.start, lease.job.end) for lease in w.leases
        ]
        pending.sort()
        for (_, e1), (s2, _) in itertools.pairwise(pending):
            assert e1 <= s2  # leases and queued jobs never overlap
        for offset in range(w.frontier, w.cursor):
            if self.end > offset and offset not in self.missing:
                in_job = any(s <= offset < e for s, e in pending)
                assert in_job or w.is_done(offset), offset

    @invariant()
    def in_flight_and_metadata_are_bounded(self) -> None:
        w = self.window
        assert len(w.leases) <= w.max_in_flight
        assert len(encode_completed(w.finished)) <= w.metadata_budget
        assert len(w.metadata()) <= w.metadata_limit
        decoded = decode_completed(w.metadata(), w.frontier)
        assert decoded.reason is None
        assert decoded.ranges == w.finished


WindowMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_window_model = WindowMachine.TestCase
