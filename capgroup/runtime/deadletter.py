"""Producing failed batches to the dead-letter topic (``flush_failure_policy=dead_letter``).

The producer waits for every in-sync replica (``acks=all``) and is idempotent, so once
:meth:`DeadLetterProducer.send` returns, the batch is as durable as a flush and the runtime may
commit past it.
"""

from __future__ import annotations

import time

from aiokafka import AIOKafkaProducer

from capgroup.connection import ClientRole, client_options
from capgroup.runtime.batch import Batch
from capgroup.runtime.retry import dead_letter_records
from capgroup.settings import CapgroupSettings

__all__ = ["DeadLetterProducer"]


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
        """Connect to the cluster."""
        await self._producer.start()

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
