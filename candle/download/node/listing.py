"""Resolve a request to a commit and the exact files (with their checksums) it needs.

The listing comes from the Hub API through huggingface_hub (``repo_info`` for the commit, the
recursive tree for sizes, git blob ids and LFS sha256s) and is kept in huggingface_hub's own tree
cache, so a request pinned to a commit needs no network at all once cached, and offline mode works
from the cache alone. Every name in it (revision, commit, paths, checksums, sizes), from the hub or
from the cache, is checked by ``safe_names`` before it becomes a path or is written anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import httpx2
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import REGEX_COMMIT_HASH, repo_folder_name
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import filter_repo_objects

from ..config import FetchRequest
from ..errors import (
    AccessDenied,
    DownloadError,
    NotCached,
    RemoteFileNotFound,
    RepoNotFound,
    RevisionNotFound,
    UnsafeListing,
)
from .hf_internals import TreeCacheEntry, read_tree, tree_pages, write_tree
from .redact import redact_logged_urls, redact_url
from .safe_names import check_commit, check_revision, check_tree, shown

_GLOB_CHARS = set("*?[")

redact_logged_urls()  # this module and transfer.py log through huggingface_hub and its HTTP client


@dataclass(frozen=True)
class RemoteFile:
    """A file at a commit: its size and the checksum the Hub publishes for it."""

    path: str
    size: int
    blob_id: str  # git blob sha1
    sha256: str | None  # LFS files only

    @property
    def etag(self) -> str:
        """The file's blob name in the HF cache (as huggingface_hub names it), which is also the digest
        the hub publishes for its bytes: the sha256 of LFS files, the git blob sha1 of the rest."""
        return self.sha256 or self.blob_id


@dataclass(frozen=True)
class RepoListing:
    repo_id: str
    repo_type: str
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class ListingLimits:
    """How much of a tree listing candle reads before it refuses the repo: a hostile mirror could
    otherwise link page after page forever, or list more files than memory holds. The Hub pages a
    recursive tree by 1,000 entries; the biggest model repos list a few thousand files and a few TB."""

    max_entries: int = 100_000
    max_pages: int = 1_000
    max_total_bytes: int = 64 * 1024**4  # what the files claim, together


def storage_folder(request: FetchRequest) -> Path:
    cache_dir = request.cache_dir or constants.HF_HUB_CACHE
    return Path(cache_dir) / repo_folder_name(repo_id=request.repo_id, repo_type=request.repo_type)


@contextmanager
def hub_errors(repo_id: str, filename: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's HTTP errors into candle's typed errors, which name repo and file."""
    try:
        yield
    except GatedRepoError as e:
        raise AccessDenied(repo_id, filename, f"HTTP {e.response.status_code}") from None
    except RepositoryNotFoundError as e:
        raise RepoNotFound(repo_id, filename, f"HTTP {e.response.status_code}") from None
    except RevisionNotFoundError as e:
        raise RevisionNotFound(repo_id, filename, f"HTTP {e.response.status_code}") from None
    except RemoteEntryNotFoundError as e:
        raise RemoteFileNotFound(repo_id, filename, f"HTTP {e.response.status_code}") from None
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code in (401, 403):
            raise AccessDenied(repo_id, filename, f"HTTP {e.response.status_code}") from None
        raise


@contextmanager
def hub_answers(repo_id: str, endpoint: str, not_found: type[DownloadError] = DownloadError) -> Iterator[None]:
    """Like ``hub_errors``, and for what it leaves: the status the server answered, or that none did.

    A plain mirror answers a missing repo with a bare 404 (no ``X-Error-Code``): that is
    ``not_found`` on the endpoint that names the repo, never "unreachable". URLs lose their credentials.
    """
    try:
        with hub_errors(repo_id):
            yield
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        url = redact_url(str(e.response.url)) if e.response is not None else redact_url(endpoint)
        error = not_found if status == 404 else DownloadError
        raise error(repo_id, None, f"HTTP {status} from {url}") from None
    except httpx2.TransportError as e:
        raise DownloadError(repo_id, None, f"hub unreachable at {redact_url(endpoint)}: {type(e).__name__}") from None


