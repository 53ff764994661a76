"""The assignor's fast path: the pipeline of :mod:`capgroup.assignor.balance`, with the steps
that touch every partition done on numpy arrays.

``normalize``, ``resolve claims``, ``load units``, ``keep owned`` and ``output`` are
columnar here; the steps that work per member or per run of partitions (capacities, place
free, augment, balance, relay) are the reference's own, looked up on
:mod:`~capgroup.assignor.balance` at call time so that one patch there changes both paths.
The plans are identical to :func:`capgroup.assignor.balance.reference_assign` (a
differential test checks it); the one documented difference is the type of
``Plan.assignment``: a read-only mapping that builds a member's tuple of
:class:`~capgroup.types.TopicPartition` when it is first read, so that a million partitions
cost no million tracked objects (nor the collection they would trigger later) unless asked
for, and so that the leader can encode assignments from the arrays directly.

When the compiled core (:mod:`capgroup.assignor.native`, the optional extension
``capgroup._native``) is built and not switched off, :func:`plan` hands the whole pipeline to
it and returns its plan (the same plan, with the same ``Assignment`` type); the numpy steps
here plan otherwise. :func:`assign_numpy` always takes them.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from capgroup.assignor import balance
from capgroup.assignor.model import MemberSpec, PartitionSpec, PartitionTable, PendingMove, Plan
from capgroup.types import TopicPartition

if TYPE_CHECKING:
    from capgroup.assignor.native import NativeClaims
    from capgroup.protocol.capacity import OwnedColumns

__all__ = ["Assignment", "assign", "assign_numpy", "plan"]

_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]
_TOPIC_OF = operator.attrgetter("topic")
_NUMBER_OF = operator.attrgetter("partition")
_RATE_OF = operator.attrgetter("rate")
_GEN_OF = operator.attrgetter("generation")


def _i64(values: Iterator[int] | Sequence[int], n: int) -> _I64:
    return np.fromiter(values, np.int64, n)


def _clean_rates(rates: _F64) -> _F64:
    """:func:`balance._clean_rate` on a column: NaN, infinities and negatives become 0."""
    return np.where(np.isfinite(rates) & (rates > 0), rates, 0.0)


# --------------------------------------------------------------------------- normalize


@dataclass(slots=True)
class _Columns:
    """The input sorted by (topic, partition) and de-duplicated, as columns.

    ``specs``, ``member_ids``, ``topic_names`` and ``ptopic`` are what the shared steps read
    (the reference's ``_Group`` has them too); ``topic`` and ``number`` are the key columns.
    """

    member_ids: list[str]
    specs: list[MemberSpec]
    topic_names: list[str]
    ptopic: list[int]
    topic: _I64
    number: _I64
    spec_rate: _F64
    #: Whether some spec of the partition carried a rate of exactly 0 (unknown).
    zero_rate: npt.NDArray[np.bool_]
    #: Position of each sorted member in the input (to match per-member side inputs).
    source: list[int] = field(default_factory=list)


def _normalize(members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec]) -> _Columns:
    source = sorted(range(len(members)), key=lambda k: members[k].member_id)
    specs = [members[k] for k in source]
    for left, right in itertools.pairwise(specs):
        if left.member_id == right.member_id:
            raise ValueError(f"duplicate member id {left.member_id!r}")
    if isinstance(partitions, PartitionTable):
        return _table_columns(specs, source, partitions)
    n = len(partitions)
    # Topic runs (consecutive specs of one topic), counted without a list of a name per spec.
    runs = [(name, len(list(run))) for name, run in itertools.groupby(partitions, _TOPIC_OF)]
    run_names = [name for name, _ in runs]
    lengths = np.array([size for _, size in runs], dtype=np.int64)
    number = _i64(map(_NUMBER_OF, partitions), n)
    raw = np.fromiter(map(_RATE_OF, partitions), np.float64, n)
    zero = raw == 0.0
    rate = _clean_rates(raw)
    if all(map(operator.lt, run_names, run_names[1:])):
        # Usual case: topics contiguous and in order; partition order is checked below.
        topic_names = run_names
        topic = np.repeat(np.arange(len(run_names), dtype=np.int64), lengths)
    else:
        topic_names = sorted(set(run_names))
        code = {name: t for t, name in enumerate(topic_names)}
        topic = np.repeat(_i64(map(code.__getitem__, run_names), len(run_names)), lengths)
    if n > 1:
        later = (topic[1:] > topic[:-1]) | ((topic[1:] == topic[:-1]) & (number[1:] > number[:-1]))
        if not later.all():
            # Sort by key, highest rate last: duplicates collapse onto it.
            order = np.lexsort((rate, number, topic))
            topic, number, rate, zero = topic[order], number[order], rate[order], zero[order]
            last = np.ones(n, dtype=bool)
            last[:-1] = (topic[1:] != topic[:-1]) | (number[1:] != number[:-1])
            # A key's rate is unknown to some spec if any of its duplicates says 0.
            zero = np.logical_or.reduceat(zero, np.flatnonzero(np.roll(last, 1)))
            topic, number, rate = topic[last], number[last], rate[last]
    return _Columns(
        member_ids=[m.member_id for m in specs],
        specs=specs,
        topic_names=topic_names,
        ptopic=topic.tolist(),
        topic=topic,
        number=number,
        spec_rate=rate,
        zero_rate=zero,
        source=source,
    )


def _table_columns(
    specs: list[MemberSpec], source: list[int], partitions: PartitionTable
) -> _Columns:
    """:func:`_normalize`'s columns of a :class:`PartitionTable` (sorted, without repeats
    already), read from its columns."""
    counts = np.array(partitions.counts, dtype=np.int64)
    n = int(counts.sum())
    topic = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    if partitions.numbers is None:
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        number = np.arange(n, dtype=np.int64) - starts
    else:
        number = np.frombuffer(partitions.numbers, dtype=np.int64).copy()
    raw = (
        np.zeros(n, dtype=np.float64)
        if partitions.rates is None
        else np.frombuffer(partitions.rates, dtype=np.float64).copy()
    )
    return _Columns(
        member_ids=[m.member_id for m in specs],
        specs=specs,
        topic_names=list(partitions.topics),
        ptopic=topic.tolist(),
        topic=topic,
        number=number,
        spec_rate=_clean_rates(raw),
        zero_rate=raw == 0.0,
        source=source,
    )


def _locate(grp: _Columns, topic: _I64, number: _I64) -> _I64:
    """Partition index of each (topic code, number) key; -1 for keys not in the input."""
    out = np.full(len(topic), -1, dtype=np.int64)
    if not len(grp.number) or not len(topic):
        return out
    known = topic >= 0
    first = np.searchsorted(grp.topic, np.arange(len(grp.topic_names) + 1))
    size = first[1:] - first[:-1]
    if (grp.number == np.arange(len(grp.number)) - first[grp.topic]).all():
        # Every topic is numbered 0..size-1 (as Kafka numbers them): index by arithmetic.
        code = np.where(known, topic, 0)
        hit = known & (number >= 0) & (number < size[code])
        out[hit] = first[code[hit]] + number[hit]
        return out
    # One search over (topic, number) pairs: numbers are offset into a per-topic band.
    lo = min(int(grp.number.min()), int(number[known].min()) if known.any() else 0)
    hi = max(int(grp.number.max()), int(number[known].max()) if known.any() else 0)
    span = hi - lo + 1
    if span * (len(grp.topic_names) + 1) >= 1 << 62:  # keys would overflow int64
        index = {key: j for j, key in enumerate(zip(grp.ptopic, grp.number.tolist(), strict=True))}
        found = map(
            index.get, zip(topic.tolist(), number.tolist(), strict=True), itertools.repeat(-1)
        )
        return _i64(found, len(topic))
    keys = grp.topic * span + (grp.number - lo)
    want = topic * span + (number - lo)
    pos = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
    hit = known & (keys[pos] == want)
    out[hit] = pos[hit]
    return out


# --------------------------------------------------------------------------- claims


@dataclass(slots=True)
class _ClaimTable:
    """Every ownership claim of every member, one row each."""

    member: _I64
    part: _I64
    gen: _I64
    rate: _F64


def _claim_table(grp: _Columns, owned: Sequence[OwnedColumns | None] | None = None) -> _ClaimTable:
    """The claims of ``grp``'s members, from ``owned`` (columns per input member) when
    given, else from each spec's ``capacity.owned``."""
    code = {name: t for t, name in enumerate(grp.topic_names)}
    members: list[_I64] = []
    topics: list[_I64] = []
    numbers: list[_I64] = []
    gens: list[_I64] = []
    rates: list[_F64] = []
    if owned is not None:
        # One pass over the members collects the pieces; numpy joins them once.
        held = [(i, cols) for i, k in enumerate(grp.source) if (cols := owned[k]) is not None]
        names = list(itertools.chain.from_iterable(cols.topics for _, cols in held))
        codes = _i64(map(code.get, names, itertools.repeat(-1)), len(names))
        counts = [cols.counts for _, cols in held]
        topics.append(np.repeat(codes, np.concatenate(counts) if counts else []))
        sizes = _i64((len(cols.partitions) for _, cols in held), len(held))
        members.append(np.repeat(_i64((i for i, _ in held), len(held)), sizes))
        numbers.extend(cols.partitions for _, cols in held)
        gens.extend(cols.generations for _, cols in held)
        rates.extend(cols.rates for _, cols in held)
    else:
        claims = [spec.capacity.owned for spec in grp.specs]
        flat = list(itertools.chain.from_iterable(claims))
        n = len(flat)
        lengths = np.fromiter(map(len, claims), np.int64, len(claims))
        members.append(np.repeat(np.arange(len(claims), dtype=np.int64), lengths))
        topics.append(_i64(map(code.get, map(_TOPIC_OF, flat), itertools.repeat(-1)), n))
        numbers.append(_i64(map(_NUMBER_OF, flat), n))
        gens.append(_i64(map(_GEN_OF, flat), n))
        rates.append(np.fromiter(map(_RATE_OF, flat), np.float64, n))
    if not numbers:
        empty = np.zeros(0, dtype=np.int64)
        return _ClaimTable(empty, empty, empty, np.zeros(0))
    topic = np.concatenate(topics)
    return _ClaimTable(
        member=np.concatenate(members),
        part=_locate(grp, topic, np.concatenate(numbers)),
        gen=np.concatenate(gens),
        rate=np.concatenate(rates).astype(np.float64),
    )


