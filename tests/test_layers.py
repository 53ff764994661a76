"""Layers point one way: types → protocol → assignor → membership → runtime → operations → CLI.

Every import of a ``capgroup`` module (at the top of a module, inside a function, or under
``TYPE_CHECKING``) is read from the source with :mod:`ast`; a module may import modules of its
own package or of a lower layer, never of a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "capgroup"

#: Lowest first. The foundation (plain types, errors, settings, logging, client options) is
#: shared by every layer; devkafka (the development broker) sits beside operations.
LAYERS: dict[str, int] = {
    "foundation": 0,
    "protocol": 1,
    "assignor": 2,
    "membership": 3,
    "runtime": 4,
    "operations": 5,
    "devkafka": 5,
    "cli": 6,
}
FOUNDATION = {"_lazy", "types", "errors", "log", "settings", "connection", "security", "sharding"}


def layer_of(module: str) -> str | None:
    """The layer of ``capgroup.x.y`` (None for the top-level package itself)."""
    parts = module.split(".")
    if parts[0] != "capgroup" or len(parts) == 1:
        return None
    if parts[1] in FOUNDATION:
        return "foundation"
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")
    return parts[1]


def module_name(path: Path, root: Path = ROOT) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def is_module(name: str, root: Path) -> bool:
    where = root.parent.joinpath(*name.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every absolute ``capgroup`` module ``path`` imports, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from capgroup import connection`` names a module too.
            named = (f"{node.module}.{alias.name}" for alias in node.names)
            found.update(name for name in named if is_module(name, root))
    return {name for name in found if name.startswith("capgroup.")}


def upward_imports(path: Path, root: Path = ROOT) -> list[str]:
    source = module_name(path, root)
    source_layer = layer_of(source)
    if source_layer is None:
        return []
    problems = []
    for target in sorted(imported_modules(path, root)):
        target_layer = layer_of(target)
        if target_layer is None or target_layer == source_layer:
            continue
        if LAYERS[target_layer] >= LAYERS[source_layer]:
            problems.append(f"{source} ({source_layer}) imports {target} ({target_layer})")
    return problems


SOURCES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[module_name(p) for p in SOURCES])
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    assert upward_imports(path) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    # The rule must be able to fail: a runtime module importing operations is caught, even
    # inside a function.
    root = tmp_path / "capgroup"
    (root / "operations").mkdir(parents=True)
    (root / "runtime").mkdir()
    (root / "operations" / "http.py").write_text("")
    planted = root / "runtime" / "planted.py"
    planted.write_text("def f():\n    from capgroup.operations import http\n")
    assert upward_imports(planted, root) == [
        "capgroup.runtime.planted (runtime) imports capgroup.operations (operations)",
        "capgroup.runtime.planted (runtime) imports capgroup.operations.http (operations)",
    ]


def test_the_pure_layers_import_no_kafka_client() -> None:
    # The codec and the assignor are pure functions: no aiokafka, no I/O libraries.
    clients = {"aiokafka", "prometheus_client", "psutil", "anyio"}
    offenders = []
    for path in [
        *ROOT.joinpath("protocol").rglob("*.py"),
        *ROOT.joinpath("assignor").rglob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{module_name(path)}: {n}" for n in names if n.split(".")[0] in clients]
    assert offenders == []
