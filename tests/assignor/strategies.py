"""Hypothesis strategies for random groups, including adversarial ones."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import strategies as st

from capgroup.assignor.model import (
    CapacityAdvertisement,
    MemberSpec,
    OwnedPartition,
    PartitionSpec,
)

TOPICS = ("a", "b", "c")
GENERATION = 5
HUGE = 1 << 62
RATES = (0.0, 1.0, 10.0, 250.0)


@dataclass(frozen=True)
class Case:
    """One random group: members, partitions and the generation being formed."""

    members: tuple[MemberSpec, ...]
    partitions: tuple[PartitionSpec, ...]
    generation: int = GENERATION


@st.composite
def cases(
    draw: st.DrawFn,
    *,
    uniform_cost: bool = False,
    uniform_rate: bool = False,
    equal: bool = False,
    all_topics: bool = False,
    owned: bool = True,
    draining: bool = True,
    max_members: int = 7,
    relay: bool = False,
) -> Case:
    """A random group.

    ``uniform_cost``: each member pays one cost for every topic. ``equal``: same weight,
    cap and budget for every member. ``all_topics``: everyone subscribes to every topic.
    ``relay``: members draw a ``relay_partition_bytes`` (without it nothing more is drawn, so
    the other strategies' examples stay as they were).
    """
    counts = draw(st.lists(st.integers(0, 9), min_size=len(TOPICS), max_size=len(TOPICS)))
    # Rates and claims come from one seeded generator each: far fewer draws per example,
    # which keeps 300 examples per property affordable on a shared 2-core box.
    rng = random.Random(draw(st.integers(0, 2**32)))
    levels = (0.0,) if uniform_rate else RATES
    partitions = tuple(
        PartitionSpec(t, p, rng.choice(levels))
        for t, n in zip(TOPICS, counts, strict=True)
        for p in range(n)
    )
    costs = st.sampled_from([0, 1, 2, 3, 7, HUGE])
    shared_cap = draw(st.integers(0, 12))
    shared_budget = draw(st.sampled_from([0, 5, 12, 30, HUGE]))
    shared_cost = draw(costs)
    n_members = draw(st.integers(1, max_members))
    members = []
    for k in range(n_members):
        topics = (
            frozenset(TOPICS)
            if all_topics
            else frozenset(draw(st.sets(st.sampled_from(TOPICS), min_size=1)))
        )
        if equal:
            cap, budget, weight = shared_cap, shared_budget, 1.0
        else:
            cap = draw(st.integers(-1, 12))
            budget = draw(st.sampled_from([-1, 0, 1, 5, 12, 30, HUGE]))
            weight = draw(st.sampled_from([0.5, 1.0, 1.0, 2.0, 3.0]))
        if uniform_cost:
            per_topic: dict[str, int] = {}
            default = shared_cost if equal else draw(costs)
        else:
            per_topic = draw(st.dictionaries(st.sampled_from(TOPICS), costs))
            default = draw(costs)
        claims: list[OwnedPartition] = []
        if owned and partitions:
            for p in rng.sample(partitions, rng.randint(0, min(8, len(partitions)))):
                gen = rng.randint(GENERATION - 2, GENERATION + 1)
                claims.append(OwnedPartition(p.topic, p.partition, gen, rng.choice(levels)))
        members.append(
            MemberSpec(
                f"m{k}",
                topics,
                CapacityAdvertisement(
                    max_partitions=cap,
                    memory_budget_bytes=budget,
                    partition_bytes=per_topic,
                    default_partition_bytes=default,
                    weight=weight,
                    draining=draining and draw(st.integers(0, 6)) == 0,
                    owned=tuple(claims),
                    relay_partition_bytes=draw(st.sampled_from([0, 1, 2, HUGE])) if relay else 0,
                ),
            )
        )
    return Case(tuple(members), partitions)
