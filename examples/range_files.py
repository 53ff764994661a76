"""What the examples share: one file per partition and offset range, written atomically."""

from __future__ import annotations

import os
import re
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import anyio

from capgroup import Batch, BatchingConsumer, CapgroupSettings, TopicPartition
from capgroup.log import get_logger

_log = get_logger("examples")

#: ``<first>-<last><suffix>``: the offset range a complete file holds.
_RANGE = re.compile(r"^(\d+)-(\d+)(\..+)$")
#: Prefix of files being written; a crash can leave one behind, never a complete-looking file.
TEMP_PREFIX = ".tmp-"


def partition_dir(root: Path, tp: TopicPartition) -> Path:
    """``<root>/<topic>/<partition>``."""
    return root / tp.topic / str(tp.partition)


def range_path(root: Path, batch: Batch, suffix: str) -> Path:
    """``<root>/<topic>/<partition>/<first>-<last><suffix>`` for ``batch``."""
    return partition_dir(root, batch.tp) / f"{batch.first_offset}-{batch.last_offset}{suffix}"


def parse_range(name: str, suffix: str) -> tuple[int, int] | None:
    """``(first, last)`` of a complete range file's name, None for anything else."""
    match = _RANGE.match(name)
    if match is None or match.group(3) != suffix:
        return None
    return int(match.group(1)), int(match.group(2))


def range_files(directory: Path, suffix: str) -> list[tuple[int, int, Path]]:
    """Complete range files in one partition directory, in offset order."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        parsed = parse_range(path.name, suffix)
        if parsed is not None:
            found.append((*parsed, path))
    return sorted(found)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent or complete.

    The bytes go to a temporary name in the same directory, are fsynced, and the file is
    renamed into place (atomic on POSIX); the directory is fsynced so the rename survives a
    power loss before the runtime commits past the batch.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_uncommitted(directory: Path, suffix: str, first_offset: int) -> list[Path]:
    """Delete what a previous owner left at or past ``first_offset``, the new owner's start.

    A new ownership starts at the committed offset, so complete files starting there or later
    were flushed but never committed (the owner crashed before its commit); the new owner
    writes those records again, possibly cut differently, and the old files would duplicate
    them. Temporary files are leftovers of interrupted writes. Returns the paths removed.
    """
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        parsed = parse_range(path.name, suffix)
        stale = path.name.startswith(TEMP_PREFIX) or (
            parsed is not None and parsed[0] >= first_offset
        )
        if stale:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class RangeFileConsumer(BatchingConsumer):
    """A consumer that turns each batch into one file per partition and offset range.

    Subclasses set :attr:`suffix` and :attr:`directory_env` and implement :meth:`render`. The
    file ``<directory>/<topic>/<partition>/<first>-<last><suffix>`` is written atomically off
    the event loop (other partitions keep flowing). The first batch of each ownership removes
    what a previous owner flushed past the committed offset (see :func:`remove_uncommitted`),
    so committed ranges end up in exactly one file each.
    """

    #: File name suffix, e.g. ``.jsonl.gz``.
    suffix: ClassVar[str]
    #: Environment variable naming the output directory.
    directory_env: ClassVar[str]
    #: Directory used when neither the argument nor the variable is given.
    default_directory: ClassVar[str]

    def __init__(
        self,
        settings: CapgroupSettings | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(settings, **overrides)
        self.directory = Path(
            directory or os.environ.get(self.directory_env, self.default_directory)
        )
        # Partitions gained whose first batch has not been written yet.
        self._fresh: set[TopicPartition] = set()

    @abstractmethod
    def render(self, batch: Batch) -> bytes:
        """The file contents for ``batch`` (called in a worker thread)."""

    async def on_partitions_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        """Remember the gained partitions: their first batch cleans up after the last owner."""
        self._fresh.update(partitions)

    async def flush(self, batch: Batch) -> None:
        """Render and write the batch's file in a worker thread."""
        await anyio.to_thread.run_sync(self._write, batch, batch.tp in self._fresh)
        self._fresh.discard(batch.tp)

    def _write(self, batch: Batch, fresh: bool) -> None:
        if fresh:
            # The first batch of an ownership starts at the committed offset.
            removed = remove_uncommitted(
                partition_dir(self.directory, batch.tp), self.suffix, batch.first_offset
            )
            if removed:
                _log.info(
                    "uncommitted_files_removed",
                    partition=f"{batch.tp.topic}-{batch.tp.partition}",
                    files=[p.name for p in removed],
                )
        write_atomically(range_path(self.directory, batch, self.suffix), self.render(batch))
