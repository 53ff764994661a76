"""The membership engine against a real broker: cooperative rebalancing, fencing, static
membership, coordinator failover and bad metadata."""

from __future__ import annotations

import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest

from capgroup.assignor.model import CapacityAdvertisement
from capgroup.membership.engine import MembershipEngine
from capgroup.membership.model import AssignmentChange
from capgroup.protocol.consumer import encode_member_metadata
from tests.membership.harness import (
    FAST,
    EventLog,
    MemberProcess,
    current_assignment,
    in_process_group,
    last_generation,
    member_settings,
    now,
    process_settings,
    processes,
    steady_producer,
    wait_until,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]


def owners_by_generation(events: list[dict[str, Any]]) -> dict[int, dict[tuple[str, int], str]]:
    """generation -> partition -> member, from every member's assigned/revoked events;
    fails if two members claim one partition in one generation."""
    table: dict[int, dict[tuple[str, int], str]] = defaultdict(dict)
    for e in events:
        if e["event"] not in ("assigned", "revoked"):
            continue
        for topic, partition in e["assigned"]:
            other = table[e["generation"]].setdefault((topic, partition), e["member"])
            assert other == e["member"], (
                f"{topic}-{partition} owned by {other} and {e['member']} in generation "
                f"{e['generation']}"
            )
    return table


async def test_third_member_joins_cooperatively(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=12)
    group = unique_id("g")
    log = EventLog()
    settings = member_settings(kafka.bootstrap_servers, group, topic, max_partitions=12)
    async with in_process_group(log) as members:
        async with steady_producer(kafka.bootstrap_servers, topic, 12, per_second=120) as sent:
            await members.add("a", settings)
            await members.add("b", settings)
            await wait_until(
                lambda: (
                    len(members.members["a"].engine.assignment)
                    + len(members.members["b"].engine.assignment)
                    == 12
                    and members.members["a"].engine.state.value == "stable"
                ),
                30,
                "a and b to share 12 partitions",
            )
            await anyio.sleep(2)
            before = {name: set(m.engine.assignment) for name, m in members.members.items()}
            joined_at = now()
            await members.add("c", settings)
            await wait_until(
                lambda: all(len(m.engine.assignment) == 4 for m in members.members.values()),
                30,
                "a balanced 4/4/4 assignment",
            )
            settled_at = now()
            await anyio.sleep(2)
            after = {name: set(m.engine.assignment) for name, m in members.members.items()}
        total_sent = sum(len(v) for v in sent.values())

        def all_consumed() -> bool:
            seen = {(e["partition"], e["offset"]) for e in log.of("record")}
            return all((p, o) in seen for p, offs in sent.items() for o in offs)

        await wait_until(all_consumed, 20, "every produced record to be consumed")

    events = log.events
    owners = owners_by_generation(events)
    # Retained partitions kept flowing: their consumption latency never spiked.
    retained = {(tp.topic, tp.partition) for n in ("a", "b") for tp in before[n] & after[n]}
    assert len(retained) == 8
    worst = 0.0
    for e in events:
        in_window = joined_at - 1 <= e["t"] <= settled_at + 1
        if e["event"] == "record" and in_window and (e["topic"], e["partition"]) in retained:
            worst = max(worst, e["t"] - e["produced_ms"] / 1000)
    assert worst < 1.5, f"a retained partition waited {worst:.2f} s during the rebalance"
    # Moved partitions reached c only in a later generation than the one revoking them.
    revoked_gen = {
        (t, p): e["generation"]
        for e in events
        if e["event"] == "revoked"
        for t, p in e["partitions"]
    }
    gained = [e for e in events if e["event"] == "assigned" and e["member"] == "c"]
    moved = {(t, p) for e in gained for t, p in e["partitions"]}
    assert len(moved) == 4
    for e in gained:
        for t, p in e["partitions"]:
            assert e["generation"] > revoked_gen[(t, p)], (t, p, e["generation"])
    assert owners  # every generation had exclusive owners (checked while building)
    consumed = {(e["partition"], e["offset"]) for e in events if e["event"] == "record"}
    missing = [(p, o) for p, offs in sent.items() for o in offs if (p, o) not in consumed]
    assert not missing, f"{len(missing)} of {total_sent} records never consumed: {missing[:5]}"


