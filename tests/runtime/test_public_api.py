"""The runtime's service-author names are re-exported at the top level (``__all__`` and docstrings
of every module are checked in ``tests/test_public_surface.py``)."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

import capgroup

MODULES = [
    "batch",
    "offsets",
    "policy",
    "retry",
    "memory",
    "consumer",
    "stats",
    "partition",
    "deadletter",
]


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"capgroup.runtime.{name}")


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("Batch", "batch"),
        ("Record", "batch"),
        ("FlushReason", "batch"),
        ("RevokeAction", "policy"),
        ("FailurePolicy", "retry"),
        ("BatchingConsumer", "consumer"),
        ("ShutdownForcedError", "consumer"),
        ("ConsumerStats", "stats"),
        ("Counters", "stats"),
    ],
)
def test_package_reexports_runtime_names(name: str, module: str) -> None:
    assert name in capgroup.__all__
    assert getattr(capgroup, name) is getattr(_module(module), name)
