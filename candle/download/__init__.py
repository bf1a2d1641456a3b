"""The download service: verified, deduplicated fetches of hub repos into each node's HF cache."""

from .client import fetch, node_downloader
from .config import DownloaderSettings, FetchRequest
from .errors import (
    AccessDenied,
    DownloadError,
    IntegrityError,
    NotCached,
    OutOfDisk,
    RemoteFileNotFound,
    RepoNotFound,
    RevisionNotFound,
    TransferFailed,
    UnsafeListing,
)

__all__ = [
    "AccessDenied",
    "DownloadError",
    "DownloaderSettings",
    "FetchRequest",
    "IntegrityError",
    "NotCached",
    "OutOfDisk",
    "RemoteFileNotFound",
    "RepoNotFound",
    "RevisionNotFound",
    "TransferFailed",
    "UnsafeListing",
    "fetch",
    "node_downloader",
]
