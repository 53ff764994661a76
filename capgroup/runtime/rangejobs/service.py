"""The Kafka clients of range jobs, built from the settings (``capgroup.connection``), and the
jobs and completions topics, created on demand.

- the **jobs topic** (``range_jobs_topic``), one partition, ``cleanup.policy=compact``: the
  latest offer or assignment of each job, tombstoned once done;
- the **completions topic** (``range_jobs_completions_topic``), one partition, time-retained:
  claims and outcomes.

One partition each keeps every message of a job in order on its topic; both carry only small
control records (the records themselves are read from their own partitions by offset).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import TopicPartition as KafkaTopicPartition

from capgroup.connection import ClientRole, admin_client, client_options
from capgroup.log import get_logger
from capgroup.settings import CapgroupSettings

__all__ = [
    "COMPLETIONS_RETENTION_MS",
    "RangeJobClients",
    "ensure_topics",
    "range_job_clients",
]

_log = get_logger("rangejobs")

#: How long claims and outcomes are kept (a takeover reads only recent ones).
COMPLETIONS_RETENTION_MS = 6 * 3600 * 1000


async def ensure_topics(settings: CapgroupSettings, replication_factor: int = 1) -> None:
    """Create the jobs topic (compacted) and the completions topic if they do not exist."""
    from aiokafka.admin import NewTopic

    wanted = [
        NewTopic(
            settings.effective_range_jobs_topic,
            1,
            replication_factor,
            topic_configs={"cleanup.policy": "compact"},
        ),
        NewTopic(
            settings.effective_range_jobs_completions_topic,
            1,
            replication_factor,
            topic_configs={"retention.ms": str(COMPLETIONS_RETENTION_MS)},
        ),
    ]
    async with admin_client(settings) as admin:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if not missing:
            return
        try:
            response = await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            return  # another member created them meanwhile
        for topic_error in getattr(response, "topic_errors", ()):
            name, code = topic_error[0], topic_error[1]
            if code not in (0, TopicAlreadyExistsError.errno):
                raise RuntimeError(f"cannot create range-jobs topic {name!r}: error {code}")
        _log.info("range_jobs_topics_created", topics=[t.name for t in missing])


@dataclass(eq=False)
class RangeJobClients:
    """The started clients of one member's range jobs."""

    producer: Any
    jobs: Any
    completions: Any
    scheduler_reader: Any
    worker_reader: Any

    async def stop(self) -> None:
        """Close every client."""
        for client in (
            self.jobs,
            self.completions,
            self.scheduler_reader,
            self.worker_reader,
            self.producer,
        ):
            with contextlib.suppress(Exception):
                await client.stop()


def _reader(settings: CapgroupSettings, **overrides: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **client_options(settings, ClientRole.RANGE_JOBS),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        **overrides,
    )


async def _known(consumer: Any, topic: str, wait_s: float) -> None:
    """Wait until ``consumer`` knows ``topic``'s partitions: a topic created a moment ago (by
    this member or another) may be missing from its metadata, and a partition assigned before
    its topic is known is not fetched until the next periodic metadata refresh (minutes)."""
    with anyio.move_on_after(wait_s):
        while not consumer.partitions_for_topic(topic):
            await consumer._client.force_metadata_update()
            await anyio.sleep(0.1)


@contextlib.asynccontextmanager
async def range_job_clients(
    settings: CapgroupSettings, *, replication_factor: int = 1
) -> AsyncIterator[RangeJobClients]:
    """Create the topics if needed and start the clients: the jobs topic is read from its
    beginning (compaction keeps the latest state of each job), the completions topic from its
    end (claims and outcomes of the offers this member will make)."""
    await ensure_topics(settings, replication_factor)
    producer = AIOKafkaProducer(
        **client_options(settings, ClientRole.RANGE_JOBS), acks="all", enable_idempotence=True
    )
    fetch_bytes = settings.range_jobs_max_bytes + settings.max_partition_fetch_bytes
    clients = RangeJobClients(
        producer=producer,
        jobs=_reader(settings),
        completions=_reader(settings),
        scheduler_reader=_reader(settings, max_partition_fetch_bytes=fetch_bytes),
        worker_reader=_reader(settings, max_partition_fetch_bytes=fetch_bytes),
    )
    try:
        for client in (
            producer,
            clients.jobs,
            clients.completions,
            clients.scheduler_reader,
            clients.worker_reader,
        ):
            await client.start()
        for client, topic in (
            (clients.jobs, settings.effective_range_jobs_topic),
            (clients.completions, settings.effective_range_jobs_completions_topic),
        ):
            await _known(client, topic, settings.effective_request_timeout_ms / 1000)
        jobs = KafkaTopicPartition(settings.effective_range_jobs_topic, 0)
        done = KafkaTopicPartition(settings.effective_range_jobs_completions_topic, 0)
        clients.jobs.assign([jobs])
        await clients.jobs.seek_to_beginning(jobs)
        clients.completions.assign([done])
        await clients.completions.seek_to_end(done)
        # Resolve the position now, so nothing published after this point is missed.
        await clients.completions.position(done)
        yield clients
    finally:
        # Also when the holder is cancelled: the clients must be closed, not abandoned.
        with anyio.CancelScope(shield=True):
            await clients.stop()
