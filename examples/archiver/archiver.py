"""Archive a topic to gzip JSON-lines files, one file per flushed batch.

Run from the repository root::

    CAPGROUP_BOOTSTRAP_SERVERS=127.0.0.1:9092 CAPGROUP_GROUP_ID=archiver \\
    CAPGROUP_TOPICS=events ARCHIVER_DIR=/var/archive \\
    capgroup run examples.archiver.archiver:Archiver

Each batch of a partition is written to
``<ARCHIVER_DIR>/<topic>/<partition>/<first>-<last>.jsonl.gz`` (first and last offset of the
batch), one JSON object per record. The runtime commits past a batch only after ``flush``
returned, so a committed range always has its complete file.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from pathlib import Path
from typing import Any

from capgroup import Batch, CapgroupSettings, Record, TopicPartition
from examples.range_files import RangeFileConsumer, partition_dir, range_files


def record_json(record: Record) -> dict[str, Any]:
    """One record as a JSON object; keys and values that are not UTF-8 are base64 (``*_b64``)."""
    out: dict[str, Any] = {"offset": record.offset, "timestamp_ms": record.timestamp}
    for name, data in (("key", record.key), ("value", record.value)):
        if data is None:
            out[name] = None
            continue
        try:
            out[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            out[f"{name}_b64"] = base64.b64encode(data).decode("ascii")
    if record.headers:
        out["headers_b64"] = [[k, base64.b64encode(v).decode("ascii")] for k, v in record.headers]
    return out


def encode_batch(batch: Batch, compresslevel: int = 6) -> bytes:
    """The gzip-compressed JSON lines of ``batch``."""
    lines = "".join(json.dumps(record_json(r), separators=(",", ":")) + "\n" for r in batch)
    # mtime=0: the same batch always compresses to the same bytes.
    return gzip.compress(lines.encode("utf-8"), compresslevel=compresslevel, mtime=0)


def read_range(path: Path) -> list[dict[str, Any]]:
    """The records of one archived range file."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def archived_ranges(root: Path, tp: TopicPartition) -> list[tuple[int, int, Path]]:
    """``(first, last, path)`` of every complete file archived for ``tp``, in offset order."""
    return range_files(partition_dir(root, tp), Archiver.suffix)


class Archiver(RangeFileConsumer):
    """Writes every batch to ``<directory>/<topic>/<partition>/<first>-<last>.jsonl.gz``.

    ``directory`` defaults to ``ARCHIVER_DIR`` (else ``./archive``) and ``compresslevel`` to
    ``ARCHIVER_COMPRESSLEVEL`` (else 6). Other keyword arguments are capgroup settings.
    """

    suffix = ".jsonl.gz"
    directory_env = "ARCHIVER_DIR"
    default_directory = "archive"

    def __init__(
        self,
        settings: CapgroupSettings | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        compresslevel: int | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(settings, directory=directory, **overrides)
        if compresslevel is None:
            compresslevel = int(os.environ.get("ARCHIVER_COMPRESSLEVEL", "6"))
        if not 0 <= compresslevel <= 9:
            raise ValueError(f"ARCHIVER_COMPRESSLEVEL must be 0..9, got {compresslevel}")
        self.compresslevel = compresslevel

    def render(self, batch: Batch) -> bytes:
        """The batch as gzip JSON lines."""
        return encode_batch(batch, self.compresslevel)
