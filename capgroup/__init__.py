"""capgroup: Kafka consumer groups that know their own limits.

The top level holds what a service author needs: :class:`BatchingConsumer` and its hooks'
types, settings, errors, logging and metrics. Other audiences import from subpackages:

- :mod:`capgroup.assignor`: the pure capacity-aware assignor (``assign``, ``headroom``,
  ``plan_group``) and its model;
- :mod:`capgroup.protocol`: the wire codec of the capacity advertisement and assignment info;
- :mod:`capgroup.membership`: the membership engine, its transport seam and listener types;
- :mod:`capgroup.runtime`: the runtime's parts and its Kafka client seam;
- :mod:`capgroup.operations`: the metrics and health endpoints;
- :mod:`capgroup.devkafka`: a local Apache Kafka from Maven jars, for development.

Names load on first use, so ``from capgroup import assign`` imports no Kafka client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capgroup._lazy import lazy_exports

if TYPE_CHECKING:
    from capgroup.assignor.balance import assign
    from capgroup.errors import (
        CapgroupError,
        CommitFailedError,
        CommitFencedError,
        FencedInstanceError,
        GroupFatalError,
    )
    from capgroup.log import configure_logging
    from capgroup.operations.metrics import metrics_registry
    from capgroup.runtime.batch import Batch, FlushReason, Record, make_record, with_value
    from capgroup.runtime.consumer import BatchingConsumer, ShutdownForcedError
    from capgroup.runtime.policy import RevokeAction
    from capgroup.runtime.retry import FailurePolicy
    from capgroup.runtime.stats import ConsumerStats, Counters
    from capgroup.settings import CapgroupSettings, SettingsError, load_settings
    from capgroup.types import TopicPartition

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "BatchingConsumer",
    "CapgroupError",
    "CapgroupSettings",
    "CommitFailedError",
    "CommitFencedError",
    "ConsumerStats",
    "Counters",
    "FailurePolicy",
    "FencedInstanceError",
    "FlushReason",
    "GroupFatalError",
    "Record",
    "RevokeAction",
    "SettingsError",
    "ShutdownForcedError",
    "TopicPartition",
    "__version__",
    "assign",
    "configure_logging",
    "load_settings",
    "make_record",
    "metrics_registry",
    "with_value",
]

_EXPORTS = {
    "assign": "capgroup.assignor.balance",
    "Batch": "capgroup.runtime.batch",
    "FlushReason": "capgroup.runtime.batch",
    "Record": "capgroup.runtime.batch",
    "make_record": "capgroup.runtime.batch",
    "with_value": "capgroup.runtime.batch",
    "BatchingConsumer": "capgroup.runtime.consumer",
    "ShutdownForcedError": "capgroup.runtime.consumer",
    "RevokeAction": "capgroup.runtime.policy",
    "FailurePolicy": "capgroup.runtime.retry",
    "ConsumerStats": "capgroup.runtime.stats",
    "Counters": "capgroup.runtime.stats",
    "CapgroupSettings": "capgroup.settings",
    "SettingsError": "capgroup.settings",
    "load_settings": "capgroup.settings",
    "CapgroupError": "capgroup.errors",
    "CommitFailedError": "capgroup.errors",
    "CommitFencedError": "capgroup.errors",
    "FencedInstanceError": "capgroup.errors",
    "GroupFatalError": "capgroup.errors",
    "configure_logging": "capgroup.log",
    "metrics_registry": "capgroup.operations.metrics",
    "TopicPartition": "capgroup.types",
}

#: Names the top level exported before 0.2, and where they live now.
_MOVED = {
    **dict.fromkeys(
        (
            "AdvertisementEncodeError",
            "AdvertisementTooLargeError",
            "AssignmentInfo",
            "MetadataDecodeError",
            "decode_advertisement",
            "decode_assignment_info",
            "encode_advertisement",
        ),
        "capgroup.protocol",
    ),
    **dict.fromkeys(
        (
            "CapacityAdvertisement",
            "GroupPlan",
            "MemberSpec",
            "OwnedPartition",
            "PartitionSpec",
            "PendingMove",
            "Plan",
            "headroom",
            "plan_group",
        ),
        "capgroup.assignor",
    ),
    **dict.fromkeys(
        (
            "AssignmentChange",
            "AssignmentListener",
            "CapacityAwareAssignor",
            "Generation",
            "MemberState",
            "MembershipEngine",
            "MembershipSnapshot",
        ),
        "capgroup.membership",
    ),
    **dict.fromkeys(
        (
            "ConsumerCollector",
            "HealthCheck",
            "OperationsServer",
            "OperationsServerError",
            "liveness",
            "readiness",
            "serve_operations",
        ),
        "capgroup.operations",
    ),
    "bind_member": "capgroup.log",
    "get_logger": "capgroup.log",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _MOVED)
