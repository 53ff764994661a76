"""Seeded synthetic groups shared by the large-input test and the benchmark.

Deterministic for a given seed; uses only :mod:`random` so it stays pure and cheap.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from capgroup.assignor.model import (
    CapacityAdvertisement,
    MemberSpec,
    OwnedPartition,
    PartitionSpec,
    Plan,
)

__all__ = ["after_rebalance", "synthetic_group", "without_member"]

MIB = 1 << 20


def synthetic_group(
    n_partitions: int,
    n_members: int,
    *,
    seed: int = 0,
    n_topics: int = 0,
    rates: bool = False,
    headroom: float = 1.5,
) -> tuple[list[MemberSpec], list[PartitionSpec]]:
    """A group where every member subscribes to every topic and capacity is ``headroom``
    times what an even spread needs. ``n_topics`` defaults to about one per 1,000
    partitions (at least 1); partitions are split unevenly across topics."""
    rng = random.Random(seed)
    n_topics = n_topics or max(1, min(200, n_partitions // 1000))
    topics = [f"topic-{k:03d}" for k in range(n_topics)]
    cuts = sorted(rng.randrange(n_partitions + 1) for _ in range(n_topics - 1))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n_partitions], strict=True)]
    partitions = [
        PartitionSpec(t, p, rng.expovariate(1 / 100.0) if rates else 0.0)
        for t, size in zip(topics, sizes, strict=True)
        for p in range(size)
    ]
    per_member = max(1, int(n_partitions / n_members * headroom) + 1)
    cost = 8 * MIB
    members = [
        MemberSpec(
            f"member-{k:05d}",
            frozenset(topics),
            CapacityAdvertisement(
                max_partitions=per_member,
                memory_budget_bytes=per_member * cost,
                partition_bytes={},
                default_partition_bytes=cost,
            ),
        )
        for k in range(n_members)
    ]
    return members, partitions


def after_rebalance(members: Sequence[MemberSpec], plan: Plan, generation: int) -> list[MemberSpec]:
    """The members as they rejoin once ``plan`` (both phases) is in place."""
    owned: dict[str, list[OwnedPartition]] = {
        mid: [OwnedPartition(tp.topic, tp.partition, generation) for tp in tps]
        for mid, tps in plan.assignment.items()
    }
    for move in plan.pending:
        owned[move.to_member].append(OwnedPartition(move.tp.topic, move.tp.partition, generation))
    return [
        dataclasses.replace(
            m,
            capacity=dataclasses.replace(m.capacity, owned=tuple(owned.get(m.member_id, ()))),
        )
        for m in members
    ]


def without_member(members: Sequence[MemberSpec], index: int = 0) -> list[MemberSpec]:
    """The group after member ``index`` (in the given order) died."""
    return [m for k, m in enumerate(members) if k != index]