@dataclass(slots=True)
class _Claims:
    """Who validly owns what: the reference's ``_Claims`` with columns besides."""

    owner: list[int]
    conflicts: dict[int, list[int]]
    #: Valid owner per partition, or -1.
    owner_col: _I64
    #: Rate the valid owner reported (0 where none).
    owner_rate: _F64
    #: Topic code of every partition (``_Columns.topic``), for cost look-ups.
    topic: _I64
    stale: int = 0
    bogus: int = 0


def _resolve_claims(grp: _Columns, table: _ClaimTable, generation: int) -> _Claims:
    """Per partition the highest generation claim wins; a tie there revokes from all.

    Claims above ``generation`` are bogus and ignored; claims of partitions not in the input
    are ignored. Same rules as the reference, on the whole claim table at once.
    """
    n = len(grp.number)
    known = table.part >= 0
    bogus = int(np.count_nonzero(known & (table.gen > generation)))
    valid = known & (table.gen <= generation)
    part, gen, member = table.part[valid], table.gen[valid], table.member[valid]
    rate = _clean_rates(table.rate[valid])
    owner = np.full(n, -1, dtype=np.int64)
    owner_rate = np.zeros(n)
    # Most partitions have one claim: settle those at once, sort only the contested rest.
    single = np.bincount(part, minlength=n)[part] == 1
    owner[part[single]] = member[single]
    owner_rate[part[single]] = rate[single]
    part, gen, member, rate = part[~single], gen[~single], member[~single], rate[~single]
    # Per partition: highest generation first, then members in order.
    order = np.lexsort((member, -gen, part))
    part, gen, member, rate = part[order], gen[order], member[order], rate[order]
    conflicts: dict[int, list[int]] = {}
    stale = 0
    if len(part):
        first = np.ones(len(part), dtype=bool)
        first[1:] = part[1:] != part[:-1]
        starts = np.flatnonzero(first)
        group = np.cumsum(first) - 1
        top = gen[starts][group]
        at_top = gen == top
        stale = int(np.count_nonzero(~at_top))
        # Distinct members at the top generation: rows that start a new (partition, member).
        new_member = at_top.copy()
        new_member[1:] &= first[1:] | (member[1:] != member[:-1])
        tied = np.bincount(group, weights=new_member, minlength=len(starts)) > 1
        best = np.full(len(starts), -np.inf)
        np.maximum.at(best, group[at_top], rate[at_top])
        won = starts[~tied]
        owner[part[won]] = member[won]
        owner_rate[part[won]] = best[~tied]
        for g in np.flatnonzero(tied).tolist():
            rows = np.flatnonzero((group == g) & new_member)
            conflicts[int(part[starts[g]])] = sorted(member[rows].tolist())
    return _Claims(
        owner=owner.tolist(),
        conflicts=conflicts,
        owner_col=owner,
        owner_rate=owner_rate,
        topic=grp.topic,
        stale=stale,
        bogus=bogus,
    )


