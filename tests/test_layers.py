"""candle's layers import downward only (README.md and docs/layout.md draw them).

Read from the source with ``ast``, so a late import inside a function counts as much as one at the
top of a module.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path
from types import UnionType

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower number = lower layer. A module may import its own package and anything of a lower layer;
# packages of one layer never import each other (engines and api, catalog and download).
LAYERS: dict[str, int] = {
    "candle.contracts": 0,
    "candle.image_formats": 0,
    "candle.catalog": 1,
    "candle.download": 1,
    "candle.engines": 2,
    "candle.api": 2,
    "candle.placement": 2,
    "candle.raycluster": 2,
    "deployments": 3,
    "candle.serve_config": 4,
    "candle.jobs": 5,
    "candle.demo": 5,
    "candle.cli": 6,
    "candle.testing": 7,  # helpers for tests and benchmarks: product code never imports them
}
# What the bottom layer must stay free of, so the gateway and the catalog import it cheaply.
HEAVY = ("torch", "transformers", "diffusers", "vllm", "fastapi", "starlette", "ray")


def package_of(module: str) -> str | None:
    """The layer key ``module`` belongs to (its longest listed prefix)."""
    keys = [key for key in LAYERS if module == key or module.startswith(key + ".")]
    return max(keys, key=len) if keys else None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, relative imports resolved, ``from pkg import sub`` as ``pkg.sub``."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(module: str, imports: set[str]) -> list[str]:
    importer = package_of(module)
    assert importer is not None, f"{module} is in no layer: add its package to LAYERS"
    wrong = []
    for imported in sorted(imports):
        target = package_of(imported)
        if target is None or target == importer:
            continue
        if LAYERS[target] >= LAYERS[importer]:
            wrong.append(f"{module} (layer {LAYERS[importer]}) imports {imported} (layer {LAYERS[target]})")
    return wrong


# Every module but the package root, which holds only the version.
SOURCES = sorted(
    path
    for path in [*ROOT.joinpath("candle").rglob("*.py"), *ROOT.joinpath("deployments").rglob("*.py")]
    if path != ROOT / "candle" / "__init__.py"
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_downward(path: Path):
    module = module_name(path)
    assert violations(module, imports_in(path.read_text(), module, path.name == "__init__.py")) == []


# Inside a layer, sub-packages that must not reach across: what one node does alone never depends on
# how nodes coordinate (the downloader, above both, joins them).
APART = {"candle.download.node": ("candle.download.cluster", "candle.download.downloader", "candle.download.client")}


def reaches_across(module: str, imports: set[str]) -> list[str]:
    return [
        f"{module} imports {imported}"
        for below, banned in APART.items()
        if module == below or module.startswith(below + ".")
        for imported in sorted(imports)
        if any(imported == b or imported.startswith(b + ".") for b in banned)
    ]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_node_local_download_code_never_reaches_the_cluster_side(path: Path):
    module = module_name(path)
    assert reaches_across(module, imports_in(path.read_text(), module, path.name == "__init__.py")) == []


def test_the_apart_rule_can_fail():
    assert reaches_across("candle.download.node.listing", {"candle.download.cluster.pins"}) == [
        "candle.download.node.listing imports candle.download.cluster.pins"
    ]


@pytest.mark.parametrize("module", [m for m, layer in LAYERS.items() if layer == 0])
def test_the_bottom_layer_imports_no_heavy_library(module: str):
    imported = imports_in(ROOT.joinpath(*module.split(".")).with_suffix(".py").read_text(), module)
    assert {m for m in imported if m.split(".")[0] in HEAVY} == set()


def test_contracts_hold_calls_and_protocols_only():
    """Progress records, JSON shapes, settings and constants live with the layer they belong to:
    every class ``candle.contracts`` defines is a frozen dataclass (a call, or what engines send
    back) or an engine ``Protocol``, and every other name it assigns is a type alias."""
    contracts = importlib.import_module("candle.contracts")
    tree = ast.parse((ROOT / "candle" / "contracts.py").read_text())
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assigned = [
        t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
    ]
    assert classes and assigned, "nothing found: the check would pass on anything"
    for name in classes:
        cls = getattr(contracts, name)
        frozen = dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        assert frozen or getattr(cls, "_is_protocol", False), f"{name} is neither a frozen dataclass nor a Protocol"
    for name in assigned:
        value = getattr(contracts, name)
        assert isinstance(value, UnionType) or hasattr(value, "__origin__"), f"{name} is no type alias"


def test_the_checker_reports_an_upward_or_sideways_import():
    """The rule itself can fail: an engine importing the API layer, or a download module a replica."""
    probe = "from candle.api.errors import bad_request\nfrom ..api import schemas\n"
    assert violations("candle.engines.probe", imports_in(probe, "candle.engines.probe")) == [
        "candle.engines.probe (layer 2) imports candle.api (layer 2)",
        "candle.engines.probe (layer 2) imports candle.api.errors (layer 2)",
        "candle.engines.probe (layer 2) imports candle.api.errors.bad_request (layer 2)",
        "candle.engines.probe (layer 2) imports candle.api.schemas (layer 2)",
    ]
    assert violations("candle.download.probe", {"deployments.replicas.base"}) == [
        "candle.download.probe (layer 1) imports deployments.replicas.base (layer 3)"
    ]


def import_graph() -> dict[str, set[str]]:
    """Module -> the candle and deployments modules it imports (``from pkg import name`` counted as
    ``pkg.name`` only where that is a module)."""
    modules = {module_name(path): path for path in SOURCES}
    return {
        module: {
            imported
            for imported in imports_in(path.read_text(), module, path.name == "__init__.py")
            if imported in modules and imported != module
        }
        for module, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as the modules along it (found once, from its smallest module)."""
    found = []
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            module, path = stack.pop()
            for imported in sorted(graph[module]):
                if imported == start:
                    found.append(path)
                elif imported > start and imported not in path:
                    stack.append((imported, [*path, imported]))
    return found


def test_no_module_imports_itself_through_others():
    """A cycle (tiny_models and remote_code_models once imported each other) works only by the order
    modules happen to load in; a package's ``__init__`` importing its own modules is no cycle."""
    graph = import_graph()
    for module, imported in graph.items():
        graph[module] = {m for m in imported if not module.startswith(m + ".")}
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
