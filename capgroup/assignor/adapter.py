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

import itertools
import math
import operator
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from capgroup.assignor import balance, native
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
    from capgroup.assignor.columnar import Assignment
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
_TOPIC_OF = operator.attrgetter("topic")
#: How many unassigned partitions the shortfall warning lists by name.
_SAMPLE = 10
#: Largest group (in partitions) whose headroom is verified by placement when its members
#: differ in subscriptions or per-topic costs; above it the counting bound is reported.
EXACT_HEADROOM_MAX_PARTITIONS = 50_000

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
    members: tuple[MemberSpec, ...] = ()
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
    decoded: list[tuple[str, str | None, MemberSubscription | MetadataDecodeError]] = []
    cache = SubscriptionCache()
    # A large group's metadata goes through the compiled core when it is built: what it
    # returns is what the decoders below return, and it leaves them anything else.
    fast = (
        native.decode_members([raw for _, _, raw in members])
        if len(partitions) >= SMALL_GROUP_PARTITIONS
        else None
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
    specs: list[MemberSpec] = []
    owned: list[OwnedColumns | NativeClaims | None] = []
    rejected: dict[str, str] = {}
    # Members of one deployment share a subscription: one frozenset for all of them.
    topic_sets: dict[tuple[str, ...], frozenset[str]] = {}
    small = len(partitions) < SMALL_GROUP_PARTITIONS
    given = advertisements if advertisements is not None else [None] * len(decoded)
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
        topics = topic_sets.get(sub.topics)
        if topics is None:
            topics = topic_sets[sub.topics] = frozenset(sub.topics)
        specs.append(MemberSpec(member_id, topics, adv, instance_id))
        owned.append(claims)

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
    encoded_info = encode_assignment_info(info)
    columns = _columns(plan)
    # Every member's bytes in one call of the compiled core when it is there (relay-only
    # partitions aside: those members are encoded one by one below).
    bulk = columns.encode_all(encoded_info) if columns is not None else None
    assignments = {
        member_id: (
            bulk[member_id]
            if bulk is not None and member_id in bulk and member_id not in plan.relay
            else _encode_for(plan, member_id, info, encoded_info)
        )
        for member_id, _, _ in decoded
    }
    _report(plan, specs, rejected, len(partitions), generation)
    return GroupPlan(plan, assignments, tuple(specs), rejected, info)


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


def group_figures(
    plan: Plan,
    specs: Sequence[MemberSpec],
    partitions: Sequence[PartitionSpec],
    generation: int,
    *,
    members: int | None = None,
    headroom: int = 1,
    per_topic: Mapping[str, int] | None = None,
) -> AssignmentInfo:
    """The assignment info of a plan: the unassigned and pending counts and the group figures.

    Definitions (a *live* member is one whose advertisement decoded and that is not
    draining; its *slots* are ``min(max_partitions, memory_budget_bytes // c)`` with ``c`` the
    dearest per-partition cost among its subscribed topics that exist, ``max_partitions``
    when that cost is 0, and 0 when it subscribes to none; the *typical* member's slots ``s``
    are the upper median of the live members' non-zero slots; ``H`` is ``headroom``):

    * ``unassigned``: partitions neither assigned nor relay-only (``len(plan.unassigned)``);
      ``relayed``: the relay-only partitions, sent only when the plan has some (None otherwise);
    * ``members``: members of the generation (``len(specs)`` unless given: the engine counts
      rejected members too);
    * ``capacity_partitions``: the sum of the live members' slots;
      ``demand_partitions``: the partitions of the subscribed topics (``P``);
    * ``capacity_bytes``: the sum of the live members' budgets; ``demand_bytes``: for every
      partition, the cost of its topic at the typical subscriber (the upper median of the
      costs the live subscribers advertise);
    * ``headroom_members``: how many live members, largest slots first, the group can lose
      and still place every partition (0 when the plan leaves any unassigned), as
      :func:`capgroup.assignor.balance.headroom` computes it. Exact when every live member
      subscribes to every topic with one cost for all of them (the counting bound is then
      exact), and for up to :data:`EXACT_HEADROOM_MAX_PARTITIONS` partitions (checked by
      placement). Above that size a group with mixed subscriptions or per-topic costs gets
      the counting bound, an upper bound, so that the figure never costs more than the plan;
    * ``replicas_wanted``: how many members the group needs to place every partition and
      still have ``H`` to spare. With nothing unassigned and ``headroom_members >= H`` the
      surplus can go: ``L + H - headroom_members`` (``L`` live members; never below ``H``).
      Otherwise ``L + k`` with ``k`` the largest of ``H - headroom_members``, 1 when
      partitions are unassigned, and the fewest members of ``s`` slots that, added to the
      live ones, leave at least ``P`` slots once the ``H`` largest of them all are lost;
      when no member has slots (``s`` is unknown) that last term is dropped. For ``L``
      identical members of ``s`` slots both cases give ``ceil(P / s) + H``: a target that
      does not move when the autoscaler adds the members it asked for, so it does not flap.

    ``per_topic``, when given, is how many distinct partitions each topic of ``partitions``
    has (the leader's plan knows it; counting a million specs again would not be free).
    """
    n_relayed = sum(map(len, plan.relay.values()))
    n_partitions = _assigned(plan) + len(plan.pending) + len(plan.unassigned) + n_relayed
    if per_topic is None:
        per_topic = Counter(map(_TOPIC_OF, partitions))
        if sum(per_topic.values()) != n_partitions:  # duplicate specs collapse in the plan
            per_topic = Counter(topic for topic, _ in {(p.topic, p.partition) for p in partitions})
    costs = _Costs(set(per_topic))
    live = [m for m in specs if not m.capacity.draining]
    slots = {m.member_id: costs.slots(m, dearest=True) for m in live}
    # Largest first, as balance.headroom ranks them.
    ranked = sorted(
        live,
        key=lambda m: (-slots[m.member_id], -balance._clean_weight(m.capacity.weight), m.member_id),
    )
    # A plan that leaves partitions unassigned (or only relays them: no batch home) is short:
    # nothing can be lost.
    short = bool(plan.unassigned) or n_relayed > 0
    spare = 0 if short else _headroom(ranked, partitions, costs, n_partitions)
    sizes = [n for n in slots.values() if n > 0]
    typical = statistics.median_high(sizes) if sizes else 0
    if not short and spare >= headroom:
        wanted = len(live) + headroom - spare
    else:
        extra = max(headroom - spare, 1 if short else 0)
        if typical:
            sizes_desc = [slots[m.member_id] for m in ranked]
            extra = max(extra, _typical_members_needed(sizes_desc, typical, n_partitions, headroom))
        wanted = len(live) + extra
    typical_cost = costs.typical(live, specs)
    return AssignmentInfo(
        generation,
        len(plan.unassigned),
        len(plan.pending),
        members=len(specs) if members is None else members,
        capacity_partitions=sum(slots.values()),
        demand_partitions=n_partitions,
        capacity_bytes=sum(max(0, m.capacity.memory_budget_bytes) for m in live),
        demand_bytes=sum(n * typical_cost.get(t, 0) for t, n in per_topic.items()),
        headroom_members=spare,
        replicas_wanted=wanted,
        relayed=n_relayed or None,
    )


class _Costs:
    """Per-partition costs of the topics that exist, computed once per distinct subscription
    and cost table (the members of one deployment share both)."""

    def __init__(self, present: set[str]) -> None:
        self.present = present
        self._cache: dict[tuple[object, ...], dict[str, int]] = {}
        #: Per cost table (by identity; the tables live in ``_cache``): its cheapest and
        #: dearest cost and whether it covers every topic at one cost.
        self._summary: dict[int, tuple[int, int, bool]] = {}
        #: Per spec (by identity; ``_held`` keeps the ids from being reused): its table and
        #: the table's summary, so that the several questions asked per member cost one
        #: look-up each and no pass over its topics.
        self._per_spec: dict[int, tuple[dict[str, int], int, int, bool]] = {}
        self._held: list[MemberSpec] = []

    def _entry(self, spec: MemberSpec) -> tuple[dict[str, int], int, int, bool]:
        found = self._per_spec.get(id(spec))
        if found is not None:
            return found
        adv = spec.capacity
        key = (spec.topics, tuple(sorted(adv.partition_bytes.items())), adv.default_partition_bytes)
        table = self._cache.get(key)
        if table is None:
            table = self._cache[key] = {
                t: max(0, adv.cost_of(t)) for t in spec.topics if t in self.present
            }
        summary = self._summary.get(id(table))
        if summary is None:
            values = table.values()
            summary = self._summary[id(table)] = (
                min(values, default=0),
                max(values, default=0),
                len(table) == len(self.present) and len(set(values)) <= 1,
            )
        found = self._per_spec[id(spec)] = (table, *summary)
        self._held.append(spec)
        return found

    def of(self, spec: MemberSpec) -> dict[str, int]:
        """Clamped cost of each subscribed topic that exists."""
        return self._entry(spec)[0]

    def slots(self, spec: MemberSpec, *, dearest: bool) -> int:
        """Partitions ``spec`` can hold, counting by its cap and its budget at the dearest
        (or cheapest) per-partition cost among its subscribed topics that exist."""
        adv = spec.capacity
        costs, cheapest, dearest_cost, _ = self._entry(spec)
        if adv.draining or not costs or adv.memory_budget_bytes < 0:
            return 0
        cost = dearest_cost if dearest else cheapest
        by_bytes = adv.memory_budget_bytes // cost if cost else adv.max_partitions
        return max(0, min(adv.max_partitions, by_bytes))

    def uniform(self, spec: MemberSpec) -> bool:
        """Whether ``spec`` subscribes to every topic that exists, at one cost."""
        return self._entry(spec)[3]

    def typical(self, live: Sequence[MemberSpec], specs: Sequence[MemberSpec]) -> dict[str, int]:
        """Per topic, the upper median of the costs its live subscribers advertise (all
        subscribers when none is live; topics without any are left out)."""
        found: dict[str, int] = {}
        for group in (live, specs):
            tables: dict[int, tuple[dict[str, int], int]] = {}
            for spec in group:
                table = self.of(spec)
                tables[id(table)] = (table, tables.get(id(table), (table, 0))[1] + 1)
            for topic in self.present - found.keys():
                weighted = sorted((t[topic], n) for t, n in tables.values() if topic in t)
                middle = sum(n for _, n in weighted) // 2
                for cost, n in weighted:
                    if middle < n:
                        found[topic] = cost
                        break
                    middle -= n
        return found


def _typical_members_needed(sizes: Sequence[int], typical: int, demand: int, lose: int) -> int:
    """The fewest members of ``typical`` slots to add to members of ``sizes`` (descending)
    so that, without the ``lose`` largest of them all, the slots still cover ``demand``."""
    total = sum(sizes)
    big = sum(1 for n in sizes if n >= typical)  # members ranked before the added ones
    prefix = [0, *itertools.accumulate(sizes)]

    def enough(k: int) -> bool:
        from_big = min(lose, big)
        from_added = min(lose - from_big, k)
        from_rest = min(lose - from_big - from_added, len(sizes) - big)
        lost = prefix[from_big] + from_added * typical + prefix[big + from_rest] - prefix[big]
        return total + k * typical - lost >= demand

    lo, hi = 0, math.ceil(demand / typical) + lose  # hi members of typical size always do
    while lo < hi:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _headroom(
    ranked: Sequence[MemberSpec],
    partitions: Sequence[PartitionSpec],
    costs: _Costs,
    n_partitions: int,
) -> int:
    """``headroom_members`` (see :func:`group_figures`): the counting bound when it is exact
    or the group too large to afford placement runs, else :func:`balance.headroom`'s search
    with the bound cutting off every count that cannot fit."""
    cheap = [costs.slots(m, dearest=False) for m in ranked]
    remaining = sum(cheap)
    if remaining < n_partitions:
        return 0
    bound = 0
    while bound < len(ranked) and remaining - cheap[bound] >= n_partitions:
        remaining -= cheap[bound]
        bound += 1
    # With every live member subscribed to every topic at one cost, any partition fits any
    # free slot: the count is the answer.
    exact = all(map(costs.uniform, ranked))
    if exact or n_partitions > EXACT_HEADROOM_MAX_PARTITIONS:
        return bound
    with balance._no_gc():
        grp = balance._normalize(ranked, partitions)
        index = {member_id: i for i, member_id in enumerate(grp.member_ids)}
        order = [index[m.member_id] for m in ranked]

        def placeable(lost: int) -> bool:
            # Beyond the bound the count alone already fails (as it would inside).
            return lost <= bound and balance._all_placeable(grp, set(order[:lost]))

        if not placeable(0):
            return 0
        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if placeable(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo


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


def _columns(plan: Plan) -> Assignment | None:
    """``plan.assignment`` if the fast path made it (it answers from its arrays)."""
    if isinstance(plan.assignment, dict):
        return None  # the reference pipeline's: no need to load numpy to find that out
    from capgroup.assignor.columnar import Assignment

    found = plan.assignment
    return found if isinstance(found, Assignment) else None


def _topic_sizes(plan: Plan) -> dict[str, int] | None:
    """Partitions per topic of the input planned, when the plan carries them."""
    columns = _columns(plan)
    return columns.topic_sizes() if columns is not None else None


def _assigned(plan: Plan) -> int:
    """How many partitions ``plan`` assigns, without building the fast path's tuples."""
    columns = _columns(plan)
    return columns.total() if columns is not None else sum(map(len, plan.assignment.values()))


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
        assigned=_assigned(plan),
        pending=len(plan.pending),
        unassigned=len(plan.unassigned),
        moved=plan.moved,
        **({"relayed": sum(map(len, plan.relay.values()))} if plan.relay else {}),
    )
