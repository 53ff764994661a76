"""A consumer group as the broker describes it, for ``capgroup describe`` and the demo.

:func:`describe_group` asks the cluster, with clients built from the connection settings
(:mod:`capgroup.connection`), for

- the group's state, protocol and members (DescribeGroups): each member's subscription and
  capacity advertisement, decoded from its JoinGroup metadata, and its partitions and the
  leader's assignment info, decoded from its assignment;
- the committed offsets of every partition of the subscribed topics (OffsetFetch) and their
  log start offsets and high watermarks (ListOffsets), hence the lag of each partition.

It then works out what an operator needs to see: which subscribed partitions nobody owns
(unassigned, or withheld for a move, which the leader's assignment info counts as pending),
the group's headroom (:func:`capgroup.assignor.headroom`: how many of its largest members it
can lose and still place every partition) and the replicas it wants.

A group that does not use capgroup's assignor (a plain aiokafka or Java group with the range
or round-robin assignor) is described too, as capacity-blind: its protocol, members,
assignment and lag, without advertisements, headroom or replicas wanted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import anyio

from capgroup.assignor.adapter import ASSIGNOR_NAME
from capgroup.assignor.balance import assign, headroom
from capgroup.assignor.figures import group_figures
from capgroup.assignor.model import MemberSpec, PartitionSpec
from capgroup.connection import ClientRole, client_options
from capgroup.errors import CapgroupError
from capgroup.membership.transport import bootstrap_with_retries
from capgroup.protocol._wire import MetadataDecodeError
from capgroup.protocol.capacity import decode_advertisement
from capgroup.protocol.consumer import (
    AssignmentInfo,
    decode_assignment_info,
    decode_member_metadata,
)
from capgroup.settings import CapgroupSettings
from capgroup.types import CapacityAdvertisement, TopicPartition

__all__ = [
    "DEFAULT_HEADROOM_MEMBERS",
    "GroupNotFoundError",
    "GroupState",
    "MemberState",
    "PartitionLag",
    "decode_assignment",
    "describe_group",
    "member_slots",
    "replicas_wanted",
]

_T = TypeVar("_T")

#: Members of headroom the replicas-wanted figure keeps when the settings name none
#: (``CAPGROUP_AUTOSCALE_HEADROOM_MEMBERS``).
DEFAULT_HEADROOM_MEMBERS = 1


class GroupNotFoundError(CapgroupError):
    """The cluster knows no such group: no members and no committed offsets."""

    def __init__(self, group: str, servers: Iterable[str]) -> None:
        self.group = group
        super().__init__(
            f"group {group!r} does not exist at {','.join(servers)}: "
            "no members and no committed offsets"
        )


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition's offsets as the broker reports them (None where it has none)."""

    tp: TopicPartition
    log_start_offset: int | None
    high_watermark: int | None
    committed: int | None
    #: Client id of the member that owns it, None when nobody does.
    owner: str | None = None

    @property
    def lag(self) -> int | None:
        """Records between the committed offset and the high watermark (None when the group
        has committed nothing for the partition)."""
        if self.high_watermark is None or self.committed is None:
            return None
        return max(0, self.high_watermark - self.committed)


@dataclass(frozen=True, slots=True)
class MemberState:
    """One member as the broker describes it."""

    member_id: str
    client_id: str
    client_host: str
    instance_id: str | None
    #: Topics of its subscription (empty when its metadata is not the consumer protocol).
    topics: tuple[str, ...]
    #: Its capacity advertisement; None for a member that does not advertise one.
    advertisement: CapacityAdvertisement | None
    partitions: tuple[TopicPartition, ...]
    #: The leader's assignment info, None when its assignment carries none.
    info: AssignmentInfo | None

    @property
    def name(self) -> str:
        """What tables show: the client id (the instance id when the client id is empty)."""
        return self.client_id or self.instance_id or self.member_id

    @property
    def used_bytes(self) -> int | None:
        """Worst-case buffer bytes of the partitions it owns, by its own per-topic cost."""
        if self.advertisement is None:
            return None
        return sum(self.advertisement.cost_of(tp.topic) for tp in self.partitions)

    @property
    def partition_utilisation(self) -> float | None:
        """Owned partitions over its partition cap."""
        adv = self.advertisement
        if adv is None or adv.max_partitions <= 0:
            return None
        return len(self.partitions) / adv.max_partitions

    @property
    def bytes_utilisation(self) -> float | None:
        """Worst-case bytes of its partitions over its memory budget."""
        adv = self.advertisement
        used = self.used_bytes
        if adv is None or used is None or adv.memory_budget_bytes <= 0:
            return None
        return used / adv.memory_budget_bytes


