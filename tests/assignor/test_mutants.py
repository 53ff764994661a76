"""Each property test must be able to fail: run it against a deliberately broken assignor.

Every mutant patches one step of the real pipeline (so the rest stays genuine) and the
matching ``check_property_*`` body from ``test_properties`` must find a counterexample, on
both paths: the reference (:mod:`~capgroup.assignor.balance`) and the fast one
(:mod:`~capgroup.assignor.columnar`). The steps each path has of its own (normalize, resolve
claims, keep owned, output) are patched in that path's module; the others are shared and
patched in ``balance``. The compiled core's steps cannot be patched: its mutants are Rust
twins of these (same names), switched on in a test-only build, in ``test_native_mutants``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from capgroup.assignor import balance, columnar
from capgroup.assignor.model import PendingMove, Plan
from tests.assignor.strategies import cases
from tests.assignor.test_properties import (
    check_property_balanced,
    check_property_budgets,
    check_property_complete,
    check_property_converges,
    check_property_cooperative,
    check_property_counts,
    check_property_deterministic,
    check_property_draining,
    check_property_exclusive,
    check_property_sticky,
)
from tests.assignor.test_relay import (
    check_property_relay_budgets,
    check_property_relay_invariants,
    check_property_relay_leftovers,
    check_property_relay_maximal,
    check_property_relay_sticky,
)

#: The steps each path has of its own; every other step is shared, in ``balance``.
OWN_STEPS = frozenset({"_normalize", "_resolve_claims", "_keep_owned", "_output"})


class Steps:
    """Where a path's pipeline looks its steps up: :meth:`get` and :meth:`set` reach the
    module that holds the named step (``set`` patches it for the test only)."""

    def __init__(self, mp: pytest.MonkeyPatch, own: Any, assign: Callable[..., Plan]) -> None:
        self.mp, self.own, self.assign = mp, own, assign

    def module(self, name: str) -> Any:
        return self.own if name in OWN_STEPS else balance

    def get(self, name: str) -> Any:
        return getattr(self.module(name), name)

    def set(self, name: str, value: Any) -> None:
        self.mp.setattr(self.module(name), name, value)


Patch = Callable[[Steps], None]
PATHS = {
    "reference": (balance, balance.reference_assign),
    # The numpy path: its steps are Python, so the patches reach them (the compiled core's
    # are not patchable: tests/assignor/test_native_mutants.py runs their Rust twins).
    "fast": (columnar, columnar.assign_numpy),
}


def wrap(steps: Steps, name: str, after: Callable[..., Any]) -> None:
    original = steps.get(name)
    steps.set(name, lambda *a: after(original(*a), *a))


def ignore_max_partitions(steps: Steps) -> None:
    wrap(steps, "_capacities", lambda s, *_: dataclasses.replace(s, cap=[1 << 30] * len(s.cap)))


def ignore_draining(steps: Steps) -> None:
    original = steps.get("_capacities")

    def capacities(grp: Any, unit: list[int]) -> Any:
        specs = [
            dataclasses.replace(m, capacity=dataclasses.replace(m.capacity, draining=False))
            for m in grp.specs
        ]
        return original(dataclasses.replace(grp, specs=specs), unit)

    steps.set("_capacities", capacities)


def ignore_weights(steps: Steps) -> None:
    wrap(steps, "_capacities", lambda s, *_: dataclasses.replace(s, weight=[1.0] * len(s.weight)))


def give_one_partition_twice(steps: Steps) -> None:
    def after(plan: Plan, *_: Any) -> Plan:
        holders = [m for m, tps in plan.assignment.items() if tps]
        others = [m for m in plan.assignment if m not in holders[:1]]
        if not holders or not others:
            return plan
        extra = plan.assignment[holders[0]][0]
        assignment = dict(plan.assignment)
        assignment[others[0]] = (*assignment[others[0]], extra)
        return dataclasses.replace(plan, assignment=assignment)

    wrap(steps, "_output", after)


def drop_withholding(steps: Steps) -> None:
    def after(plan: Plan, *_: Any) -> Plan:
        assignment = {m: list(tps) for m, tps in plan.assignment.items()}
        for move in plan.pending:
            assignment[move.to_member].append(move.tp)
        pending: tuple[PendingMove, ...] = ()
        return dataclasses.replace(
            plan, assignment={m: tuple(t) for m, t in assignment.items()}, pending=pending
        )

    wrap(steps, "_output", after)


def skip_augmenting_paths(steps: Steps) -> None:
    steps.set("_augment", lambda st, unplaced: unplaced)


def coldest_first(steps: Steps) -> None:
    def runs(st: Any, free: list[int]) -> Iterator[list[int]]:
        for j in sorted(free, key=lambda j: (st.unit[j], j)):
            yield [j]

    steps.set("_runs", runs)


def forget_ownership(steps: Steps) -> None:
    steps.set("_keep_owned", lambda st, claims: [])


def first_fit_without_balance(steps: Steps) -> None:
    def fill(st: Any, g: int, run: list[int]) -> list[int]:
        left = list(run)
        for i in st.gmembers[g]:
            k = min(st.room(i, g), len(left))
            if k:
                st.add_many(i, left[:k], k * st.gcost[g][st.mcls[i]])
                left = left[k:]
        return left

    steps.set("_water_fill", fill)
    steps.set("_balance", lambda st, owner: 0)


def rebalance_on_ties(steps: Steps) -> None:
    """KAFKA-15106: an "is balanced" test that also moves on ties, one move per round."""
    original = steps.get("_balance")

    def bal(st: Any, owner: list[int]) -> int:
        moves: int = original(st, owner)
        recv = balance._Receivers(st)
        for a in sorted(range(len(st.cap)), key=lambda i: (-st.load[i], i)):
            for j in (j for j, i in enumerate(st.target) if i == a):
                b = recv.best(st.tgroup[st.ptopic[j]], exclude=a)
                if b >= 0 and st.load[b] <= st.load[a]:
                    st.remove(a, j)
                    st.add(b, j)
                    return moves + 1
        return moves

    steps.set("_balance", bal)


def keep_input_member_order(steps: Steps) -> None:
    original = steps.get("_normalize")

    def normalize(members: Any, partitions: Any) -> Any:
        grp = original(members, partitions)
        specs = list(members)
        return dataclasses.replace(grp, specs=specs, member_ids=[m.member_id for m in specs])

    steps.set("_normalize", normalize)


def relay_ignores_budget(steps: Steps) -> None:
    """Relay charges one byte whatever the member advertises."""
    wrap(steps, "_relay_costs", lambda costs, *_: [1 if c else 0 for c in costs])


def relay_steals_from_owner(steps: Steps) -> None:
    """Relay ignores ownership: a claimed leftover goes to whoever has room."""
    original = steps.get("_relay")

    def relay(grp: Any, st: Any, claims: Any) -> Any:
        return original(grp, st, dataclasses.replace(claims, owner=[-1] * len(claims.owner)))

    steps.set("_relay", relay)


def relay_before_batch(steps: Steps) -> None:
    """Relay runs before free partitions are placed, taking room batch placement needed."""
    original_place, original_relay, original_resolve = (
        steps.get("_place_free"),
        steps.get("_relay"),
        steps.get("_resolve_claims"),
    )
    box: dict[str, Any] = {}

    def resolve(grp: Any, *rest: Any) -> Any:
        box["grp"] = grp
        box["claims"] = claims = original_resolve(grp, *rest)
        return claims

    def place(st: Any, free: list[int]) -> list[int]:
        early = original_relay(box["grp"], st, box["claims"])
        # Charge the relay-only partitions as if batch placement had to live with them.
        for i, js in early.items():
            st.count[i] += len(js)
            st.used[i] += len(js) * box["grp"].specs[i].capacity.relay_partition_bytes
        taken = {j for js in early.values() for j in js}
        left = original_place(st, [j for j in free if j not in taken])
        for i, js in early.items():
            st.count[i] -= len(js)
            st.used[i] -= len(js) * box["grp"].specs[i].capacity.relay_partition_bytes
        box["early"] = early
        return left

    steps.set("_resolve_claims", resolve)
    steps.set("_place_free", place)
    steps.set("_relay", lambda grp, st, claims: box.pop("early", {}))


def relay_nothing(steps: Steps) -> None:
    steps.set("_relay", lambda grp, st, claims: {})


def relay_forgets_owner(steps: Steps) -> None:
    """Relay drops owned leftovers instead of keeping them with their owner."""
    original = steps.get("_relay")

    def relay(grp: Any, st: Any, claims: Any) -> Any:
        found = original(grp, st, claims)
        return {
            i: kept for i, js in found.items() if (kept := [j for j in js if claims.owner[j] < 0])
        }

    steps.set("_relay", relay)


MUTANTS: list[tuple[str, Patch, Callable[..., None], Any]] = [
    ("1 budgets", ignore_max_partitions, check_property_budgets, cases()),
    ("2 exclusive", give_one_partition_twice, check_property_exclusive, cases()),
    (
        "3 complete: no augmenting paths",
        skip_augmenting_paths,
        check_property_complete,
        cases(uniform_cost=True),
    ),
    ("3 complete: coldest first", coldest_first, check_property_complete, cases(uniform_cost=True)),
    (
        "4 sticky",
        forget_ownership,
        check_property_sticky,
        st.tuples(
            cases(uniform_cost=True, uniform_rate=True, all_topics=True), st.integers(0, 100)
        ),
    ),
    (
        "5 balanced: weights ignored",
        ignore_weights,
        check_property_balanced,
        cases(uniform_rate=True, owned=False),
    ),
    (
        "5 balanced: first fit",
        first_fit_without_balance,
        check_property_counts,
        cases(uniform_cost=True, uniform_rate=True, equal=True, all_topics=True),
    ),
    ("5 balanced: loops on ties", rebalance_on_ties, check_property_converges, cases()),
    ("6 cooperative", drop_withholding, check_property_cooperative, cases()),
    (
        "7 deterministic",
        keep_input_member_order,
        check_property_deterministic,
        st.tuples(cases(), st.integers(0, 2**32)),
    ),
    ("8 draining", ignore_draining, check_property_draining, cases()),
    (
        "relay: budget ignored",
        relay_ignores_budget,
        check_property_relay_budgets,
        cases(relay=True),
    ),
    (
        "relay: steals from owners",
        relay_steals_from_owner,
        check_property_relay_invariants,
        cases(relay=True),
    ),
    (
        "relay: before batch",
        relay_before_batch,
        check_property_relay_leftovers,
        cases(relay=True),
    ),
    ("relay: does nothing", relay_nothing, check_property_relay_maximal, cases(relay=True)),
    ("relay: not sticky", relay_forgets_owner, check_property_relay_sticky, cases(relay=True)),
]


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize(
    ("patch", "check", "strategy"),
    [pytest.param(p, c, s, id=name) for name, p, c, s in MUTANTS],
)
def test_property_catches_mutant(
    monkeypatch: pytest.MonkeyPatch,
    patch: Patch,
    check: Callable[..., None],
    strategy: Any,
    path: str,
) -> None:
    steps = Steps(monkeypatch, *PATHS[path])

    @settings(
        max_examples=300,
        deadline=None,
        phases=[Phase.generate],
        database=None,
        report_multiple_bugs=False,
        derandomize=True,
    )
    @given(strategy)
    def probe(drawn: Any) -> None:
        args = drawn if isinstance(drawn, tuple) else (drawn,)
        # The path's assign looks its steps up by name, so it runs the patched ones.
        check(steps.assign, *args)

    patch(steps)
    with pytest.raises(AssertionError):
        probe()
