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
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from capgroup.assignor import balance
from capgroup.assignor.model import (
    MemberSpec,
    PartitionSpec,
    PartitionTable,
    PendingMove,
    Plan,
    profiles_of,
)
from capgroup.protocol.capacity import OwnedColumns
from capgroup.protocol.consumer import MemberSubscription
from capgroup.types import CapacityAdvertisement, OwnedPartition, TopicPartition

__all__ = [
    "ENV",
    "DecodedGroup",
    "NativeClaims",
    "as_columns",
    "available",
    "decode_group",
    "decode_members",
    "enabled",
    "encode_assignments",
    "kept_bytes",
    "plan",
    "plan_profiles",
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
    advs = _advertisements(advertised)
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


@dataclass(frozen=True, slots=True)
class DecodedGroup:
    """A group's JoinGroup metadata as :func:`decode_group` decoded it: per *profile* (the
    members of one deployment share theirs) a member as the assignor sees it, with an empty
    member id; per member the index of its profile and its claims."""

    #: ``MemberSpec("", topics, advertisement)`` per distinct subscription and advertisement.
    profiles: list[MemberSpec]
    #: Per member, the index of its profile.
    rows: list[int]
    #: Per member, its ownership claims as the core decoded them (None when it lists none).
    claims: list[NativeClaims | None]


def decode_group(datas: list[bytes], *, force: bool = False) -> DecodedGroup | None:
    """Every member's JoinGroup metadata decoded by the compiled core, as profiles; None
    when the core is off or any member's metadata is left to the Python decoders (then
    :func:`decode_members` tells them apart). A profile's advertisement and subscription are
    what :func:`decode_members` returns for its members. ``force`` skips the check of
    :data:`ENV` (for a caller that checked it already)."""
    ext = _ext
    if ext is None or not (force or enabled()):
        return None
    found = ext.decode_group(datas)
    if found is None:
        return None
    profiles, rows, claims, advertised = found
    advs = _advertisements(advertised)
    sets: dict[int, frozenset[str]] = {}
    specs = []
    for _, topics, k in profiles:
        names = sets.get(id(topics))
        if names is None:
            names = sets[id(topics)] = frozenset(topics)
        specs.append(MemberSpec("", names, advs[k]))
    return DecodedGroup(specs, rows, claims)


def _advertisements(advertised: list[tuple[Any, ...]]) -> list[CapacityAdvertisement]:
    """One object per distinct advertisement the core decoded (members of one deployment
    share it: the steps after decoding work per distinct object, not per member)."""
    return [
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
    if _ext is None or not (force or enabled()):
        return None
    # Members of one deployment share their subscription and advertisement objects (as the
    # leader decodes them): their limits are worked out once per profile.
    profiles, rows = profiles_of(members)
    claims = [m.capacity.owned or None for m in members] if owned is None else list(owned)
    return plan_profiles(
        [m.member_id for m in members],
        profiles,
        rows,
        claims,
        partitions,
        generation,
        claimed_rates=claimed_rates,
        force=force,
    )


def plan_profiles(
    ids: list[str],
    profiles: Sequence[MemberSpec],
    rows: Sequence[int],
    claims: Sequence[OwnedColumns | NativeClaims | tuple[OwnedPartition, ...] | None],
    partitions: Sequence[PartitionSpec],
    generation: int,
    *,
    claimed_rates: bool = False,
    force: bool = False,
) -> Plan | None:
    """:func:`plan` of the members ``ids[k]`` with subscription and advertisement
    ``profiles[rows[k]]`` (the member id of a profile is ignored) and claims ``claims[k]``
    (None, the core's claims, columns or ``OwnedPartition`` objects): a leader whose members
    share a few profiles reads each once.

    Raises:
        ValueError: if two members share a member id.
    """
    ext = _ext
    if ext is None or not (force or enabled()):
        return None
    source = sorted(range(len(ids)), key=ids.__getitem__)
    if len(set(ids)) != len(ids):
        for left, right in itertools.pairwise(source):
            if ids[left] == ids[right]:
                raise ValueError(f"duplicate member id {ids[left]!r}")
    if not _INT64[0] <= generation <= _INT64[1]:
        return None
    classes: dict[tuple[object, ...], int] = {}
    class_rows: list[tuple[bool, object, dict[str, int], int]] = []

    def limits(spec: MemberSpec) -> tuple[object, ...]:
        """A profile's row without its claims: its class and its limits."""
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

    # Profiles (and so classes) numbered as the members, in member-id order, first meet
    # them: the numbering the reference gives its classes.
    member_rows = [rows[k] for k in source]
    seen = {r: k for k, r in enumerate(dict.fromkeys(member_rows))}
    limit_rows = [limits(profiles[r]) for r in seen]
    held: list[object] = [claims[k] for k in source]
    if any(issubclass(kind, OwnedColumns) for kind in set(map(type, held))):
        held = [
            ("columns", cols.topics, cols.counts, cols.partitions, cols.generations, cols.rates)
            if isinstance(cols, OwnedColumns)
            else cols
            for cols in held
        ]
    # A table's columns are read as they are: no object per partition.
    table = (
        (partitions.topics, partitions.counts, partitions.numbers, partitions.rates)
        if isinstance(partitions, PartitionTable)
        else None
    )
    found = ext.plan(
        partitions,
        limit_rows,
        list(map(seen.__getitem__, member_rows)),
        held,
        class_rows,
        generation,
        claimed_rates,
        table,
    )
    if found is None:
        return None
    return _plan_of(found, [ids[k] for k in source])


def _plan_of(found: Any, ids: list[str]) -> Plan:
    # Both are loaded after the first plan: looked up, not imported, on every call.
    np = sys.modules.get("numpy") or importlib.import_module("numpy")
    columnar = sys.modules.get("capgroup.assignor.columnar") or importlib.import_module(
        "capgroup.assignor.columnar"
    )
    Assignment = columnar.Assignment  # noqa: N806 (the class)

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
    raw: tuple[object, object, object, object],
    names: list[str],
    user_data: bytes,
    *,
    force: bool = False,
) -> list[bytes] | None:
    """Every member's ``ConsumerProtocolMemberAssignment`` (in member-id order) with
    ``user_data``, from the int64 columns (topic code, number, order, bounds) as the core's
    columns or as native-endian bytes; byte for byte what
    :func:`capgroup.protocol.consumer.encode_member_assignment_columns` writes; None when
    the core is off (``force`` ignores :data:`ENV`) or a name or number does not fit the
    format (the caller then encodes member by member, and raises what that raises)."""
    ext = _ext
    if ext is None or not (force or enabled()):
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
