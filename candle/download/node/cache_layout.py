"""Where a repo's files live in the standard Hugging Face cache, and how they become visible.

Layout (as huggingface_hub writes it, so transformers, diffusers, vLLM and ``hf cache`` find it)::

    <cache>/models--org--name/blobs/<etag>                  verified bytes
    <cache>/models--org--name/blobs/<etag>.<id>.incomplete  a transfer in progress (one name per transfer)
    <cache>/models--org--name/blobs/<etag>.<id>.incomplete.ranges  which of its bytes are written (a file
                                                            written in pieces, see ``partial_file.py``)
    <cache>/models--org--name/blobs/<etag>.<id>.suspect     its bytes from several sources, set aside (see
                                                            ``partial_file.py``) until a verified copy judges them
    <cache>/models--org--name/snapshots/<commit>/<path>     symlink to the blob
    <cache>/models--org--name/refs/<branch>                 the commit the branch resolved to
    <cache>/models--org--name/candle-verified/<etag>        what candle hashed (see ``integrity.py``)
    <cache>/.locks/models--org--name/<etag>.lock            huggingface_hub's lock of the blob

A blob is only renamed into place after its checksum matched, under huggingface_hub's lock (so
``hf download``, transformers or vLLM writing the same cache wait for it, and candle for them), and
a snapshot entry is only linked to a blob that exists, so nothing unverified is ever reachable
from ``snapshots/``. The records sit beside ``blobs/``, not in it: peers list ``blobs/`` to find
blobs, and ``hf cache`` ignores folders of a repo it does not know, but warns about unknown ones
at the top of the cache.
"""

from __future__ import annotations

import errno
import re
import shutil
import time
import uuid
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Literal

from filelock import Timeout
from huggingface_hub.utils import WeakFileLock

from ..errors import DownloadError, OutOfDisk
from .hf_internals import blob_lock_path, link_blob, record_ref
from .integrity import is_recorded
from .listing import RemoteFile
from .partial_file import move_partial, ranges_record, remove_partial, written_spans

BlobState = Literal["verified", "unverified", "absent"]
ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git blob sha1 or an LFS sha256: how blobs are named
_TRY_LOCK_S = 0.01  # a blob's lock held elsewhere: a live writer, skip its partial file


