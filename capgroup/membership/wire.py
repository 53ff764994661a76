"""Group-protocol requests aiokafka lacks, built from its own Struct/Schema classes.

aiokafka 0.14 stops at Heartbeat v1, LeaveGroup v1 and OffsetCommit v3, none of which carry
``group_instance_id``. Static members need it: with it the broker answers FENCED_INSTANCE_ID
to the process whose instance id was taken over, instead of UNKNOWN_MEMBER_ID (which would
make the old process rejoin and fence the new one in turn). Each request class below lists
the older aiokafka versions too, so version negotiation still works against older brokers.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from aiokafka.protocol.admin import (
    DescribeGroupsRequest_v0,
    DescribeGroupsRequest_v1,
    DescribeGroupsRequest_v2,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.commit import (
    OffsetCommitRequest_v2,
    OffsetCommitRequest_v3,
    OffsetFetchRequest,
)
from aiokafka.protocol.group import (
    HeartbeatRequest_v0,
    HeartbeatRequest_v1,
    JoinGroupRequest,
    LeaveGroupRequest_v0,
    LeaveGroupRequest_v1,
    MemberAssignment,
    SyncGroupRequest,
)
from aiokafka.protocol.types import Array, Int16, Int32, Int64, Schema, String

__all__ = [
    "DescribeGroups",
    "Heartbeat",
    "HeartbeatRequestV3",
    "HeartbeatResponseV3",
    "JoinGroupRequest",
    "LeaveGroup",
    "LeaveGroupRequestV3",
    "LeaveGroupResponseV3",
    "MemberAssignment",
    "OffsetCommit",
    "OffsetCommitRequestV7",
    "OffsetCommitResponseV7",
    "OffsetFetchRequest",
    "SyncGroupRequest",
]

_STR = String("utf-8")


class HeartbeatResponseV3(Response):
    """Heartbeat v3 response."""

    API_KEY = 12
    API_VERSION = 3
    SCHEMA = Schema(("throttle_time_ms", Int32), ("error_code", Int16))


class HeartbeatRequestV3(RequestStruct):
    """Heartbeat v3: adds group_instance_id (KIP-345)."""

    API_KEY = 12
    API_VERSION = 3
    RESPONSE_TYPE = HeartbeatResponseV3
    SCHEMA = Schema(
        ("group", _STR),
        ("generation_id", Int32),
        ("member_id", _STR),
        ("group_instance_id", _STR),
    )


_HeartbeatStructs: TypeAlias = HeartbeatRequest_v0 | HeartbeatRequest_v1 | HeartbeatRequestV3


class Heartbeat(Request[_HeartbeatStructs]):
    """Heartbeat, negotiated up to v3."""

    API_KEY = 12

    def __init__(
        self, group: str, generation_id: int, member_id: str, group_instance_id: str | None
    ) -> None:
        self._args = (group, generation_id, member_id)
        self._instance = group_instance_id

    def build(self, request_struct_class: Any) -> Any:
        """Build the struct of the negotiated version."""
        if request_struct_class.API_VERSION >= 3:
            return request_struct_class(*self._args, self._instance)
        return request_struct_class(*self._args)


class LeaveGroupResponseV3(Response):
    """LeaveGroup v3 response (per-member errors)."""

    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(("member_id", _STR), ("group_instance_id", _STR), ("error_code", Int16)),
        ),
    )


class LeaveGroupRequestV3(RequestStruct):
    """LeaveGroup v3: a batch of members with instance ids, so a static member can leave."""

    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = LeaveGroupResponseV3
    SCHEMA = Schema(
        ("group", _STR),
        ("members", Array(("member_id", _STR), ("group_instance_id", _STR))),
    )


_LeaveStructs: TypeAlias = LeaveGroupRequest_v0 | LeaveGroupRequest_v1 | LeaveGroupRequestV3


class LeaveGroup(Request[_LeaveStructs]):
    """LeaveGroup, negotiated up to v3."""

    API_KEY = 13

    def __init__(self, group: str, member_id: str, group_instance_id: str | None) -> None:
        self._group = group
        self._member_id = member_id
        self._instance = group_instance_id

    def build(self, request_struct_class: Any) -> Any:
        """Build the struct of the negotiated version."""
        if request_struct_class.API_VERSION >= 3:
            return request_struct_class(self._group, [(self._member_id, self._instance)])
        if self._instance is not None:
            # A static member that cannot name its instance id would not really leave:
            # the broker keeps the instance until its session expires.
            raise NotImplementedError("LeaveGroup for a static member needs broker support of v3")
        return request_struct_class(self._group, self._member_id)


class OffsetCommitResponseV7(Response):
    """OffsetCommit v7 response."""

    API_KEY = 8
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            Array(
                ("topic", _STR), ("partitions", Array(("partition", Int32), ("error_code", Int16)))
            ),
        ),
    )


class OffsetCommitRequestV7(RequestStruct):
    """OffsetCommit v7: carries group_instance_id, so a fenced static member cannot commit."""

    API_KEY = 8
    API_VERSION = 7
    RESPONSE_TYPE = OffsetCommitResponseV7
    SCHEMA = Schema(
        ("group", _STR),
        ("generation_id", Int32),
        ("member_id", _STR),
        ("group_instance_id", _STR),
        (
            "topics",
            Array(
                ("topic", _STR),
                (
                    "partitions",
                    Array(
                        ("partition", Int32),
                        ("offset", Int64),
                        ("leader_epoch", Int32),
                        ("metadata", _STR),
                    ),
                ),
            ),
        ),
    )


_CommitStructs: TypeAlias = OffsetCommitRequest_v2 | OffsetCommitRequest_v3 | OffsetCommitRequestV7


class OffsetCommit(Request[_CommitStructs]):
    """OffsetCommit under a member id and generation, negotiated v2, v3 or v7."""

    API_KEY = 8

    def __init__(
        self,
        group: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
        offsets: dict[str, list[tuple[int, int, str]]],
    ) -> None:
        self._group = group
        self._generation = generation_id
        self._member_id = member_id
        self._instance = group_instance_id
        self._offsets = offsets

    def build(self, request_struct_class: Any) -> Any:
        """Build the struct of the negotiated version."""
        if request_struct_class.API_VERSION >= 7:
            topics = [
                (topic, [(p, off, -1, meta) for p, off, meta in parts])
                for topic, parts in self._offsets.items()
            ]
            return request_struct_class(
                self._group, self._generation, self._member_id, self._instance, topics
            )
        return request_struct_class(
            self._group,
            self._generation,
            self._member_id,
            -1,  # retention: broker default
            list(self._offsets.items()),
        )


_DescribeStructs: TypeAlias = (
    DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2
)


class DescribeGroups(Request[_DescribeStructs]):
    """DescribeGroups, negotiated up to v2: each member's id and assignment bytes (the relay
    reads the group's current assignment with it). aiokafka's own class also offers v3, whose
    response it decodes with the v2 schema (without ``authorized_operations``), so it is not
    used."""

    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self._groups = groups

    def build(self, request_struct_class: Any) -> Any:
        """Build the struct of the negotiated version."""
        return request_struct_class(self._groups)
