"""The group-protocol requests we define, and the engine's pure helpers (no broker)."""

from __future__ import annotations

from io import BytesIO

import pytest
from structlog.testing import capture_logs

from capgroup.assignor.model import CapacityAdvertisement, OwnedPartition
from capgroup.membership import wire
from capgroup.membership.engine import _decode_assignment, _exceeds, _limits, _within
from capgroup.membership.model import NO_GENERATION, Generation
from capgroup.protocol.consumer import AssignmentInfo, encode_member_assignment
from capgroup.types import TopicPartition

HIGHEST = {8: (2, 9), 12: (0, 4), 13: (0, 5)}  # what a Kafka 4.1 broker advertises


def test_heartbeat_negotiates_v3_with_instance_id() -> None:
    built = wire.Heartbeat("g", 7, "m-1", "pod-0").prepare(HIGHEST)
    assert built.API_VERSION == 3
    decoded = type(built).decode(BytesIO(built.encode()))
    assert (decoded.group, decoded.generation_id, decoded.member_id) == ("g", 7, "m-1")
    assert decoded.group_instance_id == "pod-0"


def test_heartbeat_falls_back_to_v1_on_old_brokers() -> None:
    built = wire.Heartbeat("g", 7, "m-1", "pod-0").prepare({12: (0, 1)})
    assert built.API_VERSION == 1
    assert not hasattr(built, "group_instance_id")


def test_offset_commit_v7_carries_member_generation_and_instance() -> None:
    request = wire.OffsetCommit("g", 3, "m-1", None, {"t": [(0, 42, ""), (5, 7, "x")]})
    built = request.prepare(HIGHEST)
    assert built.API_VERSION == 7
    decoded = type(built).decode(BytesIO(built.encode()))
    assert decoded.generation_id == 3
    assert decoded.member_id == "m-1"
    assert decoded.group_instance_id is None
    assert decoded.topics == [("t", [(0, 42, -1, ""), (5, 7, -1, "x")])]


def test_offset_commit_v3_keeps_offsets() -> None:
    built = wire.OffsetCommit("g", 3, "m-1", "pod", {"t": [(1, 9, "")]}).prepare({8: (2, 3)})
    assert built.API_VERSION == 3
    assert built.consumer_group_generation_id == 3
    assert built.consumer_id == "m-1"
    assert list(built.topics) == [("t", [(1, 9, "")])]


def test_static_leave_needs_v3() -> None:
    built = wire.LeaveGroup("g", "m-1", "pod-0").prepare(HIGHEST)
    assert built.API_VERSION == 3
    assert built.members == [("m-1", "pod-0")]
    with pytest.raises(NotImplementedError, match="v3"):
        wire.LeaveGroup("g", "m-1", "pod-0").prepare({13: (0, 1)})
    assert wire.LeaveGroup("g", "m-1", None).prepare({13: (0, 1)}).API_VERSION == 1


def test_generation_validity() -> None:
    assert not NO_GENERATION.valid
    assert not Generation(3, "").valid
    assert Generation(0, "m").valid


def test_assignment_decoding_is_tolerant() -> None:
    tps = frozenset({TopicPartition("t", 1), TopicPartition("u", 0)})
    raw = encode_member_assignment(sorted(tps))
    assert _decode_assignment(raw) == (tps, None)
    assert _decode_assignment(b"") == (frozenset(), None)
    with capture_logs() as logs:
        assert _decode_assignment(b"\x00\x01\xff") == (frozenset(), None)
    assert [e["event"] for e in logs] == ["assignment_undecodable"]


def test_assignment_decoding_keeps_the_leaders_figures() -> None:
    tps = frozenset({TopicPartition("t", 1)})
    info = AssignmentInfo(5, unassigned=2, pending=1, members=2, replicas_wanted=4)
    assert _decode_assignment(encode_member_assignment(sorted(tps), info)) == (tps, info)
    # Foreign user_data (another assignor's) keeps the partitions and drops the figures.
    foreign = encode_member_assignment(sorted(tps))[:-4] + b"\x00\x00\x00\x03xyz"
    with capture_logs() as logs:
        assert _decode_assignment(foreign) == (tps, None)
    assert [e["event"] for e in logs] == ["assignment_info_undecodable"]


def test_capacity_change_ignores_ownership() -> None:
    base = CapacityAdvertisement(max_partitions=4, memory_budget_bytes=100, partition_bytes={})
    owning = CapacityAdvertisement(
        max_partitions=4,
        memory_budget_bytes=100,
        partition_bytes={},
        owned=(OwnedPartition("t", 0, 3),),
    )
    assert _limits(base) == _limits(owning)
    lowered = CapacityAdvertisement(max_partitions=3, memory_budget_bytes=100, partition_bytes={})
    draining = CapacityAdvertisement(
        max_partitions=4, memory_budget_bytes=100, partition_bytes={}, draining=True
    )
    assert _limits(lowered) != _limits(base)
    assert _limits(draining) != _limits(base)


def test_assignment_over_own_budget_is_detected() -> None:
    adv = CapacityAdvertisement(
        max_partitions=2,
        memory_budget_bytes=250,
        partition_bytes={"big": 200},
        default_partition_bytes=100,
    )
    two = frozenset({TopicPartition("t", 0), TopicPartition("t", 1)})
    assert not _exceeds(two, adv)
    assert _exceeds(two | {TopicPartition("t", 2)}, adv)
    assert _exceeds(frozenset({TopicPartition("big", 0), TopicPartition("t", 0)}), adv)


def test_an_oversized_cached_assignment_is_cut_to_the_budget_keeping_held_partitions() -> None:
    adv = CapacityAdvertisement(max_partitions=2, memory_budget_bytes=1000, partition_bytes={})
    offered = frozenset(TopicPartition("t", p) for p in range(5))
    held = frozenset({TopicPartition("t", 3)})
    taken = _within(offered, held, adv)
    assert taken == {TopicPartition("t", 3), TopicPartition("t", 0)}
    by_bytes = CapacityAdvertisement(
        max_partitions=9, memory_budget_bytes=250, partition_bytes={}, default_partition_bytes=100
    )
    assert len(_within(offered, frozenset(), by_bytes)) == 2
    assert not _exceeds(_within(offered, held, by_bytes), by_bytes)
