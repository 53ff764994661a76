"""Fetching for a capgroup member: aiokafka's consumer in manual mode, steered by pause/resume.

``AIOKafkaConsumer.assign()`` replaces the whole assignment and drops every position and fetch
buffer, which would break the cooperative promise that retained partitions keep flowing. So
the fetcher assigns every partition of the subscribed topics once and only pauses and resumes:

- gained partitions are seeked to their committed offset, then resumed;
- released partitions are paused (the consumer drops their buffered records);
- backpressure pauses owned partitions without forgetting that they are owned.

The pause state is recomputed from those sets after every change, so a rebalance never resumes
a partition that backpressure holds (reactor-kafka#237 ran out of memory that way).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition as KafkaTopicPartition

from capgroup.connection import ClientRole, admin_client, client_options
from capgroup.log import get_logger
from capgroup.membership.transport import bootstrap_with_retries
from capgroup.settings import ENV_PREFIX, CapgroupSettings, SettingsError
from capgroup.types import TopicPartition

__all__ = ["MISSING_TOPIC_WAIT_S", "PEEK_FETCH_BYTES", "MissingTopicError", "PartitionFetcher"]

_log = get_logger("fetcher")

#: At start-up, how long a subscribed topic may be missing from the metadata before the member
#: gives up (a topic created a moment ago takes a metadata refresh or two to show).
MISSING_TOPIC_WAIT_S = 5.0
#: Fetch size of the reader of single records' timestamps (the broker still returns a first
#: record batch larger than this whole).
PEEK_FETCH_BYTES = 64 * 1024


class MissingTopicError(SettingsError):
    """A topic of ``CAPGROUP_TOPICS`` does not exist on the cluster (``capgroup run`` exits
    2, like any setting that cannot work)."""

    def __init__(self, topics: list[str], servers: list[str]) -> None:
        self.topics = topics
        names = ", ".join(repr(t) for t in topics)
        many = len(topics) > 1
        problem = (
            f"{ENV_PREFIX}TOPICS (topics): topic{'s' if many else ''} {names} "
            f"{'do' if many else 'does'} not exist on the cluster at {','.join(servers)}; "
            f"create {'them' if many else 'it'} or fix {ENV_PREFIX}TOPICS"
        )
        super().__init__([problem])
        # The settings are valid; the cluster lacks the topic: say just that.
        self.args = (problem,)


def _kafka(tp: TopicPartition) -> KafkaTopicPartition:
    # aiokafka checks isinstance against its own TopicPartition class.
    return KafkaTopicPartition(tp.topic, tp.partition)


class PartitionFetcher:
    """Fetches records for the partitions a member owns, keeping retained partitions' fetch
    positions and buffers across rebalances."""

    def __init__(self, settings: CapgroupSettings, *, fetch_max_bytes: int | None = None) -> None:
        self._settings = settings
        self._topics = tuple(sorted(set(settings.topics)))
        self._consumer = AIOKafkaConsumer(
            **client_options(settings, ClientRole.FETCHER),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset=settings.auto_offset_reset,
            max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
            fetch_max_bytes=fetch_max_bytes or 50 * 1024 * 1024,
            isolation_level="read_committed",
        )
        self._all: frozenset[TopicPartition] = frozenset()
        self._owned: set[TopicPartition] = set()
        self._held: set[TopicPartition] = set()
        self._hold_all = False
        #: Reads single records for :meth:`record_timestamps`; started on first use.
        self._peek: AIOKafkaConsumer | None = None

    @property
    def owned(self) -> frozenset[TopicPartition]:
        """Partitions the fetcher delivers records for (unless held)."""
        return frozenset(self._owned)

    async def start(self) -> None:
        """Connect, assign every partition of the subscribed topics, and pause them all.

        Unreachable bootstrap servers are retried for ``bootstrap_timeout_ms``
        (:class:`~capgroup.membership.transport.KafkaUnreachableError` after that); a topic
        still missing after :data:`MISSING_TOPIC_WAIT_S` raises :class:`MissingTopicError`.
        """
        await bootstrap_with_retries(self._consumer.start, self._settings, client="fetch")
        await self.refresh_partitions(wait_s=MISSING_TOPIC_WAIT_S)

    async def refresh_partitions(self, wait_s: float | None = None) -> None:
        """Pick up partitions added to subscribed topics.

        Re-assigning drops every position, so owned partitions are seeked back to where they
        were; this happens only when a topic really gained partitions. A topic missing from
        the metadata is looked up again for ``wait_s`` (default: the request timeout), then
        :class:`MissingTopicError` names it.
        """
        partitions: set[TopicPartition] = set()
        if wait_s is None:
            wait_s = self._settings.effective_request_timeout_ms / 1000
        deadline = anyio.current_time() + wait_s
        missing: list[str] = []
        for topic in self._topics:
            asked = False
            while True:
                found = self._consumer.partitions_for_topic(topic)
                if found:
                    partitions.update(TopicPartition(topic, p) for p in found)
                    break
                if anyio.current_time() > deadline:
                    missing.append(topic)
                    break
                if asked:
                    # The brokers answered without it: give auto-creation (or a topic
                    # being created right now) a moment before asking again.
                    await anyio.sleep(0.1)
                # A client that just started knows no topics yet: ask at once, so a member
                # does not wait out a back-off for a topic that exists.
                await self._consumer._client.force_metadata_update()
                asked = True
        if missing:
            raise MissingTopicError(missing, list(self._settings.bootstrap_servers))
        if partitions == self._all:
            return
        positions = {tp: await self._consumer.position(_kafka(tp)) for tp in self._owned}
        self._all = frozenset(partitions)
        self._consumer.assign([_kafka(tp) for tp in sorted(partitions)])
        for tp, offset in positions.items():
            self._consumer.seek(_kafka(tp), offset)
        self._apply_pause_state()

    async def gain(self, positions: Mapping[TopicPartition, int | None]) -> None:
        """Start fetching ``positions`` (committed offset, or ``None`` for the reset policy)."""
        missing = [tp for tp in positions if tp not in self._all]
        if missing:
            await self.refresh_partitions()
        to_reset: list[KafkaTopicPartition] = []
        for tp, offset in positions.items():
            if offset is None:
                to_reset.append(_kafka(tp))
            else:
                self._consumer.seek(_kafka(tp), offset)
        if to_reset:
            if self._settings.auto_offset_reset == "latest":
                await self._consumer.seek_to_end(*to_reset)
            else:
                await self._consumer.seek_to_beginning(*to_reset)
        self._owned.update(positions)
        self._apply_pause_state()

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching ``partitions``; records already fetched for them are dropped."""
        for tp in partitions:
            self._owned.discard(tp)
            self._held.discard(tp)
        self._apply_pause_state()

    def hold(self, partitions: Iterable[TopicPartition]) -> None:
        """Pause owned partitions for backpressure (their buffers are full)."""
        self._held.update(partitions)
        self._apply_pause_state()

    def unhold(self, partitions: Iterable[TopicPartition]) -> None:
        """Resume partitions paused by :meth:`hold`."""
        self._held.difference_update(partitions)
        self._apply_pause_state()

    def hold_all(self, held: bool) -> None:
        """Pause (or stop pausing) every partition: the member's memory budget is reached."""
        self._hold_all = held
        self._apply_pause_state()

    def _apply_pause_state(self) -> None:
        flowing = set() if self._hold_all else self._owned - self._held
        pause = [_kafka(tp) for tp in self._all if tp not in flowing]
        resume = [_kafka(tp) for tp in flowing if tp in self._all]
        if pause:
            self._consumer.pause(*pause)
        if resume:
            self._consumer.resume(*resume)

    async def fetch(
        self, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        """Records fetched for flowing partitions, at most ``timeout_ms`` of waiting.

        Records of partitions released while the fetch was in flight are filtered out.
        """
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return {
            TopicPartition(tp.topic, tp.partition): records
            for tp, records in batches.items()
            if records and tp in self._owned
        }

    async def positions(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Next offset the fetcher will read for each of ``partitions`` (after :meth:`gain`);
        waits for a pending offset reset to resolve."""
        return {tp: int(await self._consumer.position(_kafka(tp))) for tp in partitions}

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """High watermarks of ``partitions``, asked from the brokers (out of band)."""
        wanted = [_kafka(tp) for tp in partitions]
        if not wanted:
            return {}
        offsets = await self._consumer.end_offsets(wanted)
        return {TopicPartition(tp.topic, tp.partition): int(o) for tp, o in offsets.items()}

    async def beginning_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Log start offsets of ``partitions`` (the first offset retention has not deleted),
        asked from the brokers (out of band)."""
        wanted = [_kafka(tp) for tp in partitions]
        if not wanted:
            return {}
        offsets = await self._consumer.beginning_offsets(wanted)
        return {TopicPartition(tp.topic, tp.partition): int(o) for tp, o in offsets.items()}

    async def record_timestamps(
        self, offsets: Mapping[TopicPartition, int], timeout_ms: int = 2_000
    ) -> dict[TopicPartition, int]:
        """Timestamp (ms) of the first record at or after each offset of ``offsets``.

        Read with a second consumer of its own (started on first use, small fetches), so the
        member's fetch positions, pauses and buffers are untouched; it may read partitions the
        member does not own. A partition with no record there within ``timeout_ms`` is absent.
        """
        if not offsets:
            return {}
        peek = await self._peek_consumer()
        peek.assign([_kafka(tp) for tp in offsets])
        for tp, offset in offsets.items():
            peek.seek(_kafka(tp), offset)
        found: dict[TopicPartition, int] = {}
        with anyio.move_on_after(timeout_ms / 1000):
            while len(found) < len(offsets):
                # One record at a time: a fetch holds at least one whole producer batch
                # (thousands of records), and only the first record's timestamp is wanted.
                batches = await peek.getmany(timeout_ms=timeout_ms, max_records=1)
                for ktp, records in batches.items():
                    tp = TopicPartition(ktp.topic, ktp.partition)
                    if records and tp in offsets and tp not in found:
                        found[tp] = int(records[0].timestamp)
                        peek.pause(ktp)
        return found

    async def topic_retention_ms(self, topics: Iterable[str]) -> dict[str, int | None]:
        """``retention.ms`` of each of ``topics`` (-1: infinite; None when the broker does not
        say), read with an admin client built from the settings (describe_configs)."""
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        names = sorted(set(topics))
        if not names:
            return {}
        result: dict[str, int | None] = dict.fromkeys(names)
        async with admin_client(self._settings) as admin:
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
            )
        for response in responses:
            for resource in response.resources:
                error, name, entries = resource[0], resource[3], resource[4]
                if error or name not in result:
                    continue
                for entry in entries:
                    if entry[0] == "retention.ms" and entry[1] is not None:
                        result[name] = int(entry[1])
        return result

    async def _peek_consumer(self) -> AIOKafkaConsumer:
        if self._peek is None:
            peek = AIOKafkaConsumer(
                **client_options(self._settings, ClientRole.FETCHER),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=PEEK_FETCH_BYTES,
                fetch_max_bytes=PEEK_FETCH_BYTES,
                isolation_level="read_committed",
            )
            await peek.start()
            self._peek = peek
        return self._peek

    async def stop(self) -> None:
        """Close the consumer (and the timestamp reader, if it was started)."""
        peek, self._peek = self._peek, None
        try:
            if peek is not None:
                await peek.stop()
        finally:
            await self._consumer.stop()
