"""``capgroup config``: validate and show the effective settings."""

from __future__ import annotations

import argparse
import json
from typing import Any

from capgroup.settings import load_settings


def register(sub: Any) -> None:
    """Add the ``config`` sub-command."""
    parser = sub.add_parser(
        "config", help="validate CAPGROUP_* settings and print the effective values as JSON"
    )
    parser.set_defaults(handler=run)


def run(_: argparse.Namespace) -> int:
    """Print the effective settings, or fail naming each invalid setting."""
    settings = load_settings()
    print(json.dumps(settings.model_dump(mode="json"), indent=2, sort_keys=True))
    return 0
