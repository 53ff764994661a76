"""The chaos test service: a :class:`~capgroup.BatchingConsumer` that records everything.

Run by the driver as ``capgroup run tests.chaos.service:ChaosService`` with ``CAPGROUP_*``
settings (each member its own ``max_partitions`` and ``memory_budget_bytes``) and the
``CHAOS_*`` variables of :mod:`tests.chaos.audit`.

- ``flush`` appends one sink row per record ``(topic, partition, offset, member, generation)``
  and fsyncs once per batch before returning, so the runtime commits only what is durable;
- the audit log gets every assignment step (full partition set, generation, buffered bytes,
  ``max_partitions``, budget), every revoke decision that discards a batch, every OffsetCommit
  that leaves the process with the broker's answer, and an RSS sample every second.

Planted faults (``CHAOS_PLANT``), for showing that the invariants catch them; they exist only
here, in tests:

``commit_before_flush``  each flush first commits the batch's end offset, then writes the
                         sink half a second later (a runtime committing ahead of its flush);
``no_fencing``           the engine ignores its *local* evidence of a lost session (no
                         heartbeat for a whole session, e.g. after SIGSTOP), so a woken zombie
                         flushes and commits under its stale generation until the broker says
                         no.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import anyio

from capgroup import Batch, BatchingConsumer, RevokeAction
from capgroup.membership.model import AssignmentChange
from capgroup.types import TopicPartition
from tests.chaos.audit import PLANTS, ChaosAudit

#: Local reasons for declaring the generation lost that ``no_fencing`` ignores.
_LOCAL_FENCING = ("no successful heartbeat", "without heartbeat")


class ChaosService(BatchingConsumer):
    """The consumer every chaos member runs."""

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.audit = ChaosAudit.from_env()
        self.plant = os.environ.get("CHAOS_PLANT", "")
        if self.plant not in PLANTS:
            raise ValueError(f"unknown CHAOS_PLANT {self.plant!r}; known: {sorted(PLANTS)}")
        self._instrumented = False
        self._owned: frozenset[TopicPartition] = frozenset()
        self.audit.start(
            max_partitions=self.settings.max_partitions,
            budget=self.budget_bytes,
            partition_cost=self.settings.partition_cost_bytes,
            advertised_max_partitions=self.max_partitions,
            instance_id=self.settings.group_instance_id,
            member_kind="service",
            plant=self.plant,
        )
        # A thread, not a task: it samples even while the event loop is busy flushing.
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()

    def _buffered(self) -> int:
        try:
            return int(self.stats.buffered_bytes)
        except RuntimeError:  # a dict changed size under the sampler thread: try next time
            return 0

    def _sample_rss(self) -> None:
        stop = threading.Event()
        while not stop.wait(1.0):
            self.audit.rss(self._buffered(), len(self._owned))

    def _instrument(self) -> None:
        """Wrap the engine once it exists (the first assignment comes before any commit)."""
        engine = self.engine
        if self._instrumented or engine is None:
            return
        self._instrumented = True
        self.audit.wrap_send_commit(engine)
        if self.plant == "no_fencing":
            mark_lost = engine._mark_lost

            def lenient(reason: str) -> None:
                if not any(marker in reason for marker in _LOCAL_FENCING):
                    mark_lost(reason)

            engine._mark_lost = lenient

    # ------------------------------------------------------------------ hooks ---------
    async def flush(self, batch: Batch) -> None:
        """Write one sink row per record and fsync; with ``commit_before_flush`` planted,
        commit first."""
        generation = self.generation.generation_id
        if self.plant == "commit_before_flush" and self.engine is not None:
            await self.engine.commit({batch.tp: batch.last_offset + 1})
            await anyio.sleep(0.5)
        self.audit.flushed(batch.tp, (r.offset for r in batch.records), generation)

    async def on_revoke(self, batch: Batch, deadline: float) -> RevokeAction:
        """The runtime's default decision, audited when it drops the batch."""
        action = await super().on_revoke(batch, deadline)
        if action is RevokeAction.DISCARD:
            self.audit.discarded(batch.tp, batch.first_offset, batch.last_offset, "revoke")
        return action

    async def on_assign(self, partitions: frozenset[TopicPartition]) -> None:
        """Record the full assignment after a gain (the engine sets it before calling us)."""
        self._instrument()
        self._owned = self.assignment
        self.audit.assignment(
            "assign", self.generation.generation_id, self._owned, partitions, self._buffered()
        )

    async def on_lost(self, partitions: frozenset[TopicPartition]) -> None:
        """Record the loss (buffers already discarded, nothing committed)."""
        self._owned = self._owned - partitions
        self.audit.assignment("lost", -1, self._owned, partitions, self._buffered())

    async def _on_revoked(self, change: AssignmentChange) -> None:
        # Revokes of partitions with empty buffers never reach on_revoke, so the audit hooks
        # the runtime's own revoke step: the partitions are given up once it returns.
        await super()._on_revoked(change)
        self._owned = self._owned - change.partitions
        self.audit.assignment(
            "revoke",
            change.generation.generation_id,
            self._owned,
            change.partitions,
            self._buffered(),
        )