@dataclass(frozen=True, slots=True)
class GroupState:
    """The group, its partitions and the figures derived from them."""

    group: str
    state: str
    protocol_type: str
    #: The assignor the group agreed on (``capgroup-cooperative`` for a capgroup group).
    protocol: str
    members: tuple[MemberState, ...]
    #: Every partition of the subscribed topics (and of topics with committed offsets).
    partitions: Mapping[TopicPartition, PartitionLag]
    #: Members of headroom the replicas-wanted figure keeps.
    autoscale_headroom: int = DEFAULT_HEADROOM_MEMBERS
    #: Topics the members subscribe to.
    topics: tuple[str, ...] = field(default=())

    @property
    def capacity_aware(self) -> bool:
        """Whether the group runs capgroup's assignor and its members advertise capacity."""
        return self.protocol == ASSIGNOR_NAME and any(
            m.advertisement is not None for m in self.members
        )

    @property
    def info(self) -> AssignmentInfo | None:
        """The leader's assignment info of the newest generation any member holds."""
        infos = [m.info for m in self.members if m.info is not None]
        return max(infos, key=lambda i: i.generation) if infos else None

    @property
    def owned(self) -> int:
        """Partitions some member owns."""
        return sum(len(m.partitions) for m in self.members)

    @property
    def unowned(self) -> tuple[TopicPartition, ...]:
        """Subscribed partitions no member is assigned (unassigned or pending a move)."""
        owned = {tp for m in self.members for tp in m.partitions}
        subscribed = set(self.topics)
        return tuple(
            sorted(tp for tp in self.partitions if tp.topic in subscribed and tp not in owned)
        )

    @property
    def pending(self) -> int:
        """Partitions withheld for one round while they move (from the assignment info)."""
        info = self.info
        return info.pending if info is not None else 0

    @property
    def unassigned(self) -> tuple[TopicPartition, ...]:
        """Subscribed partitions nobody is assigned; while a move is pending (``pending``
        above zero) some of them are only between owners."""
        return self.unowned

    @property
    def total_lag(self) -> int:
        """Lag summed over the subscribed partitions that have a committed offset."""
        return sum(p.lag or 0 for p in self.partitions.values() if p.tp.topic in self.topics)

    def _specs(self) -> tuple[list[MemberSpec], list[PartitionSpec]]:
        members = [
            MemberSpec(m.member_id, frozenset(m.topics), m.advertisement, m.instance_id)
            for m in self.members
            if m.advertisement is not None
        ]
        subscribed = set(self.topics)
        parts = [
            PartitionSpec(tp.topic, tp.partition)
            for tp in self.partitions
            if tp.topic in subscribed
        ]
        return members, parts

    @property
    def headroom(self) -> int | None:
        """How many of its largest members the group can lose and still place every
        partition (None for a capacity-blind group)."""
        if not self.capacity_aware:
            return None
        members, parts = self._specs()
        return headroom(members, parts)

    @property
    def capacity_partitions(self) -> int | None:
        """Partitions the members can hold together (None for a capacity-blind group)."""
        if not self.capacity_aware:
            return None
        present = set(self.topics)
        return sum(member_slots(spec, present) for spec in self._specs()[0])

    @property
    def replicas_wanted(self) -> int | None:
        """Members the group wants: from the leader's assignment info when it carries the
        figure, else :func:`replicas_wanted` on the decoded members (None when capacity-blind)."""
        if not self.capacity_aware:
            return None
        info = self.info
        if info is not None and info.replicas_wanted is not None:
            return info.replicas_wanted
        members, parts = self._specs()
        return replicas_wanted(members, parts, self.autoscale_headroom)


