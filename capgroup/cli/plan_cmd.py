"""``capgroup plan SCENARIO.json``: offline capacity planning with the real assignor.

The scenario lists members (limits, subscriptions, ownership) and partitions; the command
prints the plan the group leader would compute, and ``headroom``, the number of members that
can fail (largest first) before some partition has nowhere to go. ``--lose`` plans as if some
members had died, which is the question to ask before a deploy or during an incident.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from capgroup.assignor import balance
from capgroup.assignor.adapter import with_claimed_rates
from capgroup.assignor.model import (
    CapacityAdvertisement,
    MemberSpec,
    OwnedPartition,
    PartitionSpec,
)
from capgroup.types import TopicPartition

__all__ = [
    "EXIT_USAGE",
    "MemberModel",
    "Name",
    "NonNegInt",
    "OwnedModel",
    "PartitionModel",
    "Rate",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "plan_scenario",
    "register",
    "render_table",
    "run",
]

#: Same value as :data:`capgroup.cli.main.EXIT_USAGE`; not imported to avoid a cycle.
EXIT_USAGE = 2

NonNegInt = Annotated[int, Field(ge=0, strict=True)]
Rate = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=255, strict=True)]


class ScenarioError(ValueError):
    """The scenario cannot be planned; the message names the file and the offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OwnedModel(_Strict):
    """A partition a member owns, with the generation it was owned under."""

    topic: Name
    partition: NonNegInt
    generation: Annotated[int, Field(ge=-1, strict=True)]
    rate: Rate = 0.0


class MemberModel(_Strict):
    """One member: identity, subscription and capacity advertisement."""

    id: Name
    topics: list[Name]
    max_partitions: NonNegInt
    memory_budget_bytes: NonNegInt
    partition_bytes: dict[Name, NonNegInt] = Field(default_factory=dict)
    default_partition_bytes: NonNegInt = 0
    weight: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    rack: str | None = None
    draining: bool = False
    owned: list[OwnedModel] = Field(default_factory=list)

    @field_validator("owned")
    @classmethod
    def _owned_once(cls, owned: list[OwnedModel]) -> list[OwnedModel]:
        dup = _first_duplicate((o.topic, o.partition) for o in owned)
        if dup is not None:
            raise ValueError(f"partition {dup[0]}-{dup[1]} is listed twice")
        return owned

    def spec(self) -> MemberSpec:
        """The assignor's view of this member."""
        return MemberSpec(
            member_id=self.id,
            topics=frozenset(self.topics),
            capacity=CapacityAdvertisement(
                max_partitions=self.max_partitions,
                memory_budget_bytes=self.memory_budget_bytes,
                partition_bytes=dict(self.partition_bytes),
                default_partition_bytes=self.default_partition_bytes,
                weight=self.weight,
                rack=self.rack,
                draining=self.draining,
                owned=tuple(
                    OwnedPartition(o.topic, o.partition, o.generation, o.rate) for o in self.owned
                ),
            ),
        )


class PartitionModel(_Strict):
    """A partition to place, with its ingress rate (records/s, 0 when unknown)."""

    topic: Name
    partition: NonNegInt
    rate: Rate = 0.0


class Scenario(_Strict):
    """A whole planning scenario (see ``examples/plans/``)."""

    description: str | None = None
    generation: NonNegInt
    members: list[MemberModel]
    partitions: list[PartitionModel]

    @model_validator(mode="after")
    def _unique(self) -> Self:
        dup_member = _first_duplicate(m.id for m in self.members)
        if dup_member is not None:
            raise ValueError(f"members: member id {dup_member!r} is listed twice")
        dup = _first_duplicate((p.topic, p.partition) for p in self.partitions)
        if dup is not None:
            raise ValueError(f"partitions: partition {dup[0]}-{dup[1]} is listed twice")
        return self


def _first_duplicate(items: Any) -> Any:
    counts = Counter(items)
    return next((item for item, n in counts.items() if n > 1), None)


