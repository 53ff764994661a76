"""Producing failed batches and undecodable records to the dead-letter topic
(``flush_failure_policy=dead_letter``, ``deserialize_failure_policy=dead_letter``).

The producer waits for every in-sync replica (``acks=all``) and is idempotent, so once
:meth:`DeadLetterProducer.send` returns, the batch is as durable as a flush and the runtime may
commit past it. :meth:`DeadLetterProducer.start` checks that the topic exists, so a missing
one stops start-up (:class:`DeadLetterTopicError`, a ``SettingsError``: ``capgroup run`` exits
2) instead of surfacing at the first failure.
"""

from __future__ import annotations

import time

from aiokafka import AIOKafkaProducer

from capgroup.connection import ClientRole, client_options
from capgroup.runtime.batch import Batch
from capgroup.runtime.retry import dead_letter_records
from capgroup.settings import ENV_PREFIX, CapgroupSettings, SettingsError

__all__ = ["DeadLetterProducer", "DeadLetterTopicError"]


class DeadLetterTopicError(SettingsError):
    """The dead-letter topic a failure policy needs does not exist on the cluster."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(
            [
                f"dead_letter_topic ({ENV_PREFIX}DEAD_LETTER_TOPIC): topic {topic!r} does not "
                "exist on the cluster; create it (capgroup never creates topics) or change "
                "the setting"
            ]
        )


class DeadLetterProducer:
    """Produces whole batches to ``dead_letter_topic`` with ``capgroup.dlq.*`` headers."""

    def __init__(self, settings: CapgroupSettings, topic: str) -> None:
        """Create (not yet connect) the producer; call inside the event loop."""
        self.topic = topic
        self._producer = AIOKafkaProducer(
            **client_options(settings, ClientRole.DEAD_LETTER),
            acks="all",
            enable_idempotence=True,
        )

    async def start(self) -> None:
        """Connect to the cluster and check that the topic exists.

        Raises :class:`DeadLetterTopicError` (after closing the producer) when it does not.
        """
        await self._producer.start()
        # All topics' metadata: asking for the topic alone could auto-create it.
        metadata = await self._producer.client.fetch_all_metadata()
        if self.topic not in metadata.topics():
            await self._producer.stop()
            raise DeadLetterTopicError(self.topic)

    async def stop(self) -> None:
        """Flush pending sends and close."""
        await self._producer.stop()

    async def send(
        self, batch: Batch, *, error: BaseException, attempts: int, member_id: str
    ) -> None:
        """Produce every record of ``batch``; returns once all are acknowledged by all ISRs.

        Raises the producer's error if any record could not be written; the caller retries
        the whole batch (duplicates in the dead-letter topic are possible, loss is not).
        """
        records = dead_letter_records(
            batch,
            topic=self.topic,
            error=error,
            attempts=attempts,
            member_id=member_id,
            failed_at_ms=int(time.time() * 1000),
        )
        pending = [
            await self._producer.send(
                r.topic,
                key=r.key,
                value=r.value,
                headers=list(r.headers),
                timestamp_ms=r.timestamp_ms,
            )
            for r in records
        ]
        for delivery in pending:
            await delivery
