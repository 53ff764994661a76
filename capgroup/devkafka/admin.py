"""Small admin operations on a cluster, for the demo, the benchmarks and the tests."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio

from capgroup import connection
from capgroup.devkafka.jars import KafkaLocalError
from capgroup.settings import CapgroupSettings, load_settings

__all__ = [
    "admin_client",
    "broker_ids",
    "connection_settings",
    "create_topic",
    "delete_topics",
    "find_group_coordinator",
    "group_committed_offsets",
]


def connection_settings(
    bootstrap_servers: str, settings: CapgroupSettings | None = None
) -> CapgroupSettings:
    """Settings for reaching ``bootstrap_servers``: ``settings`` (TLS, SASL) with that address,
    or without them, the other connection settings from ``CAPGROUP_*`` variables."""
    if settings is not None:
        return settings.model_copy(update={"bootstrap_servers": bootstrap_servers.split(",")})
    return load_settings(bootstrap_servers=bootstrap_servers.split(","))


@contextlib.asynccontextmanager
async def admin_client(
    bootstrap_servers: str, settings: CapgroupSettings | None = None, **overrides: Any
) -> AsyncIterator[Any]:
    """A started ``AIOKafkaAdminClient`` for ``bootstrap_servers``, closed on exit; connection
    settings (TLS, SASL) from ``settings`` (see :func:`connection_settings`)."""
    async with connection.admin_client(
        connection_settings(bootstrap_servers, settings),
        **{"request_timeout_ms": 5000, **overrides},
    ) as client:
        yield client


async def broker_ids(bootstrap_servers: str, settings: CapgroupSettings | None = None) -> set[int]:
    """Node ids of the brokers the cluster reports as alive."""
    async with admin_client(bootstrap_servers, settings) as admin:
        cluster = await admin.describe_cluster()
    return {int(b["node_id"]) for b in cluster["brokers"]}


async def find_group_coordinator(
    bootstrap_servers: str,
    group_id: str,
    within: float = 30.0,
    settings: CapgroupSettings | None = None,
) -> int:
    """Return the node id of ``group_id``'s coordinator, asking the cluster (FindCoordinator).

    Retries while the cluster answers "coordinator not available", which it does while it
    creates the offsets topic or moves a coordinator after a node failure.
    """
    from aiokafka.client import AIOKafkaClient, CoordinationType
    from aiokafka.errors import KafkaError

    deadline = time.monotonic() + within
    options = connection.client_options(
        connection_settings(bootstrap_servers, settings), connection.ClientRole.ADMIN
    )
    client = AIOKafkaClient(**{**options, "request_timeout_ms": 5000})
    try:
        await client.bootstrap()
        while True:
            try:
                return int(await client.coordinator_lookup(CoordinationType.GROUP, group_id))
            except KafkaError as exc:
                if time.monotonic() >= deadline:
                    raise KafkaLocalError(
                        f"no coordinator for group {group_id!r} after {within:.0f} s: {exc!r}"
                    ) from exc
                await anyio.sleep(0.2)
    finally:
        await client.close()


async def group_committed_offsets(
    admin: Any, group_id: str, partitions: Sequence[Any] | None = None
) -> dict[tuple[str, int], int]:
    """``group_id``'s committed offsets by (topic, partition), asked through ``admin`` (an
    :func:`admin_client`); empty while the cluster cannot name the group's coordinator yet (a
    fresh broker still creating its offsets topic), so a poller simply asks again."""
    from aiokafka.errors import KafkaError

    try:
        found = await admin.list_consumer_group_offsets(group_id, partitions=partitions)
    except KafkaError as exc:
        if not exc.retriable:
            raise
        return {}
    return {(tp.topic, tp.partition): int(meta.offset) for tp, meta in found.items()}


async def create_topic(
    bootstrap_servers: str,
    name: str,
    partitions: int = 1,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
    settings: CapgroupSettings | None = None,
) -> None:
    """Create topic ``name`` and wait until every partition has a leader."""
    from aiokafka.admin import NewTopic
    from aiokafka.errors import for_code

    topic = NewTopic(
        name=name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        topic_configs=dict(configs or {}),
    )
    async with admin_client(bootstrap_servers, settings) as admin:
        response = await admin.create_topics([topic], timeout_ms=30_000)
        for entry in response.topic_errors:
            code = entry[1]
            if code != 0:
                raise KafkaLocalError(f"creating topic {name!r} failed: {for_code(code).__name__}")
        deadline = time.monotonic() + 30
        while True:
            described = await admin.describe_topics([name])
            parts = described[0]["partitions"] if described else []
            if len(parts) == partitions and all(p["leader"] >= 0 for p in parts):
                return
            if time.monotonic() >= deadline:
                raise KafkaLocalError(f"topic {name!r} has no leader for every partition yet")
            await anyio.sleep(0.1)


async def delete_topics(
    bootstrap_servers: str, names: Sequence[str], settings: CapgroupSettings | None = None
) -> None:
    """Delete topics ``names`` (errors such as unknown topics are ignored)."""
    if not names:
        return
    async with admin_client(bootstrap_servers, settings) as admin:
        await admin.delete_topics(list(names), timeout_ms=30_000)
