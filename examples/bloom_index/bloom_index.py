"""Index a topic's record keys: one bloom filter per partition and offset range.

Run from the repository root::

    CAPGROUP_BOOTSTRAP_SERVERS=127.0.0.1:9092 CAPGROUP_GROUP_ID=bloom-index \\
    CAPGROUP_TOPICS=events BLOOM_INDEX_DIR=/var/bloom BLOOM_FP_RATE=0.01 \\
    capgroup run examples.bloom_index.bloom_index:BloomIndexer

Each batch becomes ``<BLOOM_INDEX_DIR>/<topic>/<partition>/<first>-<last>.bloom``: a filter of
the keys of that offset range, sized for the batch at the configured false-positive rate. To
find a key, :func:`candidate_ranges` lists the ranges whose filter says "possibly"; only those
need to be read from Kafka (or from an archive such as the archiver example's).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from capgroup import Batch, CapgroupSettings, TopicPartition
from examples.bloom_index.bloom import BloomFilter
from examples.range_files import RangeFileConsumer, partition_dir, range_files


def build_filter(batch: Batch, fp_rate: float) -> BloomFilter:
    """The filter of ``batch``'s keys (records without a key are not indexed)."""
    keys = [r.key for r in batch if r.key is not None]
    bloom = BloomFilter.for_capacity(len(keys), fp_rate)
    for key in keys:
        bloom.add(key)
    return bloom


def load_filters(root: Path, tp: TopicPartition) -> list[tuple[int, int, BloomFilter]]:
    """``(first, last, filter)`` of every range indexed for ``tp``, in offset order."""
    return [
        (first, last, BloomFilter.from_bytes(path.read_bytes()))
        for first, last, path in range_files(partition_dir(root, tp), BloomIndexer.suffix)
    ]


def candidate_ranges(root: Path, tp: TopicPartition, key: bytes) -> list[tuple[int, int]]:
    """Offset ranges of ``tp`` that possibly hold a record with ``key``."""
    return [(first, last) for first, last, bloom in load_filters(root, tp) if key in bloom]


class BloomIndexer(RangeFileConsumer):
    """Writes a bloom filter of each batch's keys to
    ``<directory>/<topic>/<partition>/<first>-<last>.bloom``.

    ``directory`` defaults to ``BLOOM_INDEX_DIR`` (else ``./bloom-index``) and ``fp_rate`` to
    ``BLOOM_FP_RATE`` (else 0.01). Other keyword arguments are capgroup settings.
    """

    suffix = ".bloom"
    directory_env = "BLOOM_INDEX_DIR"
    default_directory = "bloom-index"

    def __init__(
        self,
        settings: CapgroupSettings | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        fp_rate: float | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(settings, directory=directory, **overrides)
        if fp_rate is None:
            fp_rate = float(os.environ.get("BLOOM_FP_RATE", "0.01"))
        if not 0.0 < fp_rate < 1.0:
            raise ValueError(f"BLOOM_FP_RATE must be in (0, 1), got {fp_rate}")
        self.fp_rate = fp_rate

    def render(self, batch: Batch) -> bytes:
        """The serialised filter of the batch's keys."""
        return build_filter(batch, self.fp_rate).to_bytes()
