"""The one place candle uses parts of huggingface_hub that are not its documented API.

Sharing a cache with ``hf download``, transformers and vLLM means writing it exactly as
huggingface_hub does (its tree cache, its relative symlinks, its refs, its lock files), and reading
a tree listing a page at a time; huggingface_hub exposes none of these publicly. Each is wrapped here
once, and tests/test_hf_internals.py fails loudly when a huggingface_hub release changes one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub._tree_cache import TreeCacheEntry, read_tree_cache, write_tree_cache
from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision, _create_symlink
from huggingface_hub.hf_api import RepoFile, RepoFolder

__all__ = [
    "TreeCacheEntry",
    "blob_lock_path",
    "link_blob",
    "read_tree",
    "record_ref",
    "tree_pages",
    "write_tree",
]


def read_tree(repo_folder: Path, commit: str) -> dict[str, TreeCacheEntry] | None:
    """The listing of ``commit`` that huggingface_hub (or candle) cached in the repo's folder."""
    return read_tree_cache(str(repo_folder), commit)


def write_tree(repo_folder: Path, commit: str, tree: Mapping[str, TreeCacheEntry]) -> None:
    write_tree_cache(str(repo_folder), commit, dict(tree))


def tree_pages(
    api: HfApi, repo_id: str, *, revision: str, repo_type: str
) -> Iterator[tuple[list[RepoFile | RepoFolder], bool]]:
    """The recursive tree of ``revision`` as ``list_repo_tree`` reads it, one page (one HTTP response)
    at a time, each with whether it is the last: a caller that stops iterating asks for no further
    page. ``list_repo_tree`` itself hides the pages."""
    yield from api._iter_repo_tree_pages(repo_id, recursive=True, revision=revision, repo_type=repo_type)


def link_blob(blob: Path, pointer: Path) -> None:
    """``pointer`` (in ``snapshots/``) as huggingface_hub links it to ``blob``: a relative symlink
    where the filesystem allows one, a copy where it does not (Windows without developer mode)."""
    _create_symlink(str(blob), str(pointer), new_blob=False)


def record_ref(repo_folder: Path, revision: str, commit: str) -> None:
    """``refs/<revision>`` -> ``commit`` (nothing for a revision that is the commit itself)."""
    _cache_commit_hash_for_specific_revision(str(repo_folder), revision, commit)


def blob_lock_path(repo_folder: Path, etag: str) -> Path:
    """The file huggingface_hub locks while it writes blob ``etag`` of the repo in ``repo_folder``."""
    return repo_folder.parent / ".locks" / repo_folder.name / f"{etag}.lock"
