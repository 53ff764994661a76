"""The capacity-aware cooperative assignor: a pure function from a group to a plan.

The body of :func:`assign` is a fixed pipeline of small named steps::

    normalize -> resolve claims -> load units -> capacities -> keep owned
    -> place free -> augment -> balance -> cooperative adjustment -> output

Every step works on integer indexes into two sorted tables (members by id, partitions by
topic and number), so the result does not depend on input order. See ``docs/assignor.md``
for the algorithm, the load notion and the claim rules.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from capgroup.assignor.model import MemberSpec, PartitionSpec, PendingMove, Plan
from capgroup.types import TopicPartition

__all__ = ["assign", "headroom"]

#: Load of a partition with no measured rate. Rates add on top of it, scaled so that a
#: partition at the group's mean rate weighs twice a silent one.
LOAD_BASE = 1000
#: Weights that are not positive finite numbers are treated as this (a last-resort member).
MIN_WEIGHT = 1e-6


# --------------------------------------------------------------------------- normalize


@dataclass(slots=True)
class _Group:
    """Sorted, de-duplicated view of the input; everything else uses its indexes."""

    member_ids: list[str]
    specs: list[MemberSpec]
    tps: list[TopicPartition]
    spec_rate: list[float]
    topic_names: list[str]
    ptopic: list[int]


def _clean_rate(rate: float) -> float:
    return rate if math.isfinite(rate) and rate > 0 else 0.0


def _clean_weight(weight: float) -> float:
    return weight if math.isfinite(weight) and weight > 0 else MIN_WEIGHT


def _normalize(members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec]) -> _Group:
    specs = sorted(members, key=lambda m: m.member_id)
    for left, right in itertools.pairwise(specs):
        if left.member_id == right.member_id:
            raise ValueError(f"duplicate member id {left.member_id!r}")
    # Duplicate partition specs collapse; the highest rate wins so order cannot matter.
    rates: dict[tuple[str, int], float] = {}
    for p in partitions:
        key = (p.topic, p.partition)
        rates[key] = max(rates.get(key, 0.0), _clean_rate(p.rate))
    keys = sorted(rates)
    topic_names = sorted({t for t, _ in keys})
    tindex = {t: k for k, t in enumerate(topic_names)}
    return _Group(
        member_ids=[m.member_id for m in specs],
        specs=specs,
        tps=[TopicPartition(t, n) for t, n in keys],
        spec_rate=[rates[k] for k in keys],
        topic_names=topic_names,
        ptopic=[tindex[t] for t, _ in keys],
    )


# --------------------------------------------------------------------------- claims


@dataclass(slots=True)
class _Claims:
    """Who validly owns what, after the generation rules."""

    #: Valid owner per partition (member index) or -1.
    owner: list[int]
    #: Partitions claimed by several members at the same highest generation.
    conflicts: dict[int, list[int]]
    #: Rate reported by the valid owner, used when the partition spec carries none.
    owner_rate: dict[int, float]
    stale: int = 0
    bogus: int = 0


def _resolve_claims(grp: _Group, generation: int) -> _Claims:
    index = {tp: j for j, tp in enumerate(grp.tps)}
    best_gen: dict[int, int] = {}
    claimants: dict[int, list[int]] = {}
    rate: dict[int, float] = {}
    stale = bogus = 0
    for i, spec in enumerate(grp.specs):
        for claim in spec.capacity.owned:
            j = index.get(TopicPartition(claim.topic, claim.partition))
            if j is None:
                continue
            if claim.generation > generation:
                bogus += 1
                continue
            prev = best_gen.get(j)
            if prev is None or claim.generation > prev:
                if prev is not None:
                    stale += len(claimants[j])
                best_gen[j] = claim.generation
                claimants[j] = [i]
                rate[j] = _clean_rate(claim.rate)
            elif claim.generation == prev:
                if i not in claimants[j]:
                    claimants[j].append(i)
            else:
                stale += 1
    owner = [-1] * len(grp.tps)
    conflicts: dict[int, list[int]] = {}
    for j, who in claimants.items():
        if len(who) == 1:
            owner[j] = who[0]
        else:
            conflicts[j] = sorted(who)
            rate.pop(j, None)
    return _Claims(owner=owner, conflicts=conflicts, owner_rate=rate, stale=stale, bogus=bogus)


# --------------------------------------------------------------------------- load units


def _load_units(grp: _Group, claims: _Claims) -> list[int]:
    """Integer load per partition: a base for the slot plus its share of the ingress.

    The same number drives placement, shedding and balancing, so no step can undo another.
    """
    rates = [r if r > 0 else claims.owner_rate.get(j, 0.0) for j, r in enumerate(grp.spec_rate)]
    total = math.fsum(rates)
    if total <= 0 or not math.isfinite(total):
        return [LOAD_BASE] * len(rates)
    scale = LOAD_BASE * len(rates) / total
    return [LOAD_BASE + round(r * scale) for r in rates]


# --------------------------------------------------------------------------- capacities


@dataclass(slots=True)
class _State:
    """Mutable placement state shared by the placement steps."""

    cap: list[int]
    budget: list[int]
    weight: list[float]
    #: Per eligible member: topic index -> bytes one partition of it costs (subscribed only).
    cost: list[dict[int, int]]
    #: Topic index -> group index; topics in one group share eligible members and costs.
    tgroup: list[int]
    gmembers: list[list[int]]
    gcost: list[dict[int, int]]
    mgroups: list[list[int]]
    ptopic: list[int]
    unit: list[int]
    ubar: int
    target: list[int]
    count: list[int] = field(default_factory=list)
    used: list[int] = field(default_factory=list)
    load: list[int] = field(default_factory=list)
    ver: list[int] = field(default_factory=list)

    def fits(self, i: int, g: int) -> bool:
        return self.count[i] < self.cap[i] and self.used[i] + self.gcost[g][i] <= self.budget[i]

    def add(self, i: int, j: int) -> None:
        self.target[j] = i
        self.count[i] += 1
        self.used[i] += self.cost[i][self.ptopic[j]]
        self.load[i] += self.unit[j]
        self.ver[i] += 1

    def remove(self, i: int, j: int) -> None:
        self.target[j] = -1
        self.count[i] -= 1
        self.used[i] -= self.cost[i][self.ptopic[j]]
        self.load[i] -= self.unit[j]
        self.ver[i] += 1


def _capacities(grp: _Group, unit: list[int]) -> _State:
    n = len(grp.specs)
    tindex = {t: k for k, t in enumerate(grp.topic_names)}
    cap, budget, weight, cost = [], [], [], []
    for spec in grp.specs:
        adv = spec.capacity
        eligible = not adv.draining
        cap.append(max(0, adv.max_partitions) if eligible else 0)
        budget.append(adv.memory_budget_bytes if eligible else -1)
        weight.append(_clean_weight(adv.weight))
        # Negative costs are clamped to zero: the clamped sum bounds the real one from above.
        cost.append(
            {tindex[t]: max(0, adv.cost_of(t)) for t in spec.topics if t in tindex}
            if eligible
            else {}
        )
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    tgroup: list[int] = []
    gmembers: list[list[int]] = []
    gcost: list[dict[int, int]] = []
    mgroups: list[list[int]] = [[] for _ in range(n)]
    for t in range(len(grp.topic_names)):
        subs = tuple(i for i in range(n) if t in cost[i])
        if not subs:
            tgroup.append(-1)
            continue
        costs = tuple(cost[i][t] for i in subs)
        g = groups.get((subs, costs))
        if g is None:
            g = groups[(subs, costs)] = len(gmembers)
            gmembers.append(list(subs))
            gcost.append(dict(zip(subs, costs, strict=True)))
            for i in subs:
                mgroups[i].append(g)
        tgroup.append(g)
    p = len(unit)
    return _State(
        cap=cap,
        budget=budget,
        weight=weight,
        cost=cost,
        tgroup=tgroup,
        gmembers=gmembers,
        gcost=gcost,
        mgroups=mgroups,
        ptopic=grp.ptopic,
        unit=unit,
        ubar=sum(unit) // p if p else LOAD_BASE,
        target=[-1] * p,
        count=[0] * n,
        used=[0] * n,
        load=[0] * n,
        ver=[0] * n,
    )


# --------------------------------------------------------------------------- receivers


class _Receivers:
    """Per topic group, a lazy min-heap of members by ``(load + ubar) / weight``.

    Entries go stale when a member's load changes. A member whose load rose is fixed up
    when its stale (too low) entry reaches the top; a member whose load fell is pushed
    everywhere at once, because its stale entry would sit too deep.
    """

    def __init__(self, st: _State) -> None:
        self.st = st
        self.heaps: list[list[tuple[float, int, int]]] = []
        self.pushed: list[dict[int, int]] = []
        for g, subs in enumerate(st.gmembers):
            heap = [(self.key(i), i, st.ver[i]) for i in subs if st.fits(i, g)]
            heapq.heapify(heap)
            self.heaps.append(heap)
            self.pushed.append({i: v for _, i, v in heap})

    def key(self, i: int) -> float:
        return (self.st.load[i] + self.st.ubar) / self.st.weight[i]

    def best(self, g: int, exclude: int = -1) -> int:
        """The least-loaded member of group ``g`` with room, other than ``exclude``; or -1."""
        st, heap, pushed = self.st, self.heaps[g], self.pushed[g]
        held: tuple[float, int, int] | None = None
        found = -1
        while heap:
            _, i, v = heap[0]
            if v != st.ver[i]:
                heapq.heappop(heap)
                if pushed.get(i) != st.ver[i] and st.fits(i, g):
                    heapq.heappush(heap, (self.key(i), i, st.ver[i]))
                    pushed[i] = st.ver[i]
                continue
            if not st.fits(i, g):
                heapq.heappop(heap)
                pushed[i] = -1
                continue
            if i == exclude:
                held = heapq.heappop(heap)
                continue
            found = i
            break
        if held is not None:
            heapq.heappush(heap, held)
        return found

    def rose(self, i: int, g: int) -> None:
        """Member ``i`` took a partition of group ``g``."""
        st = self.st
        if st.fits(i, g):
            heapq.heappush(self.heaps[g], (self.key(i), i, st.ver[i]))
            self.pushed[g][i] = st.ver[i]

    def fell(self, i: int) -> None:
        """Member ``i`` gave a partition away: it may fit again anywhere."""
        st = self.st
        for g in st.mgroups[i]:
            if st.fits(i, g):
                heapq.heappush(self.heaps[g], (self.key(i), i, st.ver[i]))
                self.pushed[g][i] = st.ver[i]


# --------------------------------------------------------------------------- keep owned


def _keep_owned(st: _State, claims: _Claims) -> list[int]:
    """Valid owners keep what they still subscribe to, hottest first, within budget.

    Returns the partitions a live owner had to give up (budget, subscription or draining).
    """
    mine: dict[int, list[int]] = {}
    for j, i in enumerate(claims.owner):
        if i >= 0:
            mine.setdefault(i, []).append(j)
    shed: list[int] = []
    unit, ptopic = st.unit, st.ptopic
    for i in sorted(mine):
        costs = st.cost[i]
        for j in sorted(mine[i], key=lambda j: (-unit[j], j)):
            c = costs.get(ptopic[j])
            if c is not None and st.count[i] < st.cap[i] and st.used[i] + c <= st.budget[i]:
                st.add(i, j)
            else:
                shed.append(j)
    return shed


# --------------------------------------------------------------------------- place free


def _place_free(st: _State, order: list[int]) -> list[int]:
    """Greedy: each free partition, hottest first, to the least-loaded member with room."""
    recv = _Receivers(st)
    unplaced: list[int] = []
    tgroup, ptopic = st.tgroup, st.ptopic
    for j in order:
        g = tgroup[ptopic[j]]
        i = recv.best(g) if g >= 0 else -1
        if i < 0:
            unplaced.append(j)
            continue
        st.add(i, j)
        recv.rose(i, g)
    return unplaced


# --------------------------------------------------------------------------- augment


def _augment(st: _State, unplaced: list[int]) -> list[int]:
    """Place what greedy could not by shifting partitions along a chain of members.

    A breadth-first search for an augmenting path (as in bipartite matching): the first
    member takes the partition and hands one of its own to the next member, and so on
    until a member with room. With uniform costs per member this makes placement maximal.
    """
    if not unplaced:
        return []
    hold: list[dict[int, list[int]]] = [{} for _ in st.cap]
    for j, i in enumerate(st.target):
        if i >= 0:
            hold[i].setdefault(st.ptopic[j], []).append(j)
    failed: set[int] = set()
    left: list[int] = []
    for j in unplaced:
        t = st.ptopic[j]
        if st.tgroup[t] < 0 or t in failed:
            left.append(j)
            continue
        chain = _find_chain(st, hold, j)
        if chain is None:
            # No path now means no path later unless another chain succeeds.
            failed.add(t)
            left.append(j)
            continue
        failed.clear()
        for giver, taker, q in chain:
            if giver >= 0:
                st.remove(giver, q)
                hold[giver][st.ptopic[q]].remove(q)
            st.add(taker, q)
            hold[taker].setdefault(st.ptopic[q], []).append(q)
    return left


def _find_chain(
    st: _State, hold: list[dict[int, list[int]]], j: int
) -> list[tuple[int, int, int]] | None:
    g0 = st.tgroup[st.ptopic[j]]
    incoming: dict[int, int] = {}
    parent: dict[int, int] = {}
    queue: deque[int] = deque()
    expanded: set[int] = {g0}
    end = -1
    for m in st.gmembers[g0]:
        incoming[m] = j
        parent[m] = -1
        if st.fits(m, g0):
            end = m
            break
        queue.append(m)
    while end < 0 and queue:
        m = queue.popleft()
        cin = st.cost[m][st.ptopic[incoming[m]]]
        for t2 in sorted(hold[m]):
            held = hold[m][t2]
            g2 = st.tgroup[t2]
            if not held or g2 in expanded:
                continue
            if st.used[m] - st.cost[m][t2] + cin > st.budget[m]:
                continue
            expanded.add(g2)
            q = held[-1]
            for m2 in st.gmembers[g2]:
                if m2 in incoming:
                    continue
                incoming[m2] = q
                parent[m2] = m
                if st.fits(m2, g2):
                    end = m2
                    break
                queue.append(m2)
            if end >= 0:
                break
    if end < 0:
        return None
    chain: list[tuple[int, int, int]] = []
    taker = end
    while taker >= 0:
        giver = parent[taker]
        chain.append((giver, taker, incoming[taker]))
        taker = giver
    return chain


# --------------------------------------------------------------------------- balance


def _balance(st: _State, owner: list[int]) -> None:
    """Move partitions from the most loaded members while a move strictly helps.

    A move of ``p`` from ``a`` to ``b`` happens only if ``(load_b + u_p) / w_b <
    load_a / w_a``, where ``b`` is the receiver placement would pick. Each move lowers the
    sorted vector of normalized loads, so the loop ends, and its stopping condition depends
    on the state alone: a balanced plan fed back as ownership is left exactly as it is.
    """
    n = len(st.cap)
    unit, ptopic, tgroup = st.unit, st.ptopic, st.tgroup
    # Per member and group: a heap of (load unit, owned-by-holder, partition). The lightest
    # partition is the easiest to move; among equals, one the member did not own before.
    hold: list[dict[int, list[tuple[int, int, int]]]] = [{} for _ in range(n)]
    for j, i in enumerate(st.target):
        if i >= 0:
            hold[i].setdefault(tgroup[ptopic[j]], []).append(
                (unit[j], 1 if owner[j] == i else 0, j)
            )
    for per in hold:
        for h in per.values():
            heapq.heapify(h)
    recv = _Receivers(st)
    load, weight = st.load, st.weight
    progress = True
    while progress:
        progress = False
        donors = [(-load[i] / weight[i], i, st.ver[i]) for i in range(n) if st.count[i]]
        heapq.heapify(donors)
        while donors:
            _, a, v = heapq.heappop(donors)
            if v != st.ver[a]:
                continue
            for g in sorted(hold[a]):
                h = hold[a][g]
                if not h:
                    continue
                u, _, j = h[0]
                b = recv.best(g, exclude=a)
                if b < 0 or (load[b] + u) * weight[a] >= load[a] * weight[b]:
                    continue
                heapq.heappop(h)
                st.remove(a, j)
                st.add(b, j)
                heapq.heappush(hold[b].setdefault(g, []), (u, 1 if owner[j] == b else 0, j))
                recv.fell(a)
                recv.rose(b, g)
                heapq.heappush(donors, (-load[a] / weight[a], a, st.ver[a]))
                heapq.heappush(donors, (-load[b] / weight[b], b, st.ver[b]))
                progress = True
                break


# --------------------------------------------------------------------------- output


def _output(grp: _Group, st: _State, claims: _Claims, notes: list[str]) -> Plan:
    """Cooperative adjustment and output: withhold every move away from a live claimant."""
    ids, tps = grp.member_ids, grp.tps
    phase1: list[list[TopicPartition]] = [[] for _ in ids]
    pending: list[PendingMove] = []
    unassigned: list[TopicPartition] = []
    moved = 0
    for j, i in enumerate(st.target):
        tp = tps[j]
        if i < 0:
            unassigned.append(tp)
            continue
        o = claims.owner[j]
        tied = claims.conflicts.get(j)
        if tied is not None:
            # Both claimants may still be consuming it: nobody gets it before they revoke.
            giver = tied[0] if tied[0] != i else tied[1]
            pending.append(PendingMove(tp, ids[giver], ids[i]))
            moved += 1
        elif o >= 0 and o != i:
            pending.append(PendingMove(tp, ids[o], ids[i]))
            moved += 1
        else:
            phase1[i].append(tp)
            if o < 0:
                moved += 1
    if unassigned:
        notes.append(
            f"{len(unassigned)} partition(s) unassigned: members' budgets cannot hold them"
        )
    return Plan(
        assignment={ids[i]: tuple(phase1[i]) for i in range(len(ids))},
        pending=tuple(pending),
        unassigned=tuple(unassigned),
        moved=moved,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- pipeline


def _placement_order(st: _State, free: list[int]) -> list[int]:
    unit = st.unit
    return sorted(free, key=lambda j: (-unit[j], j))


def assign(
    members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec], generation: int
) -> Plan:
    """Assign ``partitions`` to ``members`` for the generation being formed.

    Pure and deterministic. Hard limits (``max_partitions``, ``memory_budget_bytes``) are
    never exceeded, in either phase of a cooperative move. Load (a base per partition plus
    its share of the ingress rate) is spread in proportion to ``weight``. A partition
    moving between two live members is withheld for one round (``Plan.pending``).
    Ownership claims above ``generation`` are ignored as bogus; per partition the highest
    generation claim wins and a tie at that generation revokes from every claimant.

    Raises:
        ValueError: if two members share a member id.
    """
    grp = _normalize(members, partitions)
    claims = _resolve_claims(grp, generation)
    unit = _load_units(grp, claims)
    st = _capacities(grp, unit)
    shed = _keep_owned(st, claims)
    free = [j for j in range(len(grp.tps)) if st.target[j] < 0]
    unplaced = _place_free(st, _placement_order(st, free))
    left = _augment(st, unplaced)
    _balance(st, claims.owner)
    notes: list[str] = []
    if claims.conflicts:
        notes.append(
            f"{len(claims.conflicts)} partition(s) claimed by several members in the same "
            "generation: revoked from all of them"
        )
    if claims.stale:
        notes.append(f"{claims.stale} ownership claim(s) from an older generation ignored")
    if claims.bogus:
        notes.append(f"{claims.bogus} ownership claim(s) from a future generation ignored")
    if shed:
        notes.append(f"{len(shed)} owned partition(s) released by owners that cannot keep them")
    del left
    return _output(grp, st, claims, notes)


def _all_placeable(grp: _Group, drop: set[int]) -> bool:
    unit = [LOAD_BASE] * len(grp.tps)
    sub = _Group(
        member_ids=[m for i, m in enumerate(grp.member_ids) if i not in drop],
        specs=[s for i, s in enumerate(grp.specs) if i not in drop],
        tps=grp.tps,
        spec_rate=grp.spec_rate,
        topic_names=grp.topic_names,
        ptopic=grp.ptopic,
    )
    st = _capacities(sub, unit)
    unplaced = _place_free(st, list(range(len(grp.tps))))
    return not _augment(st, unplaced)


def headroom(members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec]) -> int:
    """How many members can fail, largest capacity first, before a partition is homeless.

    Capacity ranks members by how many partitions they can hold (the smaller of
    ``max_partitions`` and the budget over their dearest subscribed topic), then weight,
    then id. Returns 0 when the group is already short. Ownership is ignored.
    """
    grp = _normalize(members, partitions)
    present = set(grp.topic_names)

    def slots(spec: MemberSpec) -> int:
        adv = spec.capacity
        if adv.draining:
            return 0
        costs = [max(0, adv.cost_of(t)) for t in spec.topics if t in present]
        if not costs:
            return 0
        dearest = max(costs)
        by_bytes = adv.memory_budget_bytes // dearest if dearest else adv.max_partitions
        return max(0, min(adv.max_partitions, by_bytes))

    rank = sorted(
        range(len(grp.specs)),
        key=lambda i: (
            -slots(grp.specs[i]),
            -_clean_weight(grp.specs[i].capacity.weight),
            grp.member_ids[i],
        ),
    )
    if not _all_placeable(grp, set()):
        return 0
    lo, hi = 0, len(rank)  # lo is known to survive; find the largest k that does
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _all_placeable(grp, set(rank[:mid])):
            lo = mid
        else:
            hi = mid - 1
    return lo
