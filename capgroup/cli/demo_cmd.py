"""``capgroup demo``: three archiver members with different budgets; one dies; nobody overloads.

The demo starts a local Kafka (or uses ``KAFKA_BOOTSTRAP_SERVERS``), creates a 12-partition
topic, produces to it steadily, and starts three archiver members
(:class:`~capgroup.cli.demo_archiver.DemoArchiver`, shipped with the package; the archiver
example in ``examples/archiver`` is its documented source) as separate ``capgroup run``
processes with different partition caps and memory budgets. It prints the group as the
broker describes it: every member's advertisement (decoded from its JoinGroup metadata) and
its partitions (decoded from the assignment the leader sent). It then SIGKILLs the largest
member and prints the group again once the survivors have rebalanced: each stays within its
budget and the partitions nobody can hold are reported as unassigned, next to what a
capacity-blind round-robin would have done. Everything it started (members, producer, temp
directory, topic, broker) is cleaned up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from aiokafka import AIOKafkaProducer
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from capgroup.devkafka.admin import admin_client, create_topic, delete_topics
from capgroup.devkafka.cluster import LocalKafkaCluster
from capgroup.devkafka.jars import KafkaLocalError
from capgroup.errors import leaf_exceptions
from capgroup.log import configure_logging
from capgroup.protocol import MetadataDecodeError, decode_advertisement, decode_assignment_info
from capgroup.protocol.consumer import decode_member_metadata
from capgroup.settings import partition_cost_bytes
from capgroup.types import CapacityAdvertisement, TopicPartition

__all__ = [
    "ARCHIVER",
    "BATCH_MAX_BYTES",
    "BATCH_MAX_RECORDS",
    "DEMO_PARTITIONS",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "FETCH_BYTES",
    "MEMBERS",
    "MIB",
    "PARTITION_COST",
    "PRODUCE_RATE",
    "SESSION_TIMEOUT_MS",
    "DemoError",
    "GroupView",
    "MemberPlan",
    "MemberView",
    "blind_comparison",
    "describe_group",
    "register",
    "render",
    "run",
]

#: Partitions of the demo topic.
DEMO_PARTITIONS = 12
#: The consumer class the members run (part of the installed package).
ARCHIVER = "capgroup.cli.demo_archiver:DemoArchiver"
MIB = 1024 * 1024
#: Batch and fetch limits of every member; they set the per-partition cost each advertises.
BATCH_MAX_BYTES = MIB
BATCH_MAX_RECORDS = 1024
FETCH_BYTES = MIB
#: Records per second the demo producer writes over all partitions.
PRODUCE_RATE = 240
#: Fast group timings so the dead member is noticed within seconds.
SESSION_TIMEOUT_MS = 6000
#: Exit codes.
EXIT_USAGE = 2
EXIT_FAILED = 3


@dataclass(frozen=True)
class MemberPlan:
    """One demo member: its name (client id), partition cap and memory budget."""

    name: str
    max_partitions: int

    @property
    def budget_bytes(self) -> int:
        """Exactly ``max_partitions`` partitions' worth of buffer budget."""
        return self.max_partitions * PARTITION_COST


#: What one partition costs a member with those limits (the runtime's own formula).
PARTITION_COST = partition_cost_bytes(BATCH_MAX_BYTES, BATCH_MAX_RECORDS, FETCH_BYTES)

MEMBERS = (MemberPlan("archiver-a", 6), MemberPlan("archiver-b", 4), MemberPlan("archiver-c", 3))


@dataclass(frozen=True)
class MemberView:
    """A member as the broker describes it."""

    name: str
    capacity: CapacityAdvertisement
    partitions: tuple[TopicPartition, ...]
    unassigned: int
    pending: int


@dataclass(frozen=True)
class GroupView:
    """The group as the broker describes it."""

    state: str
    members: tuple[MemberView, ...]

    @property
    def owned(self) -> int:
        """Partitions owned by some member."""
        return sum(len(m.partitions) for m in self.members)