async def test_killed_member_partitions_go_to_survivors_within_budget(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=10)
    group = unique_id("g")
    base = process_settings(kafka.bootstrap_servers, group, topic)
    members = [
        MemberProcess("big", tmp_path / "big.jsonl", {**base, "max_partitions": 6}),
        MemberProcess("small", tmp_path / "small.jsonl", {**base, "max_partitions": 3}),
        MemberProcess("victim", tmp_path / "victim.jsonl", {**base, "max_partitions": 4}),
    ]
    async with (
        steady_producer(kafka.bootstrap_servers, topic, 10, per_second=50),
        processes(*members),
    ):

        def assigned(m: MemberProcess) -> set[tuple[str, int]]:
            return current_assignment(m.events())[1]

        await wait_until(
            lambda: sum(len(assigned(m)) for m in members) == 10,
            60,
            "all 10 partitions assigned",
        )
        killed_at = now()
        members[2].signal(signal.SIGKILL)
        survivors = members[:2]
        await wait_until(
            lambda: sum(len(assigned(m)) for m in survivors) == 9,
            FAST["session_timeout_ms"] / 1000 + 20,
            "survivors to take the victim's partitions up to their budgets",
        )
        recovered_at = now()
        await anyio.sleep(1)
        final = {m.name: assigned(m) for m in survivors}
    assert len(final["big"]) == 6, final
    assert len(final["small"]) == 3, final
    assert not final["big"] & final["small"]
    # Every assignment any survivor ever held stayed within its budget.
    for m, cap in ((members[0], 6), (members[1], 3)):
        for e in m.events():
            if e["event"] in ("assigned", "revoked"):
                assert len(e["assigned"]) <= cap, (m.name, e)
    assert recovered_at - killed_at < FAST["session_timeout_ms"] / 1000 + 20


def _uncommitted(events: list[dict[str, Any]], generation: int) -> list[tuple[int, int]]:
    """The (partition, offset) of every record a member processed in ``generation`` or
    before, at or past its last commit there."""
    last_commit: dict[int, int] = {}
    for e in events:
        if e["event"] == "committed" and e["generation"] <= generation:
            for _, p, off in e["offsets"]:
                last_commit[p] = max(last_commit.get(p, 0), off)
    return [
        (e["partition"], e["offset"])
        for e in events
        if e["event"] == "record"
        and e["generation"] <= generation
        and e["offset"] >= last_commit.get(e["partition"], 0)
    ]


