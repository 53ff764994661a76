"""The demo's member ships with the package: ``capgroup run capgroup.cli.demo_archiver:
DemoArchiver`` works from any directory, without the checkout on the import path."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from capgroup.cli.demo_archiver import DemoArchiver
from capgroup.cli.demo_cmd import ARCHIVER
from capgroup.cli.run_cmd import load_consumer_class
from capgroup.runtime.batch import Batch, make_record
from capgroup.types import TopicPartition
from tests.runtime.harness import produce, wait_until

ROOT = Path(__file__).resolve().parents[2]
TP = TopicPartition("events", 2)


def batch(first: int, last: int) -> Batch:
    records = [
        make_record(TP.topic, TP.partition, o, 1_700_000_000_000 + o, b"k", f"v{o}".encode())
        for o in range(first, last + 1)
    ]
    return Batch.of(TP, records, started_at=0.0)


def read(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def start_member(env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """``capgroup run`` of the demo member from ``cwd`` (not the checkout: nothing of examples/
    or tests/ is importable), stderr to ``cwd/stderr.log``."""
    with open(cwd / "stderr.log", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "capgroup.cli.main", "run", ARCHIVER],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def test_the_demo_runs_the_packaged_member() -> None:
    assert ARCHIVER == "capgroup.cli.demo_archiver:DemoArchiver"
    assert load_consumer_class(ARCHIVER) is DemoArchiver


@pytest.mark.anyio
async def test_flush_writes_one_file_per_range_and_replaces_uncommitted_ones(
    tmp_path: Path,
) -> None:
    member = DemoArchiver(
        group_id="g", topics=["events"], memory_budget_bytes=1 << 28, directory=tmp_path
    )
    folder = tmp_path / "events" / "2"
    await member.flush(batch(0, 4))
    await member.flush(batch(5, 9))
    assert sorted(p.name for p in folder.iterdir()) == ["0-4.jsonl.gz", "5-9.jsonl.gz"]
    assert [r["value"] for r in read(folder / "0-4.jsonl.gz")] == [f"v{o}" for o in range(5)]
    # A new owner starts at the committed offset 5 and cuts differently: the old owner's
    # uncommitted 5-9 and an interrupted write are replaced, committed 0-4 stays.
    (folder / ".tmp-1-10-12.jsonl.gz").write_bytes(b"partial")
    await member.flush(batch(5, 7))
    assert sorted(p.name for p in folder.iterdir()) == ["0-4.jsonl.gz", "5-7.jsonl.gz"]


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_packaged_member_runs_from_any_directory(
    kafka: Any, topic_factory: Any, unique_id: Any, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=1)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("CAPGROUP_") and k != "PYTHONPATH"
    }
    env.update(
        CAPGROUP_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        CAPGROUP_GROUP_ID=unique_id("demo-member"),
        CAPGROUP_TOPICS=topic,
        CAPGROUP_MEMORY_BUDGET_BYTES=str(256 * 1024 * 1024),
        CAPGROUP_BATCH_MAX_AGE_MS="500",
        ARCHIVER_DIR=str(tmp_path / "archive"),
    )
    await produce(kafka.bootstrap_servers, topic, 0, 20)
    folder = tmp_path / "archive" / topic / "0"
    proc = start_member(env, tmp_path)
    try:

        def archived() -> int:
            files = list(folder.glob("*.jsonl.gz")) if folder.is_dir() else []
            return sum(len(read(p)) for p in files)

        await wait_until(lambda: archived() == 20, 60, "20 records archived")
        proc.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(proc.wait, 30)
        stderr = (tmp_path / "stderr.log").read_text()
        assert code == 0, stderr[-3000:]
        assert "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pip_install_ships_the_demo_member(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    shutil.copytree(
        ROOT / "capgroup", source / "capgroup", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    if install.returncode != 0:
        problem = f"pip cannot build here (offline?): {install.stderr[-500:]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    assert (target / "capgroup" / "cli" / "demo_archiver.py").is_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGROUP_")}
    env["PYTHONPATH"] = str(target)
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import capgroup.cli.demo_archiver as m, capgroup.cli.demo_cmd as d; "
            "from capgroup.cli.run_cmd import load_consumer_class as load; "
            "assert load(d.ARCHIVER).__module__ == m.__name__; print(m.__file__)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith(str(target))
