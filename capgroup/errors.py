"""Exceptions raised by capgroup's public API."""

from __future__ import annotations

from collections.abc import Iterable

from capgroup.types import TopicPartition

__all__ = [
    "CapgroupError",
    "CommitFailedError",
    "CommitFencedError",
    "FencedInstanceError",
    "GroupFatalError",
    "leaf_exceptions",
]


class CapgroupError(Exception):
    """Base class of capgroup's errors."""


class GroupFatalError(CapgroupError):
    """The member cannot continue in the group (misconfiguration or fencing); it stops."""


class FencedInstanceError(GroupFatalError):
    """Another process joined with the same ``group_instance_id`` (FENCED_INSTANCE_ID).

    Two processes share one static identity; this one stops so the other can work.
    """


class CommitFencedError(CapgroupError):
    """A commit was refused because this member no longer owns the partitions in a live
    generation (generation lost, member fenced, or partitions revoked).

    The offsets were **not** committed. The partitions are lost to this member: the next owner
    re-reads from the last committed offset. Never retry such a commit.
    """

    def __init__(self, reason: str, partitions: Iterable[TopicPartition] = ()) -> None:
        self.reason = reason
        self.partitions = frozenset(partitions)
        super().__init__(f"commit fenced: {reason}")


class CommitFailedError(CapgroupError):
    """A commit failed for a reason other than fencing (e.g. offset metadata too large,
    authorization) or did not complete before its deadline."""


def leaf_exceptions(error: BaseException) -> list[BaseException]:
    """The exceptions inside (possibly nested) exception groups, in order.

    anyio task groups wrap a child's failure in an ``ExceptionGroup`` per nesting level;
    callers that report a fatal error want the error itself.
    """
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaf_exceptions(inner)]
    return [error]
