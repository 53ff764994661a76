"""A BatchingConsumer for process tests, run with ``capgroup run``.

Each flush appends one JSON line per batch to ``SINK_PATH`` and fsyncs it, so a SIGKILL loses
nothing that was flushed. Knobs (environment): ``SINK_FLUSH_DELAY_S`` sleeps in every flush;
``SINK_SEEN_PATH`` names a file the deserializer appends every fetched offset to, so a test can
tell records are buffered (not fsynced: it is a progress hint, not evidence).
"""

from __future__ import annotations

import json
import os
import time

import anyio

from capgroup import Batch, BatchingConsumer, Record


class SinkConsumer(BatchingConsumer):
    """Writes ``{"partition", "first", "last", "offsets", "bytes", "buffered", ...}`` per batch."""

    def deserialize(self, record: Record) -> Record:
        """Note the offset as seen, when asked to."""
        seen = os.environ.get("SINK_SEEN_PATH")
        if seen:
            with open(seen, "a", encoding="utf-8") as out:
                out.write(f"{record.partition} {record.offset}\n")
        return record

    async def flush(self, batch: Batch) -> None:
        """Append the batch to the sink file (fsynced)."""
        delay = float(os.environ.get("SINK_FLUSH_DELAY_S", "0"))
        if delay:
            await anyio.sleep(delay)
        stats = self.stats
        line = json.dumps(
            {
                "t": time.time(),
                "partition": batch.tp.partition,
                "first": batch.first_offset,
                "last": batch.last_offset,
                "offsets": [r.offset for r in batch.records],
                "bytes": batch.size_bytes,
                "buffered": stats.buffered_bytes,
                "owned": stats.owned_partitions,
                "budget": stats.budget_bytes,
                "generation": self.generation.generation_id,
                "pid": os.getpid(),
            }
        )
        with open(os.environ["SINK_PATH"], "a", encoding="utf-8") as sink:  # noqa: ASYNC230
            sink.write(line + "\n")
            sink.flush()
            os.fsync(sink.fileno())


def read_batches(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    """Batches a sink consumer wrote (a torn last line after SIGKILL is skipped)."""
    if not os.path.exists(path):
        return []
    batches = []
    with open(path, encoding="utf-8") as sink:
        for line in sink:
            try:
                batches.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return batches
