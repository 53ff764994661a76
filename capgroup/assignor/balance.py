"""The capacity-aware cooperative assignor: a pure function from a group to a plan.

The body of :func:`reference_assign` is a fixed pipeline of small named steps::

    normalize -> resolve claims -> load units -> capacities -> keep owned
    -> place free -> augment -> balance -> relay -> cooperative adjustment (output)

Every step works on integer indexes into two sorted tables (members by id, partitions by
topic and number), so the result does not depend on input order, and on flat lists rather
than per-partition objects. See ``docs/assignor.md`` for the algorithm, the load notion and
the claim rules.

This module is the **reference**: :func:`reference_assign` runs every step in plain Python.
:func:`assign`, the one the code base calls, is :func:`capgroup.assignor.columnar.assign`:
the same pipeline with the steps that touch every partition (normalize, resolve claims,
load units, keep owned, output) on numpy arrays and the others shared with this module, so
that its cost per partition is not the interpreter's. A differential test holds the two to
identical plans.
"""

from __future__ import annotations

import bisect
import collections
import gc
import heapq
import itertools
import math
import operator
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from capgroup.assignor.model import MemberSpec, OwnedPartition, PartitionSpec, PendingMove, Plan
from capgroup.types import TopicPartition

__all__ = ["LOAD_BASE", "MIN_WEIGHT", "assign", "headroom", "reference_assign"]

#: Load of a partition with no measured rate. Rates add on top of it, scaled so that a
#: partition at the group's mean rate weighs twice a silent one.
LOAD_BASE = 1000
#: Weights that are not positive finite numbers are treated as this (a last-resort member).
MIN_WEIGHT = 1e-6


@contextmanager
def _no_gc() -> Iterator[None]:
    # Building a million small tuples otherwise triggers repeated full collections over
    # the caller's whole heap; nothing here creates reference cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_TP_OF = operator.attrgetter("topic", "partition")
_RATE_OF = operator.attrgetter("rate")
_TOPIC_OF = operator.attrgetter("topic")
_NUMBER_OF = operator.attrgetter("partition")
_GEN_OF = operator.attrgetter("generation")


def _clean_rate(rate: float) -> float:
    return rate if math.isfinite(rate) and rate > 0 else 0.0


def _clean_weight(weight: float) -> float:
    return weight if math.isfinite(weight) and weight > 0 else MIN_WEIGHT


# --------------------------------------------------------------------------- normalize


@dataclass(slots=True)
class _Group:
    """Sorted, de-duplicated view of the input; everything else uses its indexes."""

    member_ids: list[str]
    specs: list[MemberSpec]
    keys: list[tuple[str, int]]
    spec_rate: list[float]
    topic_names: list[str]
    ptopic: list[int]


class _Members(Protocol):
    """What the shared steps read of a normalized group (the reference's ``_Group`` and the
    fast path's columns both have it)."""

    specs: list[MemberSpec]
    topic_names: list[str]
    ptopic: list[int]


def _normalize(members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec]) -> _Group:
    specs = sorted(members, key=lambda m: m.member_id)
    for left, right in itertools.pairwise(specs):
        if left.member_id == right.member_id:
            raise ValueError(f"duplicate member id {left.member_id!r}")
    keys = list(map(_TP_OF, partitions))
    rates = list(map(_RATE_OF, partitions))
    if not all(map(operator.lt, keys, itertools.islice(keys, 1, None))):
        order = sorted(range(len(keys)), key=keys.__getitem__)
        keys = list(map(keys.__getitem__, order))
        rates = list(map(rates.__getitem__, order))
    if any(rates):
        rates = list(map(_clean_rate, rates))
    if any(itertools.starmap(tuple.__eq__, itertools.pairwise(keys))):
        # Duplicate specs collapse; the highest rate wins so input order cannot matter.
        merged: dict[tuple[str, int], float] = {}
        for key, rate in zip(keys, rates, strict=True):
            merged[key] = max(merged.get(key, 0.0), rate)
        keys = list(merged)
        rates = list(merged.values())
    names = list(map(operator.itemgetter(0), keys))
    topic_names = sorted(set(names))
    ptopic: list[int] = []
    start = 0
    for t, name in enumerate(topic_names):
        end = bisect.bisect_right(names, name, lo=start)
        ptopic.extend(itertools.repeat(t, end - start))
        start = end
    return _Group(
        member_ids=[m.member_id for m in specs],
        specs=specs,
        keys=keys,
        spec_rate=rates,
        topic_names=topic_names,
        ptopic=ptopic,
    )


# --------------------------------------------------------------------------- claims


@dataclass(slots=True)
class _Claims:
    """Who validly owns what, after the generation rules."""

    #: Valid owner per partition (member index) or -1.
    owner: list[int]
    #: Partitions claimed by several members at the same highest generation.
    conflicts: dict[int, list[int]]
    #: Per member, the partitions it validly owns (ascending).
    mine: dict[int, list[int]]
    #: Rate reported by the valid owner, used when the partition spec carries none.
    owner_rate: dict[int, float]
    stale: int = 0
    bogus: int = 0


