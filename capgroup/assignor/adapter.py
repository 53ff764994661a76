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

import gc
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, cast, overload

from capgroup.assignor import balance, native
from capgroup.assignor.figures import (
    EXACT_HEADROOM_MAX_PARTITIONS,
    assigned_count,
    columns_of,
    group_figures,
    profile_figures,
)
from capgroup.assignor.model import (
    MemberSpec,
    PartitionSpec,
    Plan,
)
from capgroup.log import get_logger
from capgroup.protocol._wire import MetadataDecodeError
from capgroup.protocol.capacity import (
    OwnedColumns,
    decode_advertisement,
    decode_advertisements_columns,
)
from capgroup.protocol.consumer import (
    AssignmentInfo,
    MemberSubscription,
    SubscriptionCache,
    decode_member_metadata,
    encode_assignment_info,
    encode_member_assignment,
    encode_member_assignment_columns,
)
from capgroup.types import CapacityAdvertisement, TopicPartition

if TYPE_CHECKING:
    from capgroup.assignor.native import NativeClaims

__all__ = [
    "ASSIGNOR_NAME",
    "EXACT_HEADROOM_MAX_PARTITIONS",
    "SMALL_GROUP_PARTITIONS",
    "GroupPlan",
    "group_figures",
    "plan_group",
    "plan_subscriptions",
    "with_claimed_rates",
]

#: Protocol name announced in JoinGroup; every member of a group must offer it.
ASSIGNOR_NAME = "capgroup-cooperative"
#: Below this many partitions a leader plans on objects with the reference pipeline
#: (:func:`capgroup.assignor.balance.reference_assign`): the same plan and the same bytes (the
#: differential tests hold the two paths to that), faster than numpy's per-call costs at that
#: size, and a member of a small group never loads numpy (about 0.1 s and 20 MiB).
SMALL_GROUP_PARTITIONS = 2_000
_MEMBER_ID = operator.itemgetter(0)
_METADATA = operator.itemgetter(2)
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
    #: The members whose metadata decoded, as planned. Their ownership claims went to the
    #: assignor as columns (:class:`~capgroup.protocol.capacity.OwnedColumns`), so each
    #: ``capacity.owned`` here is empty.
    members: Sequence[MemberSpec] = ()
    rejected: Mapping[str, str] = field(default_factory=dict)
    #: What every member was told with its assignment (the group figures included).
    info: AssignmentInfo | None = None


def plan_group(
    members: Sequence[tuple[str, str | None, bytes]],
    partitions: Sequence[PartitionSpec],
    generation: int,
    *,
    cooperative: bool = True,
    headroom_members: int = 1,
) -> GroupPlan:
    """Plan a generation from raw JoinGroup member metadata.

    ``partitions`` are all partitions of the subscribed topics; a partition whose ``rate`` is 0
    (unknown) takes the highest rate its claimants advertise. With ``cooperative`` (KIP-429,
    the default) a partition moving between live members is withheld for one round; without
    it, as under an eager protocol where every member revoked everything before joining, it is
    handed to its new owner at once. ``headroom_members`` is the spare the group figures'
    ``replicas_wanted`` asks for (``CAPGROUP_AUTOSCALE_HEADROOM_MEMBERS``).
    """
    if len(partitions) >= SMALL_GROUP_PARTITIONS and native.enabled():
        # The usual large group: every member decoded by the compiled core, as profiles.
        group = native.decode_group(list(map(_METADATA, members)), force=True)
        if group is not None:
            planned = _plan_profiles(
                members, group, partitions, generation, cooperative, headroom_members
            )
            if planned is not None:
                return planned
    decoded: list[tuple[str, str | None, MemberSubscription | MetadataDecodeError]] = []
    cache = SubscriptionCache()
    # A large group's metadata goes through the compiled core when it is built: what it
    # returns is what the decoders below return, and it leaves them anything else.
    fast = (
        native.decode_members([raw for _, _, raw in members])
        if len(partitions) >= SMALL_GROUP_PARTITIONS
        else None
    )
    if fast is not None and None not in fast:
        # Every member decoded by the compiled core (the usual large group).
        done = cast("list[tuple[MemberSubscription, CapacityAdvertisement, NativeClaims]]", fast)
        return plan_subscriptions(
            [(mid, iid, sub) for (mid, iid, _), (sub, _, _) in zip(members, done, strict=True)],
            partitions,
            generation,
            cooperative=cooperative,
            headroom_members=headroom_members,
            advertisements=[(adv, claims) for _, adv, claims in done],
        )
    given: list[tuple[CapacityAdvertisement, NativeClaims | None] | None] = []
    for k, (member_id, instance_id, raw) in enumerate(members):
        found = fast[k] if fast is not None else None
        if found is not None:
            sub, adv, claims = found
            decoded.append((member_id, instance_id, sub))
            given.append((adv, claims))
            continue
        given.append(None)
        try:
            decoded.append((member_id, instance_id, decode_member_metadata(raw, cache)))
        except MetadataDecodeError as exc:
            decoded.append((member_id, instance_id, exc))
    return plan_subscriptions(
        decoded,
        partitions,
        generation,
        cooperative=cooperative,
        headroom_members=headroom_members,
        advertisements=given if fast is not None else None,
    )


