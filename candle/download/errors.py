"""Typed download errors that name the repo, the file and the cause, and survive Ray's pickling.

Ray re-raises an actor's exception in the caller as a subclass of both ``RayTaskError`` and the
original class, so callers can ``except RepoNotFound`` around ``await fetch(...)``. Each class
pickles by its fields, never by a formatted message, and no message ever carries a token.
"""

from __future__ import annotations


class DownloadError(Exception):
    """Base class: a fetch of ``repo_id`` (and ``filename``, when one file is to blame) failed."""

    reason = "download failed"

    def __init__(self, repo_id: str, filename: str | None = None, detail: str = "") -> None:
        self.repo_id = repo_id
        self.filename = filename
        self.detail = detail
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f"{self.repo_id}/{self.filename}" if self.filename else self.repo_id
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")

    def __reduce__(self) -> tuple[type, tuple[str, str | None, str]]:
        return (type(self), (self.repo_id, self.filename, self.detail))

    def __str__(self) -> str:
        return self.message


class RepoNotFound(DownloadError):
    reason = "repository not found (or private without a valid token)"


class RevisionNotFound(DownloadError):
    reason = "revision not found"


class RemoteFileNotFound(DownloadError):
    reason = "file not found in the repository"


class AccessDenied(DownloadError):
    reason = "access denied: the repository is gated or private; set HF_TOKEN to a token with access"


class OutOfDisk(DownloadError):
    reason = "not enough free disk space"


class IntegrityError(DownloadError):
    reason = "downloaded bytes do not match the hub's checksum"


class OversizedBody(IntegrityError):
    """A source is to blame: it sent more bytes than the listing gives the file (none past it were written)."""

    reason = "the source sent more bytes than the file has"


class TransferFailed(DownloadError):
    reason = "transfer failed after retries"


class UnsafeListing(DownloadError):
    reason = "refused an unsafe listing from the hub or the cache; nothing was written"


class NotCached(DownloadError):
    reason = "offline mode is on and the files are not in the local cache"
