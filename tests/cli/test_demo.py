"""``capgroup demo`` end to end against the test broker: the tables, the unassigned partitions
after the kill with their lag and the group figures (describe's and the members' metrics), the
capacity-blind comparison, the member an autoscaler adds, the archive check, and no member
process left behind."""

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

ROW = re.compile(
    r"^(archiver-\w)\s+(\d+)/(\d+)\s+([\d.]+) MiB / ([\d.]+) MiB\s+(\d+)%\s+1\s+-\s+([\d,]+|-)\s+"
    r"([\d,]*)$"
)


def table_rows(section: str) -> dict[str, tuple[int, int, float, float, set[int]]]:
    """member -> (owned, max partitions, bytes MiB, budget MiB, partitions) of one table."""
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line.strip())
        if match:
            name, owned, cap, used, budget, _, _, parts = match.groups()
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
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", out)]
    assert len(pids) == 5, out  # three started, one killed (named again), one added
    alive = [p for p in pids if psutil.pid_exists(p)]
    assert alive == [], f"member processes left behind: {alive}"

    before, after = out.split("SIGKILLed")
    deficit, scaled = after.split("as an autoscaler would")
    first = table_rows(before)
    assert set(first) == {"archiver-a", "archiver-b", "archiver-c"}, out
    owned_before = [p for row in first.values() for p in row[4]]
    assert sorted(owned_before) == list(range(12)), "every partition owned exactly once"
    assert "unassigned: 0" in before

    victim = re.search(r"^ (archiver-\w) \(pid", after, re.MULTILINE)
    assert victim is not None, out
    second = table_rows(deficit)
    assert victim.group(1) not in second, out
    assert len(second) == 2, out
    for name, (owned, cap, used, budget, partitions) in second.items():
        assert owned == len(partitions) <= cap, f"{name} over its partition cap"
        assert used <= budget, f"{name} over its memory budget"
        # Sticky: a survivor kept what it had.
        assert first[name][4] <= partitions
    unassigned = sorted(set(range(12)) - {p for row in second.values() for p in row[4]})
    assert unassigned == sorted(first[victim.group(1)][4]), "the dead member's partitions wait"
    listed = re.search(r"unassigned: (\d+) \(partitions ([\d,]+); lag ([\d,]+)\)", deficit)
    assert listed is not None, deficit
    assert int(listed.group(1)) == len(unassigned)
    assert listed.group(2) == ",".join(map(str, unassigned))
    assert int(listed.group(3).replace(",", "")) > 0, "records wait on the unassigned partitions"
    figures = re.search(
        r"capacity 7 of 12 partitions; headroom 0 members; replicas wanted (\d+)", deficit
    )
    assert figures is not None, deficit
    wanted = int(figures.group(1))
    assert wanted > 2
    assert "a capacity-blind round-robin would give" in deficit
    assert "% of its budget" in deficit
    # The members' own metrics say the same (every member's scrape carries the leader's figures).
    assert re.search(
        rf"^  capgroup_group_unassigned_partitions {len(unassigned)}\.0$", deficit, re.M
    )
    assert re.search(rf"^  capgroup_group_replicas_wanted {wanted}\.0$", deficit, re.M), deficit

    added, final = scaled.split("stopped the producer")
    assert re.search(r"started archiver-d \(pid \d+\), sized like archiver-a", added), added
    third = table_rows(added)
    assert set(third) == {"archiver-b", "archiver-c", "archiver-d"}, added
    assert sorted(p for row in third.values() for p in row[4]) == list(range(12))
    assert "unassigned: 0" in added
    for name, (owned, cap, used, budget, partitions) in third.items():
        assert owned == len(partitions) <= cap, f"{name} over its partition cap"
        assert used <= budget, f"{name} over its memory budget"

    caught_up = table_rows(final)
    assert set(caught_up) == set(third), final
    assert all(row[4] for row in caught_up.values())
    check = re.search(
        r"every produced record was archived: ([\d,]+) produced, ([\d,]+) in \d+ archive files, "
        r"(\d+) duplicates \((.+)\)$",
        final,
        re.M,
    )
    assert check is not None, final
    produced, archived, duplicates, why = check.groups()
    assert produced == archived
    assert int(produced.replace(",", "")) > 0
    assert int(duplicates) == 0
    assert victim.group(1) in why
