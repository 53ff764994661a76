"""``capgroup demo``: three archiver members with different budgets; one dies; nobody overloads.

The demo starts a local Kafka (or uses ``KAFKA_BOOTSTRAP_SERVERS``), creates a 12-partition
topic, produces to it steadily, and starts three archiver members
(:class:`~capgroup.cli.demo_archiver.DemoArchiver`, shipped with the package; the archiver
example in ``examples/archiver`` is its documented source) as separate ``capgroup run``
processes with different partition caps and memory budgets. It prints the group as the
broker describes it: every member's advertisement (decoded from its JoinGroup metadata) and
its partitions (decoded from the assignment the leader sent), with the code of ``capgroup
describe`` (:mod:`capgroup.operations.describe`). It then SIGKILLs the largest member and
prints the group again once the survivors have rebalanced: each stays within its budget and
the partitions nobody can hold are reported as unassigned, with their lag, the group's figures
(headroom, replicas wanted) and the members' ``capgroup_group_*`` metrics, next to what a
capacity-blind round-robin would have done. As an autoscaler would, it then starts one more
member the size of the dead one, shows the unassigned partitions consumed again, stops the
producer and checks that every produced record was archived exactly once. Everything it
started (members, producer, temp directory, topic, broker) is cleaned up.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from aiokafka import AIOKafkaProducer

from capgroup.cli.describe_cmd import render_figures, render_members
from capgroup.devkafka.admin import connection_settings, create_topic, delete_topics
from capgroup.devkafka.cluster import LocalKafkaCluster
from capgroup.devkafka.jars import KafkaLocalError
from capgroup.errors import leaf_exceptions
from capgroup.log import configure_logging
from capgroup.operations.describe import GroupState, describe_group
from capgroup.settings import CapgroupSettings, partition_cost_bytes

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
    "SCALE_UP_NAME",
    "SESSION_TIMEOUT_MS",
    "ArchiveCheck",
    "DemoError",
    "MemberPlan",
    "blind_comparison",
    "check_archive",
    "register",
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
#: The member the "autoscaler" adds after the kill (named after the next letter).
SCALE_UP_NAME = "archiver-d"


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
    settings = connection_settings(bootstrap).model_copy(update={"bootstrap_timeout_ms": 10_000})
    await create_topic(bootstrap, topic, DEMO_PARTITIONS)
    print(f"topic {topic}: {DEMO_PARTITIONS} partitions; producing {PRODUCE_RATE} records/s")
    members: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    archive = tmp / "archive"
    producer = _Producer()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer.run, bootstrap, topic)
            for plan in MEMBERS:
                members[plan.name], ports[plan.name] = _start_member(
                    plan, bootstrap, topic, group, tmp
                )
            print(
                "started " + ", ".join(f"{p.name} (pid {members[p.name].pid})" for p in MEMBERS),
                flush=True,
            )
            state = await _wait_for(
                settings,
                group,
                members,
                len(MEMBERS),
                "all 12 partitions assigned and committed",
                committed=True,
            )
            print(f"\nthe group with {len(MEMBERS)} members:")
            print(render_members(state))
            killed = max(MEMBERS, key=lambda p: p.max_partitions)
            victim = killed.name
            victims_partitions = {
                tp.partition for m in state.members if m.name == victim for tp in m.partitions
            }
            members[victim].send_signal(signal.SIGKILL)
            members[victim].wait(10)
            print(
                f"\nSIGKILLed {victim} (pid {members[victim].pid}); the group notices after its "
                f"session timeout ({SESSION_TIMEOUT_MS / 1000:.0f} s)",
                flush=True,
            )
            state = await _wait_for(
                settings, group, members, len(MEMBERS) - 1, "the survivors to rebalance"
            )
            redo = _uncommitted_archive(archive / topic, state, victims_partitions)
            print(f"\nthe group after {victim} died (capgroup describe --group {group}):")
            print(render_members(state))
            print(render_figures(state))
            print(blind_comparison(state, topic))
            survivor = next(p.name for p in MEMBERS if p.name != victim)
            print(f"{survivor}'s /metrics (the leader's figures, on every member):")
            print(await _group_metrics(ports[survivor], state))
            print(
                "an autoscaler following capgroup_group_replicas_wanted adds members of the "
                "group's typical size until it can lose "
                f"{state.autoscale_headroom} and still place all {DEMO_PARTITIONS}"
            )

            plan = MemberPlan(SCALE_UP_NAME, killed.max_partitions)
            members[plan.name], ports[plan.name] = _start_member(plan, bootstrap, topic, group, tmp)
            print(
                f"\nas an autoscaler would: started {plan.name} (pid {members[plan.name].pid}), "
                f"sized like {victim} "
                f"({plan.max_partitions} partitions, {_mib(plan.budget_bytes)})",
                flush=True,
            )
            state = await _wait_for(
                settings, group, members, len(MEMBERS), f"{plan.name} to take the partitions"
            )
            print(f"\nthe group with {plan.name}:")
            print(render_members(state))
            print(render_figures(state))

            await producer.stop()
            print(
                f"\nstopped the producer after {producer.sent:,} records; waiting for the "
                "members to archive and commit everything",
                flush=True,
            )
            state = await _wait_for_no_lag(settings, group, members)
            print(render_members(state))
            check = check_archive(archive / topic, state)
            print(check.summary(victim, plan.name, redo))
            if not check.complete:
                raise DemoError(check.summary(victim, plan.name, redo))
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await producer.stop()
            await anyio.to_thread.run_sync(_stop_members, members)
            with contextlib.suppress(Exception):
                await delete_topics(bootstrap, [topic])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_member(
    plan: MemberPlan, bootstrap: str, topic: str, group: str, tmp: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """Start one ``capgroup run`` member; returns it and the port of its /metrics."""
    port = _free_port()
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
            "CAPGROUP_HTTP_PORT": str(port),
            "CAPGROUP_LOG_FORMAT": "json",
            "ARCHIVER_DIR": str(tmp / "archive"),
        }
    )
    with open(tmp / f"{plan.name}.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "capgroup.cli.main", "run", ARCHIVER],
            cwd=tmp,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, port


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


@dataclass
class _Producer:
    """The demo's producer: numbered JSON records at :data:`PRODUCE_RATE` until stopped."""

    sent: int = 0
    _stop: anyio.Event = field(default_factory=anyio.Event)
    _done: anyio.Event = field(default_factory=anyio.Event)
    _started: bool = False

    async def run(self, bootstrap: str, topic: str) -> None:
        self._started = True
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, acks="all")
        await producer.start()
        try:
            while not self._stop.is_set():
                for _ in range(PRODUCE_RATE // 10):
                    value = f'{{"event": {self.sent}, "at": {time.time():.3f}}}'.encode()
                    await producer.send(topic, value=value, key=str(self.sent).encode())
                    self.sent += 1
                with anyio.move_on_after(0.1):
                    await self._stop.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await producer.stop()  # delivers what is still batched
                self._done.set()

    async def stop(self) -> None:
        """Stop producing and wait until every record sent is delivered."""
        self._stop.set()
        if self._started:
            await self._done.wait()


async def _describe(settings: CapgroupSettings, group: str) -> GroupState | None:
    try:
        return await describe_group(settings, group)
    except Exception:  # the group is forming, a coordinator moving: ask again
        return None


def _check_members(members: dict[str, subprocess.Popen[bytes]]) -> None:
    dead = [n for n, p in members.items() if p.poll() is not None and p.returncode != -9]
    if dead:
        raise DemoError(f"member {dead[0]} exited with code {members[dead[0]].returncode}")


async def _wait_for(
    settings: CapgroupSettings,
    group: str,
    members: dict[str, subprocess.Popen[bytes]],
    count: int,
    what: str,
    within: float = 45.0,
    *,
    committed: bool = False,
) -> GroupState:
    """Poll until the group is stable with ``count`` members, nothing pending, and every
    partition either owned or reported unassigned (with ``committed``, also every partition
    committed at least once)."""
    deadline = anyio.current_time() + within
    state: GroupState | None = None
    while anyio.current_time() < deadline:
        _check_members(members)
        state = await _describe(settings, group) or state
        infos = [m.info for m in state.members] if state else []
        settled = (
            state is not None
            and state.state == "Stable"
            and len(state.members) == count
            and all(m.advertisement is not None for m in state.members)
            and all(i is not None and i.pending == 0 for i in infos)
            and state.owned + max((i.unassigned for i in infos if i), default=0) == DEMO_PARTITIONS
            and (not committed or all(p.committed for p in state.partitions.values()))
        )
        if settled and state is not None:
            return state
        await anyio.sleep(0.5)
    raise DemoError(f"timed out after {within:.0f} s waiting for {what}; last seen {state}")


async def _wait_for_no_lag(
    settings: CapgroupSettings,
    group: str,
    members: dict[str, subprocess.Popen[bytes]],
    within: float = 30.0,
) -> GroupState:
    """Poll until every partition is committed up to its high watermark."""
    deadline = anyio.current_time() + within
    state: GroupState | None = None
    while anyio.current_time() < deadline:
        _check_members(members)
        state = await _describe(settings, group) or state
        if state is not None and all(p.lag == 0 for p in state.partitions.values()):
            return state
        await anyio.sleep(0.5)
    lag = "unknown" if state is None else f"{state.total_lag:,} records"
    raise DemoError(f"the members did not catch up within {within:.0f} s (lag {lag})")


async def _group_metrics(port: int, state: GroupState) -> str:
    """The ``capgroup_group_*`` lines of a member's /metrics (describe's figures when the
    member exports none)."""

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    text = ""
    with contextlib.suppress(OSError):
        text = await anyio.to_thread.run_sync(scrape)
    lines = [
        "  " + re.sub(r"\{[^}]*\}", "", line)
        for line in text.splitlines()
        if line.startswith("capgroup_group_")
        and any(
            line.startswith(f"capgroup_group_{name}")
            for name in ("unassigned", "pending", "members", "headroom", "replicas_wanted")
        )
    ]
    if lines:
        return "\n".join(lines)
    return (
        f"  (no capgroup_group_* series; from describe: unassigned {len(state.unassigned)}, "
        f"replicas wanted {state.replicas_wanted})"
    )


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def blind_comparison(state: GroupState, topic: str) -> str:
    """What a capacity-blind round-robin would have given the same survivors."""
    counts = dict.fromkeys((m.name for m in state.members), 0)
    names = sorted(counts)
    for p in range(DEMO_PARTITIONS):
        counts[names[p % len(names)]] += 1
    parts = []
    for m in state.members:
        if m.advertisement is None:
            continue
        cost = counts[m.name] * m.advertisement.cost_of(topic)
        parts.append(
            f"{m.name} {counts[m.name]} partitions = {_mib(cost)} "
            f"({100 * cost / m.advertisement.memory_budget_bytes:.0f}% of its budget)"
        )
    return "a capacity-blind round-robin would give " + ", ".join(parts)


def _archived_files(folder: Path) -> Iterator[tuple[int, int, int, Path]]:
    """``(partition, first offset, last offset, path)`` of every finished archive file."""
    if not folder.exists():
        return
    for path in sorted(folder.glob("*/*.jsonl.gz")):
        first, _, last = path.name.removesuffix(".jsonl.gz").partition("-")
        if first.isdigit() and last.isdigit():
            yield int(path.parent.name), int(first), int(last), path


def _uncommitted_archive(folder: Path, state: GroupState, partitions: set[int]) -> int:
    """Records of ``partitions`` already archived past the committed offset (what the dead
    member flushed but never committed; its successor reads them again)."""
    total = 0
    for partition, first, last, _ in _archived_files(folder):
        if partition not in partitions:
            continue
        tp = next((tp for tp in state.partitions if tp.partition == partition), None)
        committed = state.partitions[tp].committed if tp is not None else None
        if committed is not None and first >= committed:
            total += last - first + 1
    return total


@dataclass(frozen=True)
class ArchiveCheck:
    """Produced records (the high watermarks) against what the archive holds."""

    produced: int
    archived: int
    distinct: int
    missing: int
    files: int

    @property
    def duplicates(self) -> int:
        """Records archived more than once."""
        return self.archived - self.distinct

    @property
    def complete(self) -> bool:
        """Every produced record is in the archive."""
        return self.missing == 0

    def summary(self, victim: str, successor: str, redo: int) -> str:
        """The demo's last word on the archive."""
        verdict = (
            "every produced record was archived"
            if self.complete
            else f"{self.missing:,} produced records are missing from the archive"
        )
        why = (
            f"{victim} had archived {redo:,} records past its last commit when it was killed; "
            f"{successor} read them again from the committed offset and replaced those files"
            if redo
            else f"{victim} had committed everything it archived before it was killed"
        )
        return (
            f"{verdict}: {self.produced:,} produced, {self.distinct:,} in {self.files} archive "
            f"files, {self.duplicates:,} duplicates ({why})"
        )


def check_archive(folder: Path, state: GroupState) -> ArchiveCheck:
    """Count the archive's records per partition against the high watermarks in ``state``."""
    ends = {tp.partition: p.high_watermark or 0 for tp, p in state.partitions.items()}
    seen: set[tuple[int, int]] = set()
    archived = files = 0
    for partition, _, _, path in _archived_files(folder):
        files += 1
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                seen.add((partition, int(json.loads(line)["offset"])))
                archived += 1
    produced = sum(ends.values())
    missing = sum(
        1 for partition, end in ends.items() for o in range(end) if (partition, o) not in seen
    )
    return ArchiveCheck(produced, archived, len(seen), missing, files)
