"""The mutants of ``test_mutants`` on the compiled core: the property tests catch them there too.

Monkeypatching cannot reach the Rust steps, so the crate has a test-only cargo feature,
``mutants``: built with it, ``capgroup._native`` exports ``set_mutant(name)``, which switches
on the Rust twin of the Python mutant of that name (same step, same change). A session
fixture builds that variant into its own target directory (``native/target/mutants``), loads
it under a private name and points :mod:`capgroup.assignor.native` at it for each test.

The one step of the native path that is not in the crate, the member sort of
:func:`capgroup.assignor.native.plan`, is Python: its mutant is patched there.

Without cargo, or if the build fails, these tests skip, except under ``CI=true``, where that
is a failure.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest
from hypothesis import Phase, given, settings

from capgroup.assignor import native
from capgroup.assignor.balance import reference_assign
from capgroup.assignor.model import MemberSpec, PartitionSpec, Plan
from tests.assignor.strategies import Case, cases
from tests.assignor.test_mutants import MUTANTS

IN_CI = os.environ.get("CI", "").lower() == "true"
CRATE = Path(__file__).resolve().parents[2] / "native"
TARGET = CRATE / "target" / "mutants"
LIBRARY = {"darwin": "lib_native.dylib", "win32": "_native.dll"}.get(sys.platform, "lib_native.so")


def unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mutants_build(pytestconfig: pytest.Config) -> ModuleType:
    """``capgroup._native`` built with ``--features mutants``, loaded as
    ``capgroup_mutants._native`` (the module init symbol fixes the last part)."""
    cargo = shutil.which("cargo")
    if cargo is None:
        unavailable("cargo is not installed: cannot build the mutants of the compiled core")
    command = [cargo, "build", "--release", "--locked", "--features", "mutants"]
    start = time.perf_counter()
    done = subprocess.run(
        [*command, "--target-dir", str(TARGET)],
        cwd=CRATE,
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.perf_counter() - start
    line = f"native mutants build ({' '.join(command[1:])}): {took:.1f} s"
    # Shown whatever the capture mode: the build time must stay visible (and short).
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        print(line)
    if done.returncode != 0:
        unavailable(f"{line}: exit status {done.returncode}\n{done.stderr[-5000:]}")
    path = TARGET / "release" / LIBRARY
    name = "capgroup_mutants._native"
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    assert hasattr(module, "set_mutant"), "built without the mutants feature"
    return module


@pytest.fixture
def core(mutants_build: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The mutants build is the compiled core for this test; no mutant on at either end."""
    monkeypatch.setattr(native, "_ext", mutants_build)
    mutants_build.set_mutant(None)
    try:
        yield mutants_build
    finally:
        mutants_build.set_mutant(None)


def core_assign(
    members: Sequence[MemberSpec], partitions: Sequence[PartitionSpec], generation: int
) -> Plan:
    """The core's plan; a decline raises RuntimeError, which no property check counts as
    a counterexample (a mutant must be caught by a property, not by a missing plan)."""
    found = native.plan(members, partitions, generation, force=True)
    if found is None:
        raise RuntimeError("the compiled core declined the input")
    return found


def input_member_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """``keep_input_member_order`` on the native path: the member sort is the wrapper's
    (``native.plan`` sorts the members by id before the core sees them), so the twin makes
    that sort keep the input order."""

    def unsorted(items: Any, key: Any = None) -> list[Any]:
        return list(items)

    monkeypatch.setattr(native, "sorted", unsorted, raising=False)


#: Mutants of steps the native path runs in Python, patched there.
PYTHON_SIDE: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "keep_input_member_order": input_member_order,
}

PROBE = settings(
    max_examples=300,
    deadline=None,
    phases=[Phase.generate],
    database=None,
    report_multiple_bugs=False,
    derandomize=True,
)


def test_every_mutant_has_a_twin_on_the_core(core: ModuleType) -> None:
    names = {patch.__name__ for _, patch, _, _ in MUTANTS}
    assert set(core.MUTANTS) == names - PYTHON_SIDE.keys()
    assert PYTHON_SIDE.keys() <= names
    with pytest.raises(ValueError, match="no mutant"):
        core.set_mutant("no_such_mutant")


def test_the_default_build_has_no_mutants() -> None:
    """``set_mutant`` exists only with the ``mutants`` feature (never in what pip builds)."""
    default = native._load()
    if default is None:
        unavailable("capgroup._native is not built (pip install needs cargo)")
    assert not hasattr(default, "set_mutant")
    assert not hasattr(default, "MUTANTS")


@pytest.mark.parametrize(
    ("mutant", "check", "strategy"),
    [pytest.param(p.__name__, c, s, id=name) for name, p, c, s in MUTANTS],
)
def test_property_catches_mutant_on_the_core(
    core: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    mutant: str,
    check: Callable[..., None],
    strategy: Any,
) -> None:
    @PROBE
    @given(strategy)
    def probe(drawn: Any) -> None:
        args = drawn if isinstance(drawn, tuple) else (drawn,)
        check(core_assign, *args)

    if mutant in PYTHON_SIDE:
        PYTHON_SIDE[mutant](monkeypatch)
    else:
        core.set_mutant(mutant)
    with pytest.raises(AssertionError):
        probe()


@pytest.mark.parametrize(
    ("check", "strategy"),
    [pytest.param(c, s, id=name) for name, _, c, s in MUTANTS],
)
def test_the_mutants_build_passes_with_no_mutant(
    core: ModuleType, check: Callable[..., None], strategy: Any
) -> None:
    """With ``set_mutant(None)`` every property holds: what the mutants catch is theirs."""

    @settings(PROBE, max_examples=100)
    @given(strategy)
    def probe(drawn: Any) -> None:
        args = drawn if isinstance(drawn, tuple) else (drawn,)
        check(core_assign, *args)

    probe()


def test_the_mutants_build_with_no_mutant_equals_the_reference(core: ModuleType) -> None:
    @settings(max_examples=200, deadline=None, database=None)
    @given(cases(relay=True))
    def probe(case: Case) -> None:
        plan = core_assign(case.members, case.partitions, case.generation)
        assert plan == reference_assign(case.members, case.partitions, case.generation)

    probe()
