"""``capgroup describe``: a live capgroup group (members, advertisements, assignment,
unassigned partitions, lag and headroom as the broker reports them), a plain aiokafka group
(capacity-blind, never a failure), an unknown group, an unreachable Kafka and a closed pipe.

The figures without a broker (replicas wanted, the assignment decoder, the text rendering)
are tested on built values."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata
from aiokafka.structs import TopicPartition as KafkaTopicPartition

from capgroup import TopicPartition
from capgroup.assignor.model import MemberSpec, PartitionSpec
from capgroup.cli.describe_cmd import describe_json, render
from capgroup.operations.describe import (
    GroupState,
    MemberState,
    PartitionLag,
    decode_assignment,
    replicas_wanted,
)
from capgroup.protocol import AssignmentInfo, encode_member_assignment
from capgroup.types import CapacityAdvertisement
from tests.processes import capgroup_env
from tests.runtime.harness import (
    ROOT,
    Recorder,
    committed_offsets,
    consumer_settings,
    produce,
    running,
    wait_until,
)

KIB = 1024


async def describe(bootstrap: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``capgroup describe ARGS`` in a child process (the event loop keeps running, so
    in-process members keep their heartbeats)."""
    return await anyio.run_process(
        [sys.executable, "-m", "capgroup.cli.main", "describe", *args],
        env=capgroup_env({"bootstrap_servers": bootstrap}),
        cwd=ROOT,
        check=False,
    )


