"""Every command piped into a reader that has gone away (``capgroup plan ... | head -1``) ends
quietly: exit 0 or 141 (the shell's SIGPIPE status), no ``BrokenPipeError`` traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAN = "examples/plans/story-25-members-5-die.json"


def into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``capgroup ARGS`` with stdout a pipe whose reader is already closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGROUP_")}
    try:
        return subprocess.run(
            [sys.executable, "-m", "capgroup.cli.main", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ("plan", PLAN, "--table"),
        ("plan", PLAN),
        ("config", "--markdown"),
        ("config",),
        ("--help",),
    ],
    ids=["plan-table", "plan-json", "config-markdown", "config", "help"],
)
def test_closed_pipe_exits_quietly(args: tuple[str, ...]) -> None:
    result = into_closed_pipe(*args)
    assert result.returncode in (0, 141), result.stderr
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert "Exception ignored" not in result.stderr


def test_head_of_a_plan_table() -> None:
    result = subprocess.run(
        f"{sys.executable} -m capgroup.cli.main plan {PLAN} --table | head -1",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("member")
    assert "Traceback" not in result.stderr
