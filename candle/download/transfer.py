"""One file from the hub into the cache: resumable, retried, and verified before it is published.

huggingface_hub's ``http_get`` does the HTTP part (``Range`` resume, retries on dropped connections
and read time-outs, 429 with ``Retry-After``). Around it this module adds what it does not do:
hashing the bytes as they are written (sha256 for LFS files, the git blob sha1 otherwise) and
comparing with the hub's listing, retries with backoff on 5xx and on a checksum mismatch, and the
atomic rename that makes the blob exist only once verified. Blocking: run it in a worker thread.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import BinaryIO

import httpx2
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.file_download import http_get

from .config import DownloaderSettings
from .errors import DownloadError, IntegrityError, OutOfDisk, TransferFailed
from .listing import RemoteFile, hub_errors
from .progress import FileProgress

logger = logging.getLogger(__name__)

_READ_BLOCK = 8 * 1024 * 1024
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def new_hasher(f: RemoteFile) -> hashlib._Hash:
    """The digest the hub publishes: sha256 for LFS files, the git blob sha1 for the rest."""
    if f.sha256:
        return hashlib.sha256()
    return hashlib.sha1(f"blob {f.size}\0".encode())


def expected_digest(f: RemoteFile) -> str:
    return f.sha256 or f.blob_id


class HashingWriter:
    """A write-only file wrapper that hashes what is written, so verifying costs no second read.

    ``http_get`` may rewind and truncate (a server that ignored ``Range``): the hash is then
    rebuilt from the bytes left in the file.
    """

    def __init__(self, raw: BinaryIO, f: RemoteFile) -> None:
        self._raw = raw
        self._remote = f
        self._hasher = self._hash_prefix(raw.tell())

    def _hash_prefix(self, length: int) -> hashlib._Hash:
        hasher = new_hasher(self._remote)
        with open(self._raw.name, "rb") as existing:
            remaining = length
            while remaining and (block := existing.read(min(_READ_BLOCK, remaining))):
                hasher.update(block)
                remaining -= len(block)
        return hasher

    def write(self, data: bytes) -> int:
        self._hasher.update(data)
        return self._raw.write(data)

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        length = self._raw.truncate(size)
        self._raw.flush()
        self._hasher = self._hash_prefix(length)
        return length

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


def _attempt(url: str, headers: dict[str, str], f: RemoteFile, incomplete: Path, progress: FileProgress) -> str:
    """One pass of ``http_get`` from wherever the incomplete file stops; returns the digest of it all."""
    resume = incomplete.stat().st_size if incomplete.exists() else 0
    if resume > f.size:
        incomplete.unlink()
        resume = 0
    progress.restart(resume)
    with incomplete.open("ab") as raw:
        writer = HashingWriter(raw, f)
        http_get(url, writer, resume_size=resume, headers=headers, expected_size=f.size, _tqdm_bar=progress)  # type: ignore[arg-type]
        return writer.hexdigest()


def download_verified(
    *,
    repo_id: str,
    url: str,
    headers: dict[str, str],
    f: RemoteFile,
    incomplete: Path,
    blob: Path,
    progress: FileProgress,
    settings: DownloaderSettings,
) -> None:
    """Fetch ``f`` into ``blob``, verified, or raise a typed error naming the repo and file."""
    blob.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        progress.state = "downloading"
        try:
            with hub_errors(repo_id, f.path):
                digest = _attempt(url, headers, f, incomplete, progress)
        except DownloadError:
            raise
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise OutOfDisk(repo_id, f.path, "disk filled up during the transfer") from None
            cause = f"{type(e).__name__}: {e}"
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status not in _RETRYABLE_STATUS:
                raise TransferFailed(repo_id, f.path, f"HTTP {status}") from None
            cause = f"HTTP {status}"
        except httpx2.TransportError as e:
            cause = type(e).__name__
        else:
            if digest == expected_digest(f):
                os.replace(incomplete, blob)
                return
            incomplete.unlink(missing_ok=True)
            cause = f"checksum {digest[:12]}… != expected {expected_digest(f)[:12]}…"
            failures += 1
            if failures >= settings.max_attempts:
                raise IntegrityError(repo_id, f.path, f"{cause} on {failures} attempts")
            logger.warning("%s/%s: %s, downloading again", repo_id, f.path, cause)
            continue
        failures += 1
        if failures >= settings.max_attempts:
            raise TransferFailed(repo_id, f.path, f"{cause} after {failures} attempts")
        delay = settings.backoff(failures)
        logger.warning(
            "%s/%s: %s, retrying in %.1fs (attempt %d/%d)",
            repo_id,
            f.path,
            cause,
            delay,
            failures + 1,
            settings.max_attempts,
        )
        time.sleep(delay)
