"""``capgroup describe --group G [--json] [--watch SECONDS]``: a consumer group as the broker
describes it.

Members with their capacity advertisement (partition cap, memory budget, weight, rack,
draining), their partitions and utilisation; the lag of every partition (high watermark minus
committed offset); the partitions nobody owns; the group's headroom and the replicas it wants.
A group that does not run capgroup's assignor is shown capacity-blind: its protocol, members,
assignment and lag. Connection settings (bootstrap servers, TLS, SASL) are the members'
``CAPGROUP_*`` settings.

Exit codes: 2 for bad settings or a group that does not exist, 4 when Kafka cannot be reached,
5 when authentication, authorization or TLS fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from typing import Any

import anyio

from capgroup.cli.startup_errors import add_timeout_argument, report_failure
from capgroup.log import configure_logging
from capgroup.operations.describe import GroupState, MemberState, describe_group
from capgroup.settings import load_settings
from capgroup.types import TopicPartition

__all__ = [
    "describe_json",
    "partition_list",
    "register",
    "render",
    "render_figures",
    "render_members",
    "render_partitions",
    "run",
]

_MIB = 1024 * 1024


def register(sub: Any) -> None:
    """Add the ``describe`` sub-command."""
    parser = sub.add_parser(
        "describe",
        help="a consumer group's members, capacity, assignment, lag, headroom and replicas wanted",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--group", required=True, help="the consumer group id")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="describe again every SECONDS until Ctrl-C",
    )
    add_timeout_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Describe the group (again every ``--watch`` seconds); returns the exit code."""
    configure_logging("error")
    if args.watch is not None and args.watch <= 0:
        print("capgroup describe: --watch needs a positive number of seconds", file=sys.stderr)
        return 2
    timeout_ms = max(1000, int(args.timeout * 1000))
    settings = load_settings(bootstrap_timeout_ms=timeout_ms)
    while True:
        try:
            state = anyio.run(describe_group, settings, args.group)
        except Exception as exc:
            return report_failure("describe", exc, settings)
        text = json.dumps(describe_json(state), indent=2) if args.json else render(state)
        if args.watch is None:
            print(text)
            return 0
        # Clear the screen on a terminal; a pipe gets the descriptions one after another.
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")
        print(f"{time.strftime('%H:%M:%S')} every {args.watch:g} s (Ctrl-C stops)\n{text}\n")
        sys.stdout.flush()
        time.sleep(args.watch)


def _mib(n: int) -> str:
    return f"{n / _MIB:.1f} MiB"


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def partition_list(partitions: Iterable[TopicPartition]) -> str:
    """``1,2,3`` for one topic, ``a[0,1] b[2]`` for several."""
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(partitions):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    if len(by_topic) == 1:
        return ",".join(map(str, next(iter(by_topic.values()))))
    return " ".join(f"{t}[{','.join(map(str, ps))}]" for t, ps in by_topic.items())


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return [line.rstrip() for line in lines]


def _lag_of(state: GroupState, partitions: Iterable[TopicPartition]) -> int | None:
    lags = [state.partitions[tp].lag for tp in partitions if tp in state.partitions]
    known = [lag for lag in lags if lag is not None]
    return sum(known) if known else None


def _member_row(state: GroupState, m: MemberState) -> tuple[str, ...]:
    adv = m.advertisement
    lag = _count(_lag_of(state, m.partitions))
    owns = partition_list(m.partitions)
    if adv is None:
        return (m.name, str(len(m.partitions)), "-", "-", "-", "-", lag, owns)
    used = m.used_bytes or 0
    util = m.bytes_utilisation
    flags = [adv.rack or "-"]
    if adv.draining:
        flags.append("draining")
    return (
        m.name,
        f"{len(m.partitions)}/{adv.max_partitions}",
        f"{_mib(used)} / {_mib(adv.memory_budget_bytes)}",
        "-" if util is None else f"{100 * util:.0f}%",
        f"{adv.weight:g}",
        " ".join(flags),
        lag,
        owns,
    )


def render_members(state: GroupState) -> str:
    """The member table and the line of partitions nobody owns."""
    rows: list[tuple[str, ...]] = [
        ("member", "partitions", "bytes / budget", "util", "weight", "rack", "lag", "owns")
    ]
    rows.extend(_member_row(state, m) for m in state.members)
    lines = _table(rows) if state.members else ["(no members)"]
    unowned = state.unassigned
    line = f"unassigned: {len(unowned)}"
    if unowned:
        line += f" (partitions {partition_list(unowned)}; lag {_count(_lag_of(state, unowned))})"
    if state.pending:
        line += f"; {state.pending} of them pending a move between members"
    lines.append(line)
    return "\n".join(lines)