def member_slots(spec: MemberSpec, topics: Iterable[str]) -> int:
    """Partitions ``spec`` can hold: the smaller of its cap and its budget over its dearest
    subscribed topic among ``topics`` (0 while draining), as :func:`headroom` ranks members."""
    adv = spec.capacity
    present = set(topics)
    costs = [max(0, adv.cost_of(t)) for t in spec.topics if t in present]
    if adv.draining or not costs:
        return 0
    dearest = max(costs)
    by_bytes = adv.memory_budget_bytes // dearest if dearest else adv.max_partitions
    return max(0, min(adv.max_partitions, by_bytes))


def replicas_wanted(
    members: Sequence[MemberSpec],
    partitions: Sequence[PartitionSpec],
    headroom_members: int = DEFAULT_HEADROOM_MEMBERS,
) -> int:
    """How many members the group needs to place every partition and still do so after
    losing ``headroom_members`` of its largest, adding members of its typical size: the
    figure a leader sends in its assignment info
    (:func:`capgroup.assignor.figures.group_figures`), here worked out from the members'
    advertisements for a leader that sends none."""
    specs = [replace(m, capacity=replace(m.capacity, owned=())) for m in members]
    plan = assign(specs, partitions, 0)
    figures = group_figures(plan, specs, partitions, 0, headroom=headroom_members)
    return figures.replicas_wanted if figures.replicas_wanted is not None else len(specs)


def decode_assignment(data: bytes) -> tuple[tuple[TopicPartition, ...], bytes]:
    """The partitions and ``user_data`` of a ``ConsumerProtocolMemberAssignment`` (any
    version; fields newer versions append are ignored). Raises only
    :class:`~capgroup.protocol.MetadataDecodeError`."""
    from capgroup.protocol._wire import Reader

    data = bytes(data)
    if not data:
        return (), b""
    r = Reader(data)
    try:
        version = int.from_bytes(r.raw(2, "assignment version"), "big", signed=True)
        if version < 0:
            raise MetadataDecodeError(f"assignment version {version} is negative")
        n_topics = int.from_bytes(r.raw(4, "topic count"), "big", signed=True)
        found: list[TopicPartition] = []
        for _ in range(max(0, n_topics)):
            length = int.from_bytes(r.raw(2, "topic length"), "big", signed=True)
            topic = r.raw(max(0, length), "topic").decode("utf-8")
            count = int.from_bytes(r.raw(4, "partition count"), "big", signed=True)
            for _ in range(max(0, count)):
                partition = int.from_bytes(r.raw(4, "partition"), "big", signed=True)
                found.append(TopicPartition(topic, partition))
        user_data = b""
        if r.remaining() >= 4:
            length = int.from_bytes(r.raw(4, "user_data length"), "big", signed=True)
            if length > 0:
                user_data = r.raw(length, "user_data")
    except UnicodeDecodeError as exc:
        raise MetadataDecodeError("assigned topic is not valid UTF-8") from exc
    return tuple(sorted(found)), user_data


def _member(raw: Mapping[str, Any]) -> MemberState:
    topics: tuple[str, ...] = ()
    advertisement: CapacityAdvertisement | None = None
    try:
        metadata = decode_member_metadata(raw.get("member_metadata") or b"")
        topics = metadata.topics
        if metadata.user_data:
            advertisement = decode_advertisement(metadata.user_data)
    except MetadataDecodeError:
        pass
    partitions: tuple[TopicPartition, ...] = ()
    info: AssignmentInfo | None = None
    try:
        partitions, user_data = decode_assignment(raw.get("member_assignment") or b"")
        if user_data:
            info = decode_assignment_info(user_data)
    except MetadataDecodeError:
        pass
    return MemberState(
        member_id=str(raw.get("member_id", "")),
        client_id=str(raw.get("client_id", "")),
        client_host=str(raw.get("client_host", "")),
        instance_id=raw.get("group_instance_id") or None,
        topics=topics,
        advertisement=advertisement,
        partitions=partitions,
        info=info,
    )


