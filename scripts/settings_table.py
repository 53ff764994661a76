"""Print the README's configuration table from ``CapgroupSettings.model_fields``.

Run: ``.venv/bin/python scripts/settings_table.py`` and paste the output into README.md.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticUndefined

from capgroup.settings import ENV_PREFIX, CapgroupSettings


def default_of(field: Any) -> str:
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


def main() -> None:
    print("| variable | default | meaning |")
    print("| --- | --- | --- |")
    for name, field in CapgroupSettings.model_fields.items():
        text = (field.description or "").replace("|", "\\|")
        print(f"| `{ENV_PREFIX}{name.upper()}` | `{default_of(field)}` | {text} |")


if __name__ == "__main__":
    main()
