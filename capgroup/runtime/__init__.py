"""The runtime: :class:`BatchingConsumer` and its parts (buffers, commit-after-flush, memory
budget, backpressure, delivery, committer, samplers), and its seam to the Kafka clients
(:class:`KafkaClients`, :class:`Fetcher`, :class:`DeadLetterSink`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capgroup._lazy import lazy_exports

if TYPE_CHECKING:
    from capgroup.runtime.backpressure import Backpressure
    from capgroup.runtime.batch import Batch, BatchLimits, FlushReason, PartitionBuffer, Record
    from capgroup.runtime.clients import AiokafkaClients, DeadLetterSink, Fetcher, KafkaClients
    from capgroup.runtime.committer import Committer
    from capgroup.runtime.consumer import BatchingConsumer, ShutdownForcedError
    from capgroup.runtime.deadletter import DeadLetterProducer
    from capgroup.runtime.delivery import Delivery
    from capgroup.runtime.fetcher import PartitionFetcher
    from capgroup.runtime.ingest import Ingest
    from capgroup.runtime.memory import MemoryLedger, RssWatchdog, WatchdogLevel
    from capgroup.runtime.offsets import BatchOutcome, CommitTracker
    from capgroup.runtime.ownership import Ownership
    from capgroup.runtime.partition import PartitionState
    from capgroup.runtime.policy import RevokeAction
    from capgroup.runtime.relay import Relayed, RelaySink
    from capgroup.runtime.retry import FailurePolicy, RetryPolicy
    from capgroup.runtime.sampling import MemoryPressure
    from capgroup.runtime.stats import ConsumerStats, Counters, IngressRates

__all__ = [
    "AiokafkaClients",
    "Backpressure",
    "Batch",
    "BatchLimits",
    "BatchOutcome",
    "BatchingConsumer",
    "CommitTracker",
    "Committer",
    "ConsumerStats",
    "Counters",
    "DeadLetterProducer",
    "DeadLetterSink",
    "Delivery",
    "FailurePolicy",
    "Fetcher",
    "FlushReason",
    "Ingest",
    "IngressRates",
    "KafkaClients",
    "MemoryLedger",
    "MemoryPressure",
    "Ownership",
    "PartitionBuffer",
    "PartitionFetcher",
    "PartitionState",
    "Record",
    "RelaySink",
    "Relayed",
    "RetryPolicy",
    "RevokeAction",
    "RssWatchdog",
    "ShutdownForcedError",
    "WatchdogLevel",
]

_EXPORTS = {
    "BatchingConsumer": "capgroup.runtime.consumer",
    "ShutdownForcedError": "capgroup.runtime.consumer",
    "Batch": "capgroup.runtime.batch",
    "BatchLimits": "capgroup.runtime.batch",
    "FlushReason": "capgroup.runtime.batch",
    "PartitionBuffer": "capgroup.runtime.batch",
    "Record": "capgroup.runtime.batch",
    "AiokafkaClients": "capgroup.runtime.clients",
    "DeadLetterSink": "capgroup.runtime.clients",
    "Fetcher": "capgroup.runtime.clients",
    "KafkaClients": "capgroup.runtime.clients",
    "PartitionFetcher": "capgroup.runtime.fetcher",
    "DeadLetterProducer": "capgroup.runtime.deadletter",
    "Relayed": "capgroup.runtime.relay",
    "RelaySink": "capgroup.runtime.relay",
    "Backpressure": "capgroup.runtime.backpressure",
    "Committer": "capgroup.runtime.committer",
    "Delivery": "capgroup.runtime.delivery",
    "Ingest": "capgroup.runtime.ingest",
    "Ownership": "capgroup.runtime.ownership",
    "MemoryPressure": "capgroup.runtime.sampling",
    "MemoryLedger": "capgroup.runtime.memory",
    "RssWatchdog": "capgroup.runtime.memory",
    "WatchdogLevel": "capgroup.runtime.memory",
    "BatchOutcome": "capgroup.runtime.offsets",
    "CommitTracker": "capgroup.runtime.offsets",
    "PartitionState": "capgroup.runtime.partition",
    "RevokeAction": "capgroup.runtime.policy",
    "FailurePolicy": "capgroup.runtime.retry",
    "RetryPolicy": "capgroup.runtime.retry",
    "ConsumerStats": "capgroup.runtime.stats",
    "Counters": "capgroup.runtime.stats",
    "IngressRates": "capgroup.runtime.stats",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