def plan_subscriptions(
    decoded: Sequence[tuple[str, str | None, MemberSubscription | MetadataDecodeError]],
    partitions: Sequence[PartitionSpec],
    generation: int,
    *,
    cooperative: bool,
    headroom_members: int = 1,
    advertisements: Sequence[tuple[CapacityAdvertisement, NativeClaims | None] | None]
    | None = None,
) -> GroupPlan:
    """Plan a generation from members' decoded subscriptions (or the error that kept one from
    decoding); the shared path of :func:`plan_group` and the aiokafka assignor in
    :mod:`capgroup.membership.aiokafka_assignor`. ``advertisements[k]``, when given and not
    None, is ``decoded[k]``'s advertisement and claims, decoded already (by the compiled
    core, see :func:`capgroup.assignor.native.decode_members`)."""
    small = len(partitions) < SMALL_GROUP_PARTITIONS
    given = advertisements if advertisements is not None else [None] * len(decoded)
    specs, owned, rejected = _member_specs(decoded, given, small, generation)

    if small:
        plan = balance.reference_assign(specs, with_claimed_rates(partitions, specs), generation)
    else:
        # numpy loads with the first large plan, not with every importer of the adapter.
        from capgroup.assignor import columnar

        # The plan of assign(specs with their claims, with_claimed_rates(partitions, ...)).
        plan = columnar.plan(specs, partitions, generation, owned, claimed_rates=True)
    if not cooperative:
        plan = _grant_pending(plan)
    info = group_figures(
        plan,
        specs,
        partitions,
        generation,
        members=len(decoded),
        headroom=headroom_members,
        per_topic=_topic_sizes(plan),
    )
    return _finish(plan, info, decoded, tuple(specs), rejected, len(partitions))


def _plan_profiles(
    members: Sequence[tuple[str, str | None, bytes]],
    group: native.DecodedGroup,
    partitions: Sequence[PartitionSpec],
    generation: int,
    cooperative: bool,
    headroom_members: int,
) -> GroupPlan | None:
    """:func:`plan_group` of members the compiled core decoded as profiles: the plan and the
    figures are worked out per profile, and no object is built per member (``members`` of
    the result builds them when read). None when the core leaves this input to the numpy
    path."""
    ids = list(map(_MEMBER_ID, members))
    # As columnar.plan: the collector has nothing to find in the core's call.
    collecting = gc.isenabled()
    gc.disable()
    try:
        plan = native.plan_profiles(
            ids,
            group.profiles,
            group.rows,
            group.claims,
            partitions,
            generation,
            claimed_rates=True,
            force=True,  # the core is on: it decoded the group
        )
    finally:
        if collecting:
            gc.enable()
    if plan is None:
        return None
    if not cooperative:
        plan = _grant_pending(plan)
    info = profile_figures(
        plan,
        group.profiles,
        group.rows,
        ids,
        partitions,
        generation,
        members=len(members),
        headroom=headroom_members,
        per_topic=_topic_sizes(plan),
    )
    specs = _ProfileMembers(members, group.profiles, group.rows)
    return _finish(plan, info, members, specs, {}, len(partitions), force=True)


