"""Revoke policy: flush or discard a revoked partition's buffer before its deadline. Pure.

The default decision flushes only when the measured flush throughput says the flush finishes,
with a safety factor, before the revoke deadline. The deadline is the rebalance timeout minus a
safety margin, counted from when the rebalance began.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from capgroup.settings import CapgroupSettings

__all__ = [
    "DEFAULT_FLUSH_SAFETY_FACTOR",
    "DEFAULT_SEED_BYTES_PER_SECOND",
    "FlushThroughput",
    "RevokeAction",
    "Sized",
    "deadline_from_settings",
    "decide",
    "revoke_deadline",
]

#: Seed of the throughput estimate before any flush was measured: 1 MiB/s is slow for object
#: stores and databases alike, so the first revoke after start-up errs towards discarding.
DEFAULT_SEED_BYTES_PER_SECOND = 1024.0 * 1024.0
#: Estimated flush time is multiplied by this before comparing with the time left.
DEFAULT_FLUSH_SAFETY_FACTOR = 2.0
#: Flushes faster than this are measured as this long, so a clock tick of 0 cannot claim an
#: unbounded throughput.
MIN_MEASURED_SECONDS = 0.001


class RevokeAction(StrEnum):
    """What to do with a revoked partition's buffered batch."""

    #: Flush it and commit under the current generation before giving the partition up.
    FLUSH = "flush"
    #: Drop it without committing; the next owner re-reads it from the last commit.
    DISCARD = "discard"


class Sized(Protocol):
    """Anything with an exact byte size, such as a :class:`~capgroup.Batch`."""

    @property
    def size_bytes(self) -> int: ...


@dataclass(slots=True)
class FlushThroughput:
    """Exponentially weighted moving average of flush throughput in bytes per second.

    Fed with real flush durations (:meth:`observe`); starts from a conservative seed.
    """

    bytes_per_second: float = DEFAULT_SEED_BYTES_PER_SECOND
    #: Weight of each new measurement.
    alpha: float = 0.3
    samples: int = 0

    def __post_init__(self) -> None:
        if self.bytes_per_second <= 0:
            raise ValueError(f"seed throughput must be positive, got {self.bytes_per_second}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")

    @classmethod
    def from_settings(cls, settings: CapgroupSettings) -> FlushThroughput:
        """Estimator seeded with ``flush_throughput_seed_bytes_per_s``."""
        return cls(bytes_per_second=settings.flush_throughput_seed_bytes_per_s)

    def observe(self, size_bytes: int, duration: float) -> None:
        """Fold in one flush of ``size_bytes`` that took ``duration`` seconds."""
        if size_bytes <= 0:
            return
        rate = size_bytes / max(duration, MIN_MEASURED_SECONDS)
        self.bytes_per_second += self.alpha * (rate - self.bytes_per_second)
        self.samples += 1

    def estimate(self, size_bytes: int) -> float:
        """Seconds a flush of ``size_bytes`` is expected to take."""
        return max(size_bytes, 0) / self.bytes_per_second


def decide(
    batch: Sized,
    deadline: float,
    now: float,
    estimator: FlushThroughput,
    *,
    safety_factor: float = DEFAULT_FLUSH_SAFETY_FACTOR,
) -> RevokeAction:
    """Default revoke decision: FLUSH when ``now + estimate * safety_factor <= deadline``."""
    needed = estimator.estimate(batch.size_bytes) * safety_factor
    return RevokeAction.FLUSH if now + needed <= deadline else RevokeAction.DISCARD


def revoke_deadline(
    rebalance_started_at: float, rebalance_timeout_ms: int, margin_ms: int
) -> float:
    """Clock value by which a revoked partition's flush must be done.

    The coordinator waits ``rebalance_timeout_ms`` from the start of the rebalance for members
    to rejoin; a member still flushing then is dropped from the group. The safety margin keeps
    room, after the flush, for the fenced OffsetCommit and the JoinGroup round trip that
    follow it. Pass the earliest clock value at which the rebalance is known to have begun.
    A margin at or above the timeout gives a deadline equal to the start: discard everything.
    """
    return rebalance_started_at + max(rebalance_timeout_ms - margin_ms, 0) / 1000.0


def deadline_from_settings(rebalance_started_at: float, settings: CapgroupSettings) -> float:
    """:func:`revoke_deadline` with ``rebalance_timeout_ms`` and ``revoke_safety_margin_ms``."""
    return revoke_deadline(
        rebalance_started_at, settings.rebalance_timeout_ms, settings.revoke_safety_margin_ms
    )
