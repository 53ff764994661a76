"""``capgroup config``: validate and show the effective settings, or document them.

Unknown ``CAPGROUP_*`` variables are reported as ``unknown_setting`` warnings on stderr naming
the closest setting; ``--check`` also fails (exit 2) when what ``capgroup run`` needs is
missing.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic_core import PydanticUndefined

from capgroup.log import configure_logging
from capgroup.settings import ENV_PREFIX, CapgroupSettings, SettingsError, load_settings

__all__ = [
    "missing_for_run",
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
    parser.add_argument(
        "--check",
        action="store_true",
        help="also fail (exit 2) when a setting capgroup run needs is missing (group id, topics)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the effective settings, or fail naming each invalid setting."""
    if args.markdown:
        print(settings_table())
        return 0
    configure_logging()  # warnings (unknown variables) go to stderr, the settings to stdout
    settings = load_settings()
    if getattr(args, "check", False):
        missing = missing_for_run(settings)
        if missing:
            raise SettingsError(missing)
    print(json.dumps(settings.model_dump(mode="json"), indent=2, sort_keys=True))
    return 0


def missing_for_run(settings: CapgroupSettings) -> list[str]:
    """The settings ``capgroup run`` needs that are not set, each naming its variable."""
    return [
        f"{ENV_PREFIX}{name.upper()} ({name}): required to run a consumer"
        for name, value in (("group_id", settings.group_id), ("topics", settings.topics))
        if not value
    ]


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
