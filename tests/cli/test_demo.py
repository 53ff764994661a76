"""``capgroup demo`` end to end against the test broker: the tables, the unassigned partitions
after the kill, the capacity-blind comparison, and no member process left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

ROW = re.compile(r"^(archiver-\w)\s+(\d+)/(\d+)\s+([\d.]+) MiB / ([\d.]+) MiB\s+(\d+)%\s+([\d,]*)$")


def table_rows(section: str) -> dict[str, tuple[int, int, float, float, set[int]]]:
    """member -> (owned, max partitions, bytes MiB, budget MiB, partitions) of one table."""
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line.strip())
        if match:
            name, owned, cap, used, budget, _, parts = match.groups()
            partitions = {int(p) for p in parts.split(",") if p}
            rows[name] = (int(owned), int(cap), float(used), float(budget), partitions)
    return rows


def test_demo_runs_kills_a_member_and_leaves_nothing_behind(kafka: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGROUP_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka.bootstrap_servers
    result = subprocess.run(
        [sys.executable, "-m", "capgroup.cli.main", "demo"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr[-3000:]}"
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", out.split("\n\n")[0])]
    assert len(pids) == 3, out
    alive = [p for p in pids if psutil.pid_exists(p)]
    assert alive == [], f"member processes left behind: {alive}"

    before, after = out.split("SIGKILLed")
    first = table_rows(before)
    assert set(first) == {"archiver-a", "archiver-b", "archiver-c"}, out
    owned_before = [p for row in first.values() for p in row[4]]
    assert sorted(owned_before) == list(range(12)), "every partition owned exactly once"
    assert "unassigned: 0" in before

    victim = re.search(r"^ (archiver-\w) \(pid", after, re.MULTILINE)
    assert victim is not None, out
    second = table_rows(after)
    assert victim.group(1) not in second, out
    assert len(second) == 2, out
    for name, (owned, cap, used, budget, partitions) in second.items():
        assert owned == len(partitions) <= cap, f"{name} over its partition cap"
        assert used <= budget, f"{name} over its memory budget"
        # Sticky: a survivor kept what it had.
        assert first[name][4] <= partitions
    unassigned = sorted(set(range(12)) - {p for row in second.values() for p in row[4]})
    assert unassigned, "the survivors cannot hold 12 partitions, so some must stay unassigned"
    assert f"unassigned: {len(unassigned)} (partitions {','.join(map(str, unassigned))})" in after
    assert "a capacity-blind round-robin would give" in after
    assert "% of its budget" in after
