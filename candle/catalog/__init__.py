"""Model catalogs: the production one shipped with candle, or any YAML file of the same shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .schema import CAPABILITIES, Capability, Catalog, Deployable, Limits, ModelSpec, Pool, Resources

BUILTIN_CATALOGS = {
    "production": Path(__file__).with_name("production.yaml"),
    "demo": Path(__file__).with_name("demo.yaml"),
    "demo-all": Path(__file__).with_name("demo-all.yaml"),
    "demo-pools": Path(__file__).with_name("demo-pools.yaml"),
}


def load_catalog(source: str | Path | dict[str, Any] | None = None) -> Catalog:
    """A catalog from a built-in name (``production``, ``demo``, ``demo-all``,
    ``demo-pools``), a YAML path, or a parsed mapping.

    Built-in names keep Serve configs independent of the working directory their builders run in.
    """
    if isinstance(source, dict):
        return Catalog.model_validate(source)
    path = BUILTIN_CATALOGS.get(str(source or "production"), Path(str(source)))
    if not path.is_file():
        raise FileNotFoundError(f"no catalog at {path} (built-in catalogs: {', '.join(BUILTIN_CATALOGS)})")
    return Catalog.model_validate(yaml.safe_load(path.read_text()))


__all__ = [
    "BUILTIN_CATALOGS",
    "CAPABILITIES",
    "Capability",
    "Catalog",
    "Deployable",
    "Limits",
    "ModelSpec",
    "Pool",
    "Resources",
    "load_catalog",
]
