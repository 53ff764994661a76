"""A minimal member built on the membership engine and the fetcher, for membership tests.

It processes a record by writing one JSON line to a sink, then commits what it processed.
The sink lets tests check ownership, gaps and fencing afterwards. It runs in-process (tests
that need precise timing) or as its own OS process (tests that SIGKILL or SIGSTOP it):

    python -m tests.membership.probe_member SINK_PATH      # settings from CAPGROUP_* env
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import anyio

from capgroup.assignor.model import CapacityAdvertisement
from capgroup.errors import (
    CommitFailedError,
    CommitFencedError,
    GroupFatalError,
    leaf_exceptions,
)
from capgroup.log import configure_logging
from capgroup.membership.engine import MembershipEngine
from capgroup.membership.model import AssignmentChange
from capgroup.runtime.fetcher import PartitionFetcher
from capgroup.settings import CapgroupSettings, load_settings
from capgroup.types import TopicPartition

Sink = Callable[[dict[str, Any]], None]


def file_sink(stream: TextIO) -> Sink:
    """A sink writing JSON lines, flushed and fsynced so a SIGKILL loses nothing written."""

    def write(event: dict[str, Any]) -> None:
        stream.write(json.dumps(event, sort_keys=True) + "\n")
        stream.flush()
        os.fsync(stream.fileno())

    return write


class ProbeMember:
    """Engine + fetcher + a sink: the smallest real consumer of a capgroup group."""

    def __init__(self, settings: CapgroupSettings, sink: Sink, name: str) -> None:
        self.settings = settings
        self.name = name
        self._sink = sink
        self.fetcher = PartitionFetcher(settings)
        self.engine = MembershipEngine(settings, self, self._capacity)
        self._positions: dict[TopicPartition, int] = {}
        #: Tests lower this to make the member shed partitions.
        self.max_partitions = settings.max_partitions
        #: Seconds a revoke takes, standing in for flushing buffered records.
        self.revoke_seconds = 0.0
        self.commit_interval = float(os.environ.get("PROBE_COMMIT_INTERVAL_S", "0.2"))

    def _capacity(self) -> CapacityAdvertisement:
        cost = self.settings.partition_cost_bytes
        budget = self.settings.memory_budget_bytes or cost * self.settings.max_partitions
        return CapacityAdvertisement(
            max_partitions=self.max_partitions,
            memory_budget_bytes=budget,
            partition_bytes={},
            default_partition_bytes=cost,
            weight=self.settings.weight,
            draining=self.settings.draining,
        )

    def _emit(self, event: str, **fields: Any) -> None:
        self._sink({"event": event, "member": self.name, "t": time.time(), **fields})

    def _change(self, event: str, change: AssignmentChange) -> None:
        self._emit(
            event,
            generation=change.generation.generation_id,
            member_id=change.generation.member_id,
            partitions=sorted([tp.topic, tp.partition] for tp in change.partitions),
            assigned=sorted([tp.topic, tp.partition] for tp in change.assigned),
        )

    async def on_partitions_revoked(self, change: AssignmentChange) -> None:
        """Commit what was processed of the revoked partitions, then stop fetching them."""
        self._change("revoked", change)
        await anyio.sleep(self.revoke_seconds)
        offsets = {tp: self._positions[tp] for tp in change.partitions if tp in self._positions}
        self.fetcher.release(change.partitions)
        await self._commit(offsets)
        for tp in change.partitions:
            self._positions.pop(tp, None)

    async def on_partitions_assigned(self, change: AssignmentChange) -> None:
        """Start the gained partitions from their committed offsets."""
        committed = await self.engine.committed(change.partitions)
        self._change("assigned", change)
        await self.fetcher.gain(committed)

    async def on_partitions_lost(self, change: AssignmentChange) -> None:
        """Forget the lost partitions; commit nothing."""
        self._change("lost", change)
        self.fetcher.release(change.partitions)
        for tp in change.partitions:
            self._positions.pop(tp, None)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        generation = self.engine.generation.generation_id
        sent_t = time.time()
        try:
            await self.engine.commit(offsets)
        except CommitFencedError as exc:
            self._emit("commit_fenced", generation=generation, reason=exc.reason)
            return
        except CommitFailedError as exc:
            self._emit("commit_failed", generation=generation, reason=str(exc))
            return
        self._emit(
            "committed",
            sent_t=sent_t,
            generation=generation,
            offsets=sorted([tp.topic, tp.partition, o] for tp, o in offsets.items()),
        )

    async def _consume(self) -> None:
        seen_generation = -1
        while True:
            generation = self.engine.generation.generation_id
            if generation != seen_generation:
                # Also marks generations in which this member's partitions did not change.
                self._emit("generation", generation=generation)
                seen_generation = generation
            batches = await self.fetcher.fetch(timeout_ms=200)
            for tp, records in batches.items():
                if tp not in self.engine.assignment:
                    continue
                for record in records:
                    self._emit(
                        "record",
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=record.offset,
                        produced_ms=record.timestamp,
                        generation=self.engine.generation.generation_id,
                    )
                self._positions[tp] = records[-1].offset + 1

    async def _commit_loop(self) -> None:
        """Commit processed positions in the background: a commit waits while the group
        rebalances, and consumption of retained partitions must not wait with it."""
        committed: dict[TopicPartition, int] = {}
        while True:
            await anyio.sleep(self.commit_interval)
            due = {tp: o for tp, o in self._positions.items() if committed.get(tp) != o}
            await self._commit(due)
            committed.update(due)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or until :meth:`stop`."""
        await self.fetcher.start()
        try:
            async with anyio.create_task_group() as tg:

                async def engine_then_cancel(*, task_status: Any) -> None:
                    await self.engine.run(task_status=task_status)
                    tg.cancel_scope.cancel()

                await tg.start(engine_then_cancel)
                self._emit("joined", member_id=self.engine.generation.member_id)
                task_status.started()
                tg.start_soon(self._consume)
                tg.start_soon(self._commit_loop)
        finally:
            with anyio.CancelScope(shield=True):
                await self.fetcher.stop()

    def stop(self, *, leave_group: bool | None = None) -> None:
        """Leave (or not) and stop."""
        self.engine.stop(leave_group=leave_group)


async def _main(sink_path: str) -> None:
    try:
        await _serve(sink_path)
    except* GroupFatalError as group:
        for exc in leaf_exceptions(group):
            print(f"probe_member: {exc}", file=sys.stderr)
        raise SystemExit(3) from None


async def _serve(sink_path: str) -> None:
    settings = load_settings()
    configure_logging(settings.log_level, "json")
    with open(sink_path, "a", encoding="utf-8") as stream:  # noqa: ASYNC230 - opened once
        member = ProbeMember(settings, file_sink(stream), os.environ.get("PROBE_NAME", "probe"))
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(member.run)
                async for _ in signals:
                    member.stop()
                    break


if __name__ == "__main__":
    anyio.run(_main, sys.argv[1])
