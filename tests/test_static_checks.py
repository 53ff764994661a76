"""ruff, ruff format and mypy --strict are clean on the package; public names are documented."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import capgroup

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "capgroup"],
        ["ruff", "format", "--check", "capgroup"],
        ["mypy", "capgroup"],
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_tool_is_clean(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"


def test_public_names_exist_and_have_docstrings() -> None:
    undocumented = []
    for name in capgroup.__all__:
        assert hasattr(capgroup, name), f"capgroup.__all__ names missing {name!r}"
        if name.startswith("__"):
            continue  # module metadata such as __version__
        if not (inspect.getdoc(getattr(capgroup, name)) or "").strip():
            undocumented.append(name)
    assert undocumented == []
