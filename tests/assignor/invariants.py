"""Invariant helpers shared by every assignor test: each checks one property of a plan."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from capgroup.assignor import balance, columnar, native
from capgroup.assignor.model import MemberSpec, OwnedPartition, PartitionSpec, Plan
from capgroup.protocol.capacity import AdvertisementEncodeError, encode_advertisement
from capgroup.protocol.consumer import encode_member_metadata
from capgroup.types import TopicPartition

Assign = Callable[[Sequence[MemberSpec], Sequence[PartitionSpec], int], Plan]


def leader_metadata(members: Sequence[MemberSpec]) -> list[tuple[str, str | None, bytes]]:
    """Each member's JoinGroup metadata as a leader receives it; members whose advertisement
    does not encode (out of the format's range) are left out."""
    raw = []
    for m in members:
        try:
            user_data = encode_advertisement(m.capacity)
        except AdvertisementEncodeError:
            continue
        raw.append((m.member_id, m.instance_id, encode_member_metadata(m.topics, user_data)))
    return raw


def native_assign(
    members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec], generation: int
) -> Plan:
    """The compiled core's plan, even with ``CAPGROUP_ASSIGNOR_NATIVE=0``; fails (never
    falls back) when the core declines or is missing."""
    found = native.plan(members, partitions, generation, force=True)
    assert found is not None, "capgroup._native is missing, switched off or declined the input"
    return found


#: Every property runs against every path: the numpy one, the plain-Python reference they
#: must agree with and, when built (always under CI=true), the compiled core.
both_paths = pytest.mark.parametrize(
    "assign",
    [
        pytest.param(columnar.assign_numpy, id="fast"),
        pytest.param(balance.reference_assign, id="reference"),
        *(
            [pytest.param(native_assign, id="native")]
            if native.available() or os.environ.get("CI", "").lower() == "true"
            else []
        ),
    ],
)


def phase2(plan: Plan) -> dict[str, list[TopicPartition]]:
    """The assignment once pending moves have landed."""
    out = {m: list(tps) for m, tps in plan.assignment.items()}
    for move in plan.pending:
        out.setdefault(move.to_member, []).append(move.tp)
    return out


def check_budgets(members: Sequence[MemberSpec], plan: Plan) -> None:
    """Property 1: caps and byte budgets hold in both phases of every move (relay-only
    partitions count 1 and ``relay_partition_bytes`` each)."""
    by_id = {m.member_id: m for m in members}
    for phase in (dict(plan.assignment), phase2(plan)):
        for mid in phase.keys() | plan.relay.keys():
            tps, relayed = phase.get(mid, ()), plan.relay.get(mid, ())
            adv = by_id[mid].capacity
            n = len(tps) + len(relayed)
            assert n <= max(0, adv.max_partitions), (mid, n, adv.max_partitions)
            used = sum(adv.cost_of(tp.topic) for tp in tps)
            used += len(relayed) * adv.relay_partition_bytes
            assert used <= adv.memory_budget_bytes or not n, (mid, used)
            assert not relayed or adv.relay_partition_bytes > 0, mid


def check_exclusive(
    members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec], plan: Plan
) -> None:
    """Property 2: every partition exactly once; every member present; subscriptions kept."""
    wanted = {p.tp for p in partitions}
    seen = Counter(tp for tps in plan.assignment.values() for tp in tps)
    seen.update(move.tp for move in plan.pending)
    seen.update(plan.unassigned)
    seen.update(tp for tps in plan.relay.values() for tp in tps)
    assert set(seen) == wanted
    assert all(n == 1 for n in seen.values()), [tp for tp, n in seen.items() if n > 1]
    by_id = {m.member_id: m for m in members}
    assert set(plan.assignment) == set(by_id)
    for mid, tps in [*phase2(plan).items(), *plan.relay.items()]:
        assert all(tp.topic in by_id[mid].topics for tp in tps), mid
    for move in plan.pending:
        assert move.from_member in by_id
        assert move.from_member != move.to_member


def top_claimants(members: Sequence[MemberSpec], generation: int) -> dict[TopicPartition, set[str]]:
    """Per partition, the members claiming it at its highest non-future generation."""
    result: dict[TopicPartition, tuple[int, set[str]]] = {}
    for m in members:
        for o in m.capacity.owned:
            if o.generation > generation:
                continue
            cur = result.get(o.tp)
            if cur is None or o.generation > cur[0]:
                result[o.tp] = (o.generation, {m.member_id})
            elif o.generation == cur[0]:
                cur[1].add(m.member_id)
    return {tp: who for tp, (_, who) in result.items()}


def check_cooperative(members: Sequence[MemberSpec], plan: Plan, generation: int) -> None:
    """Property 6: nothing passes straight from one live claimant to another member."""
    tops = top_claimants(members, generation)
    for mid, tps in [*plan.assignment.items(), *plan.relay.items()]:
        for tp in tps:
            who = tops.get(tp)
            assert who is None or who == {mid}, (tp, mid, who)
    for move in plan.pending:
        who = tops.get(move.tp)
        assert who is not None
        assert move.from_member in who, move
        # A partition with a single valid owner only pends when it changes hands.
        assert len(who) > 1 or move.to_member not in who, move


def check_draining(members: Sequence[MemberSpec], plan: Plan) -> None:
    """Property 8: draining members get nothing, in either phase."""
    p2 = phase2(plan)
    for m in members:
        if m.capacity.draining:
            assert not p2[m.member_id], m.member_id
            assert not plan.relay.get(m.member_id), m.member_id


def owned_from(plan: Plan, generation: int) -> dict[str, tuple[OwnedPartition, ...]]:
    """Ownership claims members would send after the plan's phase 2 has landed (relay-only
    partitions included: members own them)."""
    return {
        mid: tuple(
            OwnedPartition(tp.topic, tp.partition, generation)
            for tp in (*tps, *plan.relay.get(mid, ()))
        )
        for mid, tps in phase2(plan).items()
    }


def check_all(
    members: Sequence[MemberSpec],
    partitions: Sequence[PartitionSpec],
    plan: Plan,
    generation: int,
) -> None:
    """Every invariant that must hold for any input."""
    check_exclusive(members, partitions, plan)
    check_budgets(members, plan)
    check_cooperative(members, plan, generation)
    check_draining(members, plan)
