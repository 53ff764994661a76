"""Plain data the membership engine hands to the runtime: states, generations, changes."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from capgroup.protocol.consumer import AssignmentInfo
from capgroup.types import CapacityAdvertisement, TopicPartition

__all__ = [
    "COMMITTABLE_STATES",
    "NO_GENERATION",
    "PROTOCOL_NAME",
    "PROTOCOL_TYPE",
    "AssignmentChange",
    "AssignmentListener",
    "CapacitySource",
    "Generation",
    "MemberState",
    "MembershipSnapshot",
    "RateSource",
]

#: Name of our protocol inside the "consumer" protocol type. Members running another assignor
#: share no protocol with us, and the broker rejects them with INCONSISTENT_GROUP_PROTOCOL.
PROTOCOL_NAME = "capgroup-cooperative"
PROTOCOL_TYPE = "consumer"


class MemberState(enum.Enum):
    """Where the member is in the group protocol."""

    #: Not in a generation; commits are impossible.
    UNJOINED = "unjoined"
    #: JoinGroup sent (the broker may hold it up to the rebalance timeout).
    JOINING = "joining"
    #: SyncGroup sent.
    SYNCING = "syncing"
    #: A new generation's assignment is being applied (revoke hooks may run and commit).
    ASSIGNING = "assigning"
    #: In a generation with an applied assignment.
    STABLE = "stable"
    #: Stopped for good.
    STOPPED = "stopped"


#: States in which offsets may be committed under the current generation.
COMMITTABLE_STATES = frozenset({MemberState.ASSIGNING, MemberState.STABLE})


@dataclass(frozen=True, slots=True)
class Generation:
    """A generation of the group as this member joined it."""

    generation_id: int
    member_id: str

    @property
    def valid(self) -> bool:
        """Whether this is a real generation (commits can be made under it)."""
        return self.generation_id >= 0 and bool(self.member_id)


NO_GENERATION = Generation(-1, "")


@dataclass(frozen=True, slots=True)
class AssignmentChange:
    """One step of the member's ownership, handed to the runtime.

    ``assigned`` is the full set the member owns once the step completes; ``relay_only`` the
    part of it the leader gave as relay-only (fetch and republish, never batch; issue 13).
    """

    generation: Generation
    assigned: frozenset[TopicPartition]
    partitions: frozenset[TopicPartition]
    reason: str
    relay_only: frozenset[TopicPartition] = frozenset()


class AssignmentListener(Protocol):
    """What the runtime implements to follow the member's ownership.

    Calls never overlap, and always come in the order revoke → assign for one generation.
    """

    async def on_partitions_revoked(self, change: AssignmentChange) -> None:
        """``change.partitions`` are given up in a live generation: flush or discard them and
        commit (under ``change.generation``) before returning."""

    async def on_partitions_assigned(self, change: AssignmentChange) -> None:
        """``change.partitions`` are gained: start them from their committed offsets."""

    async def on_partitions_lost(self, change: AssignmentChange) -> None:
        """``change.partitions`` are lost with the generation: drop their buffers, commit
        nothing."""


#: Returns the member's current advertisement; ``owned`` is filled in by the engine.
CapacitySource = Callable[[], CapacityAdvertisement]
#: Returns the ingress rate (records/s) of owned partitions, measured out of band.
RateSource = Callable[[], Mapping[TopicPartition, float]]


@dataclass(frozen=True, slots=True)
class MembershipSnapshot:
    """What an operator or health check can observe about a member."""

    group_id: str
    member_id: str
    instance_id: str | None
    state: MemberState
    generation_id: int
    is_leader: bool
    assigned: frozenset[TopicPartition]
    advertised: CapacityAdvertisement | None
    rebalances: int
    last_rebalance_seconds: float | None
    #: The group-wide figures the leader sent with the current generation's assignment
    #: (:attr:`MembershipEngine.group_figures`); None when not in a generation.
    group_figures: AssignmentInfo | None = None
    #: The relay-only part of ``assigned`` (:attr:`MembershipEngine.relay_only`).
    relay_only: frozenset[TopicPartition] = frozenset()
