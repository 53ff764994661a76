"""Backpressure: which partitions the fetcher holds, and when it holds them all.

Two levels, both recomputed from state after every change rather than toggled by events:

- a partition is held while its buffer holds a whole batch, its share of the budget is used
  up, or it is stopped after a flush failure (:meth:`Backpressure.update_holds`);
- all fetching is held at the member's memory budget, at the hard RSS limit and on shutdown
  (:meth:`Backpressure.update_fetch_hold`).

Pure bookkeeping over the ledger and the partition states: no I/O, no clock, no task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from capgroup.log import get_logger
from capgroup.runtime.clients import Fetcher
from capgroup.runtime.memory import MemoryLedger
from capgroup.runtime.partition import PartitionState, partition_names
from capgroup.runtime.stats import Counters
from capgroup.types import TopicPartition

__all__ = ["Backpressure"]

_log = get_logger("consumer")


class Backpressure:
    """Holds and resumes partitions on a :class:`~capgroup.runtime.clients.Fetcher`.

    ``partitions`` is the consumer's live map of owned partitions (a state no longer in it is
    a finished ownership and is left alone). Until :meth:`attach` gives it a fetcher, nothing
    is held. The owners set :attr:`shutting_down` and :attr:`rss_hard`; the next
    :meth:`update_fetch_hold` applies them.
    """

    def __init__(
        self,
        ledger: MemoryLedger,
        counters: Counters,
        partitions: Mapping[TopicPartition, PartitionState],
    ) -> None:
        self._ledger = ledger
        self._counters = counters
        self._partitions = partitions
        self._fetcher: Fetcher | None = None
        #: Shutting down: fetch nothing more.
        self.shutting_down = False
        #: RSS is at the hard limit: fetch nothing more until it falls.
        self.rss_hard = False
        #: Whether all fetching is held now.
        self.held_all = False

    def attach(self, fetcher: Fetcher) -> None:
        """Steer ``fetcher`` from now on."""
        self._fetcher = fetcher

    def update_holds(self, states: Iterable[PartitionState]) -> None:
        """Pause partitions holding a whole batch, resume those that no longer do."""
        hold, unhold = [], []
        for state in states:
            tp = state.tp
            if self._partitions.get(tp) is not state:
                continue
            full = state.stopped or state.buffer.is_full or self._ledger.should_pause_partition(tp)
            if full and not state.held:
                hold.append(tp)
            elif state.held and not full:
                unhold.append(tp)
            state.held = full
        fetcher = self._fetcher
        if fetcher is not None:
            if hold:
                fetcher.hold(hold)
                self._counters.partition_pauses += len(hold)
                _log.info(
                    "partitions_paused", partitions=partition_names(hold), reason="buffer_full"
                )
            if unhold:
                fetcher.unhold(unhold)
                _log.info("partitions_resumed", partitions=partition_names(unhold))
        self.update_fetch_hold()

    def update_fetch_hold(self) -> None:
        """Pause all fetching at the budget, at the hard RSS limit and on shutdown."""
        if self._fetcher is None:
            return
        hold = self.shutting_down or self.rss_hard or self._ledger.should_pause_all()
        if hold == self.held_all:
            return
        self.held_all = hold
        self._fetcher.hold_all(hold)
        if hold:
            self._counters.budget_pauses += 1
        reason = (
            "shutdown" if self.shutting_down else "rss_hard_limit" if self.rss_hard else "budget"
        )
        _log.info(
            "fetch_paused" if hold else "fetch_resumed",
            reason=reason if hold else None,
            buffered_bytes=self._ledger.total_bytes,
            budget_bytes=self._ledger.budget_bytes,
        )