async def _describe_one(admin: Any, group: str) -> dict[str, Any]:
    from aiokafka.errors import GroupIdNotFound, for_code

    responses = await admin.describe_consumer_groups([group])
    described: dict[str, Any] = responses[0].to_object()["groups"][0]
    code = int(described.get("error_code") or 0)
    if code:
        error = for_code(code)
        if error is not GroupIdNotFound:
            raise error(f"describing group {group!r}")
    return described


async def _retrying(call: Callable[[], Awaitable[_T]], deadline: float) -> _T:
    """``call()``, again after a short wait while it fails with a retriable error (no
    coordinator yet, a coordinator loading its groups) and ``deadline`` has not passed."""
    while True:
        try:
            return await call()
        except Exception as exc:
            if not getattr(exc, "retriable", False) or anyio.current_time() >= deadline:
                raise
        await anyio.sleep(0.2)


async def describe_group(settings: CapgroupSettings, group: str) -> GroupState:
    """Describe ``group`` on the cluster ``settings`` connect to.

    Raises :class:`GroupNotFoundError` when the cluster has no such group,
    :class:`~capgroup.membership.transport.KafkaUnreachableError` when no bootstrap server
    answers within ``settings.bootstrap_timeout_ms``, and aiokafka's errors otherwise
    (authentication, authorization).
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import TopicPartition as KafkaTopicPartition

    admin = AIOKafkaAdminClient(**client_options(settings, ClientRole.ADMIN))
    try:
        await bootstrap_with_retries(admin.start, settings, client="admin")
        deadline = anyio.current_time() + settings.bootstrap_timeout_ms / 1000
        described = await _retrying(lambda: _describe_one(admin, group), deadline)
        committed = await _retrying(lambda: admin.list_consumer_group_offsets(group), deadline)
        members = tuple(
            sorted(
                (_member(m) for m in described.get("members", ())),
                key=lambda m: (m.name, m.member_id),
            )
        )
        state = str(described.get("state") or "")
        error_code = int(described.get("error_code") or 0)
        if not members and not committed and (error_code or state in ("Dead", "")):
            raise GroupNotFoundError(group, settings.bootstrap_servers)
        topics = tuple(sorted({t for m in members for t in m.topics}))
        if not members:  # an empty group: the topics it has committed offsets for
            topics = tuple(sorted({tp.topic for tp in committed}))
        all_topics = sorted({*topics, *(tp.topic for tp in committed)})
        counts: dict[str, int] = {}
        if all_topics:
            for entry in await admin.describe_topics(all_topics):
                if not entry.get("error_code"):
                    counts[entry["topic"]] = len(entry.get("partitions") or ())
    finally:
        await admin.close()

    wanted = [KafkaTopicPartition(t, p) for t in sorted(counts) for p in range(counts[t])]
    ends: dict[Any, int] = {}
    starts: dict[Any, int] = {}
    if wanted:
        consumer = AIOKafkaConsumer(
            **client_options(settings, ClientRole.ADMIN), group_id=None, enable_auto_commit=False
        )
        try:
            await bootstrap_with_retries(consumer.start, settings, client="admin")
            ends = await consumer.end_offsets(wanted)
            starts = await consumer.beginning_offsets(wanted)
        finally:
            await consumer.stop()

    owners = {tp: m.name for m in members for tp in m.partitions}
    partitions: dict[TopicPartition, PartitionLag] = {}
    for ktp in wanted:
        tp = TopicPartition(ktp.topic, ktp.partition)
        meta = committed.get(ktp)
        offset = None if meta is None or meta.offset < 0 else int(meta.offset)
        partitions[tp] = PartitionLag(
            tp,
            starts.get(ktp),
            ends.get(ktp),
            offset,
            owners.get(tp),
        )
    return GroupState(
        group=group,
        state=state,
        protocol_type=str(described.get("protocol_type") or ""),
        protocol=str(described.get("protocol") or ""),
        members=members,
        partitions=partitions,
        autoscale_headroom=int(settings.autoscale_headroom_members),
        topics=topics,
    )
