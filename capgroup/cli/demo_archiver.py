"""The member ``capgroup demo`` runs: each flushed batch becomes one gzip JSON-lines file.

Shipped with the package so that the demo runs from any directory after ``pip install``
(``capgroup run capgroup.cli.demo_archiver:DemoArchiver``). It is a compact form of the archiver
example (``examples/archiver``, the documented source, with its tests and README): a batch of
a partition is written atomically to ``<ARCHIVER_DIR>/<topic>/<partition>/<first>-<last>.jsonl.gz``
in a worker thread, and the runtime commits past the batch only after the file is in place.

It implements ``flush`` only. Before writing a batch it deletes the files of that partition
that start at or past the batch's first offset (and interrupted writes): within one ownership
there are none, and at the start of an ownership they are what a previous owner flushed
without committing, which this batch writes again. So committed ranges end up in exactly one
file each.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
from pathlib import Path
from typing import Any

import anyio

from capgroup.runtime.batch import Batch
from capgroup.runtime.consumer import BatchingConsumer
from capgroup.settings import CapgroupSettings

__all__ = ["DIRECTORY_ENV", "SUFFIX", "DemoArchiver", "encode_batch", "record_json"]

#: Environment variable naming the archive's root directory (default ``./archive``).
DIRECTORY_ENV = "ARCHIVER_DIR"
SUFFIX = ".jsonl.gz"
_RANGE = re.compile(r"^(\d+)-(\d+)\.jsonl\.gz$")
_TEMP_PREFIX = ".tmp-"


def record_json(record: Any) -> dict[str, Any]:
    """One record as a JSON object; keys and values that are not UTF-8 are base64 (``*_b64``)."""
    out: dict[str, Any] = {"offset": record.offset, "timestamp_ms": record.timestamp}
    for name, data in (("key", record.key), ("value", record.value)):
        if data is None:
            out[name] = None
        elif isinstance(data, bytes):
            try:
                out[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                out[f"{name}_b64"] = base64.b64encode(data).decode("ascii")
        else:
            out[name] = data
    if record.headers:
        out["headers_b64"] = [
            [k, None if v is None else base64.b64encode(v).decode("ascii")]
            for k, v in record.headers
        ]
    return out


def encode_batch(batch: Batch) -> bytes:
    """The gzip-compressed JSON lines of ``batch`` (the same batch gives the same bytes)."""
    lines = "".join(json.dumps(record_json(r), separators=(",", ":")) + "\n" for r in batch)
    return gzip.compress(lines.encode("utf-8"), mtime=0)


class DemoArchiver(BatchingConsumer):
    """Archives every batch to ``<directory>/<topic>/<partition>/<first>-<last>.jsonl.gz``.

    ``directory`` defaults to ``ARCHIVER_DIR`` (else ``./archive``); other keyword arguments
    are capgroup settings.
    """

    def __init__(
        self,
        settings: CapgroupSettings | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(settings, **overrides)
        self.directory = Path(directory or os.environ.get(DIRECTORY_ENV, "archive"))

    async def flush(self, batch: Batch) -> None:
        """Write the batch's file in a worker thread; returns once it is durable."""
        await anyio.to_thread.run_sync(self._write, batch)

    def _write(self, batch: Batch) -> None:
        folder = self.directory / batch.tp.topic / str(batch.tp.partition)
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            match = _RANGE.match(path.name)
            stale = path.name.startswith(_TEMP_PREFIX) or (
                match is not None and int(match.group(1)) >= batch.first_offset
            )
            if stale:
                path.unlink(missing_ok=True)
        target = folder / f"{batch.first_offset}-{batch.last_offset}{SUFFIX}"
        temp = folder / f"{_TEMP_PREFIX}{os.getpid()}-{target.name}"
        try:
            with open(temp, "wb") as out:
                out.write(encode_batch(batch))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
