"""The chaos producer: numbered records at a steady rate, keyed so that some partitions are hot.

Every acknowledged record is logged as ``{"seq", "p", "o", "t"}`` to ``produced.jsonl``; the
loss invariant holds the sinks to exactly that list (a send that failed during a broker outage
was never acknowledged, so it is not owed to anybody).

Keys: a share ``hot_share`` of the records use one of a few hot keys, the rest a key drawn
from many cold ones; Kafka's default partitioner (murmur2 of the key) places them, so hot keys
make hot partitions the way a real skewed workload does.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import anyio
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tests.chaos.logs import JsonLines

#: Seconds without any acknowledgement after which the client is replaced.
STALL_S = 20.0


class ChaosProducer:
    """Produce ``rate`` records per second until :meth:`stop`; log every acknowledgement."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        log_path: Path,
        *,
        rate: float,
        seed: int,
        value_bytes: int = 200,
        hot_keys: int = 2,
        hot_share: float = 0.5,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.rate = rate
        self._rng = random.Random(seed)
        self._pad = b"x" * max(0, value_bytes - 24)
        self._hot = [f"hot-{i}".encode() for i in range(hot_keys)]
        self._hot_share = hot_share
        self._log = JsonLines(log_path, fsync=False)
        self._stop = anyio.Event()
        self.acked = 0
        self.failed = 0
        self.restarts = 0
        self.seq = 0
        self._last_ack = 0.0

    def stop(self) -> None:
        """Ask :meth:`run` to finish after the records in flight are answered."""
        self._stop.set()

    def _key(self) -> bytes:
        if self._rng.random() < self._hot_share:
            return self._rng.choice(self._hot)
        return f"cold-{self._rng.randrange(10_000)}".encode()

    async def run(self) -> None:
        """Produce until stopped, replacing the client when it stalls.

        Sends are pipelined; acknowledgements are logged as they arrive, failures (broker
        down) are counted and not retried by us (the client's own retries cover short
        outages). After a broker restart an idempotent aiokafka producer was seen to hang
        for minutes without acknowledging anything, so a client that gets no acknowledgement
        for ``STALL_S`` is closed and a new one started (counted in ``restarts``).
        """
        try:
            while not self._stop.is_set():
                await self._run_client()
        finally:
            self._log.close()

    async def _run_client(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=5,
            enable_idempotence=True,
            request_timeout_ms=15_000,
        )
        try:
            with anyio.fail_after(30):
                await producer.start()
        except (KafkaError, TimeoutError, OSError):
            self.failed += 1
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await producer.stop()
            await anyio.sleep(1.0)
            return
        self._last_ack = anyio.current_time()
        try:
            async with anyio.create_task_group() as tg:
                period = 1.0 / self.rate
                next_at = anyio.current_time()
                while not self._stop.is_set():
                    if anyio.current_time() - self._last_ack > STALL_S:
                        self.restarts += 1
                        tg.cancel_scope.cancel()
                        break
                    seq = self.seq
                    self.seq += 1
                    value = f"{seq:012d}|".encode() + self._pad
                    try:
                        with anyio.fail_after(5):
                            future = await producer.send(self.topic, value=value, key=self._key())
                    except (KafkaError, TimeoutError):
                        self.failed += 1
                    else:
                        tg.start_soon(self._acknowledged, future, seq)
                    next_at += period
                    # After an outage do not burst to catch up: skip the missed slots.
                    next_at = max(next_at, anyio.current_time() - 1.0)
                    await anyio.sleep(max(0.0, next_at - anyio.current_time()))
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await producer.stop()

    async def _acknowledged(self, future: object, seq: int) -> None:
        try:
            meta = await future  # type: ignore[misc]
        except KafkaError:
            self.failed += 1
            return
        self.acked += 1
        self._last_ack = anyio.current_time()
        self._log.write({"seq": seq, "p": meta.partition, "o": meta.offset, "t": time.time()})