class _Owners(Protocol):
    """What the shared steps read of resolved claims (both paths' ``_Claims`` have it)."""

    owner: list[int]
    conflicts: dict[int, list[int]]
    stale: int
    bogus: int


class _Index:
    """Topic-partition -> partition index, by arithmetic where a topic is 0..n-1."""

    def __init__(self, grp: _Group) -> None:
        self.grp = grp
        self.base: dict[str, int] = {}
        self.size: dict[str, int] = {}
        start = 0
        for t, name in enumerate(grp.topic_names):
            end = bisect.bisect_right(grp.ptopic, t, lo=start)
            if grp.keys[start][1] == 0 and grp.keys[end - 1][1] == end - start - 1:
                self.base[name] = start
                self.size[name] = end - start
            start = end
        self._exact: dict[tuple[str, int], int] | None = None

    def of(self, owned: Sequence[OwnedPartition]) -> list[int]:
        """Indexes of the claimed partitions; -1 for partitions not in the input."""
        topics = list(map(_TOPIC_OF, owned))
        numbers = list(map(_NUMBER_OF, owned))
        bases = list(map(self.base.get, topics, itertools.repeat(-1)))
        if (
            -1 not in bases
            and min(numbers) >= 0
            and all(map(operator.lt, numbers, map(self.size.__getitem__, topics)))
        ):
            return list(map(operator.add, bases, numbers))
        if self._exact is None:
            keys = self.grp.keys
            self._exact = dict(zip(keys, range(len(keys)), strict=True))
        return list(map(self._exact.get, zip(topics, numbers, strict=True), itertools.repeat(-1)))


def _resolve_claims(grp: _Group, generation: int) -> _Claims:
    """Per partition the highest generation claim wins; a tie there revokes from all.

    Claims above ``generation`` are bogus and ignored. Most partitions have exactly one
    claim, so those are settled in bulk and only contested ones are looked at one by one.
    """
    n_parts = len(grp.keys)
    index = _Index(grp)
    claimed: list[tuple[int, list[int], list[int], tuple[OwnedPartition, ...]]] = []
    seen: set[int] = set()
    contested: set[int] = set()
    for i, spec in enumerate(grp.specs):
        owned = spec.capacity.owned
        if owned:
            js = index.of(owned)
            unique = set(js)
            contested.update(seen.intersection(unique))
            if len(unique) != len(js):
                contested.update(j for j, k in collections.Counter(js).items() if k > 1)
            seen |= unique
            claimed.append((i, js, list(map(_GEN_OF, owned)), owned))
    contested.discard(-1)
    owner = [-1] * n_parts
    mine: dict[int, list[int]] = {}
    rate: dict[int, float] = {}
    bids: dict[int, list[tuple[int, int, float]]] = {}
    bogus = 0
    for i, js, gens, owned in claimed:
        simple = -1 not in js and max(gens) <= generation and contested.isdisjoint(js)
        if simple:
            lo, hi = min(js), max(js)
            if hi - lo + 1 == len(js) == len(set(js)):
                # Exactly a range of partitions (what water-filling hands out): slice it.
                owner[lo : hi + 1] = [i] * len(js)
                mine[i] = list(range(lo, hi + 1))
            else:
                for j in js:
                    owner[j] = i
                mine[i] = sorted(js)
            if any(map(_RATE_OF, owned)):
                rate.update(zip(js, map(_clean_rate, map(_RATE_OF, owned)), strict=True))
            continue
        for j, gen, claim in zip(js, gens, owned, strict=True):
            if j < 0:
                continue
            if gen > generation:
                bogus += 1
            elif j in contested:
                bids.setdefault(j, []).append((gen, i, _clean_rate(claim.rate)))
            else:
                owner[j] = i
                mine.setdefault(i, []).append(j)
                rate[j] = _clean_rate(claim.rate)
    conflicts: dict[int, list[int]] = {}
    stale = 0
    for j, offers in bids.items():
        top = max(gen for gen, _, _ in offers)
        who = sorted({i for gen, i, _ in offers if gen == top})
        stale += sum(1 for gen, _, _ in offers if gen < top)
        if len(who) > 1:
            conflicts[j] = who
        else:
            owner[j] = who[0]
            mine.setdefault(who[0], []).append(j)
            rate[j] = max(r for gen, _, r in offers if gen == top)
    for held in mine.values():
        held.sort()
    return _Claims(
        owner=owner, conflicts=conflicts, mine=mine, owner_rate=rate, stale=stale, bogus=bogus
    )


# --------------------------------------------------------------------------- load units


def _load_units(grp: _Group, claims: _Claims) -> list[int]:
    """Integer load per partition: a base for the slot plus its share of the ingress.

    The same number drives placement, shedding and balancing, so no step can undo another.
    """
    rates = grp.spec_rate
    if claims.owner_rate:
        rates = [r or claims.owner_rate.get(j, 0.0) for j, r in enumerate(rates)]
    total = math.fsum(rates)
    if total <= 0 or not math.isfinite(total):
        return [LOAD_BASE] * len(rates)
    scale = LOAD_BASE * len(rates) / total
    return [LOAD_BASE + round(r * scale) for r in rates]


