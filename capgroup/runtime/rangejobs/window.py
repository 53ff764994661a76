"""The gap-free completion window of one partition's range jobs. Pure: time is a parameter.

A job is a half-open offset range ``[start, end)`` of one partition (the issue's inclusive
``[start, end]`` is ``[start, end + 1)`` here). The window owns, for the partition's
scheduler:

- the **frontier**: the lowest offset not known done, i.e. the offset to commit; it only ever
  moves over done offsets, so a commit never passes an unfinished job (TCP's sliding window);
- the **finished ranges beyond the frontier**, merged, which go into the commit's metadata
  (:mod:`capgroup.protocol.completed_ranges`) so a new owner does not redo them;
- the **cursor**: everything in ``[frontier, cursor)`` is done, leased or queued, disjointly;
  :meth:`CompletionWindow.cut` cuts the records from the cursor on into jobs bounded by records
  and bytes, skipping offsets already done;
- the **leases**: jobs offered to the group, at most ``max_in_flight`` at once, each with a
  deadline. A job whose worker failed (:meth:`CompletionWindow.fail`) or that timed out
  (:meth:`CompletionWindow.expire`: worker killed or frozen) is queued to be offered again.

Completions are idempotent and trusted for exactly the range they name: a worker reports a
range only once every record in it was flushed. A completion of a range the window never
leased (a previous owner's job, a duplicate from a reoffered job) is recorded too, unless it
would push the metadata past its limit (it is then only redone, never lost).

Before a job is offered the window checks that the metadata stays under ``metadata_limit``
characters even if every leased job and this one finish in the worst order
(:func:`~capgroup.protocol.completed_ranges.worst_case_chars`); otherwise it offers nothing
until the frontier moves (``metadata_full``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from capgroup.protocol.completed_ranges import (
    BROKER_DEFAULT_METADATA_MAX_BYTES,
    DEFAULT_FILL_FRACTION,
    CompletedRanges,
    encode_completed,
    normalize_ranges,
    worst_case_chars,
)
from capgroup.types import TopicPartition

__all__ = ["CompletionWindow", "JobLimits", "Lease", "RangeJob", "cut_jobs"]


@dataclass(frozen=True, slots=True)
class RangeJob:
    """Offsets ``[start, end)`` of ``tp``, holding ``records`` records of ``size_bytes`` bytes
    (key + value + headers, as the ledger counts payload) when it was cut."""

    tp: TopicPartition
    start: int
    end: int
    records: int = 0
    size_bytes: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"a job needs 0 <= start < end, got [{self.start}, {self.end})")

    @property
    def job_id(self) -> str:
        """Stable across offers: ``topic-partition@start-end``."""
        return f"{self.tp.topic}-{self.tp.partition}@{self.start}-{self.end}"


@dataclass(frozen=True, slots=True)
class JobLimits:
    """A job holds at most ``max_records`` records and ``max_bytes`` bytes (a single record
    larger than ``max_bytes`` is a job of its own)."""

    max_records: int
    max_bytes: int

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_bytes < 1:
            raise ValueError("job limits must be positive")


@dataclass(frozen=True, slots=True)
class Lease:
    """``job`` offered for the ``attempt``-th time (1 = first), due back by ``deadline``."""

    job: RangeJob
    attempt: int
    deadline: float


def cut_jobs(
    tp: TopicPartition,
    start: int,
    records: Iterable[tuple[int, int]],
    limits: JobLimits,
    *,
    done: Sequence[tuple[int, int]] = (),
    upto: int | None = None,
) -> tuple[list[RangeJob], list[tuple[int, int]], int]:
    """Cut ``records`` (``(offset, size)`` in ascending offset order) from ``start`` on into
    jobs; returns ``(jobs, empty spans, next cursor)``.

    Jobs are contiguous: each starts where the previous one ended, so offsets without a record
    (transaction markers, compacted records) belong to a job. Offsets in ``done`` (merged,
    ascending) are skipped and end the job before them. A span that holds no record (between a
    done range and the next record, or before ``upto``) is returned as an *empty span*: done
    without a worker. The tail below the limits is cut only when ``upto`` (the offset the read
    reached, e.g. the high watermark sampled before it) is given; otherwise the cursor stays at
    its first record, to be read again.
    """
    jobs: list[RangeJob] = []
    empty: list[tuple[int, int]] = []
    done_list = list(done)
    d = 0
    count = size = 0

    def next_done(pos: int) -> tuple[int, int] | None:
        # The first done range not wholly below ``pos`` (ranges are merged and ascending).
        nonlocal d
        while d < len(done_list) and done_list[d][1] <= pos:
            d += 1
        return done_list[d] if d < len(done_list) else None

    def close(pos: int, end: int) -> None:
        if count:
            jobs.append(RangeJob(tp, pos, end, count, size))
        elif pos < end:
            empty.append((pos, end))

    pos = start
    if (first := next_done(pos)) is not None and first[0] <= pos:
        pos = first[1]
    last: int | None = None
    for offset, nbytes in records:
        if offset < pos:
            continue
        # Done ranges between the open job and this record end it (or are skipped over).
        while (nd := next_done(pos)) is not None and nd[0] <= offset:
            close(pos, nd[0])
            pos, count, size = nd[1], 0, 0
        if offset < pos:
            continue  # the record is done already
        if count and (count + 1 > limits.max_records or size + nbytes > limits.max_bytes):
            close(pos, offset)
            pos, count, size = offset, 0, 0
        count += 1
        size += nbytes
        last = offset
    if upto is None:
        return jobs, empty, pos
    end = upto if last is None else max(upto, last + 1)
    while (nd := next_done(pos)) is not None and nd[0] < end:
        close(pos, nd[0])
        pos, count, size = nd[1], 0, 0
    if pos < end:
        close(pos, end)
        pos = end
    return jobs, empty, pos


class CompletionWindow:
    """The range jobs of one partition, from its committed offset on; see the module docs.

    ``committed`` is the committed offset (the first not known done), ``known_done`` the
    finished ranges beyond it decoded from the commit's metadata (a takeover); ``metadata_limit``
    is the broker's ``offset.metadata.max.bytes`` and ``fill_fraction`` the share of it the
    metadata may take (75 %, as parallel-consumer).
    """

    def __init__(
        self,
        tp: TopicPartition,
        committed: int,
        known_done: CompletedRanges | None = None,
        *,
        max_in_flight: int,
        job_timeout: float,
        metadata_limit: int = BROKER_DEFAULT_METADATA_MAX_BYTES,
        fill_fraction: float = DEFAULT_FILL_FRACTION,
    ) -> None:
        if max_in_flight < 1 or job_timeout <= 0:
            raise ValueError("max_in_flight must be >= 1 and job_timeout > 0")
        if committed < 0:
            raise ValueError(f"committed offset must be >= 0, got {committed}")
        self.tp = tp
        self.max_in_flight = max_in_flight
        self.job_timeout = job_timeout
        self.metadata_budget = int(metadata_limit * fill_fraction)
        self.metadata_limit = metadata_limit
        self._base = committed
        #: Merged done ranges beyond the frontier: parallel lists of starts and ends.
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._cursor = committed
        self._queue: list[RangeJob] = []
        self._leases: dict[tuple[int, int], Lease] = {}
        self._attempts: dict[tuple[int, int], int] = {}
        #: Offers refused because the metadata could overflow (for logs and metrics).
        self.metadata_refusals = 0
        #: Completions of unleased ranges dropped because the metadata would overflow.
        self.completions_dropped = 0
        if known_done is not None and known_done.base == committed:
            for start, end in known_done.ranges:
                self._mark(start, end)
            self._cursor = self._base

    # ------------------------------------------------------------------ views -----------
    @property
    def frontier(self) -> int:
        """The offset to commit: every offset below it is done."""
        return self._base

    @property
    def cursor(self) -> int:
        """The next offset to cut from (at least the frontier)."""
        return max(self._cursor, self._base)

    @property
    def finished(self) -> CompletedRanges:
        """Finished ranges beyond the frontier."""
        return CompletedRanges(self._base, tuple(zip(self._starts, self._ends, strict=True)))

    @property
    def leases(self) -> list[Lease]:
        """Jobs offered and not yet done, by start offset."""
        return sorted(self._leases.values(), key=lambda lease: lease.job.start)

    @property
    def queued(self) -> list[RangeJob]:
        """Jobs cut (or given back) and waiting to be offered, by start offset."""
        return list(self._queue)

    @property
    def outstanding(self) -> int:
        """Jobs leased or queued."""
        return len(self._leases) + len(self._queue)

    def wants_more(self) -> bool:
        """Whether cutting more jobs is useful: the queue is empty and a lease slot is free."""
        return not self._queue and len(self._leases) < self.max_in_flight

    def is_done(self, offset: int) -> bool:
        """Whether ``offset`` is known done."""
        if offset < self._base:
            return True
        i = bisect.bisect_right(self._starts, offset) - 1
        return i >= 0 and offset < self._ends[i]

    def covered(self, start: int, end: int) -> bool:
        """Whether every offset of ``[start, end)`` is known done."""
        if end <= self._base:
            return True
        start = max(start, self._base)
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def metadata(self) -> str:
        """The commit metadata of the finished ranges; never longer than ``metadata_limit``
        (the farthest ranges are left out if it would be: they are then only redone)."""
        finished = self.finished
        text = encode_completed(finished)
        ranges = finished.ranges
        while len(text) > self.metadata_limit and ranges:
            ranges = ranges[: len(ranges) // 2]
            text = encode_completed(CompletedRanges(self._base, ranges))
        return text

    # ------------------------------------------------------------------ cutting ---------
    def cut(
        self, records: Iterable[tuple[int, int]], limits: JobLimits, *, upto: int | None = None
    ) -> list[RangeJob]:
        """Cut ``records`` (``(offset, size)``, ascending; earlier offsets than the cursor are
        ignored) into jobs and queue them; see :func:`cut_jobs`. Returns the new jobs."""
        jobs, empty, cursor = cut_jobs(
            self.tp,
            self.cursor,
            records,
            limits,
            done=self.finished.ranges,
            upto=upto,
        )
        self._queue.extend(jobs)
        self._cursor = cursor
        for start, end in empty:
            if start <= self._base or self.is_done(start - 1) or self.is_done(end):
                self._mark(start, end)  # merges with what is done: no new range
            else:
                # A span without records that would be a range of its own (a trailing
                # transaction marker): a job like the others, so the metadata bound holds.
                job = RangeJob(self.tp, start, end)
                bisect.insort(self._queue, job, key=lambda j: j.start)
                jobs.append(job)
        self._drop_covered()
        return jobs

    # ------------------------------------------------------------------ leases ----------
    def offer(self, now: float) -> Lease | None:
        """Lease the first queued job (lowest offset) if a slot is free and the metadata would
        stay within budget whatever order the leased jobs finish in; None otherwise."""
        if not self._queue or len(self._leases) >= self.max_in_flight:
            return None
        job = self._queue[0]
        if self._would_overflow(job):
            self.metadata_refusals += 1
            return None
        self._queue.pop(0)
        key = (job.start, job.end)
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        lease = Lease(job, attempt, now + self.job_timeout)
        self._leases[key] = lease
        return lease

    @property
    def metadata_full(self) -> bool:
        """Whether the first queued job waits because the metadata could overflow (it is
        offered once the frontier moves)."""
        if not self._queue or len(self._leases) >= self.max_in_flight:
            return False
        return self._would_overflow(self._queue[0])

    def _would_overflow(self, job: RangeJob) -> bool:
        """Whether leasing ``job`` could let the metadata exceed its budget, should every
        leased job finish in the worst order. A job at the frontier never adds a range (its
        completion moves the frontier), so it is always offered: nothing could move otherwise."""
        if job.start <= self._base:
            return False
        ranging = 1 + sum(1 for start, _ in self._leases if start > self._base)
        span = max(job.end, self._cursor, *(end for _, end in self._leases)) - self._base
        return worst_case_chars(self.finished, ranging, span) > self.metadata_budget

    def complete(self, start: int, end: int) -> bool:
        """Record ``[start, end)`` as done (every record in it flushed); returns whether the
        frontier moved. Idempotent; a leased range frees its lease, queued or leased jobs the
        done ranges now cover are dropped (nothing left to do in them)."""
        if start >= end:
            return False
        key = (start, end)
        leased = key in self._leases
        if not leased and end > self._base and not self.covered(start, end):
            # An unleased range (a previous owner's job, a stale duplicate) is recorded only if
            # the metadata stays within its limit; otherwise it is merely done again later.
            trial = CompletedRanges(
                self._base,
                normalize_ranges(self._base, [*self.finished.ranges, (start, end)]),
            )
            span = max(end, self._cursor, *(k[1] for k in self._leases)) - self._base
            ranging = sum(1 for s, _ in self._leases if s > self._base)
            # The leased jobs may still each add a range: keep room for them.
            if worst_case_chars(trial, ranging, span) > self.metadata_budget:
                self.completions_dropped += 1
                return False
        self._leases.pop(key, None)
        before = self._base
        self._mark(start, end)
        self._drop_covered()
        return self._base != before

    def fail(self, start: int, end: int) -> bool:
        """The worker of ``[start, end)`` gave it back: queue it to be offered again. Returns
        False when it was not leased (already done or given back)."""
        lease = self._leases.pop((start, end), None)
        if lease is None:
            return False
        self._requeue(lease.job)
        return True

    def expire(self, now: float) -> list[Lease]:
        """Leases past their deadline (worker killed, frozen or too slow), queued again."""
        late = [lease for lease in self._leases.values() if lease.deadline <= now]
        for lease in late:
            del self._leases[(lease.job.start, lease.job.end)]
            self._requeue(lease.job)
        return late

    def next_deadline(self) -> float | None:
        """The earliest lease deadline, if any."""
        return min((lease.deadline for lease in self._leases.values()), default=None)

    # ------------------------------------------------------------------ internals -------
    def _requeue(self, job: RangeJob) -> None:
        if self.covered(job.start, job.end):
            return
        bisect.insort(self._queue, job, key=lambda j: j.start)

    def _drop_covered(self) -> None:
        self._queue = [j for j in self._queue if not self.covered(j.start, j.end)]
        for key in [k for k in self._leases if self.covered(*k)]:
            del self._leases[key]
        self._attempts = {k: v for k, v in self._attempts.items() if k[1] > self._base}

    def _mark(self, start: int, end: int) -> None:
        start = max(start, self._base)
        if start >= end:
            return
        starts, ends = self._starts, self._ends
        # Ranges touching or overlapping [start, end) merge with it.
        lo = bisect.bisect_left(ends, start)
        hi = bisect.bisect_right(starts, end)
        if lo < hi:
            start = min(start, starts[lo])
            end = max(end, ends[hi - 1])
        starts[lo:hi] = [start]
        ends[lo:hi] = [end]
        if starts[0] <= self._base:
            self._base = max(self._base, ends[0])
            del starts[0], ends[0]
