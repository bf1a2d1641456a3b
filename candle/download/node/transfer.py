"""One file from the hub (or peers) into the cache: in ranges, resumable, retried, hashed as it
arrives, then published.

``ranges.py`` does the HTTP part (byte ranges from the sources given, several at once for a large
blob, each resumed where it stopped, a failing source dropped). Around it this module holds
huggingface_hub's own lock of the blob for the whole transfer (one writer at a time, whichever tool
it is), writes to a name no other writer uses (``partial_file.py``, which hashes the bytes in order
as they arrive), checks the digest against the hub's listing once every byte is there, starts over
at once on a checksum mismatch, and makes the blob exist only once verified: flushed, renamed,
checked to be the file hashed, recorded (``integrity.py``). Blocking: run it in a worker thread.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence

from huggingface_hub.errors import HfHubHTTPError

from ..config import DownloaderSettings
from ..errors import DownloadError, IntegrityError, OutOfDisk, OversizedBody, TransferFailed
from .cache_layout import RepoCache, cache_errors
from .integrity import publish, verify_published
from .listing import RemoteFile, hub_errors
from .partial_file import PartialFile
from .progress import FileProgress
from .ranges import Drop, Links, NoSourceLeft, Source, fetch_missing

logger = logging.getLogger(__name__)


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
    sources: Sequence[Source],
    cache: RepoCache,
    partial: PartialFile,
    progress: FileProgress,
    settings: DownloaderSettings,
    links: Links,
    dropped: dict[str, Drop] | None = None,
) -> set[str]:
    """Fetch ``partial.file`` from ``sources`` into ``cache``, verified, or raise a typed error naming
    the repo and file.

    ``partial`` is this transfer's own file: every attempt (and every source) resumes it, and its
    first one what a killed writer of the blob left behind; its provenance records which source
    (URL) wrote which of its bytes, for as long as the transfer lasts. Sources that fail on the way
    are dropped into ``dropped`` (URL -> why). Returns the sources found to have sent wrong bytes
    (see ``partial_file.py``).
    """
    f = partial.file
    dropped = {} if dropped is None else dropped
    with cache_errors(repo_id, f.path), cache.lock(f):
        if verify_published(cache.blob_path(f), cache.record_path(f), f):
            partial.close()  # another writer published it while we waited for the lock
            return partial.provenance.blame(cache.blob_path(f))
        cache.blobs.mkdir(parents=True, exist_ok=True)
        cache.adopt_orphan(f, partial.path)
        failures = 0
        live = list(sources)
        while True:
            progress.state = "downloading"
            partial.open()
            progress.restart(partial.done())
            try:
                with hub_errors(repo_id, f.path):
                    fetch_missing(partial, live, settings=settings, links=links, progress=progress, dropped=dropped)
                digest, fingerprint = partial.finish()
            except DownloadError:
                partial.close()
                raise
            except NoSourceLeft as e:
                partial.close()
                if not e.overrun:
                    raise TransferFailed(repo_id, f.path, e.drop.cause) from None
                wrong: type[IntegrityError] = OversizedBody
                cause = f"more than the listed {f.size:,} bytes"
            except OSError as e:
                partial.close()
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise OutOfDisk(repo_id, f.path, "disk filled up during the transfer") from None
                raise TransferFailed(repo_id, f.path, f"{type(e).__name__}: {e}") from None
            except HfHubHTTPError as e:
                partial.close()
                status = e.response.status_code if e.response is not None else None
                raise TransferFailed(repo_id, f.path, f"HTTP {status}") from None
            else:
                if digest == f.etag:
                    if publish(partial.path, cache.blob_path(f), cache.record_path(f), digest, fingerprint):
                        partial.published()
                        return partial.provenance.blame(cache.blob_path(f))
                    wrong, cause = IntegrityError, "the file renamed into place was not the one hashed"
                    partial.discard()
                elif len(partial.provenance.writers()) > 1:
                    # Bytes from several sources: which sent the wrong ones is not known yet. Not these
                    # sources' failure: one of them sends the whole blob next, to compare the others' with.
                    logger.warning("%s/%s: checksum mismatch on bytes from several sources", repo_id, f.path)
                    partial.set_aside()
                    live = [next((s for s in live if s.url not in dropped), live[0])]
                    continue
                else:
                    wrong, cause = IntegrityError, f"checksum {digest[:12]}… != expected {f.etag[:12]}…"
                    for writer in partial.provenance.writers():  # it alone wrote the blob: to blame
                        if writer is not None:
                            dropped[writer] = Drop(cause, wrong=True)
                    partial.discard()
            failures += 1
            if failures >= settings.max_attempts:
                raise wrong(repo_id, f.path, f"{cause} on {failures} attempts")
            logger.warning("%s/%s: %s, downloading again", repo_id, f.path, cause)
