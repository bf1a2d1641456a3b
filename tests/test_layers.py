"""candle's layers import downward only (the README's layout section draws them).

Read from the source with ``ast``, so a late import inside a function counts as much as one at the
top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower number = lower layer. A module may import its own package and anything of a lower layer;
# packages of one layer never import each other (engines and api, catalog and download).
LAYERS: dict[str, int] = {
    "candle.contracts": 0,
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


def test_contracts_import_no_heavy_library():
    imported = imports_in((ROOT / "candle" / "contracts.py").read_text(), "candle.contracts")
    assert {m for m in imported if m.split(".")[0] in HEAVY} == set()


def test_the_checker_reports_an_upward_or_sideways_import():
    """The rule itself can fail: an engine importing the API layer, or a download module a replica."""
    probe = "from candle.api.errors import bad_request\nfrom ..api import schemas\n"
    assert violations("candle.engines.probe", imports_in(probe, "candle.engines.probe")) == [
        "candle.engines.probe (layer 2) imports candle.api (layer 2)",
        "candle.engines.probe (layer 2) imports candle.api.errors (layer 2)",
        "candle.engines.probe (layer 2) imports candle.api.errors.bad_request (layer 2)",
        "candle.engines.probe (layer 2) imports candle.api.schemas (layer 2)",
    ]
    assert violations("candle.download.probe", {"deployments.base"}) == [
        "candle.download.probe (layer 1) imports deployments.base (layer 3)"
    ]