def _with_claimed_rates(grp: _Columns, table: _ClaimTable) -> None:
    """:func:`capgroup.assignor.adapter.with_claimed_rates` on columns: a partition a spec
    lists with rate 0 takes the highest positive rate any claim (of any generation)
    reports for it."""
    claimed = np.zeros(len(grp.number))
    usable = (table.part >= 0) & (table.rate > 0)
    np.maximum.at(claimed, table.part[usable], table.rate[usable])
    better = np.maximum(grp.spec_rate, _clean_rates(claimed))
    grp.spec_rate = np.where(grp.zero_rate, better, grp.spec_rate)


# --------------------------------------------------------------------------- load units


def _load_units(grp: _Columns, claims: _Claims) -> list[int]:
    """:func:`balance._load_units` on columns (``fsum`` and round-half-even alike)."""
    rates = np.where(grp.spec_rate != 0, grp.spec_rate, claims.owner_rate)
    n = len(rates)
    if not rates.any():
        return [balance.LOAD_BASE] * n
    total = math.fsum(rates.tolist())
    if total <= 0 or not math.isfinite(total):
        return [balance.LOAD_BASE] * n
    scale = balance.LOAD_BASE * n / total
    units: list[int] = (balance.LOAD_BASE + np.rint(rates * scale).astype(np.int64)).tolist()
    return units