def register(sub: Any) -> None:
    """Add the ``demo`` sub-command."""
    parser = sub.add_parser(
        "demo",
        help="three archiver members with different budgets on a local Kafka; one is killed",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.set_defaults(handler=run)


def run(_: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    configure_logging("warning")
    began = time.monotonic()
    try:
        with _broker() as bootstrap, tempfile.TemporaryDirectory(prefix="capgroup-demo-") as tmp:
            anyio.run(_demo, bootstrap, Path(tmp))
    except (KafkaLocalError, DemoError) as exc:
        print(f"capgroup demo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BaseExceptionGroup as group:
        # Task-group failures arrive wrapped; report the demo's own error plainly.
        errors = [e for e in leaf_exceptions(group) if isinstance(e, DemoError | KafkaLocalError)]
        if not errors:
            raise
        print(f"capgroup demo: {errors[0]}", file=sys.stderr)
        return EXIT_FAILED
    print(f"demo finished in {time.monotonic() - began:.0f} s; everything it started is stopped")
    return 0


class DemoError(RuntimeError):
    """The demo could not reach the state it waits for."""


@contextlib.contextmanager
def _broker() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        print(f"using Kafka at {external} (KAFKA_BOOTSTRAP_SERVERS)", flush=True)
        yield external
        return
    print("starting a local Kafka...", flush=True)
    with LocalKafkaCluster(nodes=1) as cluster:
        print(f"local Kafka at {cluster.bootstrap_servers}", flush=True)
        yield cluster.bootstrap_servers


async def _demo(bootstrap: str, tmp: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, group = f"capgroup-demo-{suffix}", f"capgroup-demo-{suffix}"
    await create_topic(bootstrap, topic, DEMO_PARTITIONS)
    print(f"topic {topic}: {DEMO_PARTITIONS} partitions; producing {PRODUCE_RATE} records/s")
    members: dict[str, subprocess.Popen[bytes]] = {}
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_produce, bootstrap, topic)
            for plan in MEMBERS:
                members[plan.name] = _start_member(plan, bootstrap, topic, group, tmp)
            print(
                "started " + ", ".join(f"{p.name} (pid {members[p.name].pid})" for p in MEMBERS),
                flush=True,
            )
            view = await _wait_for(
                bootstrap, group, members, len(MEMBERS), "all 12 partitions assigned"
            )
            print(f"\nthe group with {len(MEMBERS)} members:")
            print(render(view, DEMO_PARTITIONS))
            victim = max(MEMBERS, key=lambda p: p.max_partitions).name
            members[victim].send_signal(signal.SIGKILL)
            members[victim].wait(10)
            print(
                f"\nSIGKILLed {victim} (pid {members[victim].pid}); the group notices after its "
                f"session timeout ({SESSION_TIMEOUT_MS / 1000:.0f} s)",
                flush=True,
            )
            view = await _wait_for(
                bootstrap, group, members, len(MEMBERS) - 1, "the survivors to rebalance"
            )
            print(f"\nthe group after {victim} died:")
            print(render(view, DEMO_PARTITIONS))
            print(blind_comparison(view, topic))
            print(_archive_summary(tmp / "archive"), flush=True)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_stop_members, members)
            with contextlib.suppress(Exception):
                await delete_topics(bootstrap, [topic])


def _start_member(
    plan: MemberPlan, bootstrap: str, topic: str, group: str, tmp: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGROUP_")}
    env.update(
        {
            "CAPGROUP_BOOTSTRAP_SERVERS": bootstrap,
            "CAPGROUP_GROUP_ID": group,
            "CAPGROUP_TOPICS": topic,
            "CAPGROUP_CLIENT_ID": plan.name,
            "CAPGROUP_MAX_PARTITIONS": str(plan.max_partitions),
            "CAPGROUP_MEMORY_BUDGET_BYTES": str(plan.budget_bytes),
            "CAPGROUP_BATCH_MAX_BYTES": str(BATCH_MAX_BYTES),
            "CAPGROUP_BATCH_MAX_RECORDS": str(BATCH_MAX_RECORDS),
            "CAPGROUP_MAX_PARTITION_FETCH_BYTES": str(FETCH_BYTES),
            "CAPGROUP_BATCH_MAX_AGE_MS": "2000",
            "CAPGROUP_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            "CAPGROUP_HEARTBEAT_INTERVAL_MS": "500",
            "CAPGROUP_REBALANCE_TIMEOUT_MS": "10000",
            "CAPGROUP_REVOKE_SAFETY_MARGIN_MS": "3000",
            "CAPGROUP_SHUTDOWN_TIMEOUT_MS": "8000",
            "CAPGROUP_LOG_FORMAT": "json",
            "ARCHIVER_DIR": str(tmp / "archive"),
        }
    )
    with open(tmp / f"{plan.name}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "capgroup.cli.main", "run", ARCHIVER],
            cwd=tmp,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _stop_members(members: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM every member still running (a graceful leave), SIGKILL what outlives 15 s."""
    for proc in members.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in members.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def _produce(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:
        n = 0
        while True:
            for _ in range(PRODUCE_RATE // 10):
                value = f'{{"event": {n}, "at": {time.time():.3f}}}'.encode()
                await producer.send(topic, value=value, key=str(n).encode())
                n += 1
            await anyio.sleep(0.1)
    finally:
        with anyio.CancelScope(shield=True):
            await producer.stop()


async def describe_group(bootstrap: str, group: str) -> GroupView:
    """The group's state and members, decoded from DescribeGroups (metadata and assignment)."""
    async with admin_client(bootstrap) as admin:
        responses = await admin.describe_consumer_groups([group])
    described = responses[0].to_object()["groups"][0]
    members = []
    for m in described["members"]:
        capacity = CapacityAdvertisement(
            max_partitions=0, memory_budget_bytes=0, partition_bytes={}
        )
        with contextlib.suppress(MetadataDecodeError):
            metadata = decode_member_metadata(m["member_metadata"])
            capacity = decode_advertisement(metadata.user_data)
        partitions: tuple[TopicPartition, ...] = ()
        unassigned = pending = 0
        if m["member_assignment"]:
            assignment = ConsumerProtocolMemberAssignment.decode(m["member_assignment"])
            partitions = tuple(
                sorted(TopicPartition(t, p) for t, ps in assignment.assignment for p in ps)
            )
            with contextlib.suppress(MetadataDecodeError):
                info = decode_assignment_info(assignment.user_data or b"")
                unassigned, pending = info.unassigned, info.pending
        members.append(MemberView(m["client_id"], capacity, partitions, unassigned, pending))
    return GroupView(described["state"], tuple(sorted(members, key=lambda v: v.name)))


async def _wait_for(
    bootstrap: str,
    group: str,
    members: dict[str, subprocess.Popen[bytes]],
    count: int,
    what: str,
    within: float = 45.0,
) -> GroupView:
    """Poll until the group is stable with ``count`` members, nothing pending, and every
    partition either owned or reported unassigned."""
    deadline = anyio.current_time() + within
    view = GroupView("unknown", ())
    while anyio.current_time() < deadline:
        dead = [n for n, p in members.items() if p.poll() is not None and p.returncode != -9]
        if dead:
            raise DemoError(f"member {dead[0]} exited with code {members[dead[0]].returncode}")
        with contextlib.suppress(Exception):
            view = await describe_group(bootstrap, group)
        settled = (
            view.state == "Stable"
            and len(view.members) == count
            and all(m.pending == 0 and m.capacity.max_partitions for m in view.members)
            and view.owned + max((m.unassigned for m in view.members), default=0) == DEMO_PARTITIONS
        )
        if settled:
            return view
        await anyio.sleep(0.5)
    raise DemoError(f"timed out after {within:.0f} s waiting for {what}; last seen {view}")


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def render(view: GroupView, partitions: int) -> str:
    """A fixed-width table of members, their budget and their partitions."""
    rows = [("member", "partitions", "bytes / budget", "util", "owns")]
    for m in view.members:
        cap = m.capacity
        used = sum(cap.cost_of(tp.topic) for tp in m.partitions)
        budget = cap.memory_budget_bytes
        rows.append(
            (
                m.name,
                f"{len(m.partitions)}/{cap.max_partitions}",
                f"{_mib(used)} / {_mib(budget)}",
                f"{100 * used / budget:.0f}%" if budget else "-",
                ",".join(str(tp.partition) for tp in m.partitions),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    owned = {tp.partition for m in view.members for tp in m.partitions}
    missing = [p for p in range(partitions) if p not in owned]
    lines.append(
        f"unassigned: {len(missing)}"
        + (f" (partitions {','.join(map(str, missing))})" if missing else "")
    )
    return "\n".join(line.rstrip() for line in lines)


def blind_comparison(view: GroupView, topic: str) -> str:
    """What a capacity-blind round-robin would have given the same survivors."""
    counts = dict.fromkeys((m.name for m in view.members), 0)
    names = sorted(counts)
    for p in range(DEMO_PARTITIONS):
        counts[names[p % len(names)]] += 1
    parts = []
    for m in view.members:
        cost = counts[m.name] * m.capacity.cost_of(topic)
        parts.append(
            f"{m.name} {counts[m.name]} partitions = {_mib(cost)} "
            f"({100 * cost / m.capacity.memory_budget_bytes:.0f}% of its budget)"
        )
    return "a capacity-blind round-robin would give " + ", ".join(parts)


def _archive_summary(archive: Path) -> str:
    files = list(archive.rglob("*.jsonl.gz")) if archive.exists() else []
    return f"archived so far: {len(files)} files under the members' ARCHIVER_DIR"
