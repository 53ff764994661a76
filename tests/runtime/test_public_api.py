"""The runtime building blocks' public surface: re-exports, ``__all__`` and docstrings."""

from __future__ import annotations

import importlib
import inspect
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


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_exactly_the_public_definitions(name: str) -> None:
    module = _module(name)
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    }
    assert defined <= set(module.__all__)
    assert all(hasattr(module, attr) for attr in module.__all__)


@pytest.mark.parametrize("name", MODULES)
def test_public_classes_and_functions_are_documented(name: str) -> None:
    module = _module(name)
    for attr in module.__all__:
        value = getattr(module, attr)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name}.{attr} has no docstring"