def _finish(
    plan: Plan,
    info: AssignmentInfo,
    members: Sequence[tuple[str, str | None, object]],
    specs: Sequence[MemberSpec],
    rejected: dict[str, str],
    n_partitions: int,
    *,
    force: bool = False,
) -> GroupPlan:
    """The group plan: every member's assignment bytes (``members`` in input order), and the
    plan reported in the log. ``force``: the compiled core encodes whatever
    ``CAPGROUP_ASSIGNOR_NATIVE`` says now (it planned already)."""
    encoded_info = encode_assignment_info(info)
    columns = _columns(plan)
    # Every member's bytes in one call of the compiled core when it is there (relay-only
    # partitions aside: those members are encoded one by one below).
    bulk = columns.encode_all(encoded_info, force=force) if columns is not None else None
    if bulk is not None and not plan.relay and len(bulk) == len(members):
        # The usual plan: every member planned (none rejected), none relays.
        assignments = bulk
    else:
        assignments = {
            member_id: (
                bulk[member_id]
                if bulk is not None and member_id in bulk and member_id not in plan.relay
                else _encode_for(plan, member_id, info, encoded_info)
            )
            for member_id, _, _ in members
        }
    _report(plan, specs, rejected, n_partitions, info.generation)
    return GroupPlan(plan, assignments, specs, rejected, info)


class _ProfileMembers(Sequence[MemberSpec]):
    """``GroupPlan.members`` of a plan made from profiles: a tuple of members built the first
    time it is read (a leader that only sends the assignments never pays for it)."""

    __slots__ = ("_built", "_members", "_profiles", "_rows")

    def __init__(
        self,
        members: Sequence[tuple[str, str | None, bytes]],
        profiles: Sequence[MemberSpec],
        rows: Sequence[int],
    ) -> None:
        self._members = members
        self._profiles = profiles
        self._rows = rows
        self._built: tuple[MemberSpec, ...] | None = None

    def _all(self) -> tuple[MemberSpec, ...]:
        if self._built is None:
            self._built = tuple(
                MemberSpec(member_id, profile.topics, profile.capacity, instance_id)
                for (member_id, instance_id, _), profile in zip(
                    self._members, map(self._profiles.__getitem__, self._rows), strict=True
                )
            )
        return self._built

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, k: int) -> MemberSpec: ...

    @overload
    def __getitem__(self, k: slice) -> tuple[MemberSpec, ...]: ...

    def __getitem__(self, k: int | slice) -> MemberSpec | tuple[MemberSpec, ...]:
        return self._all()[k]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return self._all() == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._all())


