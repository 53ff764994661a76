"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package lists which module defines each public name; the module is imported on first
access. So ``from capgroup import assign`` loads the pure assignor and nothing else: no Kafka
client, no prometheus-client, no psutil.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str,
    exports: Mapping[str, str],
    moved: Mapping[str, str] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, which exports each name of ``exports``
    from the module it maps to (relative names start with a dot).

    ``moved`` maps names that used to be exported here to the module that exports them now,
    so that old code fails with a message saying where to import them from.
    """
    moved = moved or {}

    def get_attribute(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            if name in moved:
                raise AttributeError(
                    f"{package}.{name} moved: import it from {moved[name]} "
                    f"(from {moved[name]} import {name})"
                )
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        # Cache it: later lookups are plain attribute reads.
        setattr(sys.modules[package], name, value)
        return value

    def list_attributes() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return get_attribute, list_attributes
