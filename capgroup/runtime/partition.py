"""Per-partition state of an owned partition: its buffer, its ownership epoch and its worker.

One :class:`PartitionState` exists per ownership (assignment) of a partition. Its worker task
cuts batches and flushes them one at a time, so a partition's batches flush strictly in offset
order; revoke, loss and shutdown close it through the flags and events here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import anyio

from capgroup.runtime.batch import FlushReason, PartitionBuffer
from capgroup.settings import RECORD_OVERHEAD_BYTES
from capgroup.types import TopicPartition

__all__ = ["PartitionState", "footprint", "partition_names"]


@dataclass(eq=False, slots=True)
class PartitionState:
    """One ownership of one partition.

    ``closing`` stops the worker after its current flush (revoke, shutdown); ``stopped`` marks a
    partition whose flush failed for good (it is held and never commits past the failure);
    ``force`` makes the worker cut whatever is buffered without waiting for a limit (memory
    pressure).
    """

    tp: TopicPartition
    #: Commit-tracker epoch of this ownership.
    epoch: int
    buffer: PartitionBuffer
    closing: bool = False
    stopped: bool = False
    force: FlushReason | None = None
    #: Whether the fetcher holds this partition for backpressure.
    held: bool = False
    #: Whether the worker has a batch cut and in flight.
    flushing: bool = False
    #: Cancelling it cancels the worker, including a flush in flight (loss, overrun deadline).
    worker_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: Set when the worker task has finished (its last batch is settled).
    worker_done: anyio.Event = field(default_factory=anyio.Event)
    #: Scope of the final revoke/shutdown flush, once one runs (cancelled on loss).
    drain_scope: anyio.CancelScope | None = None
    #: Set when the final revoke/shutdown flush is over; None until one starts.
    drain_done: anyio.Event | None = None
    _wake: anyio.Event = field(default_factory=anyio.Event)

    def poke(self) -> None:
        """Wake the worker: records arrived, a flag changed, or pressure rose."""
        self._wake.set()

    def arm(self) -> anyio.Event:
        """A fresh wake-up event for the worker; arm before checking for work, then wait on it,
        so a :meth:`poke` between the check and the wait is not lost."""
        self._wake = anyio.Event()
        return self._wake

    def due(self, now: float) -> FlushReason | None:
        """Why a batch must be cut now, if one must: a forced cut or a batch limit."""
        if not self.buffer:
            return None
        if self.force is not None:
            return self.force
        return self.buffer.due(now)

    def close_worker(self) -> None:
        """Ask the worker to stop once its current flush (if any) has settled."""
        self.closing = True
        self.poke()


def partition_names(partitions: Iterable[TopicPartition]) -> list[str]:
    """``topic-partition`` names, sorted, for log events."""
    return [f"{tp.topic}-{tp.partition}" for tp in sorted(partitions)]


def footprint(payload_bytes: int, records: int) -> int:
    """Memory ``records`` buffered records of ``payload_bytes`` in all hold (what the ledger
    counts)."""
    return payload_bytes + records * RECORD_OVERHEAD_BYTES