# --------------------------------------------------------------------------- keep owned


def _keep_owned(st: balance._State, claims: _Claims) -> list[int]:
    """Valid owners keep what they still subscribe to, hottest first, within budget.

    A member that can keep everything it owns (the usual case) is settled with a few array
    operations; any other goes through the reference's one-by-one rule.
    Returns the partitions a live owner had to give up.
    """
    owner = claims.owner_col
    held = np.flatnonzero(owner >= 0)
    if not len(held):
        return []
    held = held[np.argsort(owner[held], kind="stable")]
    bounds = np.flatnonzero(np.diff(owner[held])) + 1
    tables: dict[int, _I64 | None] = {}
    shed: list[int] = []
    unit, ptopic = st.unit, st.ptopic
    for js_col in np.split(held, bounds):
        i = int(owner[js_col[0]])
        c = st.mcls[i]
        if c not in tables:
            tables[c] = _cost_table(st.ccost[c], len(st.tgroup))
        costs = tables[c]
        js = js_col.tolist()
        if costs is not None and len(js) <= st.cap[i]:
            each = costs[claims.topic[js_col]]
            if (each >= 0).all() and int(each.sum()) <= st.budget[i]:
                st.add_many(i, js, int(each.sum()))
                continue
        table = st.ccost[c]
        for j in sorted(js, key=lambda j: (-unit[j], j)):
            cost = table.get(ptopic[j])
            if cost is not None and st.count[i] < st.cap[i] and st.used[i] + cost <= st.budget[i]:
                st.add(i, j)
            else:
                shed.append(j)
    return shed


