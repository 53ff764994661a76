"""The public surface: what each package exports, that it loads lazily, and that it is documented.

As anyio's ``test_all_attributes.py`` does, every public package's ``__all__`` is checked
against what it really exports, so a name cannot be added to a module and forgotten in the
re-export, or listed and missing.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import capgroup

PACKAGES = [
    "capgroup",
    "capgroup.assignor",
    "capgroup.protocol",
    "capgroup.membership",
    "capgroup.runtime",
    "capgroup.operations",
    "capgroup.devkafka",
    "capgroup.cli",
]

#: What a service author needs, and nothing else, at the top level.
SERVICE_AUTHOR_NAMES = {
    "BatchingConsumer",
    "Batch",
    "Record",
    "make_record",
    "RevokeAction",
    "FlushReason",
    "FailurePolicy",
    "CapgroupSettings",
    "load_settings",
    "SettingsError",
    "TopicPartition",
}


def public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(capgroup.__path__, "capgroup."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_unique_and_resolves(package: str) -> None:
    # (ruff's RUF022 keeps each __all__ sorted)
    module = importlib.import_module(package)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported))
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == []
    assert set(exported) <= set(dir(module))


@pytest.mark.parametrize("package", PACKAGES + public_modules())
def test_every_exported_class_and_function_is_documented(package: str) -> None:
    module = importlib.import_module(package)
    undocumented = [
        name
        for name in module.__all__
        if (inspect.isclass(obj := getattr(module, name)) or inspect.isfunction(obj))
        and obj.__module__.startswith("capgroup")  # re-exported aiokafka classes are theirs
        and not inspect.getdoc(obj)
    ]
    assert undocumented == []


@pytest.mark.parametrize("name", public_modules())
def test_modules_with_all_list_every_public_definition(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} declares no __all__"
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    }
    assert sorted(defined - set(module.__all__)) == []
    assert [attr for attr in module.__all__ if not hasattr(module, attr)] == []


def test_top_level_is_for_service_authors() -> None:
    assert set(capgroup.__all__) >= SERVICE_AUTHOR_NAMES
    # Engine, wire and operator tooling live in subpackages.
    assert len(capgroup.__all__) <= 25
    for internal in ("get_logger", "bind_member", "MembershipEngine", "serve_operations"):
        assert internal not in capgroup.__all__


def test_a_moved_name_says_where_it_lives_now() -> None:
    with pytest.raises(
        AttributeError, match=r"capgroup\.serve_operations moved.*capgroup\.operations"
    ):
        capgroup.serve_operations  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        capgroup.no_such_name  # noqa: B018


def test_subpackage_names_are_the_same_objects() -> None:
    from capgroup import assignor, membership, protocol
    from capgroup.assignor.balance import assign
    from capgroup.membership.engine import MembershipEngine
    from capgroup.protocol.capacity import encode_advertisement

    assert capgroup.assign is assign is assignor.assign
    assert membership.MembershipEngine is MembershipEngine
    assert protocol.encode_advertisement is encode_advertisement


def _loaded_after(statement: str) -> set[str]:
    probe = (
        "import sys\n"
        f"{statement}\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.strip().split(","))


@pytest.mark.parametrize(
    "statement",
    [
        "import capgroup; capgroup.assign",
        "from capgroup import assign",
        "from capgroup.assignor import plan_group, headroom",
        "from capgroup.protocol import decode_advertisement, encode_member_metadata",
    ],
)
def test_the_pure_core_loads_no_client_library(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert "capgroup" in loaded
    assert loaded.isdisjoint({"aiokafka", "prometheus_client", "psutil", "anyio"})


def test_the_consumer_does_not_load_the_metrics_library() -> None:
    loaded = _loaded_after("from capgroup import BatchingConsumer")
    assert "aiokafka" in loaded  # the probe would notice a broken import
    assert "prometheus_client" not in loaded