async def test_frozen_member_never_commits_after_waking(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=4)
    group = unique_id("g")
    base = process_settings(kafka.bootstrap_servers, group, topic)
    # Committing every 2 s leaves processed-but-uncommitted records when it freezes.
    zombie = MemberProcess(
        "zombie",
        tmp_path / "zombie.jsonl",
        {**base, "max_partitions": 4},
        extra_env={"PROBE_COMMIT_INTERVAL_S": "2"},
    )
    heir = MemberProcess("heir", tmp_path / "heir.jsonl", {**base, "max_partitions": 4})
    async with steady_producer(kafka.bootstrap_servers, topic, 4, per_second=40), processes(zombie):
        await wait_until(
            lambda: len(current_assignment(zombie.events())[1]) == 4, 60, "zombie owns all"
        )
        await anyio.sleep(1)
        async with processes(heir):
            await wait_until(
                lambda: len(current_assignment(heir.events())[1]) == 2, 60, "heir gets its share"
            )
            frozen_generation = last_generation(zombie.events())
            # Freeze it holding processed records it has not committed yet (it commits every
            # 2 s): right after a commit there may be none, and the test would prove nothing.
            await wait_until(
                lambda: bool(_uncommitted(zombie.events(), frozen_generation)),
                10,
                "the zombie to hold uncommitted records",
            )
            zombie.signal(signal.SIGSTOP)
            frozen_at = now()
            await wait_until(
                lambda: len(current_assignment(heir.events())[1]) == 4,
                FAST["session_timeout_ms"] / 1000 + 20,
                "heir to take over the frozen member's partitions",
            )
            zombie.signal(signal.SIGCONT)
            woke_at = now()
            await anyio.sleep(4)
    zombie_events = zombie.events()
    heir_events = heir.events()
    # A commit that started after the freeze under the frozen generation would be a zombie
    # commit. (Commits in later generations, after the member rejoined, are legitimate.)
    late_commits = [
        e
        for e in zombie_events
        if e["event"] == "committed"
        and e["sent_t"] > frozen_at
        and e["generation"] <= frozen_generation
    ]
    assert not late_commits, f"the zombie committed after waking: {late_commits[:3]}"
    # What the zombie processed in its frozen generation after its last commit there is
    # re-delivered to the heir. (After waking it may rejoin and own partitions again.)
    heir_seen = {(e["partition"], e["offset"]) for e in heir_events if e["event"] == "record"}
    uncommitted = _uncommitted(zombie_events, frozen_generation)
    assert uncommitted, "the zombie froze with nothing uncommitted: the test proves nothing"
    not_redelivered = [r for r in uncommitted if r not in heir_seen]
    assert not not_redelivered, f"processed but uncommitted records lost: {not_redelivered[:5]}"
    assert any(
        e["event"] in ("lost", "commit_fenced") for e in zombie_events if e["t"] >= woke_at - 1
    )


async def test_static_member_restart_keeps_assignment_without_rebalance(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=6)
    group = unique_id("g")
    base = process_settings(
        kafka.bootstrap_servers, group, topic, session_timeout_ms=15000, max_partitions=6
    )
    watcher = MemberProcess(
        "watcher", tmp_path / "watcher.jsonl", {**base, "group_instance_id": "watcher-0"}
    )
    first = MemberProcess(
        "static", tmp_path / "static-1.jsonl", {**base, "group_instance_id": "static-0"}
    )
    async with processes(watcher, first):
        await wait_until(
            lambda: (
                len(current_assignment(watcher.events())[1]) == 3
                and len(current_assignment(first.events())[1]) == 3
            ),
            60,
            "3/3 assignment",
        )
        await anyio.sleep(1)
        _, watcher_before = current_assignment(watcher.events())
        generation_before = last_generation(watcher.events())
        _, static_before = current_assignment(first.events())
        first.signal(signal.SIGTERM)
        assert first.proc is not None
        first.proc.wait(20)
        second = MemberProcess(
            "static", tmp_path / "static-2.jsonl", {**base, "group_instance_id": "static-0"}
        )
        async with processes(second):
            await wait_until(
                lambda: len(current_assignment(second.events())[1]) == 3,
                30,
                "restarted member assigned",
            )
            await anyio.sleep(3)
            _, watcher_after = current_assignment(watcher.events())
            generation_after = last_generation(watcher.events())
            _, static_after = current_assignment(second.events())
    assert static_after == static_before
    assert watcher_after == watcher_before
    assert generation_after == generation_before, "the watcher went through a rebalance"
    restarted = [e for e in second.events() if e["event"] == "assigned"]
    assert restarted[0]["generation"] == generation_before
    assert last_generation(second.events()) == generation_before


class _GarbageMetadataEngine(MembershipEngine):
    """A member whose consumer-protocol envelope is valid but whose capacity advertisement is
    garbage. (Garbage in the envelope itself is refused by Kafka 4.x brokers, which parse it:
    every member's JoinGroup then fails with UNKNOWN_SERVER_ERROR until the member leaves.)"""

    def _member_metadata(self) -> bytes:
        return encode_member_metadata(self._topics, b"\x00\x00not-a-capacity-advertisement\xff")


