"""What makes a blob trusted: the bytes written into it hash to the hub's checksum, and stay so.

A transfer hashes the bytes as it writes them into a file no other writer opens (see
``partial_file.py``, ``prefix_hash.py``), under huggingface_hub's lock of the blob; then the file is
flushed to the disk (``fsync``), renamed into place, the rename made durable, and the blob checked
to be the very file that was written and hashed (same inode, same size) before it is recorded.
Reading the whole file back after it was written would only hash the same bytes twice: what
another tool, a crash or a bad disk may do to a blob later is caught by its record. What was
hashed is recorded in a small JSON sidecar per blob: size, modification time and inode of the
file, and the digest. A blob whose record no longer matches its file (it was changed in place, or
replaced), or that another tool wrote (no record), is hashed again from disk before it is handed
out, and removed if it is wrong. A sidecar file, not an extended attribute: caches live
on file systems without user xattrs (NFS before 4.2, older tmpfs), and copies drop them silently.
Blocking: run it in a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .listing import RemoteFile

logger = logging.getLogger(__name__)

_READ_BLOCK = 8 * 1024 * 1024


def new_hasher(f: RemoteFile) -> hashlib._Hash:
    """The digest the hub publishes: sha256 for LFS files, the git blob sha1 for the rest."""
    if f.sha256:
        return hashlib.sha256()
    return hashlib.sha1(f"blob {f.size}\0".encode())


@dataclass(frozen=True)
class Fingerprint:
    """What changes when a file's bytes are rewritten in place or the file is replaced."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Fingerprint:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


def hash_on_disk(path: Path, f: RemoteFile) -> tuple[str, Fingerprint]:
    """Flush ``path`` to the disk and hash it as it is there; the fingerprint is taken before reading."""
    with path.open("rb") as file:
        os.fsync(file.fileno())
        fingerprint = Fingerprint.of(os.fstat(file.fileno()))
        hasher = new_hasher(f)
        while block := file.read(_READ_BLOCK):
            hasher.update(block)
    return hasher.hexdigest(), fingerprint


def is_recorded(blob: Path, record: Path, etag: str) -> bool:
    """True when ``record`` says ``blob``, exactly as it is now, hashed to ``etag``."""
    try:
        saved = json.loads(record.read_text())
        current = Fingerprint.of(blob.stat())
    except (OSError, ValueError):
        return False
    return saved == {**asdict(current), "digest": etag}


def _write_record(record: Path, digest: str, fingerprint: Fingerprint) -> None:
    """Record a verification (atomically). Losing it only costs hashing the blob once more."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=record.parent, prefix=f".{record.name}.")
        with os.fdopen(fd, "w") as out:
            json.dump({**asdict(fingerprint), "digest": digest}, out)
        os.replace(tmp, record)
    except OSError as e:
        logger.warning("could not record the verification of %s (%s); it will be hashed again", record.name, e)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(partial: Path, blob: Path, record: Path, digest: str, fingerprint: Fingerprint) -> bool:
    """Rename ``partial`` (flushed, hashed to ``digest`` as it was written, ``fingerprint`` once flushed)
    to ``blob``, durably, and record it; False, and nothing kept, if the blob is not that file.

    The caller holds the blob's lock: nobody else writes ``blob`` meanwhile.
    """
    os.replace(partial, blob)
    _fsync_dir(blob.parent)
    st = blob.stat()
    if (st.st_ino, st.st_size) != (fingerprint.inode, fingerprint.size):
        logger.warning("%s: the file renamed into place is not the one hashed; removing it", blob.name)
        blob.unlink(missing_ok=True)
        return False
    _write_record(record, digest, fingerprint)
    return True


def verify_published(blob: Path, record: Path, f: RemoteFile) -> bool:
    """Whether ``blob`` holds ``f``'s bytes; one that does not is removed. Hold the blob's lock.

    A blob recorded as it is now is trusted without reading it; any other (written by another tool,
    changed since, or never recorded) is hashed, and recorded when right.
    """
    if is_recorded(blob, record, f.etag):
        return True
    try:
        digest, fingerprint = hash_on_disk(blob, f)
    except FileNotFoundError:
        return False
    if digest == f.etag:
        _write_record(record, digest, fingerprint)
        return True
    logger.warning("%s: cached blob %s does not match its checksum; removing it", f.path, blob.name)
    blob.unlink(missing_ok=True)
    record.unlink(missing_ok=True)
    return False
