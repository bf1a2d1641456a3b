"""The one place candle uses parts of huggingface_hub that are not its documented API.

Sharing a cache with ``hf download``, transformers and vLLM means writing it exactly as
huggingface_hub does (its tree cache, its relative symlinks, its refs, its lock files) and driving
its resumable ``http_get``; huggingface_hub exposes none of these publicly. Each is wrapped here
once, and tests/test_hf_internals.py fails loudly when a huggingface_hub release changes one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO, Protocol

from huggingface_hub import constants
from huggingface_hub._tree_cache import TreeCacheEntry, read_tree_cache, write_tree_cache
from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision, _create_symlink, http_get

__all__ = [
    "TreeCacheEntry",
    "blob_lock_path",
    "download_into",
    "link_blob",
    "read_tree",
    "record_ref",
    "tune_transfers",
    "write_tree",
]


class ProgressSink(Protocol):
    """What ``http_get`` calls as its progress bar: ``update`` with each chunk's size."""

    def update(self, n: int) -> object: ...


def read_tree(repo_folder: Path, commit: str) -> dict[str, TreeCacheEntry] | None:
    """The listing of ``commit`` that huggingface_hub (or candle) cached in the repo's folder."""
    return read_tree_cache(str(repo_folder), commit)


def write_tree(repo_folder: Path, commit: str, tree: Mapping[str, TreeCacheEntry]) -> None:
    write_tree_cache(str(repo_folder), commit, dict(tree))


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


def download_into(
    url: str, out: BinaryIO, *, resume: int, headers: dict[str, str], size: int, progress: ProgressSink
) -> None:
    """Append ``url``'s bytes from ``resume`` on to ``out`` with huggingface_hub's ``http_get`` (Range
    resume, retries of dropped connections, 429 with ``Retry-After``), reporting to ``progress``."""
    http_get(url, out, resume_size=resume, headers=headers, expected_size=size, _tqdm_bar=progress)  # type: ignore[arg-type]


def tune_transfers(*, read_timeout_s: float, chunk_size: int) -> None:
    """Process-wide: ``http_get`` reads these at every request. The read time-out is what detects a
    stalled transfer; the chunk size bounds what a dropped connection loses (the default, 10 MB, is
    lost whole). Only the download actor, a process of its own, calls this."""
    constants.HF_HUB_DOWNLOAD_TIMEOUT = read_timeout_s
    constants.DOWNLOAD_CHUNK_SIZE = chunk_size