class _Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, AssignmentChange]] = []

    async def on_partitions_revoked(self, change: AssignmentChange) -> None:
        self.changes.append(("revoked", change))

    async def on_partitions_assigned(self, change: AssignmentChange) -> None:
        self.changes.append(("assigned", change))

    async def on_partitions_lost(self, change: AssignmentChange) -> None:
        self.changes.append(("lost", change))


async def test_member_with_undecodable_metadata_gets_nothing(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=6)
    group = unique_id("g")
    log = EventLog()
    settings = member_settings(kafka.bootstrap_servers, group, topic, max_partitions=6)
    recorder = _Recorder()
    rogue = _GarbageMetadataEngine(
        settings,
        recorder,
        lambda: CapacityAdvertisement(
            max_partitions=6, memory_budget_bytes=1 << 30, partition_bytes={}
        ),
    )
    async with (
        steady_producer(kafka.bootstrap_servers, topic, 6, per_second=30),
        in_process_group(log) as members,
    ):
        good = await members.add("good", settings)
        async with anyio.create_task_group() as tg:
            await tg.start(rogue.run)
            await wait_until(
                lambda: (
                    good.engine.generation.generation_id == rogue.generation.generation_id
                    and good.engine.state.value == "stable"
                    and len(good.engine.assignment) == 6
                ),
                30,
                "the good member to own everything in the rogue's generation",
            )
            assert rogue.assignment == frozenset()
            assert not [c for kind, c in recorder.changes if kind == "assigned"]
            await anyio.sleep(1)
            rogue.stop(leave_group=True)
    records = log.of("record", "good")
    assert records, "the group stopped consuming"


async def test_member_lowering_its_budget_sheds_partitions_cooperatively(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    topic = await topic_factory(partitions=8)
    group = unique_id("g")
    log = EventLog()
    settings = member_settings(kafka.bootstrap_servers, group, topic, max_partitions=6)
    async with in_process_group(log) as members:
        a = await members.add("a", settings)
        b = await members.add("b", settings)
        await wait_until(
            lambda: len(a.engine.assignment) == 4 and len(b.engine.assignment) == 4,
            30,
            "a 4/4 split",
        )
        changed_at = len(log.events)
        a.max_partitions = 1
        await wait_until(
            lambda: (
                len(a.engine.assignment) == 1
                and len(b.engine.assignment) == 6
                and b.engine.state.value == "stable"
            ),
            30,
            "a to shed down to 1 partition and b to fill up to its budget of 6",
        )
        await anyio.sleep(1)
        final_a, final_b = set(a.engine.assignment), set(b.engine.assignment)
    assert not final_a & final_b
    owners_by_generation(log.events)
    for e in log.events:
        if e["event"] in ("assigned", "revoked") and e["member"] == "b":
            assert len(e["assigned"]) <= 6, e
    shed = [e for e in log.events[changed_at:] if e["event"] == "revoked" and e["member"] == "a"]
    assert sum(len(e["partitions"]) for e in shed) == 3, shed
    kept_by_b = [
        e for e in log.events[changed_at:] if e["event"] == "revoked" and e["member"] == "b"
    ]
    assert not kept_by_b, "b lost partitions although only a lowered its budget"


async def test_second_process_with_same_instance_id_fences_the_first(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=2)
    group = unique_id("g")
    base = process_settings(
        kafka.bootstrap_servers, group, topic, group_instance_id="twin-0", max_partitions=2
    )
    first = MemberProcess("first", tmp_path / "first.jsonl", base)
    second = MemberProcess("second", tmp_path / "second.jsonl", base)
    async with processes(first):
        await wait_until(
            lambda: len(current_assignment(first.events())[1]) == 2, 60, "first owns both"
        )
        async with processes(second):
            await wait_until(
                lambda: len(current_assignment(second.events())[1]) == 2, 60, "second owns both"
            )
            assert first.proc is not None
            await wait_until(
                lambda: first.proc.poll() is not None, 20, "the fenced process to stop"
            )
    assert first.proc.returncode == 3, first.stderr_tail()
    message = first.stderr_tail()
    assert "group_instance_id 'twin-0'" in message, message
    assert "Traceback" not in message, message
