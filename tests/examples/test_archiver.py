"""The archiver example against a real broker: every committed record is archived exactly once,
a restart resumes from the commit (replacing what a crashed owner flushed past it), and
``capgroup run examples.archiver.archiver:Archiver`` runs it as an OS process."""

from __future__ import annotations

import gzip
import signal
from pathlib import Path
from typing import Any

import pytest

from capgroup import TopicPartition
from examples.archiver.archiver import Archiver, archived_ranges, read_range
from examples.range_files import TEMP_PREFIX
from tests.runtime.harness import (
    ConsumerProcess,
    consumer_settings,
    process,
    produce,
    running,
    wait_committed,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

BATCHING = {"batch_max_records": 60, "batch_max_age_ms": 300}


def archived(root: Path, tp: TopicPartition) -> list[dict[str, Any]]:
    """Every archived record of ``tp``, file after file, checking each file's name."""
    records = []
    for first, last, path in archived_ranges(root, tp):
        held = read_range(path)
        assert [r["offset"] for r in held][:1] == [first], path
        assert held[-1]["offset"] == last, path
        records.extend(held)
    return records


def expected(tp: TopicPartition, count: int) -> list[tuple[int, str, str]]:
    """(offset, key, value prefix) that ``produce`` wrote to ``tp`` (offsets from 0)."""
    return [(i, str(i), f"{i:010d}") for i in range(count)]


def contents(root: Path, tp: TopicPartition) -> list[tuple[int, str, str]]:
    return [(r["offset"], r["key"], r["value"][:10]) for r in archived(root, tp)]


class ArchiverProcess(ConsumerProcess):
    """``capgroup run examples.archiver.archiver:Archiver`` (the path the README gives)."""

    target = "examples.archiver.archiver:Archiver"


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


async def test_every_record_once_and_restart_resumes_from_the_commit(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=2)
    group = unique_id("g")
    tps = [TopicPartition(topic, p) for p in range(2)]
    root = tmp_path / "archive"
    for tp in tps:
        await produce(bootstrap, topic, tp.partition, 250, value_size=40)
    settings = consumer_settings(bootstrap, group, topic, **BATCHING)
    async with running(Archiver(directory=root, **settings)):
        await wait_committed(bootstrap, group, dict.fromkeys(tps, 250), 30)
    for tp in tps:
        assert contents(root, tp) == expected(tp, 250)
        assert len(archived_ranges(root, tp)) >= 250 // 60
    assert temp_files(root) == []
    first_files = {
        path: (path.stat().st_ino, path.stat().st_mtime_ns)
        for tp in tps
        for _, _, path in archived_ranges(root, tp)
    }

    # What an owner that crashed after writing but before committing leaves behind: a complete
    # file past the commit (its range differs from how the next owner cuts) and a torn temp file.
    orphan_dir = root / topic / "0"
    (orphan_dir / "250-999.jsonl.gz").write_bytes(gzip.compress(b'{"offset": 250}\n'))
    (orphan_dir / f"{TEMP_PREFIX}1-250-300.jsonl.gz").write_bytes(b"\x1f\x8b torn")
    for tp in tps:
        await produce(bootstrap, topic, tp.partition, 100, value_size=40, start=250)
    async with running(Archiver(directory=root, **settings)):
        await wait_committed(bootstrap, group, dict.fromkeys(tps, 350), 30)
    for tp in tps:
        assert contents(root, tp) == expected(tp, 350)
        # The restart began at the commit: the new ranges start at 250.
        assert next(f for f, _, _ in archived_ranges(root, tp) if f >= 250) == 250
    assert temp_files(root) == []
    for path, identity in first_files.items():
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == identity, f"{path} rewritten"


async def test_capgroup_run_archiver_as_a_process(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = await topic_factory(partitions=3)
    group = unique_id("g")
    tps = [TopicPartition(topic, p) for p in range(3)]
    root = tmp_path / "archive"
    for tp in tps:
        await produce(bootstrap, topic, tp.partition, 200)
    settings = consumer_settings(bootstrap, group, topic, **BATCHING)
    member = ArchiverProcess(tmp_path / "member", settings, ARCHIVER_DIR=str(root))
    async with process(member) as a:
        await wait_committed(bootstrap, group, dict.fromkeys(tps, 200), 40)
        a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert await a.wait_exit(20) == 0, a.stderr()[-3000:]
    for tp in tps:
        assert contents(root, tp) == expected(tp, 200)
    assert temp_files(root) == []
