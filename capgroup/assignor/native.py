"""The assignor's compiled core (``capgroup._native``, the Rust crate in ``native/``).

:func:`plan` runs the whole pipeline of :func:`capgroup.assignor.balance.reference_assign`
(normalize, resolve claims, load units, capacities, keep owned, place free, augment,
balance, relay, cooperative adjustment) in Rust, on the partitions and members as given, and
returns the same plan (``Plan.assignment`` is a :class:`capgroup.assignor.columnar.Assignment`,
as on the numpy path). :func:`capgroup.assignor.columnar.plan` calls it first and takes the
numpy path when it returns None: when the extension is not built (it is optional: a
``pip install`` without cargo still works), when ``CAPGROUP_ASSIGNOR_NATIVE=0`` is set, or
for an input the core does not take (a partition number or generation beyond 64 bits, a byte
count beyond 127, a value of an unexpected type, a float step the Python code would divide
by zero): the numpy path then plans it, or raises what the reference raises.

The leader's two other per-member steps have a native form too: :func:`decode_members`
(JoinGroup metadata and advertisements, claims kept as columns for :func:`plan`) and
:func:`encode_assignments` (every member's assignment bytes in one call). Both leave to the
Python code whatever they do not reproduce exactly.

The core keeps the large blocks it frees (up to 512 MiB) for its next plan: fresh from the
kernel, the working memory of a plan of a million partitions cost a third of the call in page
faults, and a leader plans again at every rebalance. :func:`kept_bytes` says how much it
holds and :func:`release_memory` gives it back.

The differential tests (``tests/assignor/test_native.py``, and the leader-path tests of
``test_differential.py``, which run whichever path ``plan_group`` takes) hold the native
plans and bytes to the reference's. ``CAPGROUP_ASSIGNOR_NATIVE_TRACE=1`` makes the core print the
time of each of its steps to stderr.
"""

from __future__ import annotations

import importlib
import itertools
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from capgroup.assignor import balance
from capgroup.assignor.model import MemberSpec, PartitionSpec, PartitionTable, PendingMove, Plan
from capgroup.protocol.capacity import OwnedColumns
from capgroup.protocol.consumer import MemberSubscription
from capgroup.types import CapacityAdvertisement, TopicPartition

__all__ = [
    "ENV",
    "NativeClaims",
    "as_columns",
    "available",
    "decode_members",
    "enabled",
    "encode_assignments",
    "kept_bytes",
    "plan",
    "release_memory",
]

#: ``capgroup._native.Claims``: a member's ownership claims as :func:`decode_members`
#: decoded them (the extension has no type information).
NativeClaims = Any

#: ``CAPGROUP_ASSIGNOR_NATIVE=0`` turns the compiled core off (the numpy path plans).
ENV = "CAPGROUP_ASSIGNOR_NATIVE"


def _load() -> ModuleType | None:
    try:
        return importlib.import_module("capgroup._native")
    except ImportError:  # built without cargo: the numpy path it is
        return None


_ext: ModuleType | None = _load()

_INT64 = (-(1 << 63), (1 << 63) - 1)


def available() -> bool:
    """Whether the extension module imported."""
    return _ext is not None


def enabled() -> bool:
    """Whether plans go through the compiled core (read on every call, so a test or an
    operator can switch it with :data:`ENV`)."""
    return _ext is not None and os.environ.get(ENV, "1").strip() != "0"


