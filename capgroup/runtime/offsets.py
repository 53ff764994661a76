"""Commit tracking: which offset each owned partition may commit. Pure, no clock, no I/O.

The committable offset of a partition is the ``last_offset + 1`` of the newest batch such that
it and every batch cut before it (in the same ownership) flushed or reached the dead-letter
topic. Nothing past an unflushed record is ever committable, so delivery is at least once:
every record is flushed (or dead-lettered) at least once by some owner. A record can be flushed
more than once when its batch flushed but the commit covering it never reached the broker
(crash, loss, fenced commit), or when it flushed behind a discarded batch of the same epoch
(the commit stops at the discarded batch, so the next owner re-reads both).

A record skipped before it was buffered (``deserialize`` returned None, or raised under
``deserialize_failure_policy=skip``) is registered with :meth:`CommitTracker.skip`: the offset
moves past it once every record buffered before it has settled, so a skipped record never lets
a commit pass an unflushed one, and a skipped record at the end of a partition is committed.

Every assignment of a partition starts a new *epoch*. Batch outcomes carry the epoch under which
the batch was cut, so a flush that finishes after its partition was revoked or lost (and perhaps
assigned back) is ignored instead of advancing a later ownership's offset: fencing happens before
draining has finished, so finished work from an old ownership must not count (PostHog#80897).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import count
from typing import NamedTuple, Protocol

from capgroup.types import TopicPartition

__all__ = ["BatchOutcome", "CommitCandidate", "CommitTracker", "OffsetSpan"]


class OffsetSpan(Protocol):
    """Anything with an inclusive offset range, such as a :class:`~capgroup.Batch`."""

    @property
    def first_offset(self) -> int: ...

    @property
    def last_offset(self) -> int: ...


class BatchOutcome(StrEnum):
    """How a cut batch ended."""

    #: ``flush`` returned: the records are durable.
    FLUSHED = "flushed"
    #: Flush failed for good and the batch was produced to the dead-letter topic.
    DEAD_LETTERED = "dead_lettered"
    #: Dropped unflushed (revoke DISCARD, overrun deadline, stopped partition): the offset of
    #: this partition can never again advance past the batch's first offset in this epoch.
    DISCARDED = "discarded"


class CommitCandidate(NamedTuple):
    """An offset worth committing: ``offset`` under ownership ``epoch``."""

    tp: TopicPartition
    epoch: int
    offset: int


@dataclass(slots=True)
class _Pending:
    first: int
    last: int
    outcome: BatchOutcome | None = None


@dataclass(slots=True)
class _Skip:
    #: Highest skipped offset of a run of skipped records.
    offset: int
    #: Highest offset buffered or cut before the run: it must settle first.
    after: int


@dataclass(slots=True)
class _Ownership:
    epoch: int
    committable: int
    committed: int
    #: Batches cut but not yet settled into ``committable``, oldest first.
    pending: deque[_Pending] = field(default_factory=deque)
    #: Highest last offset of any batch cut under this epoch.
    high: int = -1
    blocked: bool = False
    #: Records skipped before buffering, oldest first, not yet folded into ``committable``.
    skips: deque[_Skip] = field(default_factory=deque)


class CommitTracker:
    """Committable offsets of the partitions this member owns, fenced by ownership epoch.

    Lifecycle per partition: :meth:`assign` (returns the epoch) → :meth:`batch_cut` for each batch
    in offset order → :meth:`batch_settled` when it ends (in any order) → :meth:`candidates` /
    :meth:`mark_committed` → :meth:`release` on revoke or loss. Calls carrying a stale epoch
    return False and change nothing.
    """

    def __init__(self) -> None:
        self._owned: dict[TopicPartition, _Ownership] = {}
        # One counter across partitions: an epoch number is never reused, even after release.
        self._epochs: Iterator[int] = count(1)

    def assign(self, tp: TopicPartition, position: int) -> int:
        """Start a new ownership of ``tp`` at ``position`` (its committed offset); return the epoch.

        Also used for a seek of an owned partition: the old epoch's batches no longer count.
        """
        if position < 0:
            raise ValueError(f"position of {tp} must be >= 0, got {position}")
        epoch = next(self._epochs)
        self._owned[tp] = _Ownership(
            epoch=epoch, committable=position, committed=position, high=position - 1
        )
        return epoch

    def release(self, tp: TopicPartition) -> bool:
        """Forget ``tp`` (revoked after its final commit, or lost); later outcomes are ignored."""
        return self._owned.pop(tp, None) is not None

    def epoch(self, tp: TopicPartition) -> int | None:
        """Current ownership epoch of ``tp``, or None when not owned."""
        owned = self._owned.get(tp)
        return None if owned is None else owned.epoch

    def is_current(self, tp: TopicPartition, epoch: int) -> bool:
        """Whether ``epoch`` is the current ownership of ``tp``."""
        owned = self._owned.get(tp)
        return owned is not None and owned.epoch == epoch

    def owned(self) -> frozenset[TopicPartition]:
        """Partitions currently tracked."""
        return frozenset(self._owned)

    def batch_cut(self, tp: TopicPartition, epoch: int, span: OffsetSpan) -> bool:
        """Register a batch cut under ``epoch``; batches must be cut in increasing offset order."""
        owned = self._current(tp, epoch)
        if owned is None:
            return False
        if span.first_offset > span.last_offset:
            raise ValueError(f"empty offset span {span.first_offset}..{span.last_offset} of {tp}")
        if span.first_offset <= owned.high:
            raise ValueError(
                f"batch {span.first_offset}..{span.last_offset} of {tp} overlaps or precedes "
                f"offset {owned.high}, already cut"
            )
        owned.high = span.last_offset
        owned.pending.append(_Pending(span.first_offset, span.last_offset))
        return True

    def batch_settled(
        self, tp: TopicPartition, epoch: int, span: OffsetSpan, outcome: BatchOutcome
    ) -> bool:
        """Record how a cut batch ended; False (and no change) if ``epoch`` is stale."""
        owned = self._current(tp, epoch)
        if owned is None:
            return False
        for pending in owned.pending:
            if pending.first == span.first_offset and pending.last == span.last_offset:
                if pending.outcome is not None:
                    raise ValueError(f"batch {pending.first}..{pending.last} of {tp} settled twice")
                pending.outcome = outcome
                break
        else:
            raise ValueError(f"batch {span.first_offset}..{span.last_offset} of {tp} was not cut")
        self._advance(owned)
        return True

    def skip(self, tp: TopicPartition, epoch: int, offset: int, after: int) -> bool:
        """Register record ``offset`` of ``tp`` as skipped (never buffered); ``after`` is the
        highest offset buffered or cut before it. Returns True when the committable offset
        moved at once (nothing before it was pending); False otherwise or when stale."""
        owned = self._current(tp, epoch)
        if owned is None:
            return False
        if offset <= after:
            raise ValueError(f"skipped offset {offset} of {tp} is not past {after}")
        skips = owned.skips
        if skips and after in (skips[-1].after, skips[-1].offset):  # the same run
            skips[-1].offset = max(skips[-1].offset, offset)
        else:
            skips.append(_Skip(offset, after))
        before = owned.committable
        self._advance(owned)
        return owned.committable > before

    def committable(self, tp: TopicPartition) -> int | None:
        """Offset ``tp`` may commit now, or None when not owned."""
        owned = self._owned.get(tp)
        return None if owned is None else owned.committable

    def committed(self, tp: TopicPartition) -> int | None:
        """Last offset acknowledged by the broker (or the starting position), None if not owned."""
        owned = self._owned.get(tp)
        return None if owned is None else owned.committed

    def is_blocked(self, tp: TopicPartition) -> bool:
        """Whether a discarded batch stops ``tp``'s offset in the current epoch."""
        owned = self._owned.get(tp)
        return owned is not None and owned.blocked

    def in_flight(self, tp: TopicPartition) -> int:
        """Batches of ``tp`` cut and not yet folded into its committable offset."""
        owned = self._owned.get(tp)
        return 0 if owned is None else len(owned.pending)

    def candidates(self) -> list[CommitCandidate]:
        """Offsets ahead of what the broker acknowledged, one per partition."""
        return [
            CommitCandidate(tp, o.epoch, o.committable)
            for tp, o in self._owned.items()
            if o.committable > o.committed
        ]

    def mark_committed(self, tp: TopicPartition, epoch: int, offset: int) -> bool:
        """The broker acknowledged ``offset`` for ``tp`` under ``epoch`` (stale epochs: no-op)."""
        owned = self._current(tp, epoch)
        if owned is None:
            return False
        if offset > owned.committable:
            raise ValueError(
                f"commit of {tp} at {offset} is past its committable offset {owned.committable}"
            )
        owned.committed = max(owned.committed, offset)
        return True

    def _current(self, tp: TopicPartition, epoch: int) -> _Ownership | None:
        owned = self._owned.get(tp)
        return owned if owned is not None and owned.epoch == epoch else None

    @staticmethod
    def _advance(owned: _Ownership) -> None:
        pending, skips = owned.pending, owned.skips
        while not owned.blocked:
            if pending and pending[0].outcome is not None:
                head = pending.popleft()
                if head.outcome is BatchOutcome.DISCARDED:
                    owned.blocked = True
                else:
                    owned.committable = max(owned.committable, head.last + 1)
            elif skips and owned.committable > skips[0].after:
                # Everything buffered before the skipped run has settled.
                owned.committable = max(owned.committable, skips.popleft().offset + 1)
            else:
                return