def _remote_tree(api: HfApi, request: FetchRequest, commit: str, limits: ListingLimits) -> dict[str, TreeCacheEntry]:
    """The tree at ``commit``, read page by page within ``limits`` (the page past one is never asked for)."""
    tree: dict[str, TreeCacheEntry] = {}
    entries = total = 0
    refused = partial(UnsafeListing, request.repo_id, None)
    try:
        pages = tree_pages(api, request.repo_id, revision=commit, repo_type=request.repo_type)
        for read, (page, last) in enumerate(pages, 1):
            entries += len(page)
            if entries > limits.max_entries:
                raise refused(f"tree listing has more than {limits.max_entries} entries")
            for item in page:
                if isinstance(item, RepoFile):
                    tree[item.path] = entry = TreeCacheEntry(
                        size=item.size,
                        blob_id=item.blob_id,
                        lfs_sha256=item.lfs.sha256 if item.lfs is not None else None,
                        lfs_size=item.lfs.size if item.lfs is not None else None,
                    )
                    total += entry.size if type(entry.size) is int else 0  # check_tree refuses other sizes
                    if total > limits.max_total_bytes:
                        raise refused(
                            f"tree listing claims more than {limits.max_total_bytes} bytes at {shown(item.path)}"
                        )
            if read >= limits.max_pages and not last:
                raise refused(f"tree listing has more than {limits.max_pages} pages")
    except (KeyError, TypeError) as e:  # an entry without the fields every Hub tree entry has
        raise refused(f"malformed tree entry: {type(e).__name__} {shown(e.args)}") from None
    return tree


def _cached_commit(repo_id: str, folder: Path, revision: str) -> str | None:
    if REGEX_COMMIT_HASH.fullmatch(revision):
        return revision
    ref = folder / "refs" / revision
    return check_commit(repo_id, ref.read_text().strip()) if ref.is_file() else None


class BranchPins(Protocol):
    """Where a cluster keeps the commit each branch first resolved to (``cluster.pins``): passed in by
    the node's downloader, so this node-local module needs nothing of the cluster's."""

    def pinned_commit(self, request: FetchRequest, revision: str) -> str | None: ...

    def pin_commit(self, request: FetchRequest, revision: str, commit: str) -> str: ...


def list_repo(
    request: FetchRequest, limits: ListingLimits = ListingLimits(), pins: BranchPins | None = None
) -> RepoListing:
    """Resolve ``request`` to a commit and its selected files, a branch to the commit ``pins`` keep for
    it (without pins, to what the hub says now). Blocking: run it off the event loop."""
    revision = check_revision(request.repo_id, request.revision or constants.DEFAULT_REVISION)
    folder = storage_folder(request)
    commit = (
        _cached_commit(request.repo_id, folder, revision)
        if REGEX_COMMIT_HASH.fullmatch(revision) or constants.HF_HUB_OFFLINE
        else None
    )
    if commit is None and not constants.HF_HUB_OFFLINE and pins is not None:
        commit = pins.pinned_commit(request, revision)  # a branch this cluster already resolved
    tree = read_tree(folder, commit) if commit else None
    if tree is not None:
        check_tree(request.repo_id, tree)
    else:
        if constants.HF_HUB_OFFLINE:
            raise NotCached(
                request.repo_id, None, f"no cached listing for revision {revision!r} (HF_HUB_OFFLINE is set)"
            )
        api = HfApi(endpoint=request.endpoint, token=request.token)
        if commit is None:
            with hub_answers(request.repo_id, api.endpoint, not_found=RepoNotFound):
                info = api.repo_info(request.repo_id, revision=revision, repo_type=request.repo_type)
            commit = check_commit(request.repo_id, info.sha)
            if pins is not None:
                commit = pins.pin_commit(request, revision, commit)
        with hub_answers(request.repo_id, api.endpoint):
            tree = _remote_tree(api, request, commit, limits)
        check_tree(request.repo_id, tree)
        write_tree(folder, commit, tree)
    assert commit is not None  # cached, pinned or resolved above
    files = [RemoteFile(path, entry.size, entry.blob_id, entry.lfs_sha256) for path, entry in sorted(tree.items())]
    selected = tuple(
        filter_repo_objects(
            files,
            allow_patterns=list(request.allow_patterns) if request.allow_patterns else None,
            ignore_patterns=list(request.ignore_patterns) if request.ignore_patterns else None,
            key=lambda f: f.path,
        )
    )
    _check_literal_patterns(request, commit, selected)
    return RepoListing(request.repo_id, request.repo_type, revision, commit, selected)


def _check_literal_patterns(request: FetchRequest, commit: str, selected: tuple[RemoteFile, ...]) -> None:
    """A pattern without wildcards names a file: if it matched nothing, say so instead of returning less."""
    present = {f.path for f in selected}
    for pattern in request.allow_patterns or ():
        if not _GLOB_CHARS & set(pattern) and not pattern.endswith("/") and pattern not in present:
            raise RemoteFileNotFound(request.repo_id, pattern, f"not in commit {commit}")
