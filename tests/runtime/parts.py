"""Broker-less assembly of the runtime's parts for their unit tests: the shared state the
consumer owns (ledger, counters, tracker, partition map) and a scripted fetcher."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from capgroup.membership.model import Generation
from capgroup.runtime.backpressure import Backpressure
from capgroup.runtime.batch import Batch, BatchLimits, PartitionBuffer, make_record, record_sizes
from capgroup.runtime.delivery import Delivery
from capgroup.runtime.memory import MemoryLedger
from capgroup.runtime.offsets import CommitTracker
from capgroup.runtime.partition import PartitionState, footprint
from capgroup.runtime.policy import FlushThroughput, RevokeAction
from capgroup.runtime.relay import Relay
from capgroup.runtime.retry import RetryPolicy
from capgroup.runtime.stats import Counters
from capgroup.types import TopicPartition
from tests.scripted.runtime_clients import ScriptedDeadLetterSink, ScriptedFetcher

TP = TopicPartition("events", 0)
OTHER = TopicPartition("events", 1)
#: A batch is cut at 10 records; age never cuts one here.
LIMITS = BatchLimits(max_records=10, max_bytes=1 << 20, max_age=1e12)


@dataclass
class Parts:
    """What the consumer shares between its collaborators, without a consumer."""

    ledger: MemoryLedger
    counters: Counters = field(default_factory=Counters)
    tracker: CommitTracker = field(default_factory=CommitTracker)
    partitions: dict[TopicPartition, PartitionState] = field(default_factory=dict)
    stopped: set[TopicPartition] = field(default_factory=set)
    fetcher: ScriptedFetcher = field(default_factory=ScriptedFetcher)
    backpressure: Backpressure = field(init=False)

    def __post_init__(self) -> None:
        self.backpressure = Backpressure(self.ledger, self.counters, self.partitions)
        self.backpressure.attach(self.fetcher)

    def own(self, tp: TopicPartition, position: int = 0) -> PartitionState:
        """A new ownership of ``tp`` from ``position``, as the assignment handler makes it."""
        state = PartitionState(
            tp=tp,
            epoch=self.tracker.assign(tp, position),
            buffer=PartitionBuffer(tp, LIMITS, next_offset=position),
        )
        self.partitions[tp] = state
        self.fetcher.owned.add(tp)
        return state

    def buffer(self, state: PartitionState, count: int, size: int = 10, now: float = 0.0) -> None:
        """Buffer ``count`` more records of ``size`` bytes, counted in the ledger."""
        start = state.buffer.last_offset + 1
        records = [
            make_record(state.tp.topic, state.tp.partition, start + i, 0, None, b"x" * size)
            for i in range(count)
        ]
        before_bytes, before_count = state.buffer.size_bytes, len(state.buffer)
        state.buffer.extend(records, now, record_sizes(records))
        added = state.buffer.size_bytes - before_bytes
        self.ledger.add(state.tp, footprint(added, len(state.buffer) - before_count))


def make_parts(budget_bytes: int = 1 << 30, partition_limit_bytes: int = 1 << 20) -> Parts:
    """Parts with a ledger of ``budget_bytes`` (per partition: ``partition_limit_bytes``)."""
    return Parts(MemoryLedger(budget_bytes, partition_limit_bytes))


#: Two attempts, no real waiting between them.
FAST_RETRY = RetryPolicy(initial=0.001, max_delay=0.001, jitter=0.0, max_attempts=2)


@dataclass
class Hooks:
    """Scripted user hooks and what the runtime asked of them."""

    fail: bool = False
    block: bool = False
    action: RevokeAction | Exception = RevokeAction.FLUSH
    flushed: list[Batch] = field(default_factory=list)
    attempts: int = 0
    commits: int = 0

    async def flush(self, batch: Batch) -> None:
        self.attempts += 1
        if self.block:
            await anyio.sleep_forever()
        if self.fail:
            raise OSError("disk full")
        self.flushed.append(batch)

    async def on_revoke(self, batch: Batch, deadline: float) -> RevokeAction:
        if isinstance(self.action, Exception):
            raise self.action
        return self.action

    def request_commit(self) -> None:
        self.commits += 1


def delivery(
    parts: Parts,
    hooks: Hooks,
    sink: ScriptedDeadLetterSink | None = None,
    relay: Relay | None = None,
) -> Delivery:
    return Delivery(
        flush=hooks.flush,
        on_revoke=hooks.on_revoke,
        retry=FAST_RETRY,
        throughput=FlushThroughput(),
        tracker=parts.tracker,
        ledger=parts.ledger,
        counters=parts.counters,
        partitions=parts.partitions,
        stopped=parts.stopped,
        backpressure=parts.backpressure,
        limiter=anyio.CapacityLimiter(1),
        request_commit=hooks.request_commit,
        generation=lambda: Generation(4, "member-1"),
        dead_letter=sink,
        relay=relay,
    )