def render_figures(state: GroupState) -> str:
    """Capacity against demand, headroom and replicas wanted (one line)."""
    if not state.members:
        return "no members: no capacity, every partition waits"
    if not state.capacity_aware:
        return (
            f"capacity-blind: protocol {state.protocol or '-'} "
            f"({state.protocol_type or 'no protocol type'}); members advertise no capacity"
        )
    demand = sum(1 for tp in state.partitions if tp.topic in state.topics)
    live = sum(1 for m in state.members if m.advertisement and not m.advertisement.draining)
    wanted = state.replicas_wanted
    change = "" if wanted is None else f" ({wanted - live:+d})"
    return (
        f"capacity {state.capacity_partitions} of {demand} partitions; "
        f"headroom {state.headroom} members; "
        f"replicas wanted {wanted}{change} with {state.autoscale_headroom} "
        f"member{'s' if state.autoscale_headroom != 1 else ''} of headroom"
    )


def render_partitions(state: GroupState) -> str:
    """Every partition's owner, offsets and lag."""
    rows: list[tuple[str, ...]] = [
        ("partition", "owner", "log start", "committed", "high watermark", "lag")
    ]
    single = len({tp.topic for tp in state.partitions}) == 1
    for tp, p in sorted(state.partitions.items()):
        rows.append(
            (
                str(tp.partition) if single else f"{tp.topic}[{tp.partition}]",
                p.owner or "-",
                _count(p.log_start_offset),
                _count(p.committed),
                _count(p.high_watermark),
                _count(p.lag),
            )
        )
    return "\n".join(_table(rows))


def render(state: GroupState, *, partitions: bool = True) -> str:
    """The whole description as text: a header, the members, the figures and (with
    ``partitions``) the per-partition lag."""
    topics = sorted({tp.topic for tp in state.partitions if tp.topic in state.topics})
    header = (
        f"group {state.group}: {state.state or 'unknown'}, {len(state.members)} "
        f"member{'s' if len(state.members) != 1 else ''}, protocol {state.protocol or '-'}, "
        f"topics {','.join(topics) or '-'}, lag {state.total_lag:,}"
    )
    parts = [header, render_members(state), render_figures(state)]
    if partitions and state.partitions:
        parts.append(render_partitions(state))
    return "\n".join(parts)


def _tp_json(tp: TopicPartition) -> dict[str, Any]:
    return {"topic": tp.topic, "partition": tp.partition}


def describe_json(state: GroupState) -> dict[str, Any]:
    """The description as a JSON-ready document (see the README's Operations section)."""
    members = []
    for m in state.members:
        adv = m.advertisement
        members.append(
            {
                "member_id": m.member_id,
                "client_id": m.client_id,
                "client_host": m.client_host,
                "instance_id": m.instance_id,
                "topics": list(m.topics),
                "advertisement": None
                if adv is None
                else {
                    "max_partitions": adv.max_partitions,
                    "memory_budget_bytes": adv.memory_budget_bytes,
                    "partition_bytes": dict(adv.partition_bytes),
                    "default_partition_bytes": adv.default_partition_bytes,
                    "weight": adv.weight,
                    "rack": adv.rack,
                    "draining": adv.draining,
                },
                "assignment": [_tp_json(tp) for tp in m.partitions],
                "used_bytes": m.used_bytes,
                "partition_utilisation": m.partition_utilisation,
                "bytes_utilisation": m.bytes_utilisation,
                "lag": _lag_of(state, m.partitions),
                "assignment_info": None
                if m.info is None
                else {"generation": m.info.generation, **_info_fields(m.info)},
            }
        )
    partitions = [
        {
            **_tp_json(tp),
            "owner": p.owner,
            "log_start_offset": p.log_start_offset,
            "committed_offset": p.committed,
            "high_watermark": p.high_watermark,
            "lag": p.lag,
        }
        for tp, p in sorted(state.partitions.items())
    ]
    unassigned = [
        {**_tp_json(tp), "lag": state.partitions[tp].lag if tp in state.partitions else None}
        for tp in state.unassigned
    ]
    return {
        "group": state.group,
        "state": state.state,
        "protocol_type": state.protocol_type,
        "protocol": state.protocol,
        "capacity_aware": state.capacity_aware,
        "topics": list(state.topics),
        "members": members,
        "partitions": partitions,
        "unassigned": unassigned,
        "pending": state.pending,
        "lag": state.total_lag,
        "capacity_partitions": state.capacity_partitions,
        "demand_partitions": sum(1 for tp in state.partitions if tp.topic in state.topics),
        "headroom": state.headroom,
        "autoscale_headroom_members": state.autoscale_headroom,
        "replicas_wanted": state.replicas_wanted,
    }


def _info_fields(info: Any) -> dict[str, Any]:
    """Every field of the assignment info but the generation (newer versions add some)."""
    fields = getattr(info, "__dataclass_fields__", {})
    return {name: getattr(info, name) for name in fields if name != "generation"}
