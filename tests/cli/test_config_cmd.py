"""``capgroup config``: the README's settings table is the generated one."""

from __future__ import annotations

from pathlib import Path

from capgroup.cli.config_cmd import settings_table
from capgroup.settings import CapgroupSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_matches_the_code() -> None:
    table = settings_table()
    assert table in README.read_text(encoding="utf-8"), (
        "README.md's configuration table is stale: paste `capgroup config --markdown` into it"
    )


def test_table_lists_every_setting() -> None:
    table = settings_table()
    for name in CapgroupSettings.model_fields:
        assert f"`CAPGROUP_{name.upper()}`" in table
