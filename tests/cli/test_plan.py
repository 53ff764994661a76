"""``capgroup plan`` on the example scenarios, and its error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from capgroup.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"
SCENARIOS = sorted(EXAMPLES.glob("*.json"))
STORY = EXAMPLES / "story-25-members-5-die.json"
FIVE = "m-1,m-2,m-3,m-4,m-5"


def _plan(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["plan", *argv]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def _check_invariants(scenario_path: Path, out: dict[str, Any], lost: set[str]) -> None:
    scenario = json.loads(scenario_path.read_text())
    members = {m["id"]: m for m in scenario["members"] if m["id"] not in lost}
    assert set(out["assignment"]) == set(members)
    placed = Counter(
        (tp["topic"], tp["partition"]) for tps in out["assignment"].values() for tp in tps
    )
    placed.update((p["topic"], p["partition"]) for p in out["pending"])
    placed.update((p["topic"], p["partition"]) for p in out["unassigned"])
    assert placed == Counter((p["topic"], p["partition"]) for p in scenario["partitions"])
    incoming = Counter(p["to"] for p in out["pending"])
    for member_id, tps in out["assignment"].items():
        m = members[member_id]
        cost = m.get("partition_bytes", {})
        default = m.get("default_partition_bytes", 0)
        incoming_tps = [p for p in out["pending"] if p["to"] == member_id]
        # Both phases of a cooperative move: what it holds now plus what it will receive.
        for held in (tps, tps + incoming_tps):
            assert len(held) <= m["max_partitions"]
            assert sum(cost.get(tp["topic"], default) for tp in held) <= m["memory_budget_bytes"]
        if m.get("draining"):
            assert tps == []
            assert incoming[member_id] == 0
        assert all(tp["topic"] in m["topics"] for tp in tps)
    assert isinstance(out["moved"], int)
    assert isinstance(out["headroom"], int)


def test_every_example_scenario_is_covered() -> None:
    names = {p.name for p in SCENARIOS}
    assert {
        "story-25-members-5-die.json",
        "heterogeneous.json",
        "range-trap.json",
        "draining.json",
    } <= names
    readme = (EXAMPLES / "README.md").read_text()
    assert all(name in readme for name in names)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_examples_plan_within_budgets(scenario: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check_invariants(scenario, _plan(capsys, str(scenario)), set())


def test_story_five_die_leaves_partitions_unassigned_not_survivors_overloaded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _plan(capsys, str(STORY), "--lose", FIVE)
    _check_invariants(STORY, out, set(FIVE.split(",")))
    assert len(out["unassigned"]) == 20
    assert all(len(tps) <= 4 for tps in out["assignment"].values())
    assert out["lost"] == FIVE.split(",")
    assert out["headroom"] == 0
    # Survivors keep what they had: only the dead members' partitions are in question.
    assert out["moved"] == 0


def test_story_with_members_already_gone_matches_lose(capsys: pytest.CaptureFixture[str]) -> None:
    lose = _plan(capsys, str(STORY), "--lose", FIVE)
    gone = _plan(capsys, str(EXAMPLES / "story-20-survivors.json"))
    assert gone["assignment"] == lose["assignment"]
    assert gone["unassigned"] == lose["unassigned"]


def test_range_trap_is_balanced_across_topics(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = EXAMPLES / "range-trap.json"
    out = _plan(capsys, str(scenario))
    counts = [len(tps) for tps in out["assignment"].values()]
    assert max(counts) - min(counts) <= 1
    assert out["unassigned"] == []


def test_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(STORY), "--lose", FIVE, "--table"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split() == ["member", "partitions", "incoming", "bytes", "/", "budget", "util"]
    rows = [line for line in lines if line.startswith("m-")]
    assert len(rows) == 20
    assert all("4/4" in row and "2.00 GB / 2.00 GB" in row and "100%" in row for row in rows)
    assert "unassigned: 20" in lines
    assert "headroom: 0" in lines


def test_subprocess_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "capgroup.cli.main", "plan", str(STORY), "--lose", FIVE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    _check_invariants(STORY, out, set(FIVE.split(",")))
    assert len(out["unassigned"]) == 20


def _member(**overrides: Any) -> dict[str, Any]:
    member: dict[str, Any] = {
        "id": "m-1",
        "topics": ["events"],
        "max_partitions": 4,
        "memory_budget_bytes": 2_000_000_000,
        "partition_bytes": {"events": 500_000_000},
    }
    member.update(overrides)
    return member


def _scenario(**overrides: Any) -> dict[str, Any]:
    scenario: dict[str, Any] = {
        "generation": 1,
        "members": [_member()],
        "partitions": [{"topic": "events", "partition": 0}],
    }
    scenario.update(overrides)
    return scenario


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps([1, 2]), "(top level)"),
        (json.dumps(_scenario(generation="seven")), "generation"),
        (
            json.dumps(_scenario(members=[_member(memory_budget_bytes=-1)])),
            "members[0].memory_budget_bytes",
        ),
        (json.dumps(_scenario(members=[_member(max_partitions=-4)])), "members[0].max_partitions"),
        (json.dumps(_scenario(members=[_member(max_partitions="4")])), "members[0].max_partitions"),
        (json.dumps(_scenario(members=[_member(weight=0)])), "members[0].weight"),
        (
            json.dumps(_scenario(members=[_member(partition_bytes={"events": -1})])),
            "members[0].partition_bytes.events",
        ),
        (json.dumps(_scenario(members=[_member(max_partition=4)])), "members[0].max_partition"),
        (
            json.dumps(_scenario(partitions=[{"topic": "events", "partition": 0}] * 2)),
            "partitions: partition events-0 is listed twice",
        ),
        (json.dumps(_scenario(members=[_member(), _member()])), "member id 'm-1' is listed twice"),
        (
            json.dumps(
                _scenario(
                    members=[
                        _member(owned=[{"topic": "events", "partition": 0, "generation": 1}] * 2)
                    ]
                )
            ),
            "members[0].owned",
        ),
        (
            json.dumps(_scenario(partitions=[{"topic": "events", "partition": -3}])),
            "partitions[0].partition",
        ),
        (json.dumps({"members": [], "partitions": []}), "generation: Field required"),
    ],
)
def test_scenario_errors_exit_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    path = tmp_path / "scenario.json"
    path.write_text(content)
    assert main(["plan", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert expected in captured.err
    assert "Traceback" not in captured.err


def test_missing_file_and_unknown_lost_member_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(tmp_path / "nope.json")]) == 2
    assert "cannot read scenario" in capsys.readouterr().err
    assert main(["plan", str(STORY), "--lose", "m-1,m-99"]) == 2
    err = capsys.readouterr().err
    assert "--lose" in err
    assert "'m-99'" in err
    assert "'m-1'" not in err


def test_subprocess_error_has_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_scenario(members=[_member(memory_budget_bytes=-5)])))
    proc = subprocess.run(
        [sys.executable, "-m", "capgroup.cli.main", "plan", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "members[0].memory_budget_bytes" in proc.stderr
    assert "Traceback" not in proc.stderr