def _cost_table(costs: dict[int, int], n_topics: int) -> _I64 | None:
    """Per topic code, what one partition costs a member class (-1: not subscribed); None
    when a cost is so large that a sum of up to 2**31 of them could overflow int64."""
    if any(c >= 1 << 31 for c in costs.values()):
        return None
    table = np.full(n_topics, -1, dtype=np.int64)
    for t, c in costs.items():
        table[t] = c
    return table


# --------------------------------------------------------------------------- output


class Assignment(Mapping[str, tuple[TopicPartition, ...]]):
    """``Plan.assignment`` of the fast path: member id -> its partitions, in (topic,
    partition) order, built from the arrays the first time a member is read.

    Equal to the dict the reference returns (``Mapping`` equality); iteration follows the
    sorted member ids, as the reference's dict does.
    """

    __slots__ = (
        "_bounds",
        "_cache",
        "_ids",
        "_index",
        "_number",
        "_order",
        "_ptopic",
        "_raw",
        "_runs",
        "_sizes",
        "names",
    )

    def __init__(
        self,
        ids: list[str],
        order: _I64,
        bounds: _I64,
        topic: _I64,
        number: _I64,
        names: list[str],
        *,
        raw: tuple[object, object, object, object] | None = None,
        sizes: list[int] | None = None,
    ) -> None:
        self._ids = ids
        # Member id -> position, built when a member is first looked up (the leader's bulk
        # encoding never does).
        self._index: dict[str, int] | None = None
        self._order = order
        self._bounds = bounds
        self._ptopic = topic
        self._number = number
        #: The int64 columns (topic, number, order, bounds) as the compiled core made them
        #: (its buffer objects, which ``encode_all`` hands back as they are).
        self._raw = raw
        #: Partitions per topic code, when the maker counted them already.
        self._sizes = sizes
        #: Topic names by topic code (the codes :meth:`columns` returns).
        self.names = names
        self._cache: dict[str, tuple[TopicPartition, ...]] = {}
        self._runs: tuple[list[str], list[int], list[int]] | None = None

    def _positions(self) -> dict[str, int]:
        if self._index is None:
            self._index = dict(zip(self._ids, range(len(self._ids)), strict=True))
        return self._index

    def columns(self, member_id: str) -> tuple[_I64, _I64]:
        """A member's partitions as (topic code, partition number) columns, sorted."""
        i = self._positions()[member_id]
        js = self._order[self._bounds[i] : self._bounds[i + 1]]
        return self._ptopic[js], self._number[js]

    def by_topic(self, member_id: str) -> tuple[list[str], list[int], _I64]:
        """A member's partitions grouped by topic: the topic names (ascending), how many
        partitions each has, and the partition numbers (topic by topic, ascending)."""
        if self._runs is None:
            # Every member's (member, topic) runs at once, for the leader's 2,000 encodings.
            held = self._order[self._bounds[0] :]
            topic = self._ptopic[held]
            member = np.repeat(np.arange(len(self._ids)), np.diff(self._bounds))
            cut = np.flatnonzero((topic[1:] != topic[:-1]) | (member[1:] != member[:-1])) + 1
            firsts = np.concatenate(([0], cut)) if len(held) else cut
            lengths = np.diff(np.append(firsts, len(held)))
            starts = np.searchsorted(firsts + self._bounds[0], self._bounds)
            self._runs = (
                [self.names[t] for t in topic[firsts].tolist()],
                lengths.tolist(),
                starts.tolist(),
            )
        names, counts, per_member = self._runs
        i = self._positions()[member_id]
        lo, hi = per_member[i], per_member[i + 1]
        numbers = self._number[self._order[self._bounds[i] : self._bounds[i + 1]]]
        return names[lo:hi], counts[lo:hi], numbers

    def encode_all(self, user_data: bytes, *, force: bool = False) -> dict[str, bytes] | None:
        """Every member's encoded assignment with ``user_data`` (see
        :func:`capgroup.protocol.consumer.encode_member_assignment_columns`, which
        :meth:`by_topic` feeds with the same bytes), written by the compiled core in one
        call; None when the core is off (with ``force``: not built) or declines (the caller
        then encodes one by one)."""
        from capgroup.assignor import native

        if not (native.available() if force else native.enabled()):
            return None
        raw = self._raw
        if raw is None:
            raw = (
                self._ptopic.astype(np.int64).tobytes(),
                self._number.astype(np.int64).tobytes(),
                self._order.astype(np.int64).tobytes(),
                self._bounds.astype(np.int64).tobytes(),
            )
        found = native.encode_assignments(raw, self.names, user_data, force=force)
        return None if found is None else dict(zip(self._ids, found, strict=True))

    def topic_sizes(self) -> dict[str, int]:
        """Partitions per topic in the input planned (duplicates collapsed)."""
        sizes = self._sizes
        if sizes is None:
            sizes = np.bincount(self._ptopic, minlength=len(self.names)).tolist()
        return dict(zip(self.names, sizes, strict=True))

    def total(self) -> int:
        """How many partitions the members hold together (without building any tuple)."""
        return int(self._bounds[-1] - self._bounds[0])

    def __getitem__(self, member_id: str) -> tuple[TopicPartition, ...]:
        found = self._cache.get(member_id)
        if found is None:
            topic, number = self.columns(member_id)
            names = list(map(self.names.__getitem__, topic.tolist()))
            found = tuple(
                map(
                    tuple.__new__,
                    itertools.repeat(TopicPartition),
                    zip(names, number.tolist(), strict=True),
                )
            )
            self._cache[member_id] = found
        return found

    def __contains__(self, member_id: object) -> bool:
        return member_id in self._positions()

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"Assignment({dict(self)!r})"


