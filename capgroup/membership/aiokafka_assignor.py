"""capgroup's planner as an aiokafka partition assignor, for services on ``AIOKafkaConsumer``.

``AIOKafkaConsumer(partition_assignment_strategy=[CapacityAwareAssignor(adv)])`` gives an
aiokafka consumer group capacity-aware placement. aiokafka's own group coordinator is eager
(every member revokes everything before it rejoins), so moves are handed over at once rather
than withheld for a round; capgroup's :class:`~capgroup.membership.engine.MembershipEngine`
is the cooperative path. This module lives with membership, not with the assignor, because it
is glue to a Kafka client: the assignor itself stays free of client imports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from capgroup.assignor.adapter import ASSIGNOR_NAME, plan_subscriptions
from capgroup.assignor.model import PartitionTable
from capgroup.log import get_logger
from capgroup.protocol import (
    AssignmentInfo,
    MetadataDecodeError,
    decode_advertisement,
    decode_assignment_info,
    encode_advertisement,
)
from capgroup.protocol.consumer import MemberSubscription
from capgroup.types import CapacityAdvertisement, OwnedPartition, TopicPartition

__all__ = ["CapacityAwareAssignor"]

_log = get_logger("assignor")


class CapacityAwareAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """aiokafka partition assignor backed by capgroup's capacity-aware planner.

    All state lives on the instance (aiokafka's sticky assignor keeps it on the class,
    aiokafka#1175), so several consumers in one process do not share ownership. aiokafka's
    group coordinator is eager: every member revokes all its partitions before it rejoins, so
    moves are handed over at once rather than withheld for a round.

    The owner keeps the advertisement current with :meth:`update_advertisement` and
    :meth:`update_rates`; ownership is tracked from :meth:`on_assignment` with the
    generation the leader put into the assignment.
    """

    name = ASSIGNOR_NAME

    def __init__(self, advertisement: CapacityAdvertisement) -> None:
        self._advertisement = advertisement
        self._rates: dict[TopicPartition, float] = {}
        self._assigned: dict[TopicPartition, int] | None = None
        self._last_info: AssignmentInfo | None = None

    @property
    def advertisement(self) -> CapacityAdvertisement:
        """The advertisement :meth:`metadata` sends, owned partitions included."""
        if self._assigned is None:
            return self._advertisement
        owned = tuple(
            OwnedPartition(tp.topic, tp.partition, gen, self._rates.get(tp, 0.0))
            for tp, gen in sorted(self._assigned.items())
        )
        return replace(self._advertisement, owned=owned)

    @property
    def last_assignment_info(self) -> AssignmentInfo | None:
        """What the leader said with the latest assignment (None before one, or if foreign)."""
        return self._last_info

    def update_advertisement(self, advertisement: CapacityAdvertisement) -> None:
        """Replace limits (and, before the first assignment, the claimed ownership)."""
        self._advertisement = advertisement

    def update_rates(self, rates: Mapping[TopicPartition, float]) -> None:
        """Record measured ingress rates (records/s) of owned partitions for the next join."""
        self._rates = {TopicPartition(tp[0], tp[1]): float(r) for tp, r in rates.items()}

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        """JoinGroup metadata: the subscription plus the encoded advertisement."""
        return ConsumerProtocolMemberMetadata(
            0, sorted(set(topics)), encode_advertisement(self.advertisement)
        )

    def assign(
        self, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        """Plan for every member from aiokafka's decoded metadata and ``cluster`` partitions."""
        decoded: list[tuple[str, str | None, MemberSubscription | MetadataDecodeError]] = []
        topics: set[str] = set()
        for member_id in sorted(members):
            meta = members[member_id]
            sub_topics = tuple(t for t in (meta.subscription or ()) if isinstance(t, str))
            user_data = meta.user_data if isinstance(meta.user_data, bytes) else b""
            decoded.append(
                (member_id, None, MemberSubscription(meta.version, sub_topics, user_data))
            )
            topics.update(sub_topics)
        partitions = PartitionTable.of_numbers(
            {topic: cluster.partitions_for_topic(topic) or () for topic in topics}
        )
        group_plan = plan_subscriptions(
            decoded, partitions, _generation_hint(members), cooperative=False
        )
        return {
            member_id: ConsumerProtocolMemberAssignment.decode(raw)
            for member_id, raw in group_plan.assignments.items()
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Remember what we own, under the generation the leader announced."""
        try:
            info: AssignmentInfo | None = decode_assignment_info(assignment.user_data or b"")
        except MetadataDecodeError as exc:
            _log.warning("assignment_info_undecodable", reason=exc.reason)
            info = None
        self._last_info = info
        generation = info.generation if info is not None else -1
        self._assigned = {
            TopicPartition(topic, p): generation for topic, p in assignment.partitions()
        }


def _generation_hint(members: Mapping[str, ConsumerProtocolMemberMetadata]) -> int:
    """aiokafka does not hand the new generation id to ``assign``; one past the newest
    generation any member claims orders this round after all valid claims."""
    newest = -1
    for meta in members.values():
        try:
            adv = decode_advertisement(meta.user_data or b"")
        except MetadataDecodeError:
            continue
        for op in adv.owned:
            newest = max(newest, op.generation)
    return newest + 1