def decode_members(
    datas: list[bytes],
) -> list[tuple[MemberSubscription, CapacityAdvertisement, NativeClaims | None] | None] | None:
    """Every member's JoinGroup metadata decoded by the compiled core: per member its
    subscription (``user_data`` left empty: it is decoded already), its advertisement (with
    ``owned`` empty) and its claims (None when it lists none); None for a member the Python
    decoders must decode (anything they would reject, or unusual), and None in all when the
    core is off. What it returns is what
    :func:`capgroup.protocol.consumer.decode_member_metadata` and
    :func:`capgroup.protocol.capacity.decode_advertisement_columns` return."""
    ext = _ext
    if ext is None or not enabled():
        return None
    entries, advertised = ext.decode_members(datas)
    # One object per distinct advertisement and subscription: members of one deployment
    # share them, and the steps after this one work per distinct object, not per member.
    advs = [
        CapacityAdvertisement(
            max_partitions=cap,
            memory_budget_bytes=budget,
            partition_bytes=dict(costs),
            default_partition_bytes=default,
            weight=weight,
            rack=rack,
            draining=draining,
            relay_partition_bytes=relay,
        )
        for cap, budget, default, weight, rack, draining, costs, relay in advertised
    ]
    subscriptions: dict[tuple[int, int], MemberSubscription] = {}
    out: list[tuple[MemberSubscription, CapacityAdvertisement, NativeClaims | None] | None] = []
    for found in entries:
        if found is None:
            out.append(None)
            continue
        version, topics, k, claims = found
        sub = subscriptions.get((version, id(topics)))
        if sub is None:
            sub = subscriptions[version, id(topics)] = MemberSubscription(version, topics, b"")
        out.append((sub, advs[k], claims))
    return out


def as_columns(
    owned: Sequence[OwnedColumns | NativeClaims | None] | None,
) -> list[OwnedColumns | None] | None:
    """``owned`` with the core's claims turned into
    :class:`~capgroup.protocol.capacity.OwnedColumns` (for the numpy path)."""
    if owned is None:
        return None
    import numpy as np

    out: list[OwnedColumns | None] = []
    for cols in owned:
        if cols is None or isinstance(cols, OwnedColumns):
            out.append(cols)
            continue
        topics, counts, numbers, gens, rates = cols.columns()
        out.append(
            OwnedColumns(
                topics=tuple(topics),
                counts=np.frombuffer(counts, np.int64),
                partitions=np.frombuffer(numbers, np.int64),
                generations=np.frombuffer(gens, np.int64),
                rates=np.frombuffer(rates, np.float64),
            )
        )
    return out


def plan(
    members: Sequence[MemberSpec],
    partitions: Sequence[PartitionSpec],
    generation: int,
    owned: Sequence[OwnedColumns | NativeClaims | None] | None = None,
    *,
    claimed_rates: bool = False,
    force: bool = False,
) -> Plan | None:
    """:func:`capgroup.assignor.columnar.plan`'s plan, computed by the compiled core; None
    when the core is off (``force`` ignores :data:`ENV`: the tests of the core use it) or
    leaves this input to the numpy path.

    Raises:
        ValueError: if two members share a member id.
    """
    ext = _ext
    if ext is None or not (force or enabled()):
        return None
    ids = [m.member_id for m in members]
    source = sorted(range(len(members)), key=ids.__getitem__)
    specs = [members[k] for k in source]
    if len(set(ids)) != len(ids):
        for left, right in itertools.pairwise(specs):
            if left.member_id == right.member_id:
                raise ValueError(f"duplicate member id {left.member_id!r}")
    if not _INT64[0] <= generation <= _INT64[1]:
        return None
    classes: dict[tuple[object, ...], int] = {}
    class_rows: list[tuple[bool, object, dict[str, int], int]] = []

    def limits(spec: MemberSpec) -> tuple[object, ...]:
        """A member's row without its claims: its class and its limits."""
        adv = spec.capacity
        # The reference's member classes (balance._capacities): same subscription and costs.
        key = balance._member_class(spec)
        c = classes.get(key)
        if c is None:
            c = classes[key] = len(class_rows)
            class_rows.append(
                (
                    not adv.draining,
                    spec.topics,
                    dict(adv.partition_bytes),
                    adv.default_partition_bytes,
                )
            )
        return (
            c,
            adv.max_partitions,
            adv.memory_budget_bytes,
            adv.weight,
            adv.draining,
            adv.relay_partition_bytes,
        )

    # Members of one deployment share their subscription and advertisement objects (as the
    # leader decodes them): their limits are worked out once per pair of objects, and each
    # member is given the index of its row.
    keys = [(id(m.topics), id(m.capacity)) for m in specs]
    first = dict(zip(keys, specs, strict=True))
    index = {key: k for k, key in enumerate(first)}
    limit_rows = [limits(spec) for spec in first.values()]
    rows = list(map(index.__getitem__, keys))
    if owned is None:
        claims: list[object] = [spec.capacity.owned or None for spec in specs]
    else:
        claims = [owned[k] for k in source]
        if any(isinstance(cols, OwnedColumns) for cols in claims):
            claims = [
                (
                    "columns",
                    cols.topics,
                    cols.counts,
                    cols.partitions,
                    cols.generations,
                    cols.rates,
                )
                if isinstance(cols, OwnedColumns)
                else cols
                for cols in claims
            ]
    # A table's columns are read as they are: no object per partition.
    table = (
        (partitions.topics, partitions.counts, partitions.numbers, partitions.rates)
        if isinstance(partitions, PartitionTable)
        else None
    )
    found = ext.plan(
        partitions, limit_rows, rows, claims, class_rows, generation, claimed_rates, table
    )
    if found is None:
        return None
    return _plan_of(found, [ids[k] for k in source])


