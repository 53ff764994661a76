"""The group figures a leader sends with every plan: capacity against demand, the headroom
(how many members the group can lose) and the replicas an autoscaler should run.

Pure functions of a plan and its members. Every member exports them as ``capgroup_group_*``
metrics and ``capgroup describe`` shows them; :func:`group_figures` has the definitions.
The per-member work is one pass with the costs worked out once per *cost class* (members of
one deployment share a subscription and a cost table), so that a leader of 2,000 members pays
a few milliseconds here, not a multiple of the plan.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from capgroup.assignor import balance
from capgroup.assignor.model import MemberSpec, PartitionSpec, PartitionTable, Plan, profiles_of
from capgroup.protocol.consumer import AssignmentInfo

if TYPE_CHECKING:
    from capgroup.assignor.columnar import Assignment

__all__ = [
    "EXACT_HEADROOM_MAX_PARTITIONS",
    "assigned_count",
    "columns_of",
    "group_figures",
    "profile_figures",
]

_T = TypeVar("_T")

#: Largest group (in partitions) whose headroom is verified by placement when its members
#: differ in subscriptions or per-topic costs; above it the counting bound is reported.
EXACT_HEADROOM_MAX_PARTITIONS = 50_000


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
    profiles, rows = profiles_of(specs)
    return profile_figures(
        plan,
        profiles,
        rows,
        [m.member_id for m in specs],
        partitions,
        generation,
        members=members,
        headroom=headroom,
        per_topic=per_topic,
    )


def profile_figures(
    plan: Plan,
    profiles: Sequence[MemberSpec],
    rows: Sequence[int],
    ids: Sequence[str],
    partitions: Sequence[PartitionSpec],
    generation: int,
    *,
    members: int | None = None,
    headroom: int = 1,
    per_topic: Mapping[str, int] | None = None,
) -> AssignmentInfo:
    """:func:`group_figures` of the members ``ids[k]`` with subscription and advertisement
    ``profiles[rows[k]]`` (a profile's member id is ignored): a leader whose members share a
    few profiles works out each once."""
    n_relayed = sum(map(len, plan.relay.values()))
    n_partitions = assigned_count(plan) + len(plan.pending) + len(plan.unassigned) + n_relayed
    if per_topic is None:
        per_topic = _per_topic(partitions, n_partitions)
    roster = _Roster(profiles, rows, ids, set(per_topic))
    n_live = len(roster.live_ids)
    # Largest first, as balance.headroom ranks them: by slots, weight, then member id.
    if roster.ranked_alike():
        ranked = sorted(range(n_live), key=roster.live_ids.__getitem__)
    else:
        keys = list(
            zip(map(operator.neg, roster.dear), roster.neg_weight, roster.live_ids, strict=True)
        )
        ranked = sorted(range(n_live), key=keys.__getitem__)
    # A plan that leaves partitions unassigned (or only relays them: no batch home) is short:
    # nothing can be lost.
    short = bool(plan.unassigned) or n_relayed > 0
    spare = 0 if short else _headroom(roster, ranked, partitions, n_partitions)
    typical = roster.typical_slots()
    if not short and spare >= headroom:
        wanted = n_live + headroom - spare
    else:
        extra = max(headroom - spare, 1 if short else 0)
        if typical:
            sizes_desc = [roster.dear[k] for k in ranked]
            extra = max(extra, _typical_members_needed(sizes_desc, typical, n_partitions, headroom))
        wanted = n_live + extra
    typical_cost = roster.typical_costs()
    return AssignmentInfo(
        generation,
        len(plan.unassigned),
        len(plan.pending),
        members=len(ids) if members is None else members,
        capacity_partitions=sum(roster.dear),
        demand_partitions=n_partitions,
        capacity_bytes=sum(roster.budget),
        demand_bytes=sum(n * typical_cost.get(t, 0) for t, n in per_topic.items()),
        headroom_members=spare,
        replicas_wanted=wanted,
        relayed=n_relayed or None,
    )


def _per_topic(partitions: Sequence[PartitionSpec], n_partitions: int) -> Mapping[str, int]:
    """Distinct partitions per topic."""
    if isinstance(partitions, PartitionTable):
        return partitions.per_topic()
    per_topic = Counter(p.topic for p in partitions)
    if sum(per_topic.values()) != n_partitions:  # duplicate specs collapse in the plan
        per_topic = Counter(topic for topic, _ in {(p.topic, p.partition) for p in partitions})
    return per_topic


@dataclass(frozen=True, slots=True)
class _CostClass:
    """The costs of one subscription and cost table, clamped at 0, for the topics that
    exist; its cheapest and dearest cost; whether it covers every topic at one cost."""

    table: dict[str, int]
    cheapest: int
    dearest: int
    uniform: bool


@dataclass(frozen=True, slots=True)
class _MemberFigures:
    """What the figures need of one member (of every member sharing its subscription and
    advertisement objects)."""

    cost_class: _CostClass
    dear: int
    cheap: int
    neg_weight: float
    budget: int
    draining: bool


class _Roster:
    """The live members with their cost class and their slots at the dearest and at the
    cheapest of their costs, worked out in one pass."""

    def __init__(
        self,
        profiles: Sequence[MemberSpec],
        rows: Sequence[int],
        ids: Sequence[str],
        present: set[str],
    ) -> None:
        self.present = present
        self._classes: dict[tuple[object, ...], _CostClass] = {}
        # Everything below depends on a member's subscription and advertisement only, and
        # the members of one deployment share those (one profile): it is worked out once per
        # profile, then spread over the members by comprehensions, without a Python-level
        # step per member and figure.
        per = [self._figures_of(spec) for spec in profiles]
        self._profiles = profiles
        #: How many members have each profile, in all and among the live ones (the cost
        #: classes' weights in ``typical_costs``).
        # One profile (one deployment): counted without a pass over the members.
        self._count_all = Counter({0: len(rows)}) if len(per) == 1 and rows else Counter(rows)
        if any(r.draining for r in per):
            self._live_rows = [r for r in rows if not per[r].draining]
            self.live_ids = [ids[k] for k, r in enumerate(rows) if not per[r].draining]
            self._count_live = Counter(self._live_rows)
        else:
            self._live_rows = list(rows)
            self.live_ids = list(ids)
            self._count_live = self._count_all
        self._per = per

        def spread(values: list[_T]) -> list[_T]:
            """A per-profile figure, per live member (C-level: no Python step per member)."""
            if len(values) == 1:  # one deployment
                return values * len(self._live_rows)
            return list(map(values.__getitem__, self._live_rows))

        #: Per live member, its slots at the dearest and at the cheapest of its costs, its
        #: weight (cleaned, negated: the ranking's second key) and its budget (at least 0);
        #: ``live_ids`` has its member id.
        self.dear = spread([r.dear for r in per])
        self.cheap = spread([r.cheap for r in per])
        self.neg_weight = spread([r.neg_weight for r in per])
        self.budget = spread([r.budget for r in per])
        #: Whether every live member subscribes to every topic at one cost.
        self.uniform = all(r.cost_class.uniform for r in per if not r.draining)

    def ranked_alike(self) -> bool:
        """Whether every live member has the same slots and weight (one deployment): ranked
        by member id alone."""
        return len({(self._per[r].dear, self._per[r].neg_weight) for r in self._count_live}) <= 1

    def typical_slots(self) -> int:
        """The upper median of the live members' non-zero slots (``statistics.median_high``),
        from the profiles' counts; 0 when no live member has slots."""
        pairs = sorted(
            (self._per[r].dear, n) for r, n in self._count_live.items() if self._per[r].dear > 0
        )
        middle = sum(n for _, n in pairs) // 2
        for slots, n in pairs:
            if middle < n:
                return slots
            middle -= n
        return 0

    def live_member(self, k: int) -> MemberSpec:
        """Live member ``k`` as the assignor sees it."""
        profile = self._profiles[self._live_rows[k]]
        return MemberSpec(self.live_ids[k], profile.topics, profile.capacity)

    def _figures_of(self, spec: MemberSpec) -> _MemberFigures:
        c = self._class_of(spec)
        adv = spec.capacity
        return _MemberFigures(
            c,
            _slots(spec, c, c.dearest),
            _slots(spec, c, c.cheapest),
            -balance._clean_weight(adv.weight),
            max(0, adv.memory_budget_bytes),
            adv.draining,
        )

    def _class_of(self, spec: MemberSpec) -> _CostClass:
        adv = spec.capacity
        pb = adv.partition_bytes
        key = (spec.topics, tuple(sorted(pb.items())) if pb else (), adv.default_partition_bytes)
        found = self._classes.get(key)
        if found is None:
            # adv.cost_of(t), without a method call per topic.
            costs, default = adv.partition_bytes, adv.default_partition_bytes
            table = {t: max(0, costs.get(t, default)) for t in spec.topics if t in self.present}
            values = table.values()
            found = self._classes[key] = _CostClass(
                table,
                min(values, default=0),
                max(values, default=0),
                len(table) == len(self.present) and len(set(values)) <= 1,
            )
        return found

    def typical_costs(self) -> dict[str, int]:
        """Per topic, the upper median of the costs its live subscribers advertise (all
        subscribers when none is live; topics without any are left out)."""
        found: dict[str, int] = {}
        for counted in (self._count_live, self._count_all):
            # Members per cost class: the profiles' counts, summed by class.
            weights: dict[int, tuple[dict[str, int], int]] = {}
            for r, n in counted.items():
                c = self._per[r].cost_class
                table, m = weights.get(id(c), (c.table, 0))
                weights[id(c)] = (table, m + n)
            tables = list(weights.values())
            if len(tables) == 1:
                # One cost class (one deployment): its costs are the medians.
                table = tables[0][0]
                found.update({t: table[t] for t in self.present - found.keys() if t in table})
                continue
            for topic in self.present - found.keys():
                weighted = sorted((t[topic], n) for t, n in tables if topic in t)
                middle = sum(n for _, n in weighted) // 2
                for cost, n in weighted:
                    if middle < n:
                        found[topic] = cost
                        break
                    middle -= n
        return found


def _slots(spec: MemberSpec, costs: _CostClass, cost: int) -> int:
    """Partitions ``spec`` can hold, counting by its cap and its budget at ``cost``."""
    adv = spec.capacity
    if adv.draining or not costs.table or adv.memory_budget_bytes < 0:
        return 0
    by_bytes = adv.memory_budget_bytes // cost if cost else adv.max_partitions
    return max(0, min(adv.max_partitions, by_bytes))


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
    roster: _Roster,
    ranked: Sequence[int],
    partitions: Sequence[PartitionSpec],
    n_partitions: int,
) -> int:
    """``headroom_members`` (see :func:`group_figures`): the counting bound when it is exact
    or the group too large to afford placement runs, else :func:`balance.headroom`'s search
    with the bound cutting off every count that cannot fit. ``ranked``: indexes of the
    roster's live members, largest first."""
    cheap = list(map(roster.cheap.__getitem__, ranked))
    lost = list(itertools.accumulate(cheap))  # slots lost with the k + 1 largest members
    if not lost or lost[-1] < n_partitions:
        return 0
    # How many of the largest members can go with the rest's slots still covering every
    # partition (``lost`` never falls: slots are at least 0).
    bound = bisect.bisect_right(lost, lost[-1] - n_partitions)
    # With every live member subscribed to every topic at one cost, any partition fits any
    # free slot: the count is the answer.
    exact = roster.uniform
    if exact or n_partitions > EXACT_HEADROOM_MAX_PARTITIONS:
        return bound
    members = [roster.live_member(k) for k in ranked]
    with balance._no_gc():
        grp = balance._normalize(members, partitions)
        index = {member_id: i for i, member_id in enumerate(grp.member_ids)}
        order = [index[m.member_id] for m in members]

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


def assigned_count(plan: Plan) -> int:
    """How many partitions ``plan`` assigns, without building the fast path's tuples."""
    columns = columns_of(plan)
    if columns is not None:
        return columns.total()
    return sum(map(len, plan.assignment.values()))


def columns_of(plan: Plan) -> Assignment | None:
    """``plan.assignment`` if the fast path made it (it answers from its arrays). A plan made
    without it never loads numpy to find that out, and one made with it does not import
    anything (the leader asks several times per plan)."""
    columnar = sys.modules.get("capgroup.assignor.columnar")
    if columnar is None:
        return None  # no fast path has run in this process
    found = plan.assignment
    return found if isinstance(found, columnar.Assignment) else None