def register(sub: Any) -> None:
    """Add the ``plan`` sub-command."""
    parser = sub.add_parser(
        "plan",
        help="plan a group offline from a scenario file and print the assignment as JSON",
        description=(
            "Plan partition assignment for SCENARIO.json with capgroup's capacity-aware "
            "assignor. Exit code 2 means the scenario is invalid."
        ),
    )
    parser.add_argument("scenario", metavar="SCENARIO.json", help="scenario file")
    parser.add_argument(
        "--lose",
        metavar="M1,M2",
        default="",
        help="plan as if these members (comma-separated ids) had died",
    )
    parser.add_argument(
        "--table", action="store_true", help="print a human-readable table instead of JSON"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load, plan and print; scenario errors go to stderr with exit code 2."""
    try:
        scenario = load_scenario(Path(args.scenario))
        lost = _parse_lose(args.lose, scenario)
    except ScenarioError as exc:
        print(f"capgroup plan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = plan_scenario(scenario, lost)
    if args.table:
        print(render_table(scenario, lost, result))
    else:
        print(json.dumps(result, indent=2))
    return 0


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file, raising :class:`ScenarioError` on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario {str(path)!r}: {exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = [f"  - {_where(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ScenarioError(f"invalid scenario {path}:\n" + "\n".join(problems)) from exc


def _where(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _parse_lose(value: str, scenario: Scenario) -> list[str]:
    lost = [m.strip() for m in value.split(",") if m.strip()]
    known = {m.id for m in scenario.members}
    unknown = [m for m in lost if m not in known]
    if unknown:
        raise ScenarioError(
            f"--lose: unknown member(s) {', '.join(map(repr, unknown))}; "
            f"the scenario has {len(known)} members"
        )
    return lost


def plan_scenario(scenario: Scenario, lost: list[str]) -> dict[str, Any]:
    """The plan as the JSON-ready output document."""
    gone = set(lost)
    members = [m.spec() for m in scenario.members if m.id not in gone]
    partitions = with_claimed_rates(
        [PartitionSpec(p.topic, p.partition, p.rate) for p in scenario.partitions], members
    )
    plan = balance.assign(members, partitions, scenario.generation)
    return {
        "assignment": {
            m.member_id: [_tp(tp) for tp in plan.assignment.get(m.member_id, ())] for m in members
        },
        "pending": [
            {**_tp(move.tp), "from": move.from_member, "to": move.to_member}
            for move in plan.pending
        ],
        "unassigned": [_tp(tp) for tp in plan.unassigned],
        "moved": plan.moved,
        "headroom": balance.headroom(members, partitions),
        "lost": lost,
        "notes": list(plan.notes),
    }


def _tp(tp: TopicPartition) -> dict[str, Any]:
    return {"topic": tp.topic, "partition": tp.partition}


def render_table(scenario: Scenario, lost: list[str], result: dict[str, Any]) -> str:
    """A fixed-width table: per member, partitions and bytes against the hard limits."""
    incoming = Counter(move["to"] for move in result["pending"])
    rows = [("member", "partitions", "incoming", "bytes / budget", "util")]
    for m in scenario.members:
        if m.id in lost:
            continue
        spec = m.spec()
        tps = result["assignment"][m.id]
        used = sum(spec.capacity.cost_of(tp["topic"]) for tp in tps)
        budget = m.memory_budget_bytes
        util = f"{100.0 * used / budget:.0f}%" if budget else ("0%" if not used else "inf")
        flag = " (draining)" if m.draining else ""
        rows.append(
            (
                m.id + flag,
                f"{len(tps)}/{m.max_partitions}",
                str(incoming.get(m.id, 0)),
                f"{_gb(used)} / {_gb(budget)}",
                util,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        "",
        f"lost: {', '.join(lost) if lost else 'none'}",
        f"unassigned: {len(result['unassigned'])}",
        f"pending: {len(result['pending'])}",
        f"moved: {result['moved']}",
        f"headroom: {result['headroom']}",
    ]
    return "\n".join(line.rstrip() for line in lines)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"