def _plan_of(found: Any, ids: list[str]) -> Plan:
    import numpy as np

    from capgroup.assignor import balance
    from capgroup.assignor.columnar import Assignment

    # The four int64 columns are the core's ``Column`` objects: numpy reads them in place.
    names, topic_c, number_c, order_c, bounds_c, pending, unassigned, relay, counts, sizes = found
    conflicts, stale, bogus, shed, moved, n_relayed = counts
    assignment = Assignment(
        ids,
        np.frombuffer(order_c, np.int64),
        np.frombuffer(bounds_c, np.int64),
        np.frombuffer(topic_c, np.int64),
        np.frombuffer(number_c, np.int64),
        names,
        raw=(topic_c, number_c, order_c, bounds_c),
        sizes=sizes,
    )
    notes = balance._note_lines(conflicts, stale, bogus, shed)
    if unassigned:
        notes.append(
            f"{len(unassigned)} partition(s) unassigned: members' budgets cannot hold them"
        )
    if n_relayed:
        notes.append(f"{n_relayed} partition(s) relay-only: no member can batch them")
    return Plan(
        assignment=assignment,
        pending=tuple(
            PendingMove(TopicPartition(names[t], n), ids[a], ids[b]) for t, n, a, b in pending
        ),
        unassigned=tuple(TopicPartition(names[t], n) for t, n in unassigned),
        moved=moved,
        notes=tuple(notes),
        relay={ids[i]: tuple(TopicPartition(names[t], n) for t, n in tps) for i, tps in relay},
    )


def encode_assignments(
    raw: tuple[object, object, object, object], names: list[str], user_data: bytes
) -> list[bytes] | None:
    """Every member's ``ConsumerProtocolMemberAssignment`` (in member-id order) with
    ``user_data``, from the int64 columns (topic code, number, order, bounds) as the core's
    columns or as native-endian bytes; byte for byte what
    :func:`capgroup.protocol.consumer.encode_member_assignment_columns` writes; None when
    the core is off or a name or number does not fit the format (the caller then encodes
    member by member, and raises what that raises)."""
    ext = _ext
    if ext is None or not enabled():
        return None
    found: list[bytes] | None = ext.encode_assignments(*raw, names, user_data)
    return found


def kept_bytes() -> int:
    """Bytes of freed working memory the compiled core keeps for its next plan (0 without
    the core)."""
    return int(_ext.kept_bytes()) if _ext is not None else 0


def release_memory() -> int:
    """Give the working memory the compiled core keeps back to the system; the bytes
    released (0 without the core)."""
    return int(_ext.release_memory()) if _ext is not None else 0
