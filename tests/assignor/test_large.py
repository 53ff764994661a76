"""A seeded large group (the benchmark's generator) through the shared invariants."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable

from capgroup.assignor.balance import assign, reference_assign
from capgroup.assignor.model import Plan
from capgroup.assignor.workloads import after_rebalance, synthetic_group, without_member
from tests.assignor.invariants import check_all, phase2


def test_large_group_fresh_then_one_member_removed() -> None:
    members, partitions = synthetic_group(100_000, 1_000, seed=7)
    plan = assign(members, partitions, 1)
    check_all(members, partitions, plan, 1)
    sizes = [len(tps) for tps in phase2(plan).values()]
    assert max(sizes) - min(sizes) <= 1
    assert not plan.unassigned

    stable = after_rebalance(members, plan, 1)
    again = assign(stable, partitions, 2)
    assert again.moved == 0
    assert again == assign(list(reversed(stable)), list(reversed(partitions)), 2)

    dead = stable[500].member_id
    survivors = without_member(stable, 500)
    after = assign(survivors, partitions, 2)
    check_all(survivors, partitions, after, 2)
    before = {tp: m for m, tps in plan.assignment.items() for tp in tps}
    now = {tp: m for m, tps in phase2(after).items() for tp in tps}
    changed = {tp for tp, m in now.items() if before[tp] != m}
    assert changed == {tp for tp, m in before.items() if m == dead}
    assert after.moved == len(changed)
    assert not after.pending  # orphans of a dead member are placed at once


def test_large_group_with_rates_converges() -> None:
    members, partitions = synthetic_group(20_000, 200, seed=11, rates=True)
    plan = assign(members, partitions, 1)
    check_all(members, partitions, plan, 1)
    stable = after_rebalance(members, plan, 1)
    again = assign(stable, partitions, 2)
    check_all(stable, partitions, again, 2)
    assert again.moved == 0
    assert not again.pending


def test_large_group_with_mixed_subscriptions() -> None:
    """Half the members take only half the topics: two receiver groups interact."""
    members, partitions = synthetic_group(20_000, 200, seed=5)
    topics = sorted({p.topic for p in partitions})
    narrow = frozenset(topics[: len(topics) // 2])
    members = [dataclasses.replace(m, topics=narrow) if k % 2 else m for k, m in enumerate(members)]
    plan = assign(members, partitions, 1)
    check_all(members, partitions, plan, 1)
    assert not plan.unassigned
    stable = after_rebalance(members, plan, 1)
    again = assign(stable, partitions, 2)
    assert again.moved == 0
    assert not again.pending


def test_a_large_plan_leaves_the_collector_nothing_to_scan() -> None:
    """Item 3 of issue 16: no collection pause charged to the caller. The fast path's plan
    keeps its partitions in arrays, so a handful of tracked objects survive the call (the
    reference path leaves one tuple per partition, which the collector scans later)."""
    members, partitions = synthetic_group(50_000, 100, seed=3)

    def survivors(run: Callable[[], Plan]) -> int:
        gc.collect()
        gc.disable()
        try:
            plan = run()
            return len(gc.get_objects(0)) if plan else 0
        finally:
            gc.enable()

    assert survivors(lambda: assign(members, partitions, 1)) < 100
    assert survivors(lambda: reference_assign(members, partitions, 1)) > 50_000
