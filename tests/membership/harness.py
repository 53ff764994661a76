"""Helpers shared by the membership tests: members in-process or as OS processes, a steady
producer, and readers of the probe members' sinks."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from aiokafka import AIOKafkaProducer

from capgroup.settings import CapgroupSettings, load_settings
from tests.membership.probe_member import ProbeMember
from tests.processes import ChildProcess, capgroup_env, read_jsonl

#: Fast group timings for tests: a dead member is noticed within about 6 s.
FAST = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 500,
    "rebalance_timeout_ms": 15000,
}


def process_settings(bootstrap: str, group: str, topic: str, **overrides: Any) -> dict[str, Any]:
    """Setting values for a test member; ``overrides`` win over the fast defaults."""
    return {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "topics": [topic],
        **FAST,
        **overrides,
    }


def member_settings(bootstrap: str, group: str, topic: str, **overrides: Any) -> CapgroupSettings:
    """Validated settings for an in-process test member."""
    return load_settings(**process_settings(bootstrap, group, topic, **overrides))


@dataclass
class EventLog:
    """Events of in-process probe members, in arrival order."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def sink(self, event: dict[str, Any]) -> None:
        """The probe member's sink."""
        self.events.append(event)

    def of(self, kind: str, member: str | None = None) -> list[dict[str, Any]]:
        """Events of one kind (and member)."""
        return [
            e
            for e in self.events
            if e["event"] == kind and (member is None or e["member"] == member)
        ]


def read_sink(path: Path) -> list[dict[str, Any]]:
    """Events a probe member process wrote (a torn last line from SIGKILL is skipped)."""
    return list(read_jsonl(path))


def current_assignment(events: list[dict[str, Any]]) -> tuple[int, set[tuple[str, int]]]:
    """The member's generation and partitions after replaying its assigned/revoked/lost events."""
    owned: set[tuple[str, int]] = set()
    generation = -1
    for e in events:
        if e["event"] in ("assigned", "revoked"):
            owned = {(t, p) for t, p in e["assigned"]}
            generation = e["generation"]
        elif e["event"] == "lost":
            owned = set()
    return generation, owned


def last_generation(events: list[dict[str, Any]]) -> int:
    """The last generation the member was in, whether or not its partitions changed."""
    generations = [e["generation"] for e in events if e["event"] == "generation"]
    return max(generations, default=-1)


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``predicate`` until true, failing with ``what`` after ``within`` seconds."""
    deadline = anyio.current_time() + within
    while not predicate():
        if anyio.current_time() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")
        await anyio.sleep(0.1)


class MemberProcess(ChildProcess):
    """A probe member running as its own OS process (so it can be SIGKILLed/SIGSTOPped)."""

    def __init__(
        self,
        name: str,
        sink: Path,
        settings: dict[str, Any],
        extra_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            capgroup_env(settings, PROBE_NAME=name, **(extra_env or {})),
            sink.with_suffix(".stderr"),
        )
        self.name = name
        self.sink = sink

    def command(self) -> list[str]:
        """The probe member, writing to :attr:`sink`."""
        return [sys.executable, "-m", "tests.membership.probe_member", str(self.sink)]

    def events(self) -> list[dict[str, Any]]:
        """What the member wrote to its sink so far."""
        return read_sink(self.sink)


@asynccontextmanager
async def processes(*members: MemberProcess) -> Any:
    """Start member processes and always reap them."""
    try:
        for member in members:
            member.start()
        yield members
    finally:
        for member in members:
            member.close()


@asynccontextmanager
async def steady_producer(bootstrap: str, topic: str, partitions: int, per_second: float) -> Any:
    """Produce numbered records round-robin over ``partitions`` at ``per_second`` until exit.

    Yields a dict with ``sent``: {partition: [offsets]} filled as the broker acknowledges.
    """
    sent: dict[int, list[int]] = {p: [] for p in range(partitions)}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    stop = anyio.Event()

    async def run() -> None:
        i = 0
        period = 1.0 / per_second
        next_at = anyio.current_time()
        while not stop.is_set():
            partition = i % partitions
            meta = await producer.send_and_wait(
                topic, value=f"record-{i}".encode(), partition=partition
            )
            sent[partition].append(meta.offset)
            i += 1
            next_at += period
            await anyio.sleep(max(0.0, next_at - anyio.current_time()))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                yield sent
            finally:
                stop.set()
    finally:
        await producer.stop()


class InProcessGroup:
    """Probe members running in this event loop."""

    def __init__(self, log: EventLog, tg: Any) -> None:
        self.log = log
        self.members: dict[str, ProbeMember] = {}
        self._tg = tg

    async def add(self, name: str, settings: CapgroupSettings) -> ProbeMember:
        """Start a member and return once it has its first assignment."""
        member = ProbeMember(settings, self.log.sink, name)
        await self._tg.start(member.run)
        self.members[name] = member
        return member


@asynccontextmanager
async def in_process_group(log: EventLog) -> Any:
    """A task group of in-process members, all stopped (leaving the group) on exit."""
    async with anyio.create_task_group() as tg:
        group = InProcessGroup(log, tg)
        try:
            yield group
        finally:
            for member in group.members.values():
                member.stop(leave_group=True)


def iter_records(events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Record events only."""
    return (e for e in events if e["event"] == "record")


def now() -> float:
    """Wall-clock time, comparable with the probe members' ``t`` field."""
    return time.time()
