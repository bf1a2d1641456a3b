"""The repos a model's code lives in, fetched through the download service before the model loads.

With ``trust_remote_code``, transformers imports the classes a config's ``auto_map`` names. A bare
``module.Class`` is a file of the model's own snapshot; ``owner/name--module.Class`` is a file of
another repo (Jina v2's code lives in ``jinaai/jina-bert-implementation``), or of the model's own
repo on the hub (gte-Qwen2's form), which transformers fetches by itself while loading, always from
the default branch: outside the download service, once per replica, and not at all on a node with
``HF_HUB_OFFLINE=1``. Fetching those repos' code files first, at that same branch, puts them in the
node's cache, verified and shared, where transformers then finds them without the network.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from huggingface_hub.utils import validate_repo_id

from .client import ProgressCallback, fetch_request
from .config import FetchRequest

# The files whose ``auto_map`` transformers reads (models and configs; tokenizers).
AUTO_MAP_FILES = ("config.json", "tokenizer_config.json")
CODE_PATTERNS = ("*.py",)


def code_repos(folder: Path) -> tuple[str, ...]:
    """Every repo named by a ``repo--module.Class`` entry of ``folder``'s auto_maps, sorted, once each."""
    repos: set[str] = set()
    for name in AUTO_MAP_FILES:
        path = folder / name
        if not path.is_file():
            continue
        auto_map = json.loads(path.read_text()).get("auto_map") or {}
        for reference in _references(auto_map):
            if "--" in reference:
                repo = reference.split("--", 1)[0]
                validate_repo_id(repo)  # a config is data from the hub: no path tricks through it
                repos.add(repo)
    return tuple(sorted(repos))


def _references(auto_map: dict[str, Any]) -> list[str]:
    """Class references of an auto_map: a string, or a list of them (tokenizers: [slow, fast], may hold null)."""
    values = [v for value in auto_map.values() for v in (value if isinstance(value, list) else [value])]
    return [value for value in values if isinstance(value, str)]


def code_requests(folder: Path, model: FetchRequest) -> list[FetchRequest]:
    """The code files of each repo ``folder`` references, asked for like ``model`` (same hub, token and
    cache) at the default branch, which is what transformers loads them from."""
    return [
        replace(model, repo_id=repo, revision=None, allow_patterns=CODE_PATTERNS, ignore_patterns=None)
        for repo in code_repos(folder)
    ]


async def fetch_model(
    request: FetchRequest,
    remote_code: bool,
    on_progress: ProgressCallback | None = None,
    progress_interval_s: float = 1.0,
) -> Path:
    """Fetch the model and, with ``remote_code``, then the code of every repo its auto_maps reference;
    the model's snapshot folder."""
    folder = await fetch_request(request, on_progress, progress_interval_s)
    if remote_code:
        await asyncio.gather(*(fetch_request(code) for code in code_requests(folder, request)))
    return folder
