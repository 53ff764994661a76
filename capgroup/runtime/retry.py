"""Flush retries and what happens after the last one.

:class:`RetryPolicy` is a pure schedule (exponential backoff with jitter, bounded by attempts
and total time); :func:`run_with_retries` runs an async callable under it with injectable
sleep, clock and randomness. After the last attempt the :class:`FailurePolicy` decides:
dead-letter the batch (:func:`dead_letter_records` builds the records, pure data) and commit
past it, or stop the partition and commit nothing past the batch.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

import anyio

from capgroup.runtime.batch import Batch

Headers = tuple[tuple[str, bytes], ...]

if TYPE_CHECKING:
    from capgroup.settings import CapgroupSettings

__all__ = [
    "DEAD_LETTER_HEADER_PREFIX",
    "DeadLetterRecord",
    "FailurePolicy",
    "RetriesExhaustedError",
    "RetryPolicy",
    "UndecodableRecordError",
    "dead_letter_records",
    "run_with_retries",
]

T = TypeVar("T")

#: Every header capgroup adds to a dead-lettered record starts with this.
DEAD_LETTER_HEADER_PREFIX = "capgroup.dlq."
#: Error messages longer than this (in UTF-8 bytes) are cut, so one huge message cannot make
#: every dead-lettered record exceed the broker's message size limit.
MAX_ERROR_MESSAGE_BYTES = 1024


class FailurePolicy(StrEnum):
    """What to do with a batch whose flush failed after every retry."""

    #: Produce the batch to the dead-letter topic, then commit past it.
    DEAD_LETTER = "dead_letter"
    #: Stop consuming the partition and report it unhealthy; nothing past the batch commits.
    STOP_PARTITION = "stop_partition"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter. Times are seconds.

    Retry ``n`` (1-based) waits ``min(max_delay, initial * multiplier ** (n - 1))`` scaled
    down by up to ``jitter`` of itself. At most ``max_attempts`` calls are made in all, and no
    retry is started whose wait would end past ``max_elapsed`` after the first call.
    """

    initial: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    #: Fraction in [0, 1] by which a delay may be shortened at random (spreads retry storms).
    jitter: float = 0.2
    #: Total calls including the first; None for no limit (then ``max_elapsed`` should be set).
    max_attempts: int | None = 5
    #: Seconds since the first call after which no retry starts; None for no limit.
    max_elapsed: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.max_delay:
            raise ValueError(f"need 0 < initial <= max_delay, got {self.initial}, {self.max_delay}")
        if self.multiplier < 1.0:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_elapsed is not None and self.max_elapsed < 0:
            raise ValueError(f"max_elapsed must be >= 0, got {self.max_elapsed}")

    @classmethod
    def from_settings(cls, settings: CapgroupSettings) -> RetryPolicy:
        """Policy from the ``flush_retry_*`` settings."""
        elapsed_ms = settings.flush_retry_max_elapsed_ms
        return cls(
            initial=settings.flush_retry_initial_ms / 1000.0,
            max_delay=settings.flush_retry_max_ms / 1000.0,
            multiplier=settings.flush_retry_multiplier,
            jitter=settings.flush_retry_jitter,
            max_attempts=settings.flush_retry_max_attempts,
            max_elapsed=None if elapsed_ms is None else elapsed_ms / 1000.0,
        )

    def base_delay(self, retry: int) -> float:
        """Un-jittered wait before retry number ``retry`` (1-based); non-decreasing in it."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        delay = self.initial
        # Multiply step by step so a huge retry number saturates instead of overflowing.
        for _ in range(retry - 1):
            delay *= self.multiplier
            if delay >= self.max_delay:
                return self.max_delay
        return min(delay, self.max_delay)

    def delay(self, retry: int, rand: float) -> float:
        """Jittered wait before retry ``retry``; ``rand`` in [0, 1) shortens it by up to jitter."""
        return self.base_delay(retry) * (1.0 - self.jitter * rand)

    def next_delay(self, attempts: int, elapsed: float, rand: float) -> float | None:
        """Wait before the next call after ``attempts`` failed calls, or None to give up."""
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return None
        wait = self.delay(attempts, rand)
        if self.max_elapsed is not None and elapsed + wait > self.max_elapsed:
            return None
        return wait


class RetriesExhaustedError(Exception):
    """Every attempt failed; ``__cause__`` and :attr:`last_error` hold the final error."""

    def __init__(self, attempts: int, last_error: Exception) -> None:
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(
            f"gave up after {attempts} attempt(s): {type(last_error).__name__}: {last_error}"
        )


class UndecodableRecordError(Exception):
    """``deserialize`` raised on a record: what is dead-lettered with it (``error`` is what
    ``deserialize`` raised; the dead-letter headers name it, not this wrapper)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        super().__init__(f"deserialize failed: {type(error).__name__}: {error}")