# --------------------------------------------------------------------------- capacities


@dataclass(slots=True)
class _State:
    """Limits and mutable placement state shared by the placement steps.

    Members with the same subscription and costs form a class; topics whose eligible
    members and costs coincide form a group, and receivers are looked up per group.
    """

    cap: list[int]
    budget: list[int]
    weight: list[float]
    mcls: list[int]
    #: Per member class: topic index -> bytes one partition costs (eligible + subscribed).
    ccost: list[dict[int, int]]
    tgroup: list[int]
    gmembers: list[list[int]]
    #: Per group: member class -> cost of one partition of the group's topics.
    gcost: list[dict[int, int]]
    mgroups: list[list[int]]
    ptopic: list[int]
    unit: list[int]
    ubar: int
    uniform: bool
    target: list[int]
    count: list[int]
    used: list[int]
    load: list[int]
    ver: list[int]

    def cost(self, i: int, j: int) -> int:
        return self.ccost[self.mcls[i]][self.ptopic[j]]

    def room(self, i: int, g: int) -> int:
        """How many more partitions of group ``g`` member ``i`` can take."""
        by_count = self.cap[i] - self.count[i]
        c = self.gcost[g][self.mcls[i]]
        if c == 0:
            return by_count if self.budget[i] >= 0 else 0
        return max(0, min(by_count, (self.budget[i] - self.used[i]) // c))

    def fits(self, i: int, g: int) -> bool:
        return (
            self.count[i] < self.cap[i]
            and self.used[i] + self.gcost[g][self.mcls[i]] <= self.budget[i]
        )

    def add(self, i: int, j: int) -> None:
        self.target[j] = i
        self.count[i] += 1
        self.used[i] += self.ccost[self.mcls[i]][self.ptopic[j]]
        self.load[i] += self.unit[j]
        self.ver[i] += 1

    def add_many(self, i: int, js: Sequence[int], cost: int) -> None:
        """Give ``js`` to ``i``; ``cost`` is their total bytes for ``i``."""
        if js[-1] - js[0] == len(js) - 1:  # a contiguous range: one slice assignment
            self.target[js[0] : js[-1] + 1] = [i] * len(js)
        else:
            target = self.target
            for j in js:
                target[j] = i
        self.count[i] += len(js)
        self.used[i] += cost
        self.load[i] += (
            len(js) * self.unit[js[0]] if self.uniform else sum(self.unit[j] for j in js)
        )
        self.ver[i] += 1

    def remove(self, i: int, j: int) -> None:
        self.target[j] = -1
        self.count[i] -= 1
        self.used[i] -= self.ccost[self.mcls[i]][self.ptopic[j]]
        self.load[i] -= self.unit[j]
        self.ver[i] += 1


def _member_class(spec: MemberSpec) -> tuple[object, ...]:
    """Members with one key share their per-topic costs: the same subscription (none for a
    draining member, which takes nothing) and the same partition costs."""
    adv = spec.capacity
    return (
        None if adv.draining else spec.topics,
        tuple(sorted(adv.partition_bytes.items())),
        adv.default_partition_bytes,
    )


def _capacities(grp: _Members, unit: list[int]) -> _State:
    n = len(grp.specs)
    tindex = {t: k for k, t in enumerate(grp.topic_names)}
    cap, budget, weight, mcls = [], [], [], []
    classes: dict[tuple[object, ...], int] = {}
    ccost: list[dict[int, int]] = []
    cmembers: list[list[int]] = []
    for i, spec in enumerate(grp.specs):
        adv = spec.capacity
        eligible = not adv.draining
        cap.append(max(0, adv.max_partitions) if eligible else 0)
        budget.append(adv.memory_budget_bytes if eligible else -1)
        weight.append(_clean_weight(adv.weight))
        key = _member_class(spec)
        c = classes.get(key)
        if c is None:
            c = classes[key] = len(ccost)
            # Negative costs are clamped to zero: the clamped sum bounds the real one.
            ccost.append(
                {tindex[t]: max(0, adv.cost_of(t)) for t in spec.topics if t in tindex}
                if eligible
                else {}
            )
            cmembers.append([])
        cmembers[c].append(i)
        mcls.append(c)
    groups: dict[tuple[tuple[int, int], ...], int] = {}
    tgroup: list[int] = []
    gmembers: list[list[int]] = []
    gcost: list[dict[int, int]] = []
    cgroups: list[list[int]] = [[] for _ in ccost]
    for t in range(len(grp.topic_names)):
        key2 = tuple((c, costs[t]) for c, costs in enumerate(ccost) if t in costs)
        if not key2:
            tgroup.append(-1)
            continue
        g = groups.get(key2)
        if g is None:
            g = groups[key2] = len(gmembers)
            gmembers.append(sorted(i for c, _ in key2 for i in cmembers[c]))
            gcost.append(dict(key2))
            for c, _ in key2:
                cgroups[c].append(g)
        tgroup.append(g)
    p = len(unit)
    # One C-level pass (and none through sum) for the usual case: every load the same.
    uniform = not unit or unit.count(unit[0]) == p
    return _State(
        cap=cap,
        budget=budget,
        weight=weight,
        mcls=mcls,
        ccost=ccost,
        tgroup=tgroup,
        gmembers=gmembers,
        gcost=gcost,
        mgroups=[cgroups[c] for c in mcls],
        ptopic=grp.ptopic,
        unit=unit,
        ubar=(unit[0] if uniform else sum(unit) // p) if p else LOAD_BASE,
        uniform=uniform,
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
        self.heaps: dict[int, list[tuple[float, int, int]]] = {}
        self.pushed: dict[int, dict[int, int]] = {}

    def key(self, i: int) -> float:
        return (self.st.load[i] + self.st.ubar) / self.st.weight[i]

    def _heap(self, g: int) -> list[tuple[float, int, int]]:
        heap = self.heaps.get(g)
        if heap is None:
            st = self.st
            heap = [(self.key(i), i, st.ver[i]) for i in st.gmembers[g] if st.fits(i, g)]
            heapq.heapify(heap)
            self.heaps[g] = heap
            self.pushed[g] = {i: v for _, i, v in heap}
        return heap

    def best(self, g: int, exclude: int = -1) -> int:
        """The least-loaded member of group ``g`` with room, other than ``exclude``; or -1."""
        st, heap = self.st, self._heap(g)
        pushed = self.pushed[g]
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

    def fill(self, g: int, run: Sequence[int]) -> list[int]:
        """Each partition of ``run`` (all of group ``g``), in order, to :meth:`best`; returns
        those nobody can take. Exactly :meth:`best` and :meth:`_State.add` per partition,
        inlined, and the taker's entry replaced at the top of the heap (it only got
        busier): with ingress rates hardly two partitions weigh the same, and this loop
        places every one of them."""
        st, heap, pushed = self.st, self._heap(g), self.pushed[g]
        target, count, used, load, ver = st.target, st.count, st.used, st.load, st.ver
        cap, budget, weight, mcls, unit = st.cap, st.budget, st.weight, st.mcls, st.unit
        cost, ubar = st.gcost[g], st.ubar
        for pos, j in enumerate(run):
            while heap:  # best(g)
                _, i, v = heap[0]
                fits = count[i] < cap[i] and used[i] + cost[mcls[i]] <= budget[i]
                if v != ver[i]:
                    heapq.heappop(heap)
                    if pushed.get(i) != ver[i] and fits:
                        heapq.heappush(heap, ((load[i] + ubar) / weight[i], i, ver[i]))
                        pushed[i] = ver[i]
                elif not fits:
                    heapq.heappop(heap)
                    pushed[i] = -1
                else:
                    break
            else:
                return list(run[pos:])  # nobody has room: the rest stays unplaced too
            target[j] = i  # st.add(i, j)
            count[i] += 1
            used[i] += cost[mcls[i]]
            load[i] += unit[j]
            ver[i] += 1
            if count[i] < cap[i] and used[i] + cost[mcls[i]] <= budget[i]:
                heapq.heapreplace(heap, ((load[i] + ubar) / weight[i], i, ver[i]))
                pushed[i] = ver[i]
            else:
                heapq.heappop(heap)
                pushed[i] = -1
        return []

    def rose(self, i: int, g: int) -> None:
        """Member ``i`` took a partition of group ``g``."""
        st = self.st
        if g in self.heaps and st.fits(i, g):
            heapq.heappush(self.heaps[g], (self.key(i), i, st.ver[i]))
            self.pushed[g][i] = st.ver[i]

    def fell(self, i: int) -> None:
        """Member ``i`` gave a partition away: it may fit again anywhere."""
        st = self.st
        for g in st.mgroups[i]:
            if g in self.heaps and st.fits(i, g):
                heapq.heappush(self.heaps[g], (self.key(i), i, st.ver[i]))
                self.pushed[g][i] = st.ver[i]


# --------------------------------------------------------------------------- keep owned


def _keep_owned(st: _State, claims: _Claims) -> list[int]:
    """Valid owners keep what they still subscribe to, hottest first, within budget.

    Returns the partitions a live owner had to give up (budget, subscription or draining).
    """
    shed: list[int] = []
    unit, ptopic = st.unit, st.ptopic
    for i, js in sorted(claims.mine.items()):
        costs = st.ccost[st.mcls[i]]
        try:
            total = sum(map(costs.__getitem__, map(ptopic.__getitem__, js)))
        except KeyError:  # owns a topic it no longer subscribes to (or is draining)
            total = -1
        if 0 <= total <= st.budget[i] and len(js) <= st.cap[i]:
            st.add_many(i, js, total)
            continue
        for j in sorted(js, key=lambda j: (-unit[j], j)):
            c = costs.get(ptopic[j])
            if c is not None and st.count[i] < st.cap[i] and st.used[i] + c <= st.budget[i]:
                st.add(i, j)
            else:
                shed.append(j)
    return shed


# --------------------------------------------------------------------------- place free


def _runs(st: _State, free: list[int]) -> Iterator[list[int]]:
    """Free partitions in placement order, cut into runs of one group and one load.

    Order: heaviest load first (hot partitions are at greatest risk); among equal loads,
    topics that fewer members can take go first, so the flexible ones fill in around them
    instead of balancing having to move them later; then topic and partition number.
    """
    tgroup, gmembers = st.tgroup, st.gmembers

    def scarcity(g: int) -> int:
        return len(gmembers[g]) if g >= 0 else 0

    if st.uniform:
        # ``free`` is already in (topic, partition) order: cut it at topic boundaries.
        topics = list(map(st.ptopic.__getitem__, free))
        by_group: dict[int, list[int]] = {}
        start = 0
        while start < len(free):
            end = bisect.bisect_right(topics, topics[start], lo=start)
            by_group.setdefault(tgroup[topics[start]], []).extend(free[start:end])
            start = end
        for g in sorted(by_group, key=lambda g: (scarcity(g), g)):
            yield by_group[g]
        return
    # Sort keys built by C-level maps (no Python call per partition): every partition is
    # here on a fresh plan with rates.
    topics = list(map(st.ptopic.__getitem__, free))
    rank = [scarcity(g) for g in tgroup]
    order = sorted(
        zip(
            map(operator.neg, map(st.unit.__getitem__, free)),
            map(rank.__getitem__, topics),
            free,
            map(tgroup.__getitem__, topics),
            strict=True,
        )
    )
    # Runs of one load and one group; ``free`` is unique, so the group never breaks a tie.
    for _, run in itertools.groupby(order, key=operator.itemgetter(0, 3)):
        yield list(map(operator.itemgetter(2), run))


def _water_fill(st: _State, g: int, run: list[int]) -> list[int]:
    """Place a run of equal-load partitions of group ``g`` in one go.

    Greedy placement would give each partition to the member whose key ``(load + ubar)
    / weight`` is lowest; over a run of equal loads that selects the run's length of
    smallest keys among every member's arithmetic sequence of next keys. A bisection on
    the key level finds most of them, a small heap picks the rest exactly.
    Returns what did not fit.
    """
    u = st.unit[run[0]]
    ubar = st.ubar
    rooms = [(i, r) for i in st.gmembers[g] if (r := st.room(i, g)) > 0]
    want = len(run)
    if sum(r for _, r in rooms) <= want:
        take = dict(rooms)
    else:
        load, weight = st.load, st.weight
        first = [(load[i] + ubar) / weight[i] for i, _ in rooms]
        step = [u / weight[i] for i, _ in rooms]
        caps = [r for _, r in rooms]

        def taken(level: float) -> list[int]:
            return [
                min(r, max(0, math.floor((level - a) / d) + 1))
                for a, d, r in zip(first, step, caps, strict=True)
            ]

        lo = min(first) - 1.0
        hi = max(a + d * r for a, d, r in zip(first, step, caps, strict=True))
        # Start near the level an unconstrained fill would reach; widen if that misses.
        inv = sum(1 / d for d in step)
        guess = (want + sum(a / d for a, d in zip(first, step, strict=True))) / inv
        near = 2 * max(step)
        if sum(taken(guess - near)) <= want < sum(taken(guess + near)):
            lo, hi = guess - near, guess + near
        finest = min(step)
        # Stop once the bracket is finer than one step: the heap below picks the rest.
        while hi - lo > finest:
            mid = (lo + hi) / 2
            if mid in (lo, hi):
                break
            if sum(taken(mid)) <= want:
                lo = mid
            else:
                hi = mid
        counts = taken(lo)
        take = {i: k for (i, _), k in zip(rooms, counts, strict=True)}
        heap = [
            ((load[i] + k * u + ubar) / weight[i], i)
            for (i, r), k in zip(rooms, counts, strict=True)
            if k < r
        ]
        heapq.heapify(heap)
        room_of = dict(rooms)
        for _ in range(want - sum(counts)):
            _, i = heapq.heappop(heap)
            take[i] += 1
            if take[i] < room_of[i]:
                heapq.heappush(heap, ((load[i] + take[i] * u + ubar) / weight[i], i))
    pos = 0
    for i, _ in rooms:
        k = take.get(i, 0)
        if k:
            chunk = run[pos : pos + k]
            pos += k
            st.add_many(i, chunk, k * st.gcost[g][st.mcls[i]])
    return run[pos:]


def _place_free(st: _State, free: list[int]) -> list[int]:
    """Each free partition, hottest first, to the least-loaded member with room."""
    recv = _Receivers(st)
    unplaced: list[int] = []
    tgroup, ptopic = st.tgroup, st.ptopic
    for run in _runs(st, free):
        g = tgroup[ptopic[run[0]]]
        if g < 0:
            unplaced.extend(run)
        elif len(run) >= len(st.gmembers[g]):
            # Long runs are filled in one go; short ones would pay O(members) each.
            unplaced.extend(_water_fill(st, g, run))
        else:
            unplaced.extend(recv.fill(g, run))
    return unplaced


# --------------------------------------------------------------------------- augment


def _augment(st: _State, unplaced: list[int], give_up: bool = False) -> list[int]:
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
            if give_up:
                return [j]
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
        cin = st.cost(m, incoming[m])
        for t2 in sorted(hold[m]):
            held = hold[m][t2]
            g2 = st.tgroup[t2]
            if not held or g2 in expanded:
                continue
            if st.used[m] - st.cost(m, held[-1]) + cin > st.budget[m]:
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


def _improves(st: _State, a: int, b: int, u: int) -> bool:
    """Moving a partition of load ``u`` from ``a`` to ``b`` lowers the busier side."""
    return b >= 0 and (st.load[b] + u) * st.weight[a] < st.load[a] * st.weight[b]


def _already_balanced(st: _State, recv: _Receivers) -> bool:
    """Cheap exact check for uniform loads, where both move rules reduce to one."""
    u = st.unit[0]
    gmembers = st.gmembers
    for a, n in enumerate(st.count):
        if n:
            for g in st.mgroups[a] if len(gmembers) > 1 else (0,):
                if _improves(st, a, recv.best(g, exclude=a), u):
                    return False
    return True


@dataclass(slots=True)
class _Holdings:
    """What each member holds, split the way the balance rules look at it."""

    #: member -> group -> min-heap of (load unit, partition) it did not validly own.
    fresh: list[dict[int, list[tuple[int, int]]]]
    #: member -> group -> min-heap of (load unit, partition) it validly owns.
    kept: list[dict[int, list[tuple[int, int]]]]
    #: member -> lazy max-heap of (-load unit, partition) over everything it holds.
    heavy: list[list[tuple[int, int]]]

    @classmethod
    def build(cls, st: _State, owner: list[int]) -> _Holdings:
        n = len(st.cap)
        hd = cls([{} for _ in range(n)], [{} for _ in range(n)], [[] for _ in range(n)])
        unit, tgroup, ptopic = st.unit, st.tgroup, st.ptopic
        for j, i in enumerate(st.target):
            if i >= 0:
                side = hd.kept if owner[j] == i else hd.fresh
                side[i].setdefault(tgroup[ptopic[j]], []).append((unit[j], j))
                hd.heavy[i].append((-unit[j], j))
        for per in (*hd.fresh, *hd.kept):
            for h in per.values():
                heapq.heapify(h)
        for h in hd.heavy:
            heapq.heapify(h)
        return hd

    def heaviest(self, st: _State, a: int) -> int:
        h = self.heavy[a]
        while h and st.target[h[0][1]] != a:
            heapq.heappop(h)
        return -h[0][0] if h else 0

    def gain(self, st: _State, owner: list[int], b: int, g: int, u: int, j: int) -> None:
        side = self.kept if owner[j] == b else self.fresh
        heapq.heappush(side[b].setdefault(g, []), (u, j))
        heapq.heappush(self.heavy[b], (-u, j))


def _next_move(
    st: _State, recv: _Receivers, hd: _Holdings, a: int
) -> tuple[list[tuple[int, int]], int, int] | None:
    """The move the balance rules allow from ``a``: (heap to pop, group, receiver)."""
    for g in sorted(hd.fresh[a].keys() | hd.kept[a].keys()):
        fresh, kept = hd.fresh[a].get(g), hd.kept[a].get(g)
        if not fresh and not kept:
            continue
        b = recv.best(g, exclude=a)
        if fresh and _improves(st, a, b, fresh[0][0]):
            return fresh, g, b
        if kept and _improves(st, a, b, hd.heaviest(st, a)):
            return kept, g, b
    return None


def _balance(st: _State, owner: list[int]) -> int:
    """Move partitions from the most loaded members while a move strictly helps.

    ``b`` is always the receiver placement would pick. A partition ``p`` that ``a`` did not
    own before moves if ``(load_b + u_p) / w_b < load_a / w_a``. A partition ``a`` owns
    moves only if that holds even with ``u_p`` replaced by the heaviest unit ``a`` holds,
    so owners are not churned for less than one partition's worth of imbalance. With
    uniform loads both rules are the same. Every move lowers the sorted vector of
    normalized loads, so the loop ends; the stopping condition depends on the state alone,
    and a plan fed back as ownership (the stricter rule then applies) stays as it is.
    Returns the number of moves.
    """
    recv = _Receivers(st)
    if st.uniform and (not st.unit or _already_balanced(st, recv)):
        return 0
    hd = _Holdings.build(st, owner)
    load, weight, n = st.load, st.weight, len(st.cap)
    moves = 0
    progress = True
    while progress:
        progress = False
        donors = [(-load[i] / weight[i], i, st.ver[i]) for i in range(n) if st.count[i]]
        heapq.heapify(donors)
        while donors:
            _, a, v = heapq.heappop(donors)
            if v != st.ver[a]:
                continue
            found = _next_move(st, recv, hd, a)
            if found is None:
                continue
            heap, g, b = found
            u, j = heapq.heappop(heap)
            st.remove(a, j)
            st.add(b, j)
            hd.gain(st, owner, b, g, u, j)
            recv.fell(a)
            recv.rose(b, g)
            heapq.heappush(donors, (-load[a] / weight[a], a, st.ver[a]))
            heapq.heappush(donors, (-load[b] / weight[b], b, st.ver[b]))
            progress = True
            moves += 1
    return moves


# --------------------------------------------------------------------------- relay


def _relay_costs(grp: _Members, st: _State) -> list[int]:
    """Per member, what one relay-only partition costs it; 0 when it does not relay."""
    return [
        r if r > 0 and st.cap[i] > 0 and st.budget[i] >= 0 else 0
        for i, r in enumerate(s.capacity.relay_partition_bytes for s in grp.specs)
    ]


def _relay(grp: _Members, st: _State, claims: _Owners) -> dict[int, list[int]]:
    """Relay-only assignments (issue 13) out of what batch placement left unassigned.

    Runs after every batch step, on the capacity they left, so it never displaces a batch
    assignment. Hottest partitions first. A partition with a valid owner goes only to that
    owner (stickiness: a member keeps its relay-only partitions while they have no batch home;
    no relay assignment passes straight between live members), and a contested one to nobody
    this round. A free one goes to the subscribed relaying member with room holding the fewest
    relay-only partitions (ties to the smaller id). Each costs 1 slot and the member's
    ``relay_partition_bytes``. Returns member index -> partition indexes.
    """
    cost = _relay_costs(grp, st)
    if not any(cost):
        return {}
    target, owner, ptopic = st.target, claims.owner, st.ptopic
    left = [j for j, i in enumerate(target) if i < 0 and j not in claims.conflicts]
    if not left:
        return {}
    count = [0] * len(cost)
    used = [0] * len(cost)

    def fits(i: int, t: int) -> bool:
        return (
            cost[i] > 0
            and t in st.ccost[st.mcls[i]]
            and st.count[i] + count[i] < st.cap[i]
            and st.used[i] + used[i] + cost[i] <= st.budget[i]
        )

    heaps: dict[int, list[tuple[int, int]]] = {}
    relay: dict[int, list[int]] = {}
    unit = st.unit
    for j in sorted(left, key=lambda j: (-unit[j], j)):
        t = ptopic[j]
        i = owner[j]
        if i < 0:
            heap = heaps.get(t)
            if heap is None:
                heap = heaps[t] = [(0, m) for m in range(len(cost)) if fits(m, t)]
            while heap:
                n, m = heap[0]
                if n != count[m]:
                    heapq.heapreplace(heap, (count[m], m))
                elif not fits(m, t):
                    heapq.heappop(heap)  # room only shrinks: never again
                else:
                    i = m
                    break
        if i < 0 or not fits(i, t):
            continue
        relay.setdefault(i, []).append(j)
        count[i] += 1
        used[i] += cost[i]
    return relay


# --------------------------------------------------------------------------- output


def _output(
    grp: _Group,
    st: _State,
    claims: _Claims,
    notes: list[str],
    relay: dict[int, list[int]] | None = None,
) -> Plan:
    """Cooperative adjustment and output: withhold every move away from a live claimant.

    A partition leaving its valid owner for another member is pending (the owner revokes
    it this round, the new owner gets it next round); so is one whose claimants tied, even
    if it goes to one of them. Partitions nobody validly claims are assigned at once.
    """
    ids, target = grp.member_ids, st.target
    tps = list(map(tuple.__new__, itertools.repeat(TopicPartition), grp.keys))
    # Stable sort by holder keeps each member's partitions in (topic, partition) order.
    order = sorted(range(len(target)), key=target.__getitem__)
    n_out = target.count(-1)
    relayed = {j for js in relay.values() for j in js} if relay else set()
    unassigned = tuple(tps[j] for j in order[:n_out] if j not in relayed)
    moves: list[tuple[int, int, int]] = []  # (partition, from, to)
    kept = 0
    for i, js in claims.mine.items():
        if js[-1] - js[0] + 1 == len(js) and target[js[0] : js[-1] + 1].count(i) == len(js):
            kept += len(js)  # a range kept whole, checked in one C-level pass
            continue
        away = [j for j in js if target[j] != i]
        kept += len(js) - len(away)
        moves.extend((j, i, target[j]) for j in away if target[j] >= 0)
    for j, tied in claims.conflicts.items():
        to = target[j]
        if to >= 0:
            # Every claimant may still be consuming it: nobody gets it before they revoke.
            moves.append((j, tied[0] if tied[0] != to else tied[1], to))
    moves.sort()
    incoming: dict[int, set[int]] = {}
    for j, _, to in moves:
        incoming.setdefault(to, set()).add(j)
    assignment: dict[str, tuple[TopicPartition, ...]] = {}
    pos = n_out
    for i, mid in enumerate(ids):
        mine = order[pos : pos + st.count[i]]
        pos += st.count[i]
        if i in incoming:
            mine = [j for j in mine if j not in incoming[i]]
        assignment[mid] = tuple(map(tps.__getitem__, mine))
    if unassigned:
        notes.append(
            f"{len(unassigned)} partition(s) unassigned: members' budgets cannot hold them"
        )
    if relayed:
        notes.append(f"{len(relayed)} partition(s) relay-only: no member can batch them")
    return Plan(
        assignment=assignment,
        pending=tuple(PendingMove(tps[j], ids[a], ids[b]) for j, a, b in moves),
        unassigned=unassigned,
        # A relay-only partition changes holder only when it had no valid owner.
        moved=len(target) - n_out - kept + sum(claims.owner[j] < 0 for j in relayed),
        notes=tuple(notes),
        relay={
            ids[i]: tuple(tps[j] for j in sorted(js)) for i, js in sorted((relay or {}).items())
        },
    )


# --------------------------------------------------------------------------- pipeline


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
    The cyclic garbage collector is paused while it runs (and restored afterwards).

    The plan is :func:`reference_assign`'s, computed on columns by
    :func:`capgroup.assignor.columnar.assign`; ``Plan.assignment`` is a read-only mapping
    that builds each member's tuple when first read.

    Raises:
        ValueError: if two members share a member id.
    """
    # Imported here: numpy loads on the first plan, not with every importer of this module.
    from capgroup.assignor import columnar

    return columnar.assign(members, partitions, generation)


def reference_assign(
    members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec], generation: int
) -> Plan:
    """:func:`assign`'s plan, every step in plain Python: the reference the property,
    mutation and differential tests hold the fast path to (``Plan.assignment`` is a dict).

    Raises:
        ValueError: if two members share a member id.
    """
    with _no_gc():
        grp = _normalize(members, partitions)
        claims = _resolve_claims(grp, generation)
        st = _capacities(grp, _load_units(grp, claims))
        shed = _keep_owned(st, claims)
        free = list(itertools.compress(range(len(st.target)), map((-1).__eq__, st.target)))
        unplaced = _place_free(st, free)
        _augment(st, unplaced)
        _balance(st, claims.owner)
        return _output(grp, st, claims, _notes(claims, shed), _relay(grp, st, claims))


def _notes(claims: _Owners, shed: list[int]) -> list[str]:
    return _note_lines(len(claims.conflicts), claims.stale, claims.bogus, len(shed))


def _note_lines(conflicts: int, stale: int, bogus: int, shed: int) -> list[str]:
    """The notes on claims and shedding, from their counts (the compiled core's too)."""
    notes: list[str] = []
    if conflicts:
        notes.append(
            f"{conflicts} partition(s) claimed by several members in the same "
            "generation: revoked from all of them"
        )
    if stale:
        notes.append(f"{stale} ownership claim(s) from an older generation ignored")
    if bogus:
        notes.append(f"{bogus} ownership claim(s) from a future generation ignored")
    if shed:
        notes.append(f"{shed} owned partition(s) released by owners that cannot keep them")
    return notes


def _all_placeable(grp: _Group, drop: set[int]) -> bool:
    sub = _Group(
        member_ids=[m for i, m in enumerate(grp.member_ids) if i not in drop],
        specs=[s for i, s in enumerate(grp.specs) if i not in drop],
        keys=grp.keys,
        spec_rate=grp.spec_rate,
        topic_names=grp.topic_names,
        ptopic=grp.ptopic,
    )
    st = _capacities(sub, [LOAD_BASE] * len(grp.keys))
    # Counting bound first: members cannot hold more than their slots at the cheapest cost.
    slots = 0
    for i, costs in enumerate(st.ccost[c] for c in st.mcls):
        if costs and st.budget[i] >= 0:
            cheapest = min(costs.values())
            slots += min(st.cap[i], st.budget[i] // cheapest) if cheapest else st.cap[i]
    if slots < len(grp.keys):
        return False
    return not _augment(st, _place_free(st, list(range(len(grp.keys)))), give_up=True)


def headroom(members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec]) -> int:
    """How many members can fail, largest capacity first, before a partition is homeless.

    Capacity ranks members by how many partitions they can hold (the smaller of
    ``max_partitions`` and the budget over their dearest subscribed topic), then weight,
    then id. Returns 0 when the group is already short. Ownership is ignored.
    """
    with _no_gc():
        grp = _normalize(members, partitions)
        present = set(grp.topic_names)

        def slots(spec: MemberSpec) -> int:
            adv = spec.capacity
            costs = [max(0, adv.cost_of(t)) for t in spec.topics if t in present]
            if adv.draining or not costs:
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
        lo, hi = 0, len(rank)  # lo members are known to be survivable
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _all_placeable(grp, set(rank[:mid])):
                lo = mid
            else:
                hi = mid - 1
        return lo
