"""From group protocol bytes to :func:`capgroup.assignor.balance.assign` and back.

Two entry points share one path, :func:`plan_subscriptions`:

* :func:`plan_group` for capgroup's own membership engine, which runs JoinGroup/SyncGroup
  itself and, as leader, holds ``[(member_id, group_instance_id, metadata_bytes)]``;
* the aiokafka ``AbstractPartitionAssignor`` in :mod:`capgroup.membership.aiokafka_assignor`
  (kept there so that the assignor never imports a Kafka client).

A member whose metadata does not decode (garbage, another major version, another assignor)
never fails the group: it gets an empty assignment and a ``member_metadata_rejected`` error event
names it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from capgroup.assignor import balance
from capgroup.assignor.model import (
    MemberSpec,
    PartitionSpec,
    Plan,
)
from capgroup.log import get_logger
from capgroup.protocol._wire import MetadataDecodeError
from capgroup.protocol.capacity import decode_advertisement
from capgroup.protocol.consumer import (
    AssignmentInfo,
    MemberSubscription,
    decode_member_metadata,
    encode_member_assignment,
)
from capgroup.types import TopicPartition

__all__ = [
    "ASSIGNOR_NAME",
    "GroupPlan",
    "plan_group",
    "plan_subscriptions",
    "with_claimed_rates",
]

#: Protocol name announced in JoinGroup; every member of a group must offer it.
ASSIGNOR_NAME = "capgroup-cooperative"
#: How many unassigned partitions the shortfall warning lists by name.
_SAMPLE = 10

_log = get_logger("assignor")


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """The leader's result for one generation.

    ``assignments`` holds encoded ``ConsumerProtocolMemberAssignment`` bytes for **every**
    input member (empty for rejected ones); ``rejected`` maps a member id to the reason its
    metadata was refused.
    """

    plan: Plan
    assignments: Mapping[str, bytes]
    members: tuple[MemberSpec, ...] = ()
    rejected: Mapping[str, str] = field(default_factory=dict)


def plan_group(
    members: Sequence[tuple[str, str | None, bytes]],
    partitions: Sequence[PartitionSpec],
    generation: int,
    *,
    cooperative: bool = True,
) -> GroupPlan:
    """Plan a generation from raw JoinGroup member metadata.

    ``partitions`` are all partitions of the subscribed topics; a partition whose ``rate`` is 0
    (unknown) takes the highest rate its claimants advertise. With ``cooperative`` (KIP-429,
    the default) a partition moving between live members is withheld for one round; without
    it, as under an eager protocol where every member revoked everything before joining, it is
    handed to its new owner at once.
    """
    decoded: list[tuple[str, str | None, MemberSubscription | MetadataDecodeError]] = []
    for member_id, instance_id, raw in members:
        try:
            decoded.append((member_id, instance_id, decode_member_metadata(raw)))
        except MetadataDecodeError as exc:
            decoded.append((member_id, instance_id, exc))
    return plan_subscriptions(decoded, partitions, generation, cooperative=cooperative)


def plan_subscriptions(
    decoded: Sequence[tuple[str, str | None, MemberSubscription | MetadataDecodeError]],
    partitions: Sequence[PartitionSpec],
    generation: int,
    *,
    cooperative: bool,
) -> GroupPlan:
    """Plan a generation from members' decoded subscriptions (or the error that kept one from
    decoding); the shared path of :func:`plan_group` and the aiokafka assignor in
    :mod:`capgroup.membership.aiokafka_assignor`."""
    specs: list[MemberSpec] = []
    rejected: dict[str, str] = {}
    for member_id, instance_id, sub in decoded:
        try:
            if isinstance(sub, MetadataDecodeError):
                raise sub
            adv = decode_advertisement(sub.user_data)
        except MetadataDecodeError as exc:
            rejected[member_id] = exc.reason
            _log.error(
                "member_metadata_rejected",
                member_id=member_id,
                group_instance_id=instance_id,
                reason=exc.reason,
                code=exc.code,
                generation=generation,
            )
            continue
        specs.append(MemberSpec(member_id, frozenset(sub.topics), adv, instance_id))

    plan = balance.assign(specs, with_claimed_rates(partitions, specs), generation)
    if not cooperative:
        plan = _grant_pending(plan)
    info = AssignmentInfo(generation, len(plan.unassigned), len(plan.pending))
    assignments = {
        member_id: encode_member_assignment(plan.assignment.get(member_id, ()), info)
        for member_id, _, _ in decoded
    }
    _report(plan, specs, rejected, len(partitions), generation)
    return GroupPlan(plan, assignments, tuple(specs), rejected)


def with_claimed_rates(
    partitions: Iterable[PartitionSpec], members: Iterable[MemberSpec]
) -> list[PartitionSpec]:
    """``partitions`` with each unknown (zero) rate replaced by the highest rate claimants
    advertise for it: the leader measures nothing itself, members measure what they own."""
    claimed: dict[TopicPartition, float] = {}
    for member in members:
        for op in member.capacity.owned:
            if op.rate > claimed.get(op.tp, 0.0):
                claimed[op.tp] = op.rate
    return [
        replace(p, rate=claimed[p.tp]) if p.rate == 0.0 and p.tp in claimed else p
        for p in partitions
    ]


def _grant_pending(plan: Plan) -> Plan:
    if not plan.pending:
        return plan
    granted: dict[str, list[TopicPartition]] = {m: list(tps) for m, tps in plan.assignment.items()}
    for move in plan.pending:
        granted.setdefault(move.to_member, []).append(move.tp)
    return replace(
        plan,
        assignment={m: tuple(sorted(tps)) for m, tps in granted.items()},
        pending=(),
    )


def _report(
    plan: Plan,
    specs: Sequence[MemberSpec],
    rejected: Mapping[str, str],
    n_partitions: int,
    generation: int,
) -> None:
    live = [m for m in specs if not m.capacity.draining]
    if plan.unassigned:
        _log.warning(
            "plan_has_unassigned_partitions",
            generation=generation,
            unassigned=len(plan.unassigned),
            sample=[f"{tp.topic}-{tp.partition}" for tp in sorted(plan.unassigned)[:_SAMPLE]],
            partitions=n_partitions,
            capacity_partitions=sum(m.capacity.max_partitions for m in live),
            capacity_bytes=sum(m.capacity.memory_budget_bytes for m in live),
            members=len(specs),
            draining=len(specs) - len(live),
            rejected=len(rejected),
        )
    _log.info(
        "plan_computed",
        generation=generation,
        members=len(specs) + len(rejected),
        rejected=len(rejected),
        partitions=n_partitions,
        assigned=sum(len(tps) for tps in plan.assignment.values()),
        pending=len(plan.pending),
        unassigned=len(plan.unassigned),
        moved=plan.moved,
    )
