"""The capacity-aware cooperative assignor: pure functions from members and partitions to a
plan. ``assign`` places partitions without overloading anyone and reports what it leaves
unassigned; ``plan_group`` runs it on raw JoinGroup metadata for a group leader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capgroup._lazy import lazy_exports

if TYPE_CHECKING:
    from capgroup.assignor.adapter import (
        ASSIGNOR_NAME,
        GroupPlan,
        plan_group,
        plan_subscriptions,
        with_claimed_rates,
    )
    from capgroup.assignor.balance import assign, headroom
    from capgroup.assignor.model import (
        MemberSpec,
        PartitionSpec,
        PartitionTable,
        PendingMove,
        Plan,
    )
    from capgroup.types import CapacityAdvertisement, OwnedPartition, TopicPartition

__all__ = [
    "ASSIGNOR_NAME",
    "CapacityAdvertisement",
    "GroupPlan",
    "MemberSpec",
    "OwnedPartition",
    "PartitionSpec",
    "PartitionTable",
    "PendingMove",
    "Plan",
    "TopicPartition",
    "assign",
    "headroom",
    "plan_group",
    "plan_subscriptions",
    "with_claimed_rates",
]

_EXPORTS = {
    "assign": "capgroup.assignor.balance",
    "headroom": "capgroup.assignor.balance",
    "ASSIGNOR_NAME": "capgroup.assignor.adapter",
    "GroupPlan": "capgroup.assignor.adapter",
    "plan_group": "capgroup.assignor.adapter",
    "plan_subscriptions": "capgroup.assignor.adapter",
    "with_claimed_rates": "capgroup.assignor.adapter",
    "MemberSpec": "capgroup.assignor.model",
    "PartitionSpec": "capgroup.assignor.model",
    "PartitionTable": "capgroup.assignor.model",
    "PendingMove": "capgroup.assignor.model",
    "Plan": "capgroup.assignor.model",
    "CapacityAdvertisement": "capgroup.types",
    "OwnedPartition": "capgroup.types",
    "TopicPartition": "capgroup.types",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
