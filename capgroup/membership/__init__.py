"""capgroup's own membership engine for the classic group protocol (cooperative, generation
fenced, static membership), its transport seam, and the types its listener receives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capgroup._lazy import lazy_exports

if TYPE_CHECKING:
    from capgroup.membership.aiokafka_assignor import CapacityAwareAssignor
    from capgroup.membership.engine import MembershipEngine
    from capgroup.membership.model import (
        NO_GENERATION,
        AssignmentChange,
        AssignmentListener,
        CapacitySource,
        Generation,
        MembershipSnapshot,
        MemberState,
        RateSource,
    )
    from capgroup.membership.transport import AiokafkaTransport, CoordinatorTransport

__all__ = [
    "NO_GENERATION",
    "AiokafkaTransport",
    "AssignmentChange",
    "AssignmentListener",
    "CapacityAwareAssignor",
    "CapacitySource",
    "CoordinatorTransport",
    "Generation",
    "MemberState",
    "MembershipEngine",
    "MembershipSnapshot",
    "RateSource",
]

_EXPORTS = {
    "MembershipEngine": "capgroup.membership.engine",
    "NO_GENERATION": "capgroup.membership.model",
    "AssignmentChange": "capgroup.membership.model",
    "AssignmentListener": "capgroup.membership.model",
    "CapacitySource": "capgroup.membership.model",
    "Generation": "capgroup.membership.model",
    "MemberState": "capgroup.membership.model",
    "MembershipSnapshot": "capgroup.membership.model",
    "RateSource": "capgroup.membership.model",
    "AiokafkaTransport": "capgroup.membership.transport",
    "CoordinatorTransport": "capgroup.membership.transport",
    "CapacityAwareAssignor": "capgroup.membership.aiokafka_assignor",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
