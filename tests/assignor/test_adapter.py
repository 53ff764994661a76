"""The assignor adapter: raw member metadata in, a full plan and per-member bytes out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.protocol.metadata import MetadataResponse_v1
from structlog.testing import capture_logs

from capgroup.assignor.adapter import (
    GroupPlan,
    plan_group,
    with_claimed_rates,
)
from capgroup.assignor.model import CapacityAdvertisement, MemberSpec, OwnedPartition, PartitionSpec
from capgroup.membership.aiokafka_assignor import CapacityAwareAssignor
from capgroup.protocol import (
    decode_advertisement,
    decode_assignment_info,
    decode_member_metadata,
    encode_advertisement,
    encode_member_metadata,
)
from capgroup.types import TopicPartition

GB = 1_000_000_000


def _adv(max_partitions: int = 4, owned: Iterable[OwnedPartition] = ()) -> CapacityAdvertisement:
    return CapacityAdvertisement(
        max_partitions=max_partitions,
        memory_budget_bytes=2 * GB,
        partition_bytes={"events": GB // 2},
        owned=tuple(owned),
    )


def _meta(adv: CapacityAdvertisement, topics: Iterable[str] = ("events",)) -> bytes:
    return encode_member_metadata(topics, encode_advertisement(adv))


def _events(n: int) -> list[PartitionSpec]:
    return [PartitionSpec("events", p) for p in range(n)]


def _decoded(group: GroupPlan) -> dict[str, ConsumerProtocolMemberAssignment]:
    return {m: ConsumerProtocolMemberAssignment.decode(raw) for m, raw in group.assignments.items()}


def _assert_exactly_once(group: GroupPlan, partitions: list[PartitionSpec]) -> None:
    seen = Counter(tp for tps in group.plan.assignment.values() for tp in tps)
    seen.update(move.tp for move in group.plan.pending)
    seen.update(group.plan.unassigned)
    assert seen == Counter(p.tp for p in partitions)


def _future_major_user_data() -> bytes:
    data = bytearray(encode_advertisement(_adv()))
    data[2] = 2
    return bytes(data)


def test_bad_members_get_nothing_and_the_group_still_gets_a_full_plan() -> None:
    partitions = _events(12)
    members = [
        ("m-1", None, _meta(_adv())),
        ("m-garbage", None, b"\x00\x07\xff\xff\xff\xf0garbage"),
        ("m-2", "host-2", _meta(_adv())),
        (
            "m-foreign",
            None,
            RoundRobinPartitionAssignor.metadata(["events"]).encode(),
        ),
        (
            "m-future",
            None,
            encode_member_metadata(["events"], _future_major_user_data()),
        ),
        ("m-3", None, _meta(_adv())),
    ]
    with capture_logs() as logs:
        group = plan_group(members, partitions, generation=3)

    decoded = _decoded(group)
    assert set(decoded) == {m for m, _, _ in members}
    for bad in ("m-garbage", "m-foreign", "m-future"):
        assert decoded[bad].partitions() == []
    assert set(group.rejected) == {"m-garbage", "m-foreign", "m-future"}
    _assert_exactly_once(group, partitions)
    assert group.plan.unassigned == ()
    for good in ("m-1", "m-2", "m-3"):
        assert len(decoded[good].partitions()) == 4
        info = decode_assignment_info(decoded[good].user_data)
        assert (info.generation, info.unassigned, info.pending) == (3, 0, 0)
        assert info == group.info  # the same group figures for every member
        assert info.members == 6  # the three rejected members are in the generation too

    rejected = {e["member_id"]: e for e in logs if e["event"] == "member_metadata_rejected"}
    assert set(rejected) == {"m-garbage", "m-foreign", "m-future"}
    assert all(e["log_level"] == "error" and e["reason"] for e in rejected.values())
    assert rejected["m-future"]["code"] == "future_major"
    assert rejected["m-foreign"]["code"] == "bad_magic"
    summary = [e for e in logs if e["event"] == "plan_computed"]
    assert len(summary) == 1
    assert summary[0]["rejected"] == 3
    assert summary[0]["assigned"] == 12


def test_shortfall_is_reported_loudly_and_travels_to_members() -> None:
    partitions = _events(7)
    members = [("a", None, _meta(_adv(2))), ("b", None, _meta(_adv(3)))]
    with capture_logs() as logs:
        group = plan_group(members, partitions, generation=8)
    _assert_exactly_once(group, partitions)
    assert len(group.plan.unassigned) == 2
    warning = [e for e in logs if e["event"] == "plan_has_unassigned_partitions"]
    assert len(warning) == 1
    assert warning[0]["log_level"] == "warning"
    assert warning[0]["unassigned"] == 2
    assert warning[0]["capacity_partitions"] == 5
    assert warning[0]["sample"] == [f"{tp.topic}-{tp.partition}" for tp in group.plan.unassigned]
    for assignment in _decoded(group).values():
        assert decode_assignment_info(assignment.user_data).unassigned == 2


def test_moves_between_live_members_are_withheld_unless_eager() -> None:
    partitions = _events(4)
    owned = [OwnedPartition("events", p, 5, 10.0) for p in range(4)]
    members = [("old", None, _meta(_adv(4, owned))), ("new", None, _meta(_adv(4)))]

    cooperative = plan_group(members, partitions, generation=6)
    _assert_exactly_once(cooperative, partitions)
    assert cooperative.plan.pending
    assert all(m.from_member == "old" and m.to_member == "new" for m in cooperative.plan.pending)
    assert cooperative.plan.assignment["new"] == ()
    info = decode_assignment_info(_decoded(cooperative)["new"].user_data)
    assert info.pending == len(cooperative.plan.pending)

    eager = plan_group(members, partitions, generation=6, cooperative=False)
    assert eager.plan.pending == ()
    assert set(eager.plan.assignment["new"]) == {m.tp for m in cooperative.plan.pending}
    _assert_exactly_once(eager, partitions)


def test_rates_come_from_the_highest_claim_unless_given() -> None:
    def member(name: str, rate: float, generation: int) -> MemberSpec:
        adv = _adv(owned=[OwnedPartition("events", 0, generation, rate)])
        return MemberSpec(name, frozenset({"events"}), adv)

    specs = [member("a", 50.0, 4), member("b", 900.0, 3)]
    given = [PartitionSpec("events", 0), PartitionSpec("events", 1, 7.0), PartitionSpec("x", 0)]
    assert with_claimed_rates(given, specs) == [
        PartitionSpec("events", 0, 900.0),
        PartitionSpec("events", 1, 7.0),
        PartitionSpec("x", 0),
    ]


def _cluster(topics: Mapping[str, int]) -> ClusterMetadata:
    cluster = ClusterMetadata()
    cluster.update_metadata(
        MetadataResponse_v1(
            [(0, "localhost", 9092, None)],
            0,
            [
                (0, topic, False, [(0, p, 0, [0], [0]) for p in range(n)])
                for topic, n in topics.items()
            ],
        )
    )
    return cluster


def _join(
    assignors: Mapping[str, CapacityAwareAssignor], topics: list[str]
) -> dict[str, ConsumerProtocolMemberMetadata]:
    # What aiokafka's coordinator does: encode metadata for JoinGroup, decode on the leader.
    return {
        member_id: ConsumerProtocolMemberMetadata.decode(a.metadata(topics).encode())
        for member_id, a in assignors.items()
    }


def test_aiokafka_interface_with_real_cluster_metadata() -> None:
    cluster = _cluster({"events": 10, "audit": 2})
    topics = ["audit", "events"]
    small = CapacityAdvertisement(
        max_partitions=2,
        memory_budget_bytes=2 * GB,
        partition_bytes={"events": GB // 2, "audit": GB // 2},
    )
    big = CapacityAdvertisement(
        max_partitions=6,
        memory_budget_bytes=3 * GB,
        partition_bytes={"events": GB // 2, "audit": GB // 2},
        weight=3.0,
    )
    assignors = {
        "m-small": CapacityAwareAssignor(small),
        "m-big-1": CapacityAwareAssignor(big),
        "m-big-2": CapacityAwareAssignor(big),
    }
    leader = assignors["m-big-1"]
    assert isinstance(leader, AbstractPartitionAssignor)
    assert leader.name == "capgroup-cooperative"

    members = _join(assignors, topics)
    members["m-roundrobin"] = ConsumerProtocolMemberMetadata.decode(
        RoundRobinPartitionAssignor.metadata(topics).encode()
    )
    result = leader.assign(cluster, members)

    assert set(result) == set(members)
    assert result["m-roundrobin"].partitions() == []
    assert len(result["m-small"].partitions()) <= 2
    all_tps = [tp for a in result.values() for tp in a.partitions()]
    assert len(all_tps) == len(set(all_tps)) == 12
    for member_id, assignment in result.items():
        # Round trip through the bytes SyncGroup carries, as aiokafka does.
        received = ConsumerProtocolMemberAssignment.decode(assignment.encode())
        if member_id in assignors:
            assignors[member_id].on_assignment(received)

    # Instance state: each member advertises what it received, under the leader's generation.
    generation = decode_assignment_info(result["m-small"].user_data).generation
    for member_id, a in assignors.items():
        owned = {op.tp for op in a.advertisement.owned}
        assert owned == set(result[member_id].partitions())
        assert {op.generation for op in a.advertisement.owned} <= {generation}

    # Sticky across a rebalance: nothing moves when nothing changed.
    again = leader.assign(cluster, _join(assignors, topics))
    assert {m: a.partitions() for m, a in again.items()} == {
        m: result[m].partitions() for m in assignors
    }
    assert decode_assignment_info(again["m-small"].user_data).generation == generation + 1

    hot = TopicPartition(*again["m-small"].partitions()[0])
    assignors["m-small"].update_rates({hot: 42.0})
    claimed = decode_member_metadata(assignors["m-small"].metadata(topics).encode())
    owned = decode_advertisement(claimed.user_data).owned
    assert {(op.tp, op.rate) for op in owned if op.rate} == {(hot, 42.0)}