def _member_specs(
    decoded: Sequence[tuple[str, str | None, MemberSubscription | MetadataDecodeError]],
    given: Sequence[tuple[CapacityAdvertisement, NativeClaims | None] | None],
    small: bool,
    generation: int,
) -> tuple[list[MemberSpec], list[OwnedColumns | NativeClaims | None], dict[str, str]]:
    """Every member whose metadata decoded as the assignor sees it, with its claims (decoded
    as columns, or ``given`` already), and the reason of every member refused."""
    # Members of one deployment share a subscription: one frozenset for all of them.
    topic_sets: dict[tuple[str, ...], frozenset[str]] = {}
    if (
        not small
        and None not in given
        and not any(isinstance(sub, MetadataDecodeError) for _, _, sub in decoded)
    ):
        # Every member decoded by the compiled core (the usual large group): one comprehension
        # per column, the subscriptions' frozensets made once per distinct decoded tuple.
        subs = cast("list[MemberSubscription]", [sub for _, _, sub in decoded])
        distinct = {id(sub.topics): sub.topics for sub in subs}
        sets = {
            key: topic_sets.setdefault(topics, frozenset(topics))
            for key, topics in distinct.items()
        }
        ready = cast("Sequence[tuple[CapacityAdvertisement, NativeClaims | None]]", given)
        members = [
            MemberSpec(member_id, sets[id(member.topics)], advertised, instance_id)
            for (member_id, instance_id, _), member, (advertised, _) in zip(
                decoded, subs, ready, strict=True
            )
        ]
        return members, [held for _, held in ready], {}
    specs: list[MemberSpec] = []
    owned: list[OwnedColumns | NativeClaims | None] = []
    rejected: dict[str, str] = {}
    # The decoded tuple's identity is looked up before its hash, which costs a pass over the
    # names (the compiled decoder shares one tuple among the members that subscribe alike).
    topic_ids: dict[int, frozenset[str]] = {}
    user_data = [
        sub.user_data
        for (_, _, sub), pre in zip(decoded, given, strict=True)
        if pre is None and not isinstance(sub, MetadataDecodeError)
    ]
    # Every advertisement at once: their owned partitions are decoded together (a small
    # group's one by one, as objects, for the reference pipeline).
    decoding = iter(
        [_decode_one(data) for data in user_data]
        if small
        else decode_advertisements_columns(user_data)
    )
    for (member_id, instance_id, sub), pre in zip(decoded, given, strict=True):
        try:
            if isinstance(sub, MetadataDecodeError):
                raise sub
            found = next(decoding) if pre is None else pre
            if isinstance(found, MetadataDecodeError):
                raise found
            adv, claims = found
            if small and claims is not None:
                # Decoded ahead for a small group: the reference pipeline reads claims off
                # the advertisement (plan_group never does this; another caller might).
                cols = native.as_columns([claims])
                adv = replace(adv, owned=cols[0].owned() if cols and cols[0] else ())
                claims = None
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
        topics = topic_ids.get(id(sub.topics))
        if topics is None:
            topics = topic_sets.get(sub.topics)
            if topics is None:
                topics = topic_sets[sub.topics] = frozenset(sub.topics)
            topic_ids[id(sub.topics)] = topics
        specs.append(MemberSpec(member_id, topics, adv, instance_id))
        owned.append(claims)

    return specs, owned, rejected


def _encode_for(plan: Plan, member_id: str, info: AssignmentInfo, encoded_info: bytes) -> bytes:
    """A member's assignment: its relay-only partitions are in the partition list too (it
    owns them, so the group sees them owned and their commits are fenced as usual) and are
    named in its :class:`AssignmentInfo`. ``encoded_info`` is ``info`` encoded, which every
    member without relay-only partitions gets as it is."""
    relay = plan.relay.get(member_id, ())
    if relay:
        batch = plan.assignment.get(member_id, ())
        return encode_member_assignment((*batch, *relay), replace(info, relay_only=relay))
    columns = _columns(plan)
    if columns is not None and member_id in columns:
        # Straight from the plan's arrays: no TopicPartition per partition.
        return encode_member_assignment_columns(*columns.by_topic(member_id), encoded_info)
    return encode_member_assignment(plan.assignment.get(member_id, ()), info)


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


def _decode_one(
    data: bytes,
) -> tuple[CapacityAdvertisement, OwnedColumns | None] | MetadataDecodeError:
    """One advertisement as an object, its claims in ``owned`` (the small-group path)."""
    try:
        return decode_advertisement(data), None
    except MetadataDecodeError as exc:
        return exc


_columns = columns_of


def _topic_sizes(plan: Plan) -> dict[str, int] | None:
    """Partitions per topic of the input planned, when the plan carries them."""
    columns = _columns(plan)
    return columns.topic_sizes() if columns is not None else None


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
    if plan.unassigned:
        live = [m for m in specs if not m.capacity.draining]
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
        assigned=assigned_count(plan),
        pending=len(plan.pending),
        unassigned=len(plan.unassigned),
        moved=plan.moved,
        **({"relayed": sum(map(len, plan.relay.values()))} if plan.relay else {}),
    )