def _output(
    grp: _Columns,
    st: balance._State,
    claims: _Claims,
    notes: list[str],
    relay: dict[int, list[int]] | None = None,
) -> Plan:
    """Cooperative adjustment and output, as the reference's ``_output`` on columns."""
    ids = grp.member_ids
    n = len(st.target)
    target = _i64(st.target, n)
    owner = claims.owner_col
    relayed = np.zeros(n, dtype=bool)
    for js in (relay or {}).values():
        relayed[js] = True
    n_out = int(np.count_nonzero(target < 0))
    owned = owner >= 0
    kept = int(np.count_nonzero(owned & (target == owner)))
    away = np.flatnonzero(owned & (target != owner) & (target >= 0))
    moves = dict(
        zip(
            away.tolist(),
            zip(owner[away].tolist(), target[away].tolist(), strict=True),
            strict=True,
        )
    )
    for j, tied in claims.conflicts.items():
        to = int(target[j])
        if to >= 0:
            # Every claimant may still be consuming it: nobody gets it before they revoke.
            moves[j] = (tied[0] if tied[0] != to else tied[1], to)
    held = target.copy()
    if moves:
        held[list(moves)] = -1
    order = np.argsort(held, kind="stable")
    bounds = np.searchsorted(held[order], np.arange(-1, len(ids)), side="left")
    bounds = np.append(bounds[1:], n)
    assignment = Assignment(ids, order, bounds, grp.topic, grp.number, grp.topic_names)
    names = grp.topic_names
    topic, number = grp.ptopic, grp.number

    def tp(j: int) -> TopicPartition:
        return TopicPartition(names[topic[j]], int(number[j]))

    unassigned = tuple(map(tp, np.flatnonzero((target < 0) & ~relayed).tolist()))
    if unassigned:
        notes.append(
            f"{len(unassigned)} partition(s) unassigned: members' budgets cannot hold them"
        )
    n_relayed = int(np.count_nonzero(relayed))
    if n_relayed:
        notes.append(f"{n_relayed} partition(s) relay-only: no member can batch them")
    return Plan(
        assignment=assignment,
        pending=tuple(PendingMove(tp(j), ids[a], ids[b]) for j, (a, b) in sorted(moves.items())),
        unassigned=unassigned,
        # A relay-only partition changes holder only when it had no valid owner.
        moved=n - n_out - kept + int(np.count_nonzero(relayed & ~owned)),
        notes=tuple(notes),
        relay={ids[i]: tuple(map(tp, sorted(js))) for i, js in sorted((relay or {}).items())},
    )


