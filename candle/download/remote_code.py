"""The repos a model's code lives in, fetched through the download service before the model loads.

With ``trust_remote_code``, transformers imports the classes a config's ``auto_map`` names. A bare
``module.Class`` is a file of the model's own snapshot; ``owner/name--module.Class`` is a file of
another repo (Jina v2's code lives in ``jinaai/jina-bert-implementation``), or of the model's own
repo on the hub (gte-Qwen2's form). transformers loads such a repo's default branch, and online it
resolves that branch again at every load: it would run whatever the branch holds then, code nobody
verified, and a different one per replica once the branch moves. So each of those repos is fetched
here at a commit (the catalog's ``code_revisions``, the model's own commit for its own repo, or else
the commit its branch first resolved to in this cluster, recorded like a model's: see ``pins.py``),
and a replica loads offline with the repo's default branch in its node's cache pointing at that
commit (``use_fetched_code``): transformers takes a single ``code_revision`` per load, which
sentence-transformers does not even pass on to the model, while every library reads the ref.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from huggingface_hub import constants
from huggingface_hub.utils import validate_repo_id

from .client import ProgressCallback, fetch_request
from .config import FetchRequest

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class FetchedModel:
    """A model's snapshot folder, and the snapshot folder of each repo its auto_maps take code from."""

    folder: Path
    code: dict[str, Path] = field(default_factory=dict)  # code repo -> snapshots/<commit fetched>


def code_requests(folder: Path, model: FetchRequest, revisions: Mapping[str, str]) -> list[FetchRequest]:
    """The code files of each repo ``folder`` references, asked for like ``model`` (same hub, token and
    cache): at the commit ``revisions`` names, the model's own commit for its own repo, or else the
    default branch (pinned cluster-wide at its first resolution), with a warning."""
    requests = []
    for repo in code_repos(folder):
        revision = revisions.get(repo) or (folder.name if repo == model.repo_id else None)
        if revision is None:
            logger.warning(
                "%s: the code of %s runs at its default branch as this cluster first fetched it; name the "
                "commit in the catalog entry's code_revisions to choose it",
                model.repo_id,
                repo,
            )
        requests.append(
            replace(model, repo_id=repo, revision=revision, allow_patterns=CODE_PATTERNS, ignore_patterns=None)
        )
    return requests


async def fetch_model(
    request: FetchRequest,
    remote_code: bool,
    on_progress: ProgressCallback | None = None,
    progress_interval_s: float = 1.0,
    code_revisions: Mapping[str, str] | None = None,
) -> FetchedModel:
    """Fetch the model and, with ``remote_code``, then the code of every repo its auto_maps reference
    (at ``code_revisions``' commits where named)."""
    folder = await fetch_request(request, on_progress, progress_interval_s)
    if not remote_code:
        return FetchedModel(folder)
    codes = code_requests(folder, request, code_revisions or {})
    snapshots = await asyncio.gather(*(fetch_request(code) for code in codes))
    return FetchedModel(folder, {code.repo_id: Path(snap) for code, snap in zip(codes, snapshots, strict=True)})


def use_fetched_code(fetched: FetchedModel) -> None:
    """Point each code repo's default branch, in the node's cache, at the commit fetched: what
    transformers loads from it offline (call it in the process that loads, just before, offline).

    Written as huggingface_hub writes a ref (``refs/<branch>`` holds the commit), atomically, by hand:
    this runs in replicas whose ``runtime_env`` may bring an older huggingface_hub, so it imports
    none of its internals (``hf_internals.record_ref`` wraps them for the downloader).
    """
    for snapshot in fetched.code.values():
        ref = snapshot.parents[1] / "refs" / constants.DEFAULT_REVISION
        ref.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=ref.parent, prefix=f".{ref.name}.")
        with os.fdopen(fd, "w") as out:
            out.write(snapshot.name)
        os.replace(tmp, ref)