OnRetry = Callable[[int, Exception, float], None]


async def run_with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    on_retry: OnRetry | None = None,
    clock: Callable[[], float] = anyio.current_time,
    rand: Callable[[], float] = random.random,
    fatal: tuple[type[Exception], ...] = (),
) -> T:
    """Await ``fn()`` until it succeeds or ``policy`` gives up.

    ``on_retry(attempts_so_far, error, delay)`` is called before each wait. Only ``Exception``
    triggers a retry: cancellation (a ``BaseException``) propagates at once, including from
    inside the backoff sleep, and so do the ``fatal`` exception types. Raises
    :class:`RetriesExhaustedError` from the last error.
    """
    started = clock()
    attempts = 0
    while True:
        try:
            return await fn()
        except fatal:
            raise
        except Exception as error:
            attempts += 1
            wait = policy.next_delay(attempts, clock() - started, rand())
            if wait is None:
                raise RetriesExhaustedError(attempts, error) from error
            if on_retry is not None:
                on_retry(attempts, error, wait)
        await sleep(wait)


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A record to produce to the dead-letter topic; the partition is left to the partitioner."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int


def _truncate_utf8(text: str, limit: int) -> bytes:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return encoded
    return encoded[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def dead_letter_records(
    batch: Batch,
    *,
    topic: str,
    error: BaseException,
    attempts: int,
    member_id: str,
    failed_at_ms: int,
) -> list[DeadLetterRecord]:
    """One dead-letter record per record of ``batch``, keeping key, value, headers and timestamp.

    capgroup appends headers named ``capgroup.dlq.*``: ``stage`` (``flush`` for a batch whose
    flush failed, ``deserialize`` for a record ``deserialize`` raised on: ``error`` is then an
    :class:`UndecodableRecordError` and the headers name the error it wraps), ``error.type``
    (qualified class name), ``error.message`` (cut to 1 KiB), ``origin.topic``,
    ``origin.partition``, ``origin.offset`` (the record's own), ``origin.first_offset`` /
    ``origin.last_offset`` (the batch's range), ``member.id``, ``attempts`` and
    ``failed_at_ms``. Numbers are ASCII decimal. Key, value and the record's own headers are
    the raw ones as fetched.
    """
    stage = "flush"
    if isinstance(error, UndecodableRecordError):
        stage, error = "deserialize", error.error
    error_type = type(error)
    p = DEAD_LETTER_HEADER_PREFIX
    common: Headers = (
        (p + "stage", stage.encode()),
        (p + "error.type", f"{error_type.__module__}.{error_type.__qualname__}".encode()),
        (p + "error.message", _truncate_utf8(str(error), MAX_ERROR_MESSAGE_BYTES)),
        (p + "origin.topic", batch.tp.topic.encode("utf-8")),
        (p + "origin.partition", str(batch.tp.partition).encode()),
        (p + "origin.first_offset", str(batch.first_offset).encode()),
        (p + "origin.last_offset", str(batch.last_offset).encode()),
        (p + "member.id", member_id.encode("utf-8")),
        (p + "attempts", str(attempts).encode()),
        (p + "failed_at_ms", str(failed_at_ms).encode()),
    )
    return [
        DeadLetterRecord(
            topic=topic,
            key=record.key,
            value=record.value,
            headers=(
                *((name, value or b"") for name, value in record.headers),
                *common,
                (p + "origin.offset", str(record.offset).encode()),
            ),
            timestamp_ms=record.timestamp,
        )
        for record in batch.records
    ]