# --------------------------------------------------------------------------- pipeline


def plan(
    members: Sequence[MemberSpec],
    partitions: Sequence[PartitionSpec],
    generation: int,
    owned: Sequence[OwnedColumns | NativeClaims | None] | None = None,
    *,
    claimed_rates: bool = False,
) -> Plan:
    """:func:`assign`, with the members' ownership claims optionally given as columns
    (``owned[k]`` for ``members[k]``, in place of its ``capacity.owned``), as the leader
    decodes them. ``claimed_rates`` plans as if the partitions had gone through
    :func:`capgroup.assignor.adapter.with_claimed_rates` first.

    The compiled core (:mod:`capgroup.assignor.native`) makes the plan when it is built and
    on; the steps below make it otherwise (the same plan)."""
    with balance._no_gc():
        from capgroup.assignor import native

        found = native.plan(members, partitions, generation, owned, claimed_rates=claimed_rates)
        if found is not None:
            return found
        owned = native.as_columns(owned)
        # The steps run in a frame of their own: their million-element lists are freed when
        # it returns, before the collector is back (it would otherwise scan them at once).
        return _pipeline(members, partitions, generation, owned, claimed_rates)


def _pipeline(
    members: Sequence[MemberSpec],
    partitions: Sequence[PartitionSpec],
    generation: int,
    owned: Sequence[OwnedColumns | None] | None,
    claimed_rates: bool,
) -> Plan:
    grp = _normalize(members, partitions)
    table = _claim_table(grp, owned)
    if claimed_rates:
        _with_claimed_rates(grp, table)
    claims = _resolve_claims(grp, table, generation)
    st = balance._capacities(grp, _load_units(grp, claims))
    shed = _keep_owned(st, claims)
    free = np.flatnonzero(_i64(st.target, len(st.target)) < 0).tolist()
    unplaced = balance._place_free(st, free)
    balance._augment(st, unplaced)
    balance._balance(st, claims.owner)
    notes = balance._notes(claims, shed)
    return _output(grp, st, claims, notes, balance._relay(grp, st, claims))


def assign(
    members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec], generation: int
) -> Plan:
    """The plan :func:`capgroup.assignor.balance.reference_assign` makes, computed on
    columns (see the module docstring for the one difference, ``Plan.assignment``'s type),
    by the compiled core when it is built and on."""
    return plan(members, partitions, generation)


def assign_numpy(
    members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec], generation: int
) -> Plan:
    """:func:`assign` on the numpy path whatever the compiled core (the tests hold both to
    the reference, and the mutation tests patch this path's Python steps)."""
    with balance._no_gc():
        return _pipeline(members, partitions, generation, None, False)
