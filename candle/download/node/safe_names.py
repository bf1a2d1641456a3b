"""Names from a hub (or from a listing cached on disk), checked before any of them becomes a path.

A mirror's answers name files in the cache: the commit becomes ``snapshots/<commit>/`` and
``trees/<commit>.json``, a tree path becomes ``snapshots/<commit>/<path>``, a checksum becomes
``blobs/<checksum>``, and the requested revision becomes ``refs/<revision>``. Each is checked here
against the shape the Hub gives it, so a hostile or broken mirror cannot make a fetch write outside
the repo's cache folder: one bad entry refuses the whole listing with ``UnsafeListing``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import UnsafeListing
from .hf_internals import TreeCacheEntry

_SHA1_HEX = re.compile(r"[0-9a-f]{40}")  # a commit or a git blob id
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # an LFS oid
_CONTROL_OR_BACKSLASH = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")  # C0, DEL, C1
# What `git check-ref-format` refuses in a ref name beyond what a safe path already excludes.
_REF_FORBIDDEN = re.compile(r"[ ~^:?*\[]|\.\.|@\{|^@$|\.$|(^|/)\.|\.lock(/|$)")
_MAX_SEGMENT_BYTES = 255  # the longest file name Linux and macOS file systems accept
_MAX_SHOWN = 200


def shown(value: object) -> str:
    """``value`` as it may appear in a message: repr'd (control characters escaped) and bounded."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "…"


def check_commit(repo_id: str, commit: object) -> str:
    """A commit is exactly 40 lowercase hex digits, as git and the Hub write it."""
    if not isinstance(commit, str) or not _SHA1_HEX.fullmatch(commit):
        raise UnsafeListing(repo_id, None, f"commit {shown(commit)} is not 40 lowercase hex digits")
    return commit


def check_revision(repo_id: str, revision: str) -> str:
    """A revision names ``refs/<revision>``: a git ref name (``main``, ``v1.0``, ``refs/pr/1``) or a commit."""
    problem = path_problem(revision)
    if problem is None and _REF_FORBIDDEN.search(revision):
        problem = "is not a git ref name"
    if problem is not None:
        raise UnsafeListing(repo_id, None, f"revision {shown(revision)} {problem}")
    return revision


def path_problem(path: object) -> str | None:
    """Why ``path`` is not a plain relative path inside a snapshot folder, or None if it is one."""
    if not isinstance(path, str) or not path:
        return "is empty or not text"
    if _CONTROL_OR_BACKSLASH.search(path):
        return "has a control character or a backslash"
    try:
        segments = [s.encode() for s in path.split("/")]
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if path.startswith("/"):
        return "is absolute"
    if any(s in (b"", b".", b"..") for s in segments):
        return "has an empty, '.' or '..' segment"
    if any(len(s) > _MAX_SEGMENT_BYTES for s in segments):
        return f"has a segment longer than {_MAX_SEGMENT_BYTES} bytes"
    return None


def _entry_problem(entry: TreeCacheEntry) -> str | None:
    if not isinstance(entry.blob_id, str) or not _SHA1_HEX.fullmatch(entry.blob_id):
        return f"blob id {shown(entry.blob_id)} is not 40 lowercase hex digits"
    if entry.lfs_sha256 is not None and not (
        isinstance(entry.lfs_sha256, str) and _SHA256_HEX.fullmatch(entry.lfs_sha256)
    ):
        return f"LFS oid {shown(entry.lfs_sha256)} is not 64 lowercase hex digits"
    for name, size, optional in (("size", entry.size, False), ("LFS size", entry.lfs_size, True)):
        if not (optional and size is None) and (type(size) is not int or size < 0):
            return f"{name} {shown(size)} is not a non-negative integer"
    return None


def check_tree(repo_id: str, tree: Mapping[str, TreeCacheEntry]) -> None:
    """Every path, checksum and size of a tree listing (from the hub or the tree cache) is safe to use."""
    folders = {path[:i] for path in tree if isinstance(path, str) for i, char in enumerate(path) if char == "/"}
    for path, entry in tree.items():
        problem = path_problem(path) or _entry_problem(entry)
        if problem is None and path in folders:
            problem = "is both a file and a folder"
        if problem is not None:
            raise UnsafeListing(repo_id, None, f"tree entry {shown(path)}: {problem}")