async def broker_ends(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([KafkaTopicPartition(*tp) for tp in tps])
    finally:
        await consumer.stop()
    return {TopicPartition(tp.topic, tp.partition): offset for tp, offset in ends.items()}


async def commit_for_group(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` without joining it (a manually assigned consumer)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([KafkaTopicPartition(*tp) for tp in offsets])
        await consumer.commit(
            {KafkaTopicPartition(*tp): OffsetAndMetadata(o, "") for tp, o in offsets.items()}
        )
    finally:
        await consumer.stop()


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_describe_a_live_capgroup_group_matches_the_broker(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=6)
    group = unique_id("g")
    tps = [TopicPartition(topic, p) for p in range(6)]
    for p in range(6):
        await produce(bootstrap, topic, p, 10 + p)
    # Every partition starts at offset 3: the unassigned ones have a lag too.
    await commit_for_group(bootstrap, group, dict.fromkeys(tps, 3))
    budget = 4 * 1024 * KIB
    common = {
        "max_partitions": 2,
        "memory_budget_bytes": budget,
        "batch_max_records": 4,
        "batch_max_age_ms": 600_000,
        "batch_max_bytes": 256 * KIB,
        "max_partition_fetch_bytes": 256 * KIB,
    }
    a = Recorder("a", **consumer_settings(bootstrap, group, topic, client_id="member-a", **common))
    b = Recorder(
        "b",
        **consumer_settings(
            bootstrap, group, topic, client_id="member-b", **{**common, "rack": "rack-b"}
        ),
    )
    async with running(a, b):
        await wait_until(
            lambda: len(a.assignment) + len(b.assignment) == 4, 30, "four partitions owned"
        )
        # Batches of 4 from offset 3: each owned partition commits 3 + 4k, the rest stays
        # buffered (the age limit is far away), so the lag settles and stays.
        settled = {tp: 3 + 4 * ((10 + tp.partition - 3) // 4) for tp in tps}

        async def commits_settled() -> bool:
            found = await committed_offsets(bootstrap, group, tps)
            owned = set(a.assignment) | set(b.assignment)
            return all(found[tp] == settled[tp] for tp in owned)

        deadline = anyio.current_time() + 20
        while not await commits_settled():
            assert anyio.current_time() < deadline, "the owned partitions did not commit"
            await anyio.sleep(0.2)

        result = await describe(bootstrap, "--group", group, "--json")
        assert result.returncode == 0, result.stderr.decode()
        doc = json.loads(result.stdout)
        found = await committed_offsets(bootstrap, group, tps)
        committed = {tp: offset for tp, offset in found.items() if offset is not None}
        assert len(committed) == len(tps), found
        ends = await broker_ends(bootstrap, tps)
        owned_by = dict.fromkeys(a.assignment, "member-a") | dict.fromkeys(b.assignment, "member-b")

    assert doc["group"] == group
    assert doc["state"] == "Stable"
    assert doc["protocol"] == "capgroup-cooperative"
    assert doc["capacity_aware"] is True
    assert doc["topics"] == [topic]
    members = {m["client_id"]: m for m in doc["members"]}
    assert set(members) == {"member-a", "member-b"}
    for name, m in members.items():
        adv = m["advertisement"]
        assert adv["max_partitions"] == 2
        assert adv["memory_budget_bytes"] == budget
        assert adv["draining"] is False
        assert adv["rack"] == ("rack-b" if name == "member-b" else None)
        assert len(m["assignment"]) == 2
        assert m["partition_utilisation"] == 1.0
        cost = adv["partition_bytes"].get(topic, adv["default_partition_bytes"])
        assert cost > 0
        assert m["used_bytes"] == 2 * cost
        assert m["bytes_utilisation"] == 2 * cost / budget
        assert m["assignment_info"]["unassigned"] == 2
    assigned = {
        TopicPartition(p["topic"], p["partition"]): name
        for name, m in members.items()
        for p in m["assignment"]
    }
    assert assigned == owned_by
    unassigned = {TopicPartition(p["topic"], p["partition"]): p["lag"] for p in doc["unassigned"]}
    assert set(unassigned) == set(tps) - set(assigned)
    for p in doc["partitions"]:
        tp = TopicPartition(p["topic"], p["partition"])
        assert p["high_watermark"] == ends[tp] == 10 + tp.partition
        assert p["committed_offset"] == committed[tp]
        assert p["lag"] == ends[tp] - committed[tp]
        assert p["owner"] == assigned.get(tp)
        if tp in unassigned:
            assert p["committed_offset"] == 3
            assert unassigned[tp] == p["lag"] == ends[tp] - 3
    assert doc["lag"] == sum(ends[tp] - committed[tp] for tp in tps)
    assert doc["capacity_partitions"] == 4
    assert doc["demand_partitions"] == 6
    assert doc["headroom"] == 0  # already short
    # Members of the same size (2 partitions): 3 place all 6, one more keeps the headroom.
    assert doc["replicas_wanted"] == 4


@pytest.mark.anyio
@pytest.mark.timeout(90)
async def test_describe_a_plain_aiokafka_group_as_capacity_blind(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=3)
    group = unique_id("plain")
    for p in range(3):
        await produce(bootstrap, topic, p, 5)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id="plain-consumer",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        await wait_until(lambda: len(consumer.assignment()) == 3, 30, "an assignment")
        await consumer.commit({KafkaTopicPartition(topic, 0): OffsetAndMetadata(2, "")})
        result = await describe(bootstrap, "--group", group, "--json")
        text = await describe(bootstrap, "--group", group)
    finally:
        await consumer.stop()
    assert result.returncode == 0, result.stderr.decode()
    doc = json.loads(result.stdout)
    assert doc["capacity_aware"] is False
    assert doc["protocol_type"] == "consumer"
    assert doc["protocol"] in ("range", "roundrobin")
    assert doc["headroom"] is None
    assert doc["replicas_wanted"] is None
    (member,) = doc["members"]
    assert member["client_id"] == "plain-consumer"
    assert member["advertisement"] is None
    assert sorted(p["partition"] for p in member["assignment"]) == [0, 1, 2]
    lags = {p["partition"]: p["lag"] for p in doc["partitions"]}
    assert lags == {0: 3, 1: None, 2: None}  # nothing committed on 1 and 2
    assert doc["unassigned"] == []
    assert text.returncode == 0, text.stderr.decode()
    out = text.stdout.decode()
    assert "capacity-blind" in out
    assert "plain-consumer" in out


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_an_unknown_group_is_one_line_and_exit_2(kafka: Any, unique_id: Any) -> None:
    group = unique_id("nobody")
    result = await describe(kafka.bootstrap_servers, "--group", group)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert group in lines[0]
    assert "does not exist" in lines[0]
    assert result.stdout == b""


@pytest.mark.anyio
@pytest.mark.timeout(90)
async def test_head_of_a_description_ends_quietly(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=40)
    group = unique_id("g")
    await commit_for_group(bootstrap, group, {TopicPartition(topic, p): 0 for p in range(40)})
    env = capgroup_env({"bootstrap_servers": bootstrap})
    for args in ("", " --json"):
        result = await anyio.run_process(
            f"{sys.executable} -m capgroup.cli.main describe --group {group}{args} | head -1",
            env=env,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0
        assert len(result.stdout.decode().splitlines()) == 1
        err = result.stderr.decode()
        assert "Traceback" not in err, err
        assert "BrokenPipeError" not in err, err


# --- without a broker ---------------------------------------------------------------------


def spec(name: str, cap: int, topics: tuple[str, ...] = ("t",), **kw: Any) -> MemberSpec:
    return MemberSpec(
        name,
        frozenset(topics),
        CapacityAdvertisement(max_partitions=cap, memory_budget_bytes=cap * 10, **kw),
    )


def parts(n: int, topic: str = "t") -> list[PartitionSpec]:
    return [PartitionSpec(topic, p) for p in range(n)]


@pytest.mark.parametrize(
    ("caps", "partitions", "headroom", "wanted"),
    [
        ((2, 2), 6, 1, 4),  # 3 × 2 place 6; a 4th survives losing one
        ((2, 2), 6, 0, 3),
        ((6, 4, 3), 12, 0, 3),  # already enough
        ((4, 3), 12, 0, 4),  # typical member holds 4: 4 + 3 + 4 + 4 = 15 >= 12, 11 is not
        ((4, 3), 12, 1, 5),  # and one to lose: 19 - 4 >= 12
        ((4, 3), 0, 1, 1),  # nothing to place: the headroom alone
    ],
)
def test_replicas_wanted(
    caps: tuple[int, ...], partitions: int, headroom: int, wanted: int
) -> None:
    members = [
        MemberSpec(
            f"m{i}",
            frozenset({"t"}),
            CapacityAdvertisement(
                max_partitions=cap, memory_budget_bytes=cap * 10, partition_bytes={"t": 10}
            ),
        )
        for i, cap in enumerate(caps)
    ]
    assert replicas_wanted(members, parts(partitions), headroom) == wanted


def test_assignment_decoder_reads_what_the_encoder_writes() -> None:
    tps = [TopicPartition("b", 1), TopicPartition("a", 2), TopicPartition("a", 0)]
    info = AssignmentInfo(generation=7, unassigned=3, pending=1)
    decoded, user_data = decode_assignment(encode_member_assignment(tps, info))
    assert decoded == tuple(sorted(tps))
    assert user_data
    assert decode_assignment(b"") == ((), b"")


def test_text_rendering_of_a_short_group() -> None:
    adv = CapacityAdvertisement(
        max_partitions=2,
        memory_budget_bytes=4 * 1024 * 1024,
        partition_bytes={"t": 2 * 1024 * 1024},
    )
    tp = TopicPartition
    members = (MemberState("id-a", "a", "/h", None, ("t",), adv, (tp("t", 0), tp("t", 1)), None),)
    state = GroupState(
        group="g",
        state="Stable",
        protocol_type="consumer",
        protocol="capgroup-cooperative",
        members=members,
        partitions={
            tp("t", p): PartitionLag(tp("t", p), 0, 10, 4, "a" if p < 2 else None) for p in range(3)
        },
        topics=("t",),
    )
    text = render(state)
    assert "a       2/2         4.0 MiB / 4.0 MiB  100%" in text
    assert "unassigned: 1 (partitions 2; lag 6)" in text
    assert "capacity 2 of 3 partitions; headroom 0 members; replicas wanted 3 (+2)" in text
    doc = describe_json(state)
    assert doc["unassigned"] == [{"topic": "t", "partition": 2, "lag": 6}]
    assert doc["lag"] == 18
