"""A chaos member built directly on the membership engine and the fetcher, without the
BatchingConsumer runtime: per-partition batches flushed on record count or age, commit after
flush, flush-and-commit on revoke, discard on loss.

It lets the chaos driver exercise the engine on its own (``--member engine``), and it served as
the stand-in while the runtime was being written. Run by the driver as::

    python -m tests.chaos.engine_member          # CAPGROUP_* and CHAOS_* environment
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from capgroup.assignor.model import CapacityAdvertisement
from capgroup.errors import CommitFailedError, CommitFencedError
from capgroup.membership.engine import MembershipEngine
from capgroup.membership.model import AssignmentChange, Generation
from capgroup.runtime.fetcher import PartitionFetcher
from capgroup.settings import CapgroupSettings, load_settings
from capgroup.types import TopicPartition
from tests.chaos.audit import PLANTED_FLUSH_DELAY_S, PLANTS, ChaosAudit


@dataclass
class _Buffer:
    offsets: list[int] = field(default_factory=list)
    size: int = 0
    since: float = 0.0


class EngineChaosMember:
    """Engine + fetcher + per-partition batches writing to the chaos sink and audit."""

    def __init__(self, settings: CapgroupSettings, audit: ChaosAudit, plant: str = "") -> None:
        if plant not in PLANTS:
            raise ValueError(f"unknown CHAOS_PLANT {plant!r}; known: {sorted(PLANTS)}")
        self.settings = settings
        self.audit = audit
        self.plant = plant
        self.fetcher = PartitionFetcher(settings)
        self.engine = MembershipEngine(settings, self, self._capacity)
        audit.wrap_transport(self.engine)
        self.budget = settings.memory_budget_bytes or (
            settings.partition_cost_bytes * settings.max_partitions
        )
        self._buffers: dict[TopicPartition, _Buffer] = {}
        self._owned: set[TopicPartition] = set()
        # The generation as of the last assignment: what a member without local fencing
        # would keep committing under (the no_fencing plant).
        self._assigned_generation: Generation | None = None
        self._lock = anyio.Lock()

    def _capacity(self) -> CapacityAdvertisement:
        return CapacityAdvertisement(
            max_partitions=self.settings.max_partitions,
            memory_budget_bytes=self.budget,
            partition_bytes={},
            default_partition_bytes=self.settings.partition_cost_bytes,
            weight=self.settings.weight,
            draining=self.settings.draining,
        )

    def buffered(self) -> int:
        """Bytes held in batches right now."""
        return sum(b.size for b in self._buffers.values())

    # ------------------------------------------------------------------ listener -----
    async def on_partitions_revoked(self, change: AssignmentChange) -> None:
        """Flush and commit the revoked partitions' batches, then give them up."""
        async with self._lock:
            await self._flush({tp: b for tp, b in self._buffers.items() if tp in change.partitions})
            self.fetcher.release(change.partitions)
            self._owned -= change.partitions
            for tp in change.partitions:
                self._buffers.pop(tp, None)
        self.audit.assignment(
            "revoke",
            change.generation.generation_id,
            self._owned,
            change.partitions,
            self.buffered(),
        )

    async def on_partitions_assigned(self, change: AssignmentChange) -> None:
        """Start the gained partitions from their committed offsets."""
        committed = await self.engine.committed(change.partitions)
        await self.fetcher.gain(committed)
        self._owned |= change.partitions
        self._assigned_generation = change.generation
        self.audit.assignment(
            "assign",
            change.generation.generation_id,
            self._owned,
            change.partitions,
            self.buffered(),
        )

    async def on_partitions_lost(self, change: AssignmentChange) -> None:
        """Drop the lost partitions' batches unflushed; commit nothing."""
        async with self._lock:
            for tp in change.partitions:
                buf = self._buffers.pop(tp, None)
                if buf and buf.offsets:
                    self.audit.discarded(tp, buf.offsets[0], buf.offsets[-1], "lost")
            self.fetcher.release(change.partitions)
            self._owned -= change.partitions
        self.audit.assignment("lost", -1, self._owned, change.partitions, self.buffered())

    # ------------------------------------------------------------------ batches ------
    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        if self.plant == "no_fencing" and self._assigned_generation is not None:
            # Planted: commit straight under the generation we last joined, skipping every
            # local check (frozen past the session, generation lost) the engine makes.
            engine = self.engine
            request = engine._commit_request(self._assigned_generation, offsets, "")
            await engine._coordinated(request, coordination=False)
            return
        # A refused commit is fine: the audit recorded what reached the broker, and the next
        # owner re-reads from the last accepted commit.
        with contextlib.suppress(CommitFencedError, CommitFailedError):
            await self.engine.commit(offsets)

    def _write(self, due: dict[TopicPartition, _Buffer]) -> dict[TopicPartition, int]:
        """Flush ``due`` to the sink; returns the offsets to commit for them."""
        generation = self.engine.generation.generation_id
        offsets = {tp: b.offsets[-1] + 1 for tp, b in due.items() if b.offsets}
        for tp, buf in due.items():
            if buf.offsets:
                self.audit.flushed(tp, buf.offsets, generation)
            self._buffers.pop(tp, None)
        return offsets

    async def _flush(self, due: dict[TopicPartition, _Buffer]) -> None:
        if self.plant == "commit_before_flush":
            # Planted: the commit goes first and the flush comes PLANTED_FLUSH_DELAY_S later.
            await self._commit({tp: b.offsets[-1] + 1 for tp, b in due.items() if b.offsets})
            await anyio.sleep(PLANTED_FLUSH_DELAY_S)
            self._write(due)
            return
        await self._commit(self._write(due))

    async def _consume(self) -> None:
        max_age = self.settings.batch_max_age_ms / 1000
        while True:
            batches = await self.fetcher.fetch(timeout_ms=100)
            async with self._lock:
                now = time.monotonic()
                for tp, records in batches.items():
                    if tp not in self._owned:
                        continue
                    buf = self._buffers.setdefault(tp, _Buffer(since=now))
                    for r in records:
                        buf.offsets.append(r.offset)
                        buf.size += len(r.value or b"") + len(r.key or b"")
                due = {
                    tp: b
                    for tp, b in self._buffers.items()
                    if len(b.offsets) >= self.settings.batch_max_records
                    or b.size >= self.settings.batch_max_bytes
                    or now - b.since >= max_age
                }
                offsets: dict[TopicPartition, int] = {}
                if due and self.plant == "commit_before_flush":
                    await self._flush(due)
                elif due:
                    offsets = self._write(due)
                # Backpressure: stop fetching while the batches hold the whole budget.
                self.fetcher.hold_all(self.buffered() >= self.budget)
            # Outside the lock: a commit may wait out a rebalance, and the engine's loss and
            # revoke callbacks (which take the lock) must not wait for it.
            await self._commit(offsets)

    async def run(self) -> None:
        """Run until cancelled or until :meth:`stop`; flush what is buffered on the way out."""
        self.audit.start(
            max_partitions=self.settings.max_partitions,
            budget=self.budget,
            partition_cost=self.settings.partition_cost_bytes,
            instance_id=self.settings.group_instance_id,
            member_kind="engine",
            plant=self.plant,
        )
        await self.fetcher.start()
        try:
            async with anyio.create_task_group() as tg:

                async def engine_then_cancel(*, task_status: Any) -> None:
                    await self.engine.run(task_status=task_status)
                    tg.cancel_scope.cancel()

                tg.start_soon(
                    self.audit.sample_rss,
                    self.buffered,
                    lambda: len(self._owned),
                    lambda: self.engine.generation.generation_id,
                )
                await tg.start(engine_then_cancel)
                tg.start_soon(self._consume)
        finally:
            with anyio.CancelScope(shield=True):
                await self.fetcher.stop()

    async def drain(self) -> None:
        """Graceful shutdown: flush and commit every batch, then leave (or not, if static)."""
        with anyio.move_on_after(self.settings.shutdown_timeout_ms / 1000):
            async with self._lock:
                await self._flush(dict(self._buffers))
        released, self._owned = set(self._owned), set()
        self.audit.assignment(
            "stop", self.engine.generation.generation_id, self._owned, released, self.buffered()
        )
        self.engine.stop()


async def _main() -> None:
    settings = load_settings()
    audit = ChaosAudit.from_env()
    member = EngineChaosMember(settings, audit, os.environ.get("CHAOS_PLANT", ""))
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(member.run)
            async for _ in signals:
                await member.drain()
                break
    audit.stop()


if __name__ == "__main__":
    anyio.run(_main)
