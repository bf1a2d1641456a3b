"""Where a repo's files live in the standard Hugging Face cache, and how they become visible.

Layout (as huggingface_hub writes it, so transformers, diffusers, vLLM and ``hf cache`` find it)::

    <cache>/models--org--name/blobs/<etag>                  verified bytes
    <cache>/models--org--name/blobs/<etag>.incomplete       a transfer in progress (resumable)
    <cache>/models--org--name/snapshots/<commit>/<path>     symlink to the blob
    <cache>/models--org--name/refs/<branch>                 the commit the branch resolved to

A blob is only renamed into place after its checksum matched, and a snapshot entry is only linked
to a blob that exists, so nothing unverified is ever reachable from ``snapshots/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision, _create_symlink

from .errors import OutOfDisk
from .listing import RemoteFile


class RepoCache:
    """The cache folder of one repo (``models--org--name``)."""

    def __init__(self, storage_folder: Path) -> None:
        self.folder = storage_folder
        self.blobs = storage_folder / "blobs"

    def blob_path(self, f: RemoteFile) -> Path:
        return self.blobs / f.etag

    def incomplete_path(self, f: RemoteFile) -> Path:
        return self.blobs / f"{f.etag}.incomplete"

    def snapshot_dir(self, commit: str) -> Path:
        return self.folder / "snapshots" / commit

    def pointer_path(self, commit: str, f: RemoteFile) -> Path:
        return self.snapshot_dir(commit) / f.path

    def has_blob(self, f: RemoteFile) -> bool:
        """A blob of the right size is a verified one: only verified bytes are ever renamed to it."""
        try:
            return self.blob_path(f).stat().st_size == f.size
        except FileNotFoundError:
            return False

    def bytes_on_disk(self, f: RemoteFile) -> int:
        """What a transfer of ``f`` would not have to fetch again."""
        if self.has_blob(f):
            return f.size
        try:
            return min(f.size, self.incomplete_path(f).stat().st_size)
        except FileNotFoundError:
            return 0

    def link(self, commit: str, f: RemoteFile) -> Path:
        """Make the verified blob visible at ``snapshots/<commit>/<path>``."""
        pointer = self.pointer_path(commit, f)
        if not pointer.exists():
            pointer.parent.mkdir(parents=True, exist_ok=True)
            _create_symlink(str(self.blob_path(f)), str(pointer), new_blob=False)
        return pointer

    def write_ref(self, revision: str, commit: str) -> None:
        _cache_commit_hash_for_specific_revision(str(self.folder), revision, commit)


def ensure_free_space(repo_id: str, folder: Path, needed: int, reserve: int) -> None:
    """Refuse to start transfers that would fill the disk (leaving ``reserve`` bytes free)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed + reserve > free:
        raise OutOfDisk(
            repo_id,
            None,
            f"needs {needed / 1e9:.2f} GB + {reserve / 1e9:.2f} GB reserve, {free / 1e9:.2f} GB free in {folder}",
        )
