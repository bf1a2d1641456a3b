"""One file from the hub (or a peer) into the cache: resumable, retried, verified, then published.

huggingface_hub's ``http_get`` does the HTTP part (``Range`` resume, retries on dropped connections
and read time-outs, 429 with ``Retry-After``). Around it this module adds what it does not do:
huggingface_hub's own lock of the blob for the whole transfer (one writer at a time, whichever tool
it is), bytes written to a name no other writer uses, verification of the file as it is on disk
against the hub's listing, retries with backoff on 5xx and on a checksum mismatch, and the durable
rename that makes the blob exist only once verified (see ``integrity.py``). Blocking: run it in a
worker thread.
"""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path

import httpx2
from huggingface_hub.errors import HfHubHTTPError

from .cache_layout import RepoCache, cache_errors
from .config import DownloaderSettings
from .errors import DownloadError, IntegrityError, OutOfDisk, TransferFailed
from .hf_internals import download_into
from .integrity import publish, verify_published
from .listing import RemoteFile, hub_errors
from .progress import FileProgress

logger = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def _attempt(url: str, headers: dict[str, str], f: RemoteFile, partial: Path, progress: FileProgress) -> None:
    """One pass of ``http_get``, appending from wherever the partial file stops."""
    resume = partial.stat().st_size if partial.exists() else 0
    if resume > f.size:
        partial.unlink()
        resume = 0
    progress.restart(resume)
    with partial.open("ab") as out:
        download_into(url, out, resume=resume, headers=headers, size=f.size, progress=progress)


def adopt_published(repo_id: str, cache: RepoCache, f: RemoteFile) -> bool:
    """Whether a verified blob of ``f`` is in the cache, once any writer of it is done.

    Waits for whoever holds the blob's lock (another candle, ``hf download``), then verifies what
    is there (removing it if wrong).
    """
    with cache_errors(repo_id, f.path), cache.lock(f):
        return verify_published(cache.blob_path(f), cache.record_path(f), f)


def download_verified(
    *,
    repo_id: str,
    url: str,
    headers: dict[str, str],
    f: RemoteFile,
    cache: RepoCache,
    partial: Path,
    progress: FileProgress,
    settings: DownloaderSettings,
) -> None:
    """Fetch ``f`` into ``cache``, verified, or raise a typed error naming the repo and file.

    ``partial`` is this transfer's own file: every attempt (and every source) resumes it, and its
    first one what a killed writer of the blob left behind.
    """
    with cache_errors(repo_id, f.path), cache.lock(f):
        if verify_published(cache.blob_path(f), cache.record_path(f), f):
            return  # another writer published it while we waited for the lock
        cache.blobs.mkdir(parents=True, exist_ok=True)
        cache.adopt_orphan(f, partial)
        failures = 0
        while True:
            progress.state = "downloading"
            try:
                with hub_errors(repo_id, f.path):
                    _attempt(url, headers, f, partial, progress)
                digest = publish(partial, cache.blob_path(f), cache.record_path(f), f)
            except DownloadError:
                raise
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
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
                if digest == f.etag:
                    return
                partial.unlink(missing_ok=True)
                cause = f"checksum {digest[:12]}… != expected {f.etag[:12]}…"
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