class RepoCache:
    """The cache folder of one repo (``models--org--name``)."""

    def __init__(self, storage_folder: Path) -> None:
        # Resolved: the folder is the key that makes one transfer per blob, however it is spelled
        # (through a symlink, with ``..``).
        self.folder = storage_folder.resolve()
        self.blobs = self.folder / "blobs"
        self.records = self.folder / "candle-verified"

    def blob_path(self, f: RemoteFile) -> Path:
        return self.blobs / f.etag

    def record_path(self, f: RemoteFile) -> Path:
        return self.records / f.etag

    def lock_path(self, f: RemoteFile) -> Path:
        return blob_lock_path(self.folder, f.etag)

    def lock(self, f: RemoteFile) -> AbstractContextManager[object]:
        """huggingface_hub's own lock of the blob (its class, its file): every writer of it waits."""
        path = self.lock_path(f)
        path.parent.mkdir(parents=True, exist_ok=True)
        return WeakFileLock(path)

    def partial_path(self, f: RemoteFile) -> Path:
        """A new name for one transfer's bytes: no other writer ever appends to it."""
        return self.blobs / f"{f.etag}.{uuid.uuid4().hex[:12]}.incomplete"

    def adopt_orphan(self, f: RemoteFile, partial: Path) -> None:
        """Continue the largest transfer of ``f`` a dead writer left here: rename it to ``partial``.

        Call with the blob's lock held and ``partial`` not started: every live writer holds that
        lock while it writes, so another transfer's file left here (candle's, or huggingface_hub's
        ``<etag>.incomplete``) is an orphan (a downloader killed mid-blob), and its successor resumes
        it instead of asking the hub for those bytes again (only the ranges its record lists, for a
        file written in pieces). Its bytes are verified with the rest before the blob is published.
        The other orphans of ``f`` are of no more use: removed.
        """
        if partial.exists():
            return
        orphans = [p for p in self.blobs.glob(f"{f.etag}.*incomplete") if p != partial]
        held = {p: sum(b - a for a, b in spans) for p in orphans if (spans := written_spans(p, f.size))}
        if held:
            move_partial(max(held, key=held.__getitem__), partial)
        for other in orphans:
            remove_partial(other)

    def remove_orphans(self, keep: Collection[str], max_age_s: float) -> list[Path]:
        """Remove the transfers' files that no writer will resume (or judge); return what was removed.

        A partial file is removed under its blob's lock (so no live writer, candle or huggingface_hub,
        is writing it; a lock held elsewhere skips it at once), unless its blob is in ``keep`` (a
        transfer of this node's downloader, between two sources, or one about to adopt it), and
        only when its blob is published and verified, or the file has not changed for ``max_age_s``
        (huggingface_hub resumes its own ``<etag>.incomplete`` on the next download).
        """
        removed = []
        strays = [r for r in self.blobs.glob("*.incomplete.ranges") if not r.with_suffix("").exists()]
        for partial in [*self.blobs.glob("*.incomplete"), *self.blobs.glob("*.suspect"), *strays]:
            etag = partial.name.partition(".")[0]
            if etag in keep or not ETAG.fullmatch(etag):
                continue
            lock = blob_lock_path(self.folder, etag)
            lock.parent.mkdir(parents=True, exist_ok=True)
            try:
                with WeakFileLock(lock, timeout=_TRY_LOCK_S):
                    age = time.time() - partial.stat().st_mtime
                    if age >= max_age_s or is_recorded(self.blobs / etag, self.records / etag, etag):
                        partial.unlink()
                        ranges_record(partial).unlink(missing_ok=True)
                        removed.append(partial)
            except (Timeout, FileNotFoundError):
                continue
        return removed

    def snapshot_dir(self, commit: str) -> Path:
        return self.folder / "snapshots" / commit

    def pointer_path(self, commit: str, f: RemoteFile) -> Path:
        return self.snapshot_dir(commit) / f.path

    def has_blob(self, f: RemoteFile) -> bool:
        """The blob is there, unchanged since it was verified (no hashing: a stat and a small read)."""
        return is_recorded(self.blob_path(f), self.record_path(f), f.etag)

    def verified_etags(self) -> list[str]:
        """Every blob candle verified that is still as it was hashed: what peers may be sent here for.

        Read from candle's records, not from ``blobs/``: a blob another tool wrote there, or one
        changed since, is named like its etag but only trusted once candle hashes it.
        """
        if not self.records.is_dir():
            return []
        return sorted(
            record.name
            for record in self.records.iterdir()
            if ETAG.fullmatch(record.name) and is_recorded(self.blobs / record.name, record, record.name)
        )

    def blob_state(self, f: RemoteFile) -> BlobState:
        """``unverified``: a blob is there that must be hashed before anyone is given it."""
        if self.has_blob(f):
            return "verified"
        return "unverified" if self.blob_path(f).exists() else "absent"

    def link(self, commit: str, f: RemoteFile) -> Path:
        """Make the verified blob visible at ``snapshots/<commit>/<path>``."""
        pointer = self.pointer_path(commit, f)
        if not pointer.exists():
            pointer.parent.mkdir(parents=True, exist_ok=True)
            link_blob(self.blob_path(f), pointer)
        return pointer

    def write_ref(self, revision: str, commit: str) -> None:
        record_ref(self.folder, revision, commit)


@contextmanager
def cache_errors(repo_id: str, filename: str | None = None) -> Iterator[None]:
    """Report a failure to write or read the cache as a typed error naming the repo and file."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfDisk(repo_id, filename, f"disk full writing {e.filename}") from None
        raise DownloadError(repo_id, filename, f"cache not usable: {type(e).__name__}: {e}") from None


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
