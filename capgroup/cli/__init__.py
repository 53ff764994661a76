"""The ``capgroup`` command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from capgroup._lazy import lazy_exports

if TYPE_CHECKING:
    from capgroup.cli.main import main

__all__ = [
    "main",
]

_EXPORTS = {
    "main": "capgroup.cli.main",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
