"""``capgroup config``: validate and show the effective settings, or document them."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic_core import PydanticUndefined

from capgroup.settings import ENV_PREFIX, CapgroupSettings, load_settings

__all__ = [
    "register",
    "run",
    "settings_table",
]


def register(sub: Any) -> None:
    """Add the ``config`` sub-command."""
    parser = sub.add_parser(
        "config", help="validate CAPGROUP_* settings and print the effective values as JSON"
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print every setting with its default and meaning as a Markdown table instead",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the effective settings, or fail naming each invalid setting."""
    if args.markdown:
        print(settings_table())
        return 0
    settings = load_settings()
    print(json.dumps(settings.model_dump(mode="json"), indent=2, sort_keys=True))
    return 0


def settings_table() -> str:
    """The README's configuration table, generated from ``CapgroupSettings.model_fields``."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in CapgroupSettings.model_fields.items():
        text = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{ENV_PREFIX}{name.upper()}` | `{_default_of(field)}` | {text} |")
    return "\n".join(lines)


def _default_of(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) or "(empty)"
